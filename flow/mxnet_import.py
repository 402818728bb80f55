"""Turn an MXNet checkpoint (PREFIX-symbol.json + PREFIX-NNNN.params) into a flow checkpoint, to resume or fine-tune.

    flow import-mxnet PREFIX EPOCH OUT_PREFIX --network resnet --num-layers 20 --image-shape 3,28,28

writes OUT_PREFIX-NNNN.params, OUT_PREFIX-NNNN.states and OUT_PREFIX-model.json, which `flow run`
loads with checkpoint.model_prefix = OUT_PREFIX and checkpoint.load_epoch = EPOCH, or fine-tunes
from with model.pretrained_prefix = OUT_PREFIX (model.pretrained_prefix may also name the MXNet
prefix itself). The network is flow's of the same architecture (lenet, mlp, alexnet, resnet,
or package.module:factory); the number of classes is read from the last FullyConnected layer.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flow.errors import FlowError


class MXNetImportError(FlowError):
    """An MXNet checkpoint that does not describe the flow network it is loaded into, or a bad symbol file."""


def symbol_path(prefix: str) -> Path:
    return Path(f"{prefix}-symbol.json")


@dataclass(frozen=True)
class Layer:
    op: str  # MXNet's operator: Convolution, FullyConnected, BatchNorm, ...
    attrs: dict[str, str]


@dataclass(frozen=True)
class Symbol:
    layers: dict[str, Layer]  # by name, in graph order
    variables: frozenset[str]  # the layers' inputs: weights, aux states, data, labels
    renamed: dict[str, str]  # auto-numbered layer names as saved -> as counted from 0

    def array_name(self, key: str) -> str:
        """A `.params` name (`arg:convolution2_weight`) with its layer renamed as the symbol's are."""
        kind, colon, name = key.partition(":")
        return kind + colon + _renamed_variable(name, self.renamed) if colon else key


def read_symbol(path: str | os.PathLike) -> Symbol:
    """The layers and variables of MXNet's `-symbol.json`, auto-numbered names counted from 0.

    MXNet numbers unnamed layers per operator in its process (`convolution0`, `convolution1`, ...),
    so a network built after another in the same process starts higher; counting again in graph
    order gives the names fit.py's single network gets.
    """
    path = Path(path)
    try:
        graph = json.loads(path.read_text())
    except FileNotFoundError:
        raise MXNetImportError("no such file (MXNet's symbol, saved beside the .params)", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MXNetImportError(f"not an MXNet symbol file: {error}".splitlines()[0], path) from None
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    if not isinstance(nodes, list) or not all(isinstance(n, dict) and "op" in n and "name" in n for n in nodes):
        raise MXNetImportError("not an MXNet symbol file: no 'nodes' list of {op, name, inputs}", path)
    renamed = _auto_names_from_zero(nodes)
    layers: dict[str, Layer] = {}
    variables: set[str] = set()
    for node in nodes:
        if node["op"] == "null":
            continue
        name = renamed.get(node["name"], node["name"])
        layers[name] = Layer(node["op"], node.get("attrs") or node.get("param") or node.get("attr") or {})
        for entry in node.get("inputs", []):  # [node index, output index, version]
            source = entry[0] if isinstance(entry, list) and entry else None
            if not isinstance(source, int) or not 0 <= source < len(nodes):
                raise MXNetImportError(f"layer {node['name']!r} has an input {entry!r} that is no node", path)
            if nodes[source]["op"] == "null":
                variables.add(_renamed_variable(nodes[source]["name"], renamed))
    return Symbol(layers, frozenset(variables), renamed)


def _auto_names_from_zero(nodes: list[dict]) -> dict[str, str]:
    counts: dict[str, int] = {}
    renamed = {}
    for node in nodes:
        op = node["op"]
        if op != "null" and re.fullmatch(re.escape(op.lower()) + r"\d+", node["name"]):
            renamed[node["name"]] = f"{op.lower()}{counts.get(op, 0)}"
            counts[op] = counts.get(op, 0) + 1
    return renamed


def _renamed_variable(name: str, renamed: dict[str, str]) -> str:
    layer, separator, rest = name.rpartition("_")
    if layer in renamed:
        return renamed[layer] + separator + rest
    layer, separator, rest = name.partition("_moving_")  # aux states: NAME_moving_mean / _moving_var
    return renamed[layer] + separator + rest if separator and layer in renamed else name


# --- flow's modules <-> MXNet's names -------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    state_key: str  # flow's state_dict key
    module: Any  # the torch module it belongs to
    layer: str  # MXNet's layer name


def _name_map(model) -> tuple[dict[str, _Target], set[str], set[str]]:
    """(MXNet `arg:`/`aux:` name -> where it goes in flow, MXNet names read but not used,
    flow state keys no MXNet name maps to)."""
    from torch import nn

    from flow.models import FixedGammaBatchNorm

    targets: dict[str, _Target] = {}
    ignored: set[str] = set()
    for path, module in model.named_modules():
        layer, dot = path.replace(".", "_"), "." if path else ""
        if isinstance(module, FixedGammaBatchNorm):
            targets[f"arg:{layer}_beta"] = _Target(f"{path}{dot}beta", module, layer)
            targets[f"aux:{layer}_moving_mean"] = _Target(f"{path}{dot}norm.running_mean", module, layer)
            targets[f"aux:{layer}_moving_var"] = _Target(f"{path}{dot}norm.running_var", module, layer)
            ignored.add(f"arg:{layer}_gamma")  # fix_gamma: MXNet saves it, its forward uses 1
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            for mxnet, torch_name, kind in (("gamma", "weight", "arg"), ("beta", "bias", "arg"),
                                            ("moving_mean", "running_mean", "aux"), ("moving_var", "running_var", "aux")):
                targets[f"{kind}:{layer}_{mxnet}"] = _Target(f"{path}{dot}{torch_name}", module, layer)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            targets[f"arg:{layer}_weight"] = _Target(f"{path}{dot}weight", module, layer)
            if module.bias is not None:
                targets[f"arg:{layer}_bias"] = _Target(f"{path}{dot}bias", module, layer)
    mapped = {target.state_key for target in targets.values()}
    unmapped = {key for key in model.state_dict() if key not in mapped and not key.endswith("num_batches_tracked")}
    return targets, ignored, unmapped


def _brief(names, limit: int = 6) -> str:
    names = sorted(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _tuple(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if text is None:
        return default
    return tuple(int(part) for part in re.findall(r"-?\d+", text))


def _layer_problems(symbol: Symbol, targets: dict[str, _Target]) -> list[str]:
    """Where MXNet's layers compute something else than flow's modules with the same weights."""
    from torch import nn

    from flow.models import FixedGammaBatchNorm

    problems = []
    expected_ops = ((nn.Conv2d, "Convolution"), (nn.Linear, "FullyConnected"),
                    (nn.modules.batchnorm._BatchNorm, "BatchNorm"), (FixedGammaBatchNorm, "BatchNorm"))
    for target in {t.layer: t for t in targets.values()}.values():
        layer = symbol.layers.get(target.layer)
        if layer is None:
            continue  # its weights are missing too, which the names report
        op = next(op for kind, op in expected_ops if isinstance(target.module, kind))
        if layer.op != op:
            problems.append(f"{target.layer} is {layer.op} in MXNet, {op} in flow")
        elif op == "Convolution":
            module = target.module
            for attribute, mxnet_default in (("stride", (1,) * len(module.stride)), ("padding", (0,) * len(module.padding)),
                                             ("dilation", (1,) * len(module.dilation))):
                key = {"padding": "pad", "dilation": "dilate"}.get(attribute, attribute)
                if _tuple(layer.attrs.get(key), mxnet_default) != tuple(getattr(module, attribute)):
                    problems.append(f"{target.layer} has {key} {_tuple(layer.attrs.get(key), mxnet_default)} in MXNet, "
                                    f"{tuple(getattr(module, attribute))} in flow")
            if int(layer.attrs.get("num_group", 1)) != module.groups:
                problems.append(f"{target.layer} has num_group {layer.attrs.get('num_group')} in MXNet, {module.groups} in flow")
        elif op == "FullyConnected" and not _flag(layer, "flatten", True):
            problems.append(f"{target.layer} does not flatten its input in MXNet (flatten False); flow's does")
        elif op == "BatchNorm":
            eps = float(layer.attrs.get("eps", 1e-3))  # MXNet's BatchNorm defaults
            flow_eps = target.module.norm.eps if isinstance(target.module, FixedGammaBatchNorm) else target.module.eps
            if abs(eps - flow_eps) > 1e-9:
                problems.append(f"{target.layer} has eps {eps:g} in MXNet, {flow_eps:g} in flow")
            if isinstance(target.module, FixedGammaBatchNorm) and not _flag(layer, "fix_gamma", True):
                problems.append(f"{target.layer} learns gamma in MXNet (fix_gamma False); flow's fixes it at 1")
    return problems


def _flag(layer: Layer, key: str, default: bool) -> bool:
    """A boolean attribute as the symbol spells it (Python's True/False, or 1/0)."""
    return str(layer.attrs.get(key, default)).lower() in ("true", "1")


def _fixes_gamma(symbol: Symbol, layer: str) -> bool:
    """MXNet's BatchNorm(fix_gamma=True), its default: the forward pass uses 1, whatever gamma was saved."""
    found = symbol.layers.get(layer)
    return found is not None and found.op == "BatchNorm" and _flag(found, "fix_gamma", True)


def _num_classes(symbol: Symbol, arrays: dict, symbol_file: Path, params_file: Path) -> int:
    fully_connected = [name for name, layer in symbol.layers.items() if layer.op == "FullyConnected"]
    if not fully_connected:
        raise MXNetImportError("no FullyConnected layer: flow reads the number of classes from the last one", symbol_file)
    weight = arrays.get(f"arg:{fully_connected[-1]}_weight")
    if weight is None or weight.ndim != 2:
        raise MXNetImportError(f"no 2-d arg:{fully_connected[-1]}_weight (the last FullyConnected layer's)", params_file)
    return int(weight.shape[0])


def import_model(prefix: str, epoch: int, network: str, image_shape, num_layers: int | None = None,
                 options: dict[str, Any] | None = None):
    """(flow's `network` with MXNet's weights and BatchNorm statistics from `prefix` at `epoch`, its model spec).

    Raises MXNetImportError naming what does not match: MXNet names flow's network lacks or has
    besides, shapes that differ, layers that compute otherwise (operator, stride, pad, eps).
    """
    import numpy as np
    import torch

    from flow import checkpoints, models
    from flow.mxnet_params import read_ndarray_list

    params_file = checkpoints.params_path(prefix, epoch)
    arrays = read_ndarray_list(params_file)
    symbol_file = symbol_path(prefix)
    symbol = read_symbol(symbol_file)
    arrays = {symbol.array_name(key): value for key, value in arrays.items()}
    options = dict(options or {})
    num_classes = _num_classes(symbol, arrays, symbol_file, params_file)
    model = models.build_model(network, num_classes, tuple(image_shape), num_layers, **options)
    spec = models.model_spec(network, num_classes, tuple(image_shape), num_layers, **options)
    described = f"flow's {network}" + (f" (num_layers {num_layers})" if num_layers else "") + \
                f" for image_shape {','.join(map(str, image_shape))} and {num_classes} classes"

    not_arrays = [key for key in arrays if not key.startswith(("arg:", "aux:"))]
    if not_arrays:
        raise MXNetImportError(f"names without arg:/aux: (not a Module checkpoint?): {_brief(not_arrays)}", params_file)
    not_in_symbol = [key for key in arrays if key.partition(":")[2] not in symbol.variables]
    if not_in_symbol:
        raise MXNetImportError(f"arrays the symbol {symbol_file.name} has no variable for: {_brief(not_in_symbol)}",
                               params_file)

    targets, ignored, unmapped = _name_map(model)
    state = model.state_dict()
    missing = [key[4:] for key in targets if key not in arrays]
    extra = [key[4:] for key in arrays if key not in targets and key not in ignored]
    shapes = [f"{key[4:]} {tuple(arrays[key].shape)} in MXNet, {tuple(state[t.state_key].shape)} in flow"
              for key, t in targets.items() if key in arrays and tuple(arrays[key].shape) != tuple(state[t.state_key].shape)]
    problems = []
    if unmapped:
        problems.append(f"flow's parameters no MXNet name maps to: {_brief(unmapped)}")
    if missing:
        problems.append(f"missing from MXNet's: {_brief(missing)}")
    if extra:
        problems.append(f"not in flow's network: {_brief(extra)}")
    if shapes:
        problems.append(f"shapes differ: {_brief(shapes, 3)}")
    problems += _layer_problems(symbol, targets)
    if problems:
        raise MXNetImportError(f"does not match {described}: " + "; ".join(problems), params_file)

    for key, target in targets.items():
        values = arrays[key]
        if key.endswith("_gamma") and _fixes_gamma(symbol, target.layer):
            values = np.ones_like(values)
        state[target.state_key] = torch.as_tensor(values, dtype=state[target.state_key].dtype)
    model.load_state_dict(state)
    return model, spec


def is_mxnet_checkpoint(prefix: str, epoch: int) -> bool:
    """Whether `prefix`'s `.params` at `epoch` is MXNet's (flow's own are torch files)."""
    from flow import checkpoints
    from flow.mxnet_params import is_ndarray_list

    return is_ndarray_list(checkpoints.params_path(prefix, epoch))


def save_imported(model, spec: dict, out_prefix: str, epoch: int) -> None:
    """A flow checkpoint of `model` at `epoch`. MXNet keeps no update count or optimizer state in
    its `.params`, so `num_update` is None: a run loading it counts epoch x its epoch size updates
    as done, as fit.py does on --load-epoch, and starts its optimizer fresh."""
    from flow import checkpoints

    states = {"epoch": epoch, "num_update": None, "seed": None, "updater": None}
    checkpoints.save_checkpoint(out_prefix, epoch, model.state_dict(), states, spec)


# --- the command ----------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("prefix", help="MXNet's checkpoint prefix (PREFIX-symbol.json, PREFIX-NNNN.params)")
    parser.add_argument("epoch", type=int, help="the epoch NNNN to read")
    parser.add_argument("out_prefix", help="flow checkpoint prefix to write (checkpoint.model_prefix)")
    parser.add_argument("--network", required=True, help="flow's network of the same architecture: lenet, mlp, "
                                                         "alexnet, resnet, or package.module:factory")
    parser.add_argument("--num-layers", type=int, default=None, help="resnet's depth, as fit.py's --num-layers")
    parser.add_argument("--image-shape", required=True, help="C,H,W the model was trained on, as fit.py's --image-shape")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a network option (model.options), e.g. hidden=256 for lenet; VALUE is JSON or a string")


def _image_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise FlowError(f"--image-shape: expected C,H,W such as 3,28,28, got {text!r}") from None


def _options(pairs: list[str]) -> dict[str, Any]:
    options = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise FlowError(f"--option: expected KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def run(args) -> int:
    from flow import checkpoints

    model, spec = import_model(args.prefix, args.epoch, args.network, _image_shape(args.image_shape),
                               args.num_layers, _options(args.option))
    save_imported(model, spec, args.out_prefix, args.epoch)
    count = sum(value.numel() for value in model.state_dict().values())
    print(f"imported {checkpoints.params_path(args.prefix, args.epoch)} into flow's {args.network} "
          f"({spec['num_classes']} classes, {count:,} values): wrote {checkpoints.params_path(args.out_prefix, args.epoch)}, "
          f"{checkpoints.states_path(args.out_prefix, args.epoch)}, {checkpoints.model_json_path(args.out_prefix)}")
    return 0
