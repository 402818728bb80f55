"""The networks fit.py trains, built in PyTorch; their initialization; fine-tuning; the model spec.

The built-in networks follow MXNet 1.9.1's `example/image-classification/symbols/` (mlp.py,
lenet.py, alexnet.py, resnet.py) layer for layer. Each is an `nn.Sequential` whose children carry
the names MXNet gives the same layers (`conv0`, `stage1_unit1`, `flatten0`, `fc1`, ...), so a
fine-tune `layer_before_fullc` written for MXNet (fine-tune.py's default is `flatten0`) names
the same cut here. Networks return logits; MXNet's SoftmaxOutput is applied by the loss.

`model_spec` is the plain data written to `{prefix}-model.json` (MXNet's `-symbol.json`):
enough for `build_from_spec` to rebuild the same module, fine-tune steps included.
"""

from __future__ import annotations

import importlib
import inspect
import json
import math
import re
from collections import OrderedDict
from typing import Any, Callable

import torch
from torch import nn

from flow.errors import ConfigError, FlowError
from flow.user_code import user_code_error

INITIALIZERS = ("xavier", "normal")
SPEC_VERSION = 1

# MXNet BatchNorm in resnet.py: eps 2e-5, momentum 0.9 (MXNet keeps 0.9 of the old moving
# average; torch's momentum is the weight of the new batch, so 0.1).
_BN_EPS = 2e-5
_BN_MOMENTUM = 0.1

# resnet.py's ImageNet depths: residual units per stage.
_IMAGENET_UNITS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
    269: (3, 30, 48, 8),
}

_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def build_model(name: str, num_classes: int, image_shape: tuple[int, int, int],
                num_layers: int | None = None, **kwargs: Any) -> nn.Module:
    """The network `name` (a built-in, or `package.module:factory`) for `num_classes` classes.

    `num_layers` is fit.py's `--num-layers` (resnet needs it; the others ignore it, as their
    MXNet get_symbol does). `kwargs` are network options, e.g. lenet's `hidden`.
    """
    image_shape = _checked_classes_and_shape(num_classes, image_shape)
    num_layers = num_layers or None  # the config's 0 means "not given"
    if ":" in name:
        return _from_factory(name, num_classes, image_shape, num_layers, kwargs)
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ConfigError(f"unknown network {name!r}; valid: {', '.join(BUILTIN_NETWORKS)}, "
                          f"or 'package.module:factory'")
    accepted = [p for p in inspect.signature(builder).parameters if p not in ("num_classes", "image_shape", "num_layers")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no options"
        raise ConfigError(f"network {name!r}: unknown option {', '.join(unknown)}; it takes {takes}")
    return builder(num_classes=num_classes, image_shape=image_shape, num_layers=num_layers, **kwargs)


def _checked_classes_and_shape(num_classes: int, image_shape) -> tuple[int, int, int]:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"num_classes: expected a positive integer, got {num_classes!r}")
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ConfigError(f"image_shape: expected 3 positive integers C,H,W, got {image_shape!r}")
    return shape


def _from_factory(name: str, num_classes: int, image_shape: tuple[int, int, int],
                  num_layers: int | None, options: dict[str, Any]) -> nn.Module:
    module_name, _, attribute = name.partition(":")
    try:
        factory: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"network {name!r}: cannot import {module_name}: {error}") from None
    except FlowError:  # flow's own error, met inside the user's code: already one line
        raise
    except (Exception, SystemExit) as error:  # the module's own code failed
        raise user_code_error(error, f"importing {module_name}", f"model.network {name!r}") from error
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ConfigError(f"network {name!r}: {module_name} has no {attribute}")
    if not callable(factory):
        raise ConfigError(f"network {name!r}: {attribute} is not callable")
    signature = inspect.signature(factory)
    parameters = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    standard = {"num_classes": num_classes, "image_shape": image_shape}
    if num_layers is not None:
        standard["num_layers"] = num_layers
    # fit.py hands every get_symbol the same arguments; a factory takes the ones it names.
    arguments = {k: v for k, v in standard.items() if takes_any or k in parameters}
    unknown = sorted(k for k in options if not takes_any and k not in parameters)
    if unknown:
        raise ConfigError(f"network {name!r}: the factory takes no option {', '.join(unknown)} "
                          f"(model.options); it is {attribute}{_plain_signature(factory)}")
    try:
        signature.bind(**arguments, **options)  # the factory's own signature, before it runs
        model = factory(**arguments, **options)
    except TypeError as error:
        if not _ARGUMENT_ERROR.search(str(error)):
            raise user_code_error(error, f"the network factory {name}", "building the model") from error
        passed = ", ".join(f"{key}={value!r}" for key, value in arguments.items())
        if options:
            passed += " and model.options " + ", ".join(f"{key}={value!r}" for key, value in options.items())
        raise ConfigError(
            f"model.network {name!r}: the factory refused flow's arguments ({error}): flow passed {passed} "
            f"to {attribute}{_plain_signature(factory)}; give its own arguments in model.options, or wrap it "
            f"in a factory that names the ones it takes (one with **kwargs gets all of flow's)") from error
    except FlowError:
        raise
    except (Exception, SystemExit) as error:
        raise user_code_error(error, f"the network factory {name}", "building the model") from error
    if not isinstance(model, nn.Module):
        raise ConfigError(f"network {name!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    return model


# What Python says when a call's arguments do not fit the signature, wherever in the factory it is
# (a torchvision-style factory hands its **kwargs on to a class that refuses image_shape).
_ARGUMENT_ERROR = re.compile(r"unexpected keyword argument|multiple values for|missing (\d+ |a )?required")


def _plain_signature(factory: Callable) -> str:
    """`factory`'s signature without annotations: what a user writes in model.options."""
    signature = inspect.signature(factory)
    parameters = [parameter.replace(annotation=inspect.Parameter.empty) for parameter in signature.parameters.values()]
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))


# --- the built-in networks ------------------------------------------------------------------


def _mlp(num_classes: int, image_shape: tuple[int, int, int], num_layers: int | None) -> nn.Module:
    """symbols/mlp.py: flatten, fc 128, relu, fc 64, relu, fc num_classes."""
    return nn.Sequential(OrderedDict([
        ("flatten0", nn.Flatten()),
        ("fc1", nn.Linear(math.prod(image_shape), 128)),
        ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(128, 64)),
        ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(64, num_classes)),
    ]))


def _lenet(num_classes: int, image_shape: tuple[int, int, int], num_layers: int | None,
           hidden: int = 500) -> nn.Module:
    """symbols/lenet.py: two conv 5x5 (20, 50) + tanh + max-pool 2, fc `hidden` + tanh, fc.

    MXNet's lenet has hidden=500; the REFERENCE benchmark net (conv20-conv50-fc256-fc10) is
    `hidden=256`.
    """
    if not isinstance(hidden, int) or hidden < 1:
        raise ConfigError(f"network 'lenet': hidden: expected a positive integer, got {hidden!r}")
    features = OrderedDict([
        ("convolution0", nn.Conv2d(image_shape[0], 20, kernel_size=5)),
        ("activation0", nn.Tanh()),
        ("pooling0", nn.MaxPool2d(kernel_size=2, stride=2)),
        ("convolution1", nn.Conv2d(20, 50, kernel_size=5)),
        ("activation1", nn.Tanh()),
        ("pooling1", nn.MaxPool2d(kernel_size=2, stride=2)),
        ("flatten0", nn.Flatten()),
    ])
    flat = _output_shape("lenet", nn.Sequential(features), image_shape)[1]
    return nn.Sequential(OrderedDict([
        *features.items(),
        ("fullyconnected0", nn.Linear(flat, hidden)),
        ("activation2", nn.Tanh()),
        ("fullyconnected1", nn.Linear(hidden, num_classes)),
    ]))


def _alexnet(num_classes: int, image_shape: tuple[int, int, int], num_layers: int | None) -> nn.Module:
    """symbols/alexnet.py: 5 convs with LRN after the first two, 3 max-pools, fc 4096 x2 with dropout."""

    def lrn() -> nn.Module:  # MXNet LRN(alpha=1e-4, beta=0.75, knorm=2, nsize=5), same formula
        return nn.LocalResponseNorm(size=5, alpha=0.0001, beta=0.75, k=2.0)

    features = OrderedDict([
        ("conv1", nn.Conv2d(image_shape[0], 96, kernel_size=11, stride=4)),
        ("activation0", nn.ReLU()),
        ("lrn0", lrn()),
        ("pooling0", nn.MaxPool2d(kernel_size=3, stride=2)),
        ("conv2", nn.Conv2d(96, 256, kernel_size=5, padding=2)),
        ("activation1", nn.ReLU()),
        ("lrn1", lrn()),
        ("pooling1", nn.MaxPool2d(kernel_size=3, stride=2)),
        ("conv3", nn.Conv2d(256, 384, kernel_size=3, padding=1)),
        ("activation2", nn.ReLU()),
        ("conv4", nn.Conv2d(384, 384, kernel_size=3, padding=1)),
        ("activation3", nn.ReLU()),
        ("conv5", nn.Conv2d(384, 256, kernel_size=3, padding=1)),
        ("activation4", nn.ReLU()),
        ("pooling2", nn.MaxPool2d(kernel_size=3, stride=2)),
        ("flatten0", nn.Flatten()),
    ])
    flat = _output_shape("alexnet", nn.Sequential(features), image_shape)[1]
    return nn.Sequential(OrderedDict([
        *features.items(),
        ("fc1", nn.Linear(flat, 4096)),
        ("activation5", nn.ReLU()),
        ("dropout0", nn.Dropout(0.5)),
        ("fc2", nn.Linear(4096, 4096)),
        ("activation6", nn.ReLU()),
        ("dropout1", nn.Dropout(0.5)),
        ("fc3", nn.Linear(4096, num_classes)),
    ]))


class FixedGammaBatchNorm(nn.Module):
    """MXNet's BatchNorm(fix_gamma=True) (resnet's `bn_data`): the scale is pinned to 1, only the
    shift `beta` is learned. Kept as its own parameter so that every parameter has a gradient."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM, affine=False)
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        return self.norm(data) + self.beta.view(1, -1, 1, 1)


class ResidualUnit(nn.Module):
    """resnet.py's residual_unit: pre-activation (BN, ReLU, conv) x2, or x3 as a bottleneck.

    The projection shortcut `sc` (1x1 conv) starts from the first activation, as in MXNet, and
    every stage's first unit has one even when the channel count matches (MXNet's dim_match=False).
    """

    def __init__(self, in_channels: int, num_filter: int, stride: int, dim_match: bool, bottle_neck: bool):
        super().__init__()
        if bottle_neck:
            layers = [(num_filter // 4, 1, 1), (num_filter // 4, 3, stride), (num_filter, 1, 1)]
        else:
            layers = [(num_filter, 3, stride), (num_filter, 3, 1)]
        self.depth = len(layers)
        channels = in_channels
        for index, (width, kernel, layer_stride) in enumerate(layers, start=1):
            setattr(self, f"bn{index}", nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM))
            setattr(self, f"relu{index}", nn.ReLU())
            setattr(self, f"conv{index}", nn.Conv2d(channels, width, kernel, layer_stride, padding=kernel // 2, bias=False))
            channels = width
        self.sc = None if dim_match else nn.Conv2d(in_channels, num_filter, 1, stride, bias=False)

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(data))
        shortcut = data if self.sc is None else self.sc(activated)
        body = self.conv1(activated)
        for index in range(2, self.depth + 1):
            body = getattr(self, f"conv{index}")(getattr(self, f"relu{index}")(getattr(self, f"bn{index}")(body)))
        return body + shortcut


def _resnet_layout(num_layers: int | None, height: int) -> tuple[tuple[int, ...], tuple[int, ...], bool]:
    """(units per stage, filter list, bottleneck) as resnet.py's get_symbol chooses them."""
    if num_layers is None:
        raise ConfigError("network 'resnet' needs num_layers, e.g. 20 or 56 (CIFAR-style), 18, 34 or 50 (ImageNet-style)")
    cifar_ok = ((num_layers - 2) % 9 == 0 and num_layers >= 164) or ((num_layers - 2) % 6 == 0 and 8 <= num_layers < 164)
    # MXNet takes CIFAR depths only for images up to 28 pixels high (train_cifar10.py crops 28x28);
    # flow also takes them for taller images when the depth is not an ImageNet one (resnet-20 on
    # 32x32), where MXNet raises.
    if cifar_ok and (height <= 28 or num_layers not in _IMAGENET_UNITS):
        if num_layers >= 164:
            return ((num_layers - 2) // 9,) * 3, (16, 64, 128, 256), True
        return ((num_layers - 2) // 6,) * 3, (16, 16, 32, 64), False
    if num_layers in _IMAGENET_UNITS and height > 28:
        bottle_neck = num_layers >= 50
        filters = (64, 256, 512, 1024, 2048) if bottle_neck else (64, 64, 128, 256, 512)
        return _IMAGENET_UNITS[num_layers], filters, bottle_neck
    imagenet = ", ".join(map(str, _IMAGENET_UNITS))
    raise ConfigError(f"network 'resnet': num_layers {num_layers!r} is not one resnet.py builds for images "
                      f"{height} high; valid: 6n+2 (e.g. 20, 56, 110) or 9n+2 >= 164 for CIFAR-style"
                      + (f", or {imagenet} for images over 28 high" if height > 28 else ""))


def _resnet(num_classes: int, image_shape: tuple[int, int, int], num_layers: int | None) -> nn.Module:
    """symbols/resnet.py: pre-activation ResNet (v2). CIFAR-style: 3 stages, 6n+2 layers;
    ImageNet-style: 4 stages, 18/34 basic, 50+ bottleneck. The stem is a 3x3 conv for images up
    to 32 high, else 7x7/2 + BN + ReLU + max-pool 3/2, as MXNet."""
    channels, height, _ = image_shape
    units, filters, bottle_neck = _resnet_layout(num_layers, height)
    layers: list[tuple[str, nn.Module]] = [("bn_data", FixedGammaBatchNorm(channels))]
    if height <= 32:
        layers.append(("conv0", nn.Conv2d(channels, filters[0], 3, 1, padding=1, bias=False)))
    else:
        layers += [
            ("conv0", nn.Conv2d(channels, filters[0], 7, 2, padding=3, bias=False)),
            ("bn0", nn.BatchNorm2d(filters[0], eps=_BN_EPS, momentum=_BN_MOMENTUM)),
            ("relu0", nn.ReLU()),
            ("pooling0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]
    in_channels = filters[0]
    for stage, unit_count in enumerate(units):
        for unit in range(unit_count):
            stride = 1 if stage == 0 or unit > 0 else 2
            layers.append((f"stage{stage + 1}_unit{unit + 1}",
                           ResidualUnit(in_channels, filters[stage + 1], stride, dim_match=unit > 0,
                                        bottle_neck=bottle_neck)))
            in_channels = filters[stage + 1]
    layers += [
        ("bn1", nn.BatchNorm2d(in_channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.AdaptiveAvgPool2d(1)),  # MXNet's global_pool=True
        ("flatten0", nn.Flatten()),
        ("fc1", nn.Linear(in_channels, num_classes)),
    ]
    return nn.Sequential(OrderedDict(layers))


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "alexnet": _alexnet,
    "lenet": _lenet,
    "mlp": _mlp,
    "resnet": _resnet,
}
BUILTIN_NETWORKS = tuple(_BUILDERS)


def _output_shape(network: str, module: nn.Module, image_shape: tuple[int, int, int]) -> tuple[int, ...]:
    """The shape `module` gives for one image, found by running it once (in eval mode, without
    gradients, so BatchNorm statistics are untouched)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            parameter = next(module.parameters(), None)
            device = parameter.device if parameter is not None else torch.device("cpu")
            output = module(torch.zeros(1, *image_shape, device=device))
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise ConfigError(f"network {network!r}: image_shape {image_shape} is too small for it ({first_line})") from None
    finally:
        module.train(was_training)
    return tuple(output.shape)


# --- initialization -------------------------------------------------------------------------


def default_initializer(network: str) -> str:
    """fit.py's default: Normal for alexnet ("AlexNet will not converge using Xavier"), else Xavier."""
    return "normal" if network == "alexnet" else "xavier"


def initialize(model: nn.Module, kind: str, generator: torch.Generator) -> None:
    """Fill `model`'s parameters as MXNet's initializers do, drawing only from `generator`.

    xavier: mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2), fit.py's default:
      weights ~ N(0, sqrt(2 / fan_in)), fan_in = shape[1] * prod(shape[2:]).
    normal: mx.init.Normal(sigma=0.01): weights ~ N(0, 0.01).
    Both: biases 0; normalization layers gamma 1, beta 0, moving mean 0, moving variance 1.
    Parameters of other shapes (e.g. a PReLU slope in a factory model) keep their module's own
    initialization. Values are drawn on the CPU and copied, so they do not depend on the device.
    """
    if kind not in INITIALIZERS:
        raise ConfigError(f"unknown initializer {kind!r}; valid: {', '.join(INITIALIZERS)}")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _NORM_LAYERS):
                if getattr(module, "weight", None) is not None:
                    module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
                if getattr(module, "track_running_stats", False):
                    module.reset_running_stats()
                continue
            for name, parameter in module.named_parameters(recurse=False):
                if name.endswith("weight") and parameter.dim() >= 2:
                    std = _xavier_std(parameter.shape) if kind == "xavier" else 0.01
                    values = torch.empty(parameter.shape, dtype=parameter.dtype).normal_(0.0, std, generator=generator)
                    parameter.copy_(values)
                elif name.endswith("bias") or name.endswith("beta"):
                    parameter.zero_()


def _xavier_std(shape: torch.Size) -> float:
    """mxnet.initializer.Xavier's scale for factor_type "in", magnitude 2: sqrt(magnitude / fan_in)."""
    fan_in = shape[1] * math.prod(shape[2:])
    return math.sqrt(2.0 / fan_in)


# --- fine-tuning ----------------------------------------------------------------------------


def fine_tune(model: nn.Module, num_classes: int, layer_before_fullc: str | None = None, *,
              image_shape: tuple[int, int, int] | None = None, initializer: str = "xavier",
              generator: torch.Generator | None = None) -> nn.Module:
    """`model` with a fresh classifier of `num_classes` outputs; every other parameter is kept
    (the same tensors), as fine-tune.py's get_fine_tune_model.

    Without `layer_before_fullc` the last nn.Linear is replaced in place. With it, `model` must be
    an nn.Sequential (every built-in network is): its children after that one are dropped and a
    new `fc` follows (with a flatten when the cut gives more than 2 dimensions, as MXNet's
    FullyConnected flattens); `image_shape` is then needed to size it. MXNet's script also drops
    any kept parameter whose name contains "fc"; flow keeps them all.
    The new classifier is initialized with `initializer` from `generator` (seed 0 when None).
    """
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"num_classes: expected a positive integer, got {num_classes!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if not layer_before_fullc:
        linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        if not linears:
            raise ConfigError("fine-tune: the model has no nn.Linear classifier to replace")
        path, old = linears[-1]
        classifier = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        initialize(classifier, initializer, generator)
        if not path:  # the model is the classifier itself
            return classifier
        parent_path, _, attribute = path.rpartition(".")
        setattr(model.get_submodule(parent_path), attribute, classifier)
        return model
    names = [name for name, _ in model.named_children()]
    if not isinstance(model, nn.Sequential) or layer_before_fullc not in names:
        raise ConfigError(f"fine-tune: layer_before_fullc {layer_before_fullc!r} is not a layer of the model; "
                          f"valid: {', '.join(names)}")
    if image_shape is None:
        raise ConfigError("fine-tune: image_shape is needed to size the classifier after layer_before_fullc")
    kept = list(model.named_children())[: names.index(layer_before_fullc) + 1]
    body = nn.Sequential(OrderedDict(kept)).train(model.training)
    cut_shape = _output_shape("fine-tune", body, _checked_classes_and_shape(num_classes, image_shape))
    if len(cut_shape) > 2:
        body.add_module("flatten_fc", nn.Flatten())
    classifier = nn.Linear(math.prod(cut_shape[1:]), num_classes)
    initialize(classifier, initializer, generator)
    body.add_module("fc", classifier)
    return body


# --- the model spec ({prefix}-model.json) ---------------------------------------------------


def model_spec(name: str, num_classes: int, image_shape: tuple[int, int, int],
               num_layers: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """Plain data (JSON-ready) from which `build_from_spec` rebuilds `build_model(...)`'s network."""
    _checked_classes_and_shape(num_classes, image_shape)
    spec = {
        "version": SPEC_VERSION,
        "network": name,
        "num_classes": num_classes,
        "image_shape": list(image_shape),
        "num_layers": num_layers or None,
        "options": dict(kwargs),
        "fine_tune": [],
    }
    try:
        json.dumps(spec)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"network {name!r}: its options must be plain data (numbers, strings, lists): {error}") from None
    return spec


def with_fine_tune(spec: dict[str, Any], num_classes: int, layer_before_fullc: str | None = None,
                   image_shape: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """`spec` plus one `fine_tune` step, so that the fine-tuned model can be rebuilt too."""
    step = {"num_classes": num_classes, "layer_before_fullc": layer_before_fullc or None,
            "image_shape": list(image_shape) if image_shape is not None else None}
    return {**spec, "fine_tune": [*spec.get("fine_tune", []), step]}


def spec_image_shape(spec: dict[str, Any]) -> tuple[int, ...]:
    """The C, H, W of the images the model of `spec` takes: the last fine-tune's that names one, else the network's."""
    shapes = [step["image_shape"] for step in spec.get("fine_tune", []) if step.get("image_shape") is not None]
    return tuple((shapes or [spec["image_shape"]])[-1])


def build_from_spec(spec: dict[str, Any]) -> nn.Module:
    """The module `spec` describes, freshly initialized structure only (load weights on top)."""
    missing = [key for key in ("version", "network", "num_classes", "image_shape") if key not in spec]
    if missing:
        raise ConfigError(f"model spec: missing {', '.join(missing)}")
    if spec["version"] != SPEC_VERSION:
        raise ConfigError(f"model spec: version {spec['version']!r} is not {SPEC_VERSION}, the one this flow reads")
    model = build_model(spec["network"], spec["num_classes"], tuple(spec["image_shape"]),
                        spec.get("num_layers"), **spec.get("options", {}))
    for step in spec.get("fine_tune", []):
        shape = tuple(step["image_shape"]) if step.get("image_shape") is not None else None
        model = fine_tune(model, step["num_classes"], step.get("layer_before_fullc"), image_shape=shape)
    return model
