import contextlib
import dataclasses
import io
import json
import math
import os
import re
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flow.cli import main
from flow.config import (SECTIONS, Config, ConfigError, batch_layout, config_from_dict, load_config, parse_override,
                         uses_cuda)
from flow.metrics import METRIC_NAMES
from tests.fixtures import fuzz_examples, small_image_rec


def write(tmp_path, text):
    path = tmp_path / "train.toml"
    path.write_text(text)
    return path


def test_defaults_follow_fit_py():
    config = Config()
    assert config.data.rgb_mean == (123.68, 116.779, 103.939)
    assert config.data.data_nthreads == 4 and config.data.pad_value == 127
    assert config.train.kv_store == "local" and config.train.disp_batches == 20
    assert config.data.layout == "auto"


def test_auto_layout_is_uint8_for_a_gpu_and_float32_for_the_cpu():
    assert uses_cuda(("cpu", "cuda:1")) and uses_cuda(("cuda",)) and not uses_cuda(("cpu", "cpu"))
    assert batch_layout("auto", ("cuda:0",)) == "uint8_nhwc" and batch_layout("auto", ("cpu",)) == "float32_nchw"
    assert batch_layout("float32_nchw", ("cuda:0",)) == "float32_nchw"
    assert batch_layout("uint8_nhwc", ("cpu",)) == "uint8_nhwc"
    with pytest.raises(ConfigError, match="data.layout: expected one of 'auto', 'float32_nchw', 'uint8_nhwc'"):
        config_from_dict({"data": {"layout": "nchw"}})


def test_the_batch_memory_check_counts_the_resolved_layout_s_bytes():
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    image_shape = [3, 1024, 1024]
    batch_size = memory // (2 * math.prod(image_shape))  # half the memory as uint8, twice it as float32
    data = {"batch_size": batch_size, "image_shape": image_shape}
    assert config_from_dict({"data": data, "train": {"devices": ["cuda:0"]}}).data.layout == "auto"
    for devices, layout in ((["cpu"], "auto"), (["cuda:0"], "float32_nchw")):
        with pytest.raises(ConfigError, match="more than this machine's memory"):
            config_from_dict({"data": {**data, "layout": layout}, "train": {"devices": devices}})


def test_load_converts_types_and_resolves_paths_beside_the_file(tmp_path):
    path = write(tmp_path, '[data]\ndata_train = "data/train.rec"\nimage_shape = "3,32,32"\n[train]\nlr = 1\n'
                           'lr_step_epochs = [2, 4]\ndevices = ["cpu", "cpu"]\n')
    config = load_config(path)
    assert config.data.data_train == str(tmp_path / "data" / "train.rec")
    assert config.data.image_shape == (3, 32, 32)
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.train.lr_step_epochs == (2, 4)
    assert config.train.devices == ("cpu", "cpu")


def test_overrides_win_over_the_file(tmp_path):
    path = write(tmp_path, "[train]\nlr = 0.1\n")
    config = load_config(path, ["train.lr=0.01", "train.optimizer=adam", "data.image_shape=[3,8,8]"])
    assert config.train.lr == 0.01 and config.train.optimizer == "adam" and config.data.image_shape == (3, 8, 8)
    assert parse_override("model.network=resnet") == ("model", "network", "resnet")


def test_an_aug_level_past_the_last_is_refused_at_once():
    with pytest.raises(ConfigError, match="data.aug_level"):
        config_from_dict({"data": {"aug_level": 10**12}})  # not a loop up to it first


def test_aug_level_fills_only_unset_knobs():
    config = config_from_dict({"data": {"aug_level": 3, "max_random_h": 10}})
    assert config.data.random_crop and config.data.random_mirror
    assert config.data.max_random_h == 10 and config.data.max_random_s == 50
    assert config.data.max_random_rotate_angle == 10 and config.data.max_random_aspect_ratio == 0.25


@pytest.mark.parametrize("raw, message", [
    ({"train": {"lrr": 0.1}}, r"train.toml: unknown key train.lrr; did you mean train.lr\?"),
    ({"trian": {}}, r"unknown section \[trian\]; did you mean train\?"),
    ({"train": {"lr": "fast"}}, r"train.lr: expected a float, got str 'fast'"),
    ({"train": {"num_epochs": True}}, r"train.num_epochs: expected an integer, got bool True"),
    ({"train": {"lr": -1}}, r"train.lr: expected a positive float, got -1.0"),
    ({"data": {"last_batch": "keep"}}, r"data.last_batch: expected one of 'pad', 'discard', 'roll_over', got 'keep'"),
    ({"data": {"image_shape": [3, 0, 8]}}, r"data.image_shape: expected 3 positive integers C,H,W"),
    ({"data": {"num_parts": 2, "part_index": 2}}, r"data.part_index: expected an integer below data.num_parts"),
    ({"train": {"batch_size": 64}}, r"unknown key train.batch_size; it belongs in \[data\]: data.batch_size$"),
    ({"data": {"lr": 0.1}}, r"unknown key data.lr; it belongs in \[train\]: train.lr$"),
    ({"train": {"lr": float("inf")}}, r"train.lr: expected a finite float, got inf"),
    ({"train": {"wd": float("inf")}}, r"train.wd: expected a finite float, got inf"),
    ({"train": {"mom": float("nan")}}, r"train.mom: expected a finite float, got nan"),
    ({"train": {"clip_gradient": float("inf")}}, r"train.clip_gradient: expected a finite float, got inf"),
    ({"data": {"rgb_mean": [float("nan"), 0, 0]}}, r"data.rgb_mean: expected a finite float, got nan"),
    ({"data": {"rgb_std": [float("inf"), 1, 1]}}, r"data.rgb_std: expected a finite float, got inf"),
    ({"data": {"rgb_std": [1, 0, 1]}}, r"data.rgb_std: expected 3 positive floats, got \(1.0, 0.0, 1.0\)"),
    ({"data": {"rgb_std": "1,-1,1"}}, r"data.rgb_std: expected 3 positive floats"),
    ({"data": {"batch_size": 10**12}}, r"data.batch_size: expected a positive integer, at most 2\*\*24, got 1000000000000"),
    ({"data": {"batch_size": 2**24, "image_shape": [3, 60000, 60000]}},
     r"data.batch_size: a batch of 16777216 images of \(3, 60000, 60000\) is .* GiB, more than this machine's memory"),
    ({"data": {"num_classes": 2**40}}, r"data.num_classes: expected a positive integer, at most 2\*\*24"),
    ({"data": {"data_nthreads": 10**6}}, r"data.data_nthreads: expected a positive integer, at most 1024"),
    ({"data": {"max_image_pixels": 0}}, r"data.max_image_pixels: expected a positive integer, got 0"),
    ({"data": {"random_resized_crop": True, "aug_level": 1}}, r"data.random_resized_crop: conflicts with data.random_crop"),
    ({"data": {"random_resized_crop": True, "max_random_scale": 1.2}},
     r"data.random_resized_crop: conflicts with data.max_random_scale"),
    ({"data": {"min_random_area": 0.5, "max_random_area": 0.4}}, r"data.min_random_area: expected at most"),
    ({"data": {"min_random_aspect_ratio": 1.5, "max_random_aspect_ratio": 1.2}},
     r"data.min_random_aspect_ratio: expected at most data.max_random_aspect_ratio \(1.2\)"),
    ({"data": {"max_crop_size": 30}}, r"data.min_crop_size: expected a positive integer at most"),
    ({"data": {"inter_method": 5}}, r"data.inter_method: expected 0-4, 9 or 10"),
    ({"data": {"brightness": 1.5}}, r"data.brightness: expected a float in \[0, 1\]"),
])
def test_bad_config_says_which_key_and_what_is_expected(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw, source="train.toml")


def test_bad_override_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("lr=0.1")
    with pytest.raises(ConfigError, match="train.toml: not valid TOML"):
        load_config(write(tmp_path, "[train\n"))
    with pytest.raises(ConfigError, match="missing.toml: no such file"):
        load_config(tmp_path / "missing.toml")


def test_a_config_path_that_is_no_readable_utf8_file_is_one_line(tmp_path):
    path = tmp_path / "train.toml"
    path.write_bytes(b'[train]\nlr = 0.1 # caf\xe9\n')
    with pytest.raises(ConfigError, match=r"train.toml: at byte 22: not UTF-8 text \(TOML is UTF-8\): byte 0xe9"):
        load_config(path)
    with pytest.raises(ConfigError, match=rf"{tmp_path}: is a folder, not a config file"):
        load_config(tmp_path)


def test_a_key_in_the_wrong_section_of_a_file_names_its_section(tmp_path):
    with pytest.raises(ConfigError, match=r"train.toml: unknown key train.batch_size; it belongs in \[data\]"):
        load_config(write(tmp_path, "[train]\nbatch_size = 64\n"))


@pytest.mark.parametrize("train, message", [
    ({"metrics": ["accuracy", "pcc"]}, f"train.metrics: unknown metric 'pcc'; valid: {', '.join(METRIC_NAMES)}"),
    ({"top_k": 1}, "train.top_k: top_k_accuracy needs top_k >= 2 (0: no top-k metric; top-1 is accuracy), got 1"),
    ({"metrics": ["top_k_accuracy"]}, "train.top_k: top_k_accuracy needs top_k >= 2"),
])
def test_metrics_the_run_cannot_serve_fail_on_load(train, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        config_from_dict({"train": train}, source="train.toml")
    assert "\n" not in str(caught.value)


def test_metrics_as_fit_py_names_them_load():
    config = config_from_dict({"train": {"metrics": ["ACC", "top_k_acc", "ce"], "top_k": 5}})
    assert config.train.metrics == ("ACC", "top_k_acc", "ce") and config.train.top_k == 5


@pytest.mark.parametrize("train, message", [
    ({"optimizer": "sgdd"}, "train.optimizer: expected one of sgd, nag, adam, rmsprop, adagrad, adadelta, "
                            "torch_sgd, torch_adam, got 'sgdd'"),
    ({"nesterov": True}, "train.nesterov: is torch_sgd's; MXNet's Nesterov momentum is train.optimizer = \"nag\""),
    ({"optimizer": "torch_adam", "wd_mult": {"*.bias": 0}}, "train.wd_mult: is for MXNet's optimizers"),
    ({"lr_mult": {"fc.*": "x"}}, "train.lr_mult: expected a finite non-negative number for 'fc.*', got 'x'"),
    ({"lr_step_epochs": "powx"}, "train.lr_step_epochs: expected epochs or fit.py's 'powN', got 'powx'"),
    ({"lr_step_epochs": "pow2", "lr_schedule": "cosine"}, "train.lr_step_epochs: 'pow2' is the pow schedule"),
])
def test_optimizer_keys_that_do_not_go_together_fail_on_load(train, message):
    with pytest.raises(ConfigError, match=re.escape(f"train.toml: {message}")):
        config_from_dict({"train": train}, source="train.toml")


def test_fit_py_s_pow_steps_are_the_pow_schedule(tmp_path):
    config = load_config(write(tmp_path, "[train]\nlr = 0.1\n"), ["train.lr_step_epochs=pow2.5"])
    assert (config.train.lr_schedule, config.train.lr_pwr, config.train.lr_step_epochs) == ("pow", 2.5, ())
    assert config_from_dict({"train": {"lr_step_epochs": "30,60"}}).train.lr_step_epochs == (30, 60)


# --------------------------------------------------------------------------- fuzzing through `flow run`

FIELDS = [(section, field.name) for section, cls in SECTIONS.items() for field in dataclasses.fields(cls)
          # not this part's: devices and kv_store need hardware or torchrun; checkpoints are another's;
          # the loggers' files would go wherever a fuzzed path points.
          if field.name not in ("devices", "kv_store", "load_epoch", "pretrained_prefix", "pretrained_epoch",
                                "model_prefix", "data_train", "data_train_idx", "data_val", "data_val_idx",
                                "csv_file", "tensorboard_dir")]
SCALARS = (st.integers(-2**63, 2**63 - 1) | st.sampled_from([0, 1, 2, 3, -1, 2**24, 2**31, 10**12])
           | st.floats() | st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.5, 2.5, 1e30])
           | st.booleans() | st.text(max_size=12) | st.sampled_from(["mlp", "lenet", "cosine", "pad", "adam", "acc"]))
VALUES = SCALARS | st.lists(SCALARS, max_size=4) | st.dictionaries(st.text(max_size=5), SCALARS, max_size=2)
SMALL_INTS = st.integers(-2, 70) | st.sampled_from([0, 1, 2**24 + 1, 2**31, 2**63 - 1])
FLOATS = st.floats(-2, 300) | st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e30, 1e-30])
OF_TYPE = {int: SMALL_INTS, float: FLOATS, bool: st.booleans(), str: st.text(max_size=8), dict: st.just({})}


def field_and_value(field_name: tuple[str, str]):
    """A field and a value for it: half the time of the field's own type (or the choices it takes),
    so that runs get past type checks into what the values do."""
    section, key = field_name
    kind = typing.get_type_hints(SECTIONS[section])[key]
    field = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == key)
    if field.metadata["choices"]:
        typed = st.sampled_from(field.metadata["choices"])
    elif typing.get_origin(kind) is tuple:
        typed = st.lists(OF_TYPE[typing.get_args(kind)[0]], max_size=4)
    else:
        typed = OF_TYPE[kind]
    return st.tuples(st.just(field_name), typed | VALUES)


CHANGES = st.lists(st.sampled_from(FIELDS).flatmap(field_and_value), min_size=1, max_size=3)
# --set values as typed on a command line: anything after the `=`, or no `section.key=` at all
RAW_SETS = st.lists(st.tuples(st.sampled_from(FIELDS), st.text(max_size=12)).map(lambda c: f"{c[0][0]}.{c[0][1]}={c[1]}")
                    | st.text(max_size=12), max_size=1)
# What a valid value may cost at most, so that one run of the fuzz stays well under a second.
CHEAP = {("train", "num_epochs"): 2, ("data", "batch_size"): 64, ("data", "data_nthreads"): 4,
         ("data", "prefetch"): 8, ("data", "resize"): 128, ("data", "pad_size"): 64, ("model", "num_layers"): 0,
         ("data", "num_parts"): 64, ("train", "top_k"): 10, ("train", "torch_threads"): 4}


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # not ensure_ascii's surrogate pairs: TOML refuses those
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(key, ensure_ascii=False)} = {toml_value(item)}" for key, item in value.items()) + "}"
    return str(value)


def write_toml(path: Path, tables: dict) -> Path:
    path.write_text("".join(f"[{section}]\n" + "".join(f"{key} = {toml_value(value)}\n" for key, value in values.items())
                            for section, values in tables.items()))
    return path


# One epoch of the mlp over 6 MXNet records: well under a second when the fuzzed values let it run.
FUZZ_BASE = {"data": {"data_train": "small.rec", "image_shape": [3, 32, 32], "num_classes": 10, "batch_size": 4,
                      "data_nthreads": 1},
             "model": {"network": "mlp"}, "train": {"num_epochs": 1, "disp_batches": 1},
             "checkpoint": {"model_prefix": "model"}}


@settings(max_examples=fuzz_examples(20), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(CHANGES, st.booleans(), RAW_SETS)
def test_flow_run_on_fuzzed_values_exits_with_a_line_never_a_traceback(tmp_path_factory, changes, in_file, raw_sets):
    """`flow run`, in this process, with fuzzed values in train.toml or as --set overrides (and raw
    --set text): exit 0 or 1, and stderr never holds a traceback (FLOW_FUZZ_EXAMPLES for more runs)."""
    folder = tmp_path_factory.mktemp("fuzz")
    small_image_rec(folder)
    tables = {section: dict(values) for section, values in FUZZ_BASE.items()}
    sets = [f"--set={text}" for text in raw_sets]
    for (section, key), value in changes:
        if in_file:
            tables.setdefault(section, {})[key] = value
        else:
            sets.append(f"--set={section}.{key}={toml_value(value)}")
    path = write_toml(folder / "train.toml", tables)
    try:
        config = load_config(path, [text.removeprefix("--set=") for text in sets])
    except ConfigError:
        config = None
    if config is not None:  # a valid value may be a costly one: not for a test that runs every few seconds
        for (section, key), bound in CHEAP.items():
            assume(getattr(getattr(config, section), key) <= bound)
        assume(math.prod(config.data.image_shape) <= 3 * 64 * 64 and config.model.network in ("mlp", "lenet"))
        assume(config.data.max_random_scale <= 4 and config.data.min_random_scale >= 0.1)
    error = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(error):
        code = main(["run", str(path), *sets])
    assert code in (0, 1) and "Traceback" not in error.getvalue(), error.getvalue()
    assert code == 0 or error.getvalue().rstrip().splitlines()[-1].startswith("flow run: error: ")
