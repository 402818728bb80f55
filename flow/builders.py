"""The config turned into each actor's frozen settings: the one place that reads the config for them.

`flow run` and the API (flow/run.py, which connects the actors) and `flow test-io`
(flow/io_speed.py) build their actors from these, so that no actor depends on the config.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import AsyncIterable, Awaitable, Callable

import torch

from flow import thread_budget
from flow.actors.checkpoint import CheckpointSettings
from flow.actors.compute import ComputeSettings
from flow.actors.loader import LoaderSettings
from flow.actors.metrics import MetricSettings
from flow.actors.param_server import ServerSettings
from flow.augment import AugmentSettings
from flow.config import (CheckpointConfig, Config, DataConfig, LogConfig, TrainConfig, batch_bytes, batch_layout,
                         uses_cuda)
from flow.csv_log import log_csv
from flow.errors import ConfigError
from flow.events import ThreadsOversubscribed
from flow.fit import FitSettings, steps_in_flight
from flow.metric_watch import WatchSettings, watched_metric
from flow.optim import UpdaterSettings
from flow.tensorboard_log import log_tensorboard


def loader_settings(data: DataConfig, split: str, seed: int, devices: tuple[str, ...]) -> LoaderSettings:
    """The loader for `split` ("train" or "val"), as data.py builds ImageRecordIter, feeding `devices`
    (train.devices): for a GPU, uint8 batches (with data.layout = "auto") in pinned memory.

    Validation is read in file order, whole (`last_batch` = pad), with no random crop, mirror,
    colour or affine augmentation and no padding, and not sharded: replace num_parts /
    part_index on the result to shard it.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    train = split == "train"
    path = data.data_train if train else data.data_val
    if not path and not data.benchmark:
        raise ConfigError(f"data.data_{split}: no record file given")
    if train:
        augmentation = AugmentSettings(
            resize=data.resize, rand_crop=data.random_crop, rand_mirror=data.random_mirror,
            max_random_h=data.max_random_h, max_random_s=data.max_random_s, max_random_l=data.max_random_l,
            max_aspect_ratio=data.max_random_aspect_ratio, max_rotate_angle=data.max_random_rotate_angle,
            max_shear_ratio=data.max_random_shear_ratio, min_random_scale=data.min_random_scale,
            max_random_scale=data.max_random_scale, pad=data.pad_size, fill_value=data.pad_value,
            min_aspect_ratio=data.min_random_aspect_ratio, random_resized_crop=data.random_resized_crop,
            min_random_area=data.min_random_area, max_random_area=data.max_random_area,
            min_crop_size=data.min_crop_size, max_crop_size=data.max_crop_size, max_img_size=data.max_img_size,
            min_img_size=data.min_img_size, brightness=data.brightness, contrast=data.contrast,
            saturation=data.saturation, pca_noise=data.pca_noise, inter_method=data.inter_method,
            dct_scaling=data.dct_scaling)
    else:  # data.py's val iterator
        augmentation = AugmentSettings(resize=data.resize, fill_value=data.pad_value, dct_scaling=data.dct_scaling)
    return LoaderSettings(
        path=path, index_path=data.data_train_idx if train else data.data_val_idx,
        data_shape=tuple(data.image_shape), batch_size=data.batch_size, nthreads=data.data_nthreads,
        prefetch=data.prefetch, shuffle=data.shuffle and train,
        num_parts=data.num_parts if train else 1, part_index=data.part_index if train else 0,
        last_batch=data.last_batch if train else "pad", layout=batch_layout(data.layout, devices),
        pin_memory=uses_cuda(devices), label_width=data.label_width,
        skip_bad_records=data.skip_bad_records, mean=tuple(data.rgb_mean), std=tuple(data.rgb_std),
        augment=augmentation, seed=seed, benchmark=data.benchmark, num_classes=data.num_classes,
        num_examples=data.num_examples, max_image_pixels=data.max_image_pixels)


def updater_settings(train: TrainConfig) -> UpdaterSettings:
    return UpdaterSettings(optimizer=train.optimizer, lr=train.lr, momentum=train.mom, nesterov=train.nesterov,
                           weight_decay=train.wd, clip_gradient=train.clip_gradient, lr_mult=train.lr_mult,
                           wd_mult=train.wd_mult, centered=train.centered,
                           loss_scaling=train.precision == "fp16")


def compute_settings(config: Config, replica: int, decode_threads: int | None = None) -> ComputeSettings:
    """`decode_threads`: the loader's, beside the devices (None: data.data_nthreads, as `loader_threads` says
    for a run that reads records)."""
    train, data = config.train, config.data
    if decode_threads is None:
        decode_threads = loader_threads(config, reads_records=True)
    return ComputeSettings(train.devices[replica], replica, train.precision, train.seed, data.rgb_mean, data.rgb_std,
                           train.metrics, train.top_k, train.monitor, train.monitor_pattern, train.skip_nonfinite,
                           train.channels_last, train.compile, torch_threads(config, decode_threads),
                           train.cudnn_benchmark)


def loader_threads(config: Config, reads_records: bool) -> int:
    """The decode threads that work beside the devices: data.data_nthreads when a loader reads records
    (none for the caller's own batches or data.benchmark's synthetic ones)."""
    return config.data.data_nthreads if reads_records and not config.data.benchmark else 0


def cpu_devices(train: TrainConfig) -> int:
    return sum(torch.device(name).type == "cpu" for name in train.devices)


def torch_threads(config: Config, decode_threads: int) -> int:
    """train.torch_threads, or when 0 the thread budget's: each CPU device's share of the cores the decode
    threads leave, at most the count torch has in this (the caller's) thread."""
    train = config.train
    if train.torch_threads:
        return train.torch_threads
    return thread_budget.torch_threads(thread_budget.usable_cores(), decode_threads, cpu_devices(train),
                                       torch.get_num_threads())


def thread_warnings(config: Config, decode_threads: int) -> list[ThreadsOversubscribed]:
    """A configured train.torch_threads that, beside the decode threads, outnumbers the cores: said at the
    start (the budget's own choice never does; decode threads alone may)."""
    train = config.train
    cores, devices = thread_budget.usable_cores(), cpu_devices(train)
    if devices and train.torch_threads and thread_budget.oversubscribed(train.torch_threads, devices,
                                                                        decode_threads, cores):
        return [ThreadsOversubscribed(train.torch_threads, devices, decode_threads, cores)]
    return []


def server_settings(train: TrainConfig) -> ServerSettings:
    return ServerSettings(train.kv_store, train.devices)


def metric_settings(config: Config) -> MetricSettings:
    train = config.train
    return MetricSettings(train.metrics, train.top_k, config.data.batch_size, train.disp_batches)


def checkpoint_settings(saving: CheckpointConfig) -> CheckpointSettings:
    return CheckpointSettings(saving.model_prefix, saving.keep)


def watch_settings(config: Config, resumed: dict | None) -> WatchSettings | None:
    """The fit loop's watch of the validation metric, when a best checkpoint or early stopping asks for one;
    `resumed`: the watches' states in the checkpoint the run resumes."""
    train, saving = config.train, config.checkpoint
    if not saving.best_metric and not train.early_stop_patience:
        return None
    metric, mode = watched_metric(train.metrics, train.top_k, saving.best_metric)
    return WatchSettings(metric, mode, bool(saving.best_metric), train.early_stop_patience,
                         train.early_stop_min_delta, resumed)


def fit_settings(config: Config, *, server: bool, begin_epoch: int, begin_update: int, num_parameters: int,
                 schedule, model_spec: dict | None, batches_per_epoch: int, begin_batch: int = 0,
                 watch: WatchSettings | None = None) -> FitSettings:
    """The fit loop's, where the run starts (`begin_*`, from the checkpoint it resumes) and what it trains;
    `server`: a parameter server updates the weights (several devices or processes)."""
    train, data = config.train, config.data
    return FitSettings(begin_epoch, train.num_epochs, train.devices, train.kv_store, config.checkpoint.period,
                       train.seed, begin_update, num_parameters, schedule, model_spec, batches_per_epoch,
                       steps_in_flight(server, batch_bytes(data, train.devices)), begin_batch, watch,
                       train.disp_batches)


def loggers(log: LogConfig) -> list[Callable[[AsyncIterable], Awaitable[None]]]:
    """The loggers [log] turns on, each an async function of the run's events (a subscription)."""
    chosen = []
    if log.csv_file:
        chosen.append(functools.partial(log_csv, path=log.csv_file))
    if log.tensorboard_dir:
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("log.tensorboard_dir: needs the tensorboard package: pip install 'flow-fit[tensorboard]'")
        chosen.append(functools.partial(log_tensorboard, log_dir=log.tensorboard_dir))
    return chosen
