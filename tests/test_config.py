import re

import pytest

from flow.config import Config, ConfigError, config_from_dict, load_config, parse_override
from flow.metrics import METRIC_NAMES


def write(tmp_path, text):
    path = tmp_path / "train.toml"
    path.write_text(text)
    return path


def test_defaults_follow_fit_py():
    config = Config()
    assert config.data.rgb_mean == (123.68, 116.779, 103.939)
    assert config.data.data_nthreads == 4 and config.data.pad_value == 127
    assert config.train.kv_store == "local" and config.train.disp_batches == 20


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


def test_a_key_in_the_wrong_section_of_a_file_names_its_section(tmp_path):
    with pytest.raises(ConfigError, match=r"train.toml: unknown key train.batch_size; it belongs in \[data\]"):
        load_config(write(tmp_path, "[train]\nbatch_size = 64\n"))


@pytest.mark.parametrize("train, message", [
    ({"metrics": ["accuracy", "mcc"]}, f"train.metrics: unknown metric 'mcc'; valid: {', '.join(METRIC_NAMES)}"),
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
    ({"lr_mult": {"fc.*": "x"}}, "train.lr_mult: expected a non-negative number for 'fc.*', got 'x'"),
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
