"""The composition root's builders: each config key lands in the actor setting that means it."""

import pytest

from flow.augment import AugmentSettings
from flow.builders import fit_settings, loader_settings, updater_settings
from flow.config import config_from_dict
from flow.errors import ConfigError
from flow.optim import UpdaterSettings


def test_loader_settings_train_and_val():
    config = config_from_dict({"data": {
        "data_train": "/data/train.rec", "data_val": "/data/val.rec", "image_shape": "3,32,32", "aug_level": 3,
        "resize": 36, "pad_size": 2, "num_parts": 2, "part_index": 1, "last_batch": "discard", "batch_size": 64,
        "data_nthreads": 3, "layout": "uint8_nhwc"}})
    train = loader_settings(config.data, "train", seed=9, devices=("cpu",))
    assert (train.path, train.shuffle, train.num_parts, train.part_index, train.last_batch) == (
        "/data/train.rec", True, 2, 1, "discard")
    assert (train.data_shape, train.batch_size, train.nthreads, train.layout, train.seed) == (
        (3, 32, 32), 64, 3, "uint8_nhwc", 9)
    assert train.augment == AugmentSettings(resize=36, rand_crop=True, rand_mirror=True, max_random_h=36,
                                            max_random_s=50, max_random_l=50, max_aspect_ratio=0.25,
                                            max_rotate_angle=10, max_shear_ratio=0.1, pad=2, fill_value=127)
    val = loader_settings(config.data, "val", seed=9, devices=("cpu",))
    assert (val.path, val.shuffle, val.num_parts, val.part_index, val.last_batch) == (
        "/data/val.rec", False, 1, 0, "pad")
    assert val.augment == AugmentSettings(resize=36) and not val.augment.random
    with pytest.raises(ConfigError, match="data.data_val"):
        loader_settings(config_from_dict({"data": {"data_train": "/t.rec"}}).data, "val", seed=0, devices=("cpu",))
    with pytest.raises(ConfigError, match="3 channels"):
        loader_settings(config_from_dict({"data": {"data_train": "/t.rec", "image_shape": "1,28,28"}}).data,
                        "train", seed=0, devices=("cpu",))


def test_loader_settings_imagenet_augmentation():
    config = config_from_dict({"data": {
        "data_train": "/data/train.rec", "random_resized_crop": True, "min_random_area": 0.08,
        "min_random_aspect_ratio": 0.75, "max_random_aspect_ratio": 1.3333, "brightness": 0.4, "contrast": 0.3,
        "saturation": 0.2, "pca_noise": 0.1, "inter_method": 9, "min_crop_size": 0, "max_img_size": 300.0,
        "min_img_size": 10.0}})
    augment = loader_settings(config.data, "train", seed=0, devices=("cpu",)).augment
    assert augment == AugmentSettings(random_resized_crop=True, min_random_area=0.08, min_aspect_ratio=0.75,
                                      max_aspect_ratio=1.3333, brightness=0.4, contrast=0.3, saturation=0.2,
                                      pca_noise=0.1, inter_method=9, max_img_size=300.0, min_img_size=10.0)
    assert augment.rrc and augment.random and augment.reshapes
    full_decode = config_from_dict({"data": {"data_train": "/t.rec", "data_val": "/v.rec", "dct_scaling": False}}).data
    assert not loader_settings(full_decode, "train", seed=0, devices=("cpu",)).augment.dct_scaling
    assert not loader_settings(full_decode, "val", seed=0, devices=("cpu",)).augment.dct_scaling


@pytest.mark.parametrize("devices, layout, expected", [
    (("cpu",), "auto", ("float32_nchw", False)),
    (("cuda:0",), "auto", ("uint8_nhwc", True)),
    (("cpu", "cuda"), "auto", ("uint8_nhwc", True)),
    (("cuda:0", "cuda:1"), "float32_nchw", ("float32_nchw", True)),
    (("cpu",), "uint8_nhwc", ("uint8_nhwc", False)),
])
def test_a_gpu_gets_pinned_batches_and_auto_layout_uint8_for_it(devices, layout, expected):
    config = config_from_dict({"data": {"data_train": "/t.rec", "data_val": "/v.rec", "layout": layout},
                               "train": {"devices": list(devices)}})
    for split in ("train", "val"):
        settings = loader_settings(config.data, split, seed=0, devices=config.train.devices)
        assert (settings.layout, settings.pin_memory) == expected


def test_the_fit_loop_sizes_its_steps_ahead_by_the_resolved_layout():
    def steps_ahead(layout, devices):
        config = config_from_dict({"data": {"image_shape": [3, 224, 224], "batch_size": 64, "layout": layout},
                                   "train": {"devices": devices}})
        return fit_settings(config, server=False, begin_epoch=0, begin_update=0, num_parameters=1, schedule=None,
                            model_spec=None, batches_per_epoch=1).steps_in_flight

    assert steps_ahead("auto", ["cuda:0"]) == steps_ahead("uint8_nhwc", ["cuda:0"])
    assert steps_ahead("auto", ["cpu"]) == steps_ahead("float32_nchw", ["cpu"])
    assert steps_ahead("auto", ["cuda:0"]) > steps_ahead("auto", ["cpu"])  # a quarter of the bytes a batch


def test_updater_settings_name_fit_py_s_flags():
    train = config_from_dict({"train": {"optimizer": "torch_sgd", "lr": 0.5, "mom": 0.8, "nesterov": True, "wd": 0.01,
                                        "clip_gradient": 2.0}}).train
    assert updater_settings(train) == UpdaterSettings(optimizer="torch_sgd", lr=0.5, momentum=0.8, nesterov=True,
                                                      weight_decay=0.01, clip_gradient=2.0)
    train = config_from_dict({"train": {"optimizer": "rmsprop", "centered": True, "lr_mult": {"fc.*": 10},
                                        "wd_mult": {"*.bias": 1}}}).train
    settings = updater_settings(train)
    assert (settings.optimizer, settings.centered) == ("rmsprop", True)
    assert (settings.lr_mult, settings.wd_mult) == ({"fc.*": 10}, {"*.bias": 1})
