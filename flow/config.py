"""`train.toml`: one section per component, each key a knob that component reads.

Keys use fit.py's names where fit.py has one. Every section is a frozen dataclass; the types and
ranges written beside each field are checked on load, so a bad value fails before anything runs,
with one line naming the file, the key, the value and what was expected. Relative paths are taken
relative to the config file, so a config runs the same from any working directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from flow.errors import ConfigError


def knob(default: Any, expect: str | None = None, check: Callable[[Any], bool] | None = None,
         choices: tuple[str, ...] | None = None, path: bool = False) -> Any:
    """A config field: its default, and what a valid value is (checked on load)."""
    metadata = {"expect": expect, "check": check, "choices": choices, "path": path}
    if isinstance(default, dict):  # mutable: every config gets its own copy
        return field(default_factory=lambda: dict(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _positive(value) -> bool:
    return value > 0


def _non_negative(value) -> bool:
    return value >= 0


def _is_regex(value) -> bool:
    try:
        re.compile(value)
    except re.error:
        return False
    return True


def _fraction(value) -> bool:
    return 0 <= value <= 1


@dataclass(frozen=True)
class DataConfig:
    """What the loader reads: the record files and how batches are made (fit.py's data.py knobs)."""

    data_train: str = knob("", path=True)
    data_train_idx: str = knob("", path=True)  # empty: the .idx beside data_train, or scan when none
    data_val: str = knob("", path=True)
    data_val_idx: str = knob("", path=True)
    image_shape: tuple[int, ...] = knob((3, 224, 224), "3 positive integers C,H,W, H and W at most 65535 (JPEG's)",
                                        lambda v: len(v) == 3 and all(0 < d < 2**16 for d in v))
    num_classes: int = knob(1000, "a positive integer, at most 2**24", lambda v: 0 < v <= 2**24)
    num_examples: int = knob(0, "a non-negative integer (0: count the records)", _non_negative)
    batch_size: int = knob(128, "a positive integer, at most 2**24", lambda v: 0 < v <= 2**24)
    data_nthreads: int = knob(4, "a positive integer, at most 1024", lambda v: 0 < v <= 1024)
    prefetch: int = knob(2, "a positive integer, at most 1024", lambda v: 0 < v <= 1024)
    shuffle: bool = knob(True)
    num_parts: int = knob(1, "a positive integer", _positive)
    part_index: int = knob(0, "a non-negative integer below num_parts", _non_negative)
    last_batch: str = knob("pad", choices=("pad", "discard", "roll_over"))
    pad_value: int = knob(127, "0-255", lambda v: 0 <= v <= 255)  # fill for pad_size borders (data.py)
    # auto: uint8_nhwc when one of train.devices is a GPU, else float32_nchw (see batch_layout)
    layout: str = knob("auto", choices=("auto", "float32_nchw", "uint8_nhwc"))
    label_width: int = knob(1, "a positive integer", _positive)
    skip_bad_records: bool = knob(False)
    benchmark: bool = knob(False)  # synthetic random batches: time compute without IO (data.py)
    rgb_mean: tuple[float, ...] = knob((123.68, 116.779, 103.939), "3 floats", lambda v: len(v) == 3)
    rgb_std: tuple[float, ...] = knob((1.0, 1.0, 1.0), "3 positive floats",
                                      lambda v: len(v) == 3 and all(s > 0 for s in v))
    max_image_pixels: int = knob(8192 * 8192, "a positive integer", _positive)  # larger images are bad records
    # Augmentation, as ImageRecordIter and data.py; aug_level 1-3 fills the knobs not set explicitly.
    aug_level: int = knob(0, "0, 1, 2 or 3", lambda v: 0 <= v <= 3)
    resize: int = knob(0, "a non-negative integer (0: no resize)", _non_negative)
    pad_size: int = knob(0, "a non-negative integer", _non_negative)
    random_crop: bool = knob(False)
    random_mirror: bool = knob(False)
    max_random_h: int = knob(0, "0-180", lambda v: 0 <= v <= 180)
    max_random_s: int = knob(0, "0-255", lambda v: 0 <= v <= 255)
    max_random_l: int = knob(0, "0-255", lambda v: 0 <= v <= 255)
    max_random_aspect_ratio: float = knob(0.0, "a non-negative float", _non_negative)
    max_random_rotate_angle: int = knob(0, "0-360", lambda v: 0 <= v <= 360)
    max_random_shear_ratio: float = knob(0.0, "a non-negative float", _non_negative)
    min_random_scale: float = knob(1.0, "a positive float", _positive)
    max_random_scale: float = knob(1.0, "a positive float", _positive)
    min_random_aspect_ratio: float = knob(0.0, "a non-negative float (0: unset, aspect 1 +- max_random_aspect_ratio)",
                                          _non_negative)
    random_resized_crop: bool = knob(False)
    min_random_area: float = knob(1.0, "a float in (0, 1]", lambda v: 0 < v <= 1)
    max_random_area: float = knob(1.0, "a float in (0, 1]", lambda v: 0 < v <= 1)
    min_crop_size: int = knob(0, "a non-negative integer (0: off)", _non_negative)
    max_crop_size: int = knob(0, "a non-negative integer (0: off)", _non_negative)
    max_img_size: float = knob(0.0, "a non-negative float (0: no limit)", _non_negative)
    min_img_size: float = knob(0.0, "a non-negative float", _non_negative)
    brightness: float = knob(0.0, "a float in [0, 1]", _fraction)
    contrast: float = knob(0.0, "a float in [0, 1]", _fraction)
    saturation: float = knob(0.0, "a float in [0, 1]", _fraction)
    pca_noise: float = knob(0.0, "a non-negative float", _non_negative)
    inter_method: int = knob(1, "0-4, 9 or 10 (nearest, bilinear, cubic, area, lanczos, auto, random)",
                             lambda v: v in (0, 1, 2, 3, 4, 9, 10))
    # A JPEG that the resize or crop window then shrinks 2x or 4x is decoded at 1/2 or 1/4 size (DCT scaling).
    dct_scaling: bool = knob(True)

    @staticmethod
    def implied(values: dict) -> dict:
        """The augmentation knobs an `aug_level` turns on (data.py's set_data_aug_level)."""
        level = values.get("aug_level", 0)
        # (a level past the last is refused by the knob's check after this: no loop up to it meanwhile)
        steps = range(1, min(level, max(AUG_LEVELS)) + 1) if isinstance(level, int) else ()
        return {key: value for step in steps for key, value in AUG_LEVELS.get(step, {}).items()}


# data.py's set_data_aug_level: what each level turns on.
AUG_LEVELS = {
    1: {"random_crop": True, "random_mirror": True},
    2: {"max_random_h": 36, "max_random_s": 50, "max_random_l": 50},
    3: {"max_random_rotate_angle": 10, "max_random_shear_ratio": 0.1, "max_random_aspect_ratio": 0.25},
}


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build (fit.py's `network`, `num_layers`) and how to initialize it."""

    network: str = knob("lenet", "a built-in name or 'package.module:factory'", lambda v: bool(v))
    num_layers: int = knob(0, "a non-negative integer", _non_negative)
    initializer: str = knob("auto", choices=("auto", "xavier", "normal"))
    pretrained_prefix: str = knob("", path=True)  # fine-tune: checkpoint to start from
    pretrained_epoch: int = knob(0, "a non-negative integer", _non_negative)
    layer_before_fullc: str = knob("")  # fine-tune: module name the new classifier goes after
    options: dict = knob({})  # the network's own keyword arguments, e.g. { hidden = 256 } for lenet


@dataclass(frozen=True)
class TrainConfig:
    """The fit loop, the kvstore and its optimizer (fit.py's `num_epochs`, `lr`, `kv_store`...)."""

    num_epochs: int = knob(10, "a positive integer", _positive)
    devices: tuple[str, ...] = knob(("cpu",), "a list of devices like 'cpu' or 'cuda:0'", lambda v: len(v) > 0)
    kv_store: str = knob("local", choices=("local", "device", "dist_sync", "dist_device_sync"))
    optimizer: str = knob("sgd")  # flow.optim.OPTIMIZERS, checked with the keys it goes with
    lr: float = knob(0.1, "a positive float", _positive)
    lr_mult: dict = knob({})  # glob pattern of parameter names -> lr multiplier, e.g. { "fc.*" = 10 }
    wd_mult: dict = knob({})  # likewise for weight decay, over MXNet's rule (only *weight, *gamma decay)
    lr_schedule: str = knob("multifactor", choices=("multifactor", "factor", "pow", "cosine"))
    lr_factor: float = knob(0.1, "a float in (0, 1]", lambda v: 0 < v <= 1)
    lr_step_epochs: tuple[int, ...] = knob((), "a list of positive epochs", lambda v: all(e > 0 for e in v))
    lr_factor_epochs: int = knob(1, "a positive integer", _positive)  # factor: lr times lr_factor every this many
    lr_pwr: float = knob(2.0, "a positive float", _positive)  # pow: PolyScheduler's power
    warmup_epochs: float = knob(0.0, "a non-negative float", _non_negative)
    warmup_begin_lr: float = knob(0.0, "a non-negative float", _non_negative)
    warmup_mode: str = knob("linear", choices=("linear", "constant"))
    mom: float = knob(0.9, "a float in [0, 1]", _fraction)
    nesterov: bool = knob(False)
    centered: bool = knob(False)  # rmsprop: MXNet's centered variant
    wd: float = knob(0.0001, "a non-negative float", _non_negative)
    clip_gradient: float = knob(0.0, "a non-negative float (0: no clipping)", _non_negative)
    precision: str = knob("fp32", choices=("fp32", "bf16", "fp16"))
    channels_last: bool = knob(False)  # the model and its inputs in channels_last (NHWC) memory: faster GPU convs
    compile: bool = knob(False)  # torch.compile each replica's model: faster steps after a first one that compiles
    cudnn_benchmark: bool = knob(True)  # cuDNN times its convolution algorithms for each new shape (MXNet's autotune)
    # torch's intra-op threads in each device's compute thread (0: the cores data.data_nthreads leave,
    # shared among the CPU devices, at most torch's own count; flow/thread_budget.py)
    torch_threads: int = knob(0, "a non-negative integer, at most 1024 (0: the thread budget's)",
                              lambda v: 0 <= v <= 1024)
    metrics: tuple[str, ...] = knob(("accuracy",), "a list of metric names", lambda v: len(v) > 0)
    top_k: int = knob(0, "a non-negative integer", _non_negative)
    disp_batches: int = knob(20, "a positive integer", _positive)
    monitor: int = knob(0, "a non-negative integer (0: off)", _non_negative)  # MXNet's Monitor every N batches
    monitor_pattern: str = knob(".*", "a regular expression", _is_regex)  # the names it watches (re.match)
    seed: int = knob(0, "a non-negative integer", _non_negative)
    skip_nonfinite: bool = knob(False)  # a NaN/inf loss skips that update (counted) instead of ending the run
    dist_timeout: float = knob(300.0, "a positive number of seconds", _positive)  # dist_*: wait for a peer this long
    # Stop once the validation metric (checkpoint.best_metric, or the first metric) has not improved by
    # more than early_stop_min_delta for this many epochs (0: never stop early).
    early_stop_patience: int = knob(0, "a non-negative integer (0: no early stopping)", _non_negative)
    early_stop_min_delta: float = knob(0.0, "a non-negative float", _non_negative)

    @staticmethod
    def fit_py_forms(values: dict, source) -> dict:
        """fit.py's `--lr-step-epochs pow2` (PolyScheduler of power 2) as flow's lr_schedule = "pow", lr_pwr = 2."""
        steps = values.get("lr_step_epochs")
        if not (isinstance(steps, str) and "pow" in steps):
            return values
        try:
            power = float(re.sub("pow[- ]*", "", steps))  # as fit.py reads it
        except ValueError:
            raise ConfigError(f"train.lr_step_epochs: expected epochs or fit.py's 'powN', got {steps!r}", source) from None
        if values.get("lr_schedule", "pow") != "pow":
            raise ConfigError(f"train.lr_step_epochs: {steps!r} is the pow schedule, "
                              f"but train.lr_schedule is {values['lr_schedule']!r}", source)
        return {**values, "lr_step_epochs": [], "lr_schedule": "pow", "lr_pwr": power}


@dataclass(frozen=True)
class CheckpointConfig:
    """Where and how often to save, and what to resume from (fit.py's `model_prefix`, `load_epoch`)."""

    model_prefix: str = knob("", path=True)  # empty: no checkpoints
    period: int = knob(1, "a positive integer", _positive)
    keep: int = knob(0, "a non-negative integer (0: keep all)", _non_negative)
    load_epoch: int = knob(0, "a non-negative integer (0: start fresh)", _non_negative)
    resume: bool = knob(False)  # go on from the newest checkpoint that verifies (flow run --resume); load_epoch unused
    best_metric: str = knob("")  # a validation metric: {model_prefix}-best holds its best epoch (empty: none)


@dataclass(frozen=True)
class LogConfig:
    """Where the loggers (subscribers of the run's events) write; empty: that logger is off."""

    tensorboard_dir: str = knob("", path=True)  # TensorBoard scalars (pip install 'flow-fit[tensorboard]')
    csv_file: str = knob("", path=True)  # one row per epoch


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)


SECTIONS: dict[str, type] = typing.get_type_hints(Config)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config in `path`, with `section.key=value` overrides (values in TOML syntax) on top."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError("no such file", path) from None
    except IsADirectoryError:
        raise ConfigError("is a folder, not a config file", path) from None
    except OSError as error:
        raise ConfigError(f"cannot read: {error.strerror}", path) from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"not UTF-8 text (TOML is UTF-8): byte 0x{error.object[error.start]:02x}", path,
                          error.start) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"not valid TOML: {error}", path) from None
    for override in overrides:
        section, key, value = parse_override(override)
        raw.setdefault(section, {})[key] = value
    return config_from_dict(raw, source=path, base_dir=path.parent)


def parse_override(override: str) -> tuple[str, str, Any]:
    """`train.lr=0.01` -> ("train", "lr", 0.01); a value that is not TOML is taken as a string."""
    name, separator, text = override.partition("=")
    section, dot, key = name.strip().partition(".")
    if not separator or not dot or not key:
        raise ConfigError(f"override {override!r}: expected section.key=value, e.g. train.lr=0.01")
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        value = text
    return section, key, value


def config_from_dict(raw: dict, source: str | Path | None = None, base_dir: Path | None = None) -> Config:
    """A checked `Config` from plain data (as `tomllib` gives); `base_dir` anchors relative paths."""
    sections = {}
    for section_name, values in raw.items():
        if section_name not in SECTIONS:
            raise ConfigError(f"unknown section [{section_name}]{_did_you_mean(section_name, SECTIONS)}", source)
        if not isinstance(values, dict):
            raise ConfigError(f"[{section_name}] must be a table of keys", source)
        sections[section_name] = _section(section_name, SECTIONS[section_name], values, source, base_dir)
    config = Config(**sections)
    if config.data.part_index >= config.data.num_parts:
        raise ConfigError(
            f"data.part_index: expected an integer below data.num_parts ({config.data.num_parts}), "
            f"got {config.data.part_index}", source)
    _check_metrics(config.train, source)
    _check_best_metric(config, source)
    _check_batch_memory(config.data, config.train.devices, source)
    _check_optimizer(config.train, source)
    _check_crops(config.data, source)
    return config


def _check_crops(data: DataConfig, source) -> None:
    """What ImageRecordIter's CHECKs refuse, refused on load: random_resized_crop beside the other crops
    and scales, and ranges upside down."""
    if data.random_resized_crop:
        clashes = [name for name, on in (("random_crop", data.random_crop),
                                         ("min_random_scale", data.min_random_scale != 1.0),
                                         ("max_random_scale", data.max_random_scale != 1.0),
                                         ("min_crop_size", bool(data.min_crop_size)),
                                         ("max_crop_size", bool(data.max_crop_size))) if on]
        if clashes:
            raise ConfigError(f"data.random_resized_crop: conflicts with data.{clashes[0]} (as MXNet's; "
                              f"aug_level >= 1 sets random_crop: set data.random_crop = false)", source)
    if data.min_random_area > data.max_random_area:
        raise ConfigError(f"data.min_random_area: expected at most data.max_random_area ({data.max_random_area}), "
                          f"got {data.min_random_area}", source)
    if data.min_random_aspect_ratio and data.min_random_aspect_ratio > data.max_random_aspect_ratio:
        raise ConfigError(f"data.min_random_aspect_ratio: expected at most data.max_random_aspect_ratio "
                          f"({data.max_random_aspect_ratio}), got {data.min_random_aspect_ratio}", source)
    if (data.min_crop_size or data.max_crop_size) and not 0 < data.min_crop_size <= data.max_crop_size:
        raise ConfigError(f"data.min_crop_size: expected a positive integer at most data.max_crop_size "
                          f"({data.max_crop_size}), got {data.min_crop_size}", source)


def uses_cuda(devices: tuple[str, ...]) -> bool:
    """Whether one of train.devices is a CUDA GPU ('cuda' or 'cuda:N')."""
    return any(device.partition(":")[0] == "cuda" for device in devices)


def batch_layout(layout: str, devices: tuple[str, ...]) -> str:
    """data.layout with "auto" settled by train.devices: uint8 NHWC for a GPU (a quarter of the bytes
    to copy in; the device normalizes and mirrors it), else float32 NCHW (the loader's threads
    normalize it, beside the CPU's compute)."""
    if layout != "auto":
        return layout
    return "uint8_nhwc" if uses_cuda(devices) else "float32_nchw"


def batch_bytes(data: DataConfig, devices: tuple[str, ...]) -> int:
    """The bytes of one batch as the loader hands it (its layout settled by `devices`)."""
    sample_bytes = 4 if batch_layout(data.layout, devices) == "float32_nchw" else 1
    return data.batch_size * math.prod(data.image_shape) * sample_bytes


def _check_batch_memory(data: DataConfig, devices: tuple[str, ...], source) -> None:
    """A batch larger than the machine's memory fails now, in one line, not as a MemoryError mid-start."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return  # the system does not say
    size = batch_bytes(data, devices)
    if size > memory:
        raise ConfigError(f"data.batch_size: a batch of {data.batch_size} images of {data.image_shape} is "
                          f"{size / 2**30:.3g} GiB, more than this machine's memory "
                          f"({memory / 2**30:.3g} GiB)", source)


def _check_optimizer(train: TrainConfig, source) -> None:
    """What the updater would refuse, refused now (flow.optim holds the names and rules)."""
    from flow.optim import optimizer_problem  # here: flow.optim imports torch

    problem = optimizer_problem(train.optimizer, train.nesterov, train.lr_mult, train.wd_mult)
    if problem:
        key, why = problem
        raise ConfigError(f"train.{key}: {why}", source)


def _check_metrics(train: TrainConfig, source) -> None:
    """What the metrics actor would refuse, refused now (flow.metrics holds the names and rules)."""
    from flow.metrics import metric_arguments_problem  # here: flow.metrics imports torch

    problem = metric_arguments_problem(train.metrics, train.top_k)
    if problem:
        argument, why = problem
        raise ConfigError(f"train.{argument}: {why}", source)


def _check_best_metric(config: Config, source) -> None:
    """checkpoint.best_metric must be one of the metrics validation reports (flow.metric_watch knows
    which way each one improves)."""
    if not config.checkpoint.best_metric:
        return
    from flow.metric_watch import watched_metric  # here: flow.metrics imports torch

    try:
        watched_metric(config.train.metrics, config.train.top_k, config.checkpoint.best_metric)
    except ConfigError as error:
        raise ConfigError(f"checkpoint.best_metric: {error.message}", source) from None


def sections_with_key(key: str) -> list[str]:
    """The sections that have a key named `key` (to point a misplaced key at its section)."""
    return [name for name, cls in SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]


def _section(section_name: str, cls: type, values: dict, source, base_dir: Path | None):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    types = typing.get_type_hints(cls)
    values = dict(values)
    if hasattr(cls, "fit_py_forms"):
        values = cls.fit_py_forms(values, source)  # fit.py's spellings of a setting, in flow's keys
    if hasattr(cls, "implied"):
        values = {**cls.implied(values), **values}  # what a key implies, unless set explicitly
    checked = {}
    for key, value in values.items():
        name = f"{section_name}.{key}"
        if key not in fields:
            homes = sections_with_key(key)
            hint = (f"; it belongs in [{homes[0]}]: {homes[0]}.{key}" if homes
                    else _did_you_mean(key, fields, section_name + "."))
            raise ConfigError(f"unknown key {name}{hint}", source)
        value = _convert(name, value, types[key], source)
        meta = fields[key].metadata
        if meta["choices"] and value not in meta["choices"]:
            raise ConfigError(f"{name}: expected one of {', '.join(map(repr, meta['choices']))}, got {value!r}", source)
        if meta["check"] and not meta["check"](value):
            raise ConfigError(f"{name}: expected {meta['expect']}, got {value!r}", source)
        if meta["path"] and value and base_dir is not None:
            value = value if Path(value).is_absolute() else os.path.normpath(base_dir / value)
        checked[key] = value
    return cls(**checked)


def _convert(name: str, value: Any, kind: Any, source) -> Any:
    """`value` as `kind` (int, float, bool, str, dict or tuple of one of them), or a ConfigError saying why not."""
    if typing.get_origin(kind) is tuple:
        item_kind = typing.get_args(kind)[0]
        if isinstance(value, str):  # fit.py style: image_shape = "3,224,224"
            value = [item.strip() for item in value.split(",") if item.strip()]
            value = [_from_string(name, item, item_kind, source) for item in value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list of {item_kind.__name__}, got {value!r}", source)
        return tuple(_convert(name, item, item_kind, source) for item in value)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        # No knob means anything by inf or nan; and an lr of inf or an rgb_mean of nan trains to NaN.
        if not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite float, got {value!r}", source)
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{name}: expected {_article(kind)}, got {type(value).__name__} {value!r}", source)


def _from_string(name: str, text: str, kind: type, source) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{name}: expected a list of {kind.__name__}, got item {text!r}", source) from None


def _article(kind: type) -> str:
    return {int: "an integer", float: "a float", bool: "a boolean (true/false)", str: "a string",
            dict: "a table such as { key = value }"}[kind]


def _did_you_mean(key: str, valid, prefix: str = "") -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean {prefix}{close[0]}?" if close else f"; valid: {', '.join(sorted(valid))}"
