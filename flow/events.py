"""What a run tells the world: small frozen dataclasses of plain data (numbers, strings, lists).

Plain data so that msgpack writes them to the event log and a user reads them without torch.
`metrics` are lists of (name, value) pairs in the metric's own order, as MXNet's `get_name_value`.
"""

from __future__ import annotations

import dataclasses
import reprlib
import typing
from dataclasses import dataclass


@dataclass(frozen=True)
class RunStarted:
    begin_epoch: int
    num_epochs: int
    devices: list[str]
    kv_store: str
    num_parameters: int
    batches_per_epoch: int = 0  # 0 when unknown (custom data without data.num_examples, or an older log)


@dataclass(frozen=True)
class NumExamplesBelowRecords:
    """At start-up: data.num_examples is less than the training file's records, so the lr schedule's
    epochs end mid-epoch, ahead of the epochs the log shows."""

    num_examples: int
    records: int
    path: str


@dataclass(frozen=True)
class CheckpointsSkipped:
    """At start-up: resuming passed over newer checkpoints that are incomplete or damaged."""

    epoch: int  # the checkpoint resumed from
    reasons: list[str]  # one for each checkpoint passed over, newest first: "file: what is wrong"


@dataclass(frozen=True)
class CheckpointUnverified:
    """At start-up: the checkpoint loaded has no checksums (a flow from before them wrote it), so
    damage to it would go unseen."""

    path: str


@dataclass(frozen=True)
class ThreadsOversubscribed:
    """At start-up: train.torch_threads on each CPU device plus the loader's decode threads outnumber the
    cores, so the two take turns on them and training waits for data (flow/thread_budget.py)."""

    torch_threads: int
    cpu_devices: int
    decode_threads: int
    cores: int


@dataclass(frozen=True)
class LearningRateChanged:
    """A step of the lr schedule (multifactor, factor): update `num_update` is the first at `lr`."""

    num_update: int
    lr: float


@dataclass(frozen=True)
class LearningRateAdjusted:
    """At the start of a resumed run: the steps before `epoch` lowered the lr to `lr` (fit.py's line)."""

    epoch: int
    lr: float


@dataclass(frozen=True)
class BatchEnd:
    """Every `disp_batches` batches: Speedometer's figures since the last report (local metrics)."""

    epoch: int
    batch: int  # the batch just done, counting from 0 in its epoch
    samples_per_second: float
    metrics: list[tuple[str, float]]
    lr: float
    # The figures are since this batch: the last report's `batch` (0 for an epoch's first). The default
    # keeps event logs written before this field readable.
    since_batch: int = 0


@dataclass(frozen=True)
class EpochEnd:
    """A training epoch's global metrics and its time cost."""

    epoch: int
    metrics: list[tuple[str, float]]
    seconds: float
    samples: int
    batches: int
    lr: float = 0.0  # the epoch's last update's (0 in an older log)


@dataclass(frozen=True)
class Validation:
    epoch: int
    metrics: list[tuple[str, float]]
    samples: int


@dataclass(frozen=True)
class CheckpointSaved:
    epoch: int
    params_path: str
    states_path: str
    batch: int = 0  # a stopped run's mid-epoch checkpoint: batches of Epoch[epoch] done; 0: after Epoch[epoch - 1]


@dataclass(frozen=True)
class NonFiniteUpdatesSkipped:
    """At a training epoch's end, with train.skip_nonfinite: updates it skipped, their loss NaN or inf."""

    epoch: int
    skipped: int
    batches: int  # the epoch's, skipped ones included


@dataclass(frozen=True)
class BestCheckpointSaved:
    """`{model_prefix}-best.params/.states` now hold the model after `epoch`, whose validation `metric`
    is the best so far."""

    epoch: int  # epochs completed, as CheckpointSaved numbers them
    metric: str
    value: float
    params_path: str
    states_path: str


@dataclass(frozen=True)
class EarlyStopped:
    """The run stops after `epoch` (counting from 0, as the log lines): its validation `metric` has not
    improved by more than `min_delta` for `patience` epochs, since `best` at epoch `best_epoch`."""

    epoch: int
    metric: str
    best: float
    best_epoch: int
    patience: int
    min_delta: float


@dataclass(frozen=True)
class RunFinished:
    epochs: int  # epochs run (not counting those a resume skipped)
    updates: int  # optimizer updates in all, including those before a resume
    seconds: float


@dataclass(frozen=True)
class RunStopped:
    """The run stopped on request (`run.stop()`, or SIGINT/SIGTERM in `flow run`) after its current step,
    at Epoch[epoch] Batch[batch] (batch 0: at the epoch's start), its checkpoint saved there."""

    epoch: int
    batch: int
    updates: int  # optimizer updates in all, including those before a resume
    seconds: float


@dataclass(frozen=True)
class RunFailed:
    error_type: str
    message: str


@dataclass(frozen=True)
class MonitorStatistics:
    """Every train.monitor batches: MXNet Monitor's norm(x) / sqrt(x.size) of the first replica's matching
    layer outputs, gradients, parameters and buffers (flow/monitor.py), in that order."""

    batch: int  # training batches of the run so far, this one included (MXNet's Monitor.step)
    statistics: list[tuple[str, float]]


EVENT_TYPES = {cls.__name__: cls for cls in (RunStarted, NumExamplesBelowRecords, CheckpointsSkipped,
                                             CheckpointUnverified, ThreadsOversubscribed, LearningRateChanged,
                                             LearningRateAdjusted, BatchEnd, EpochEnd, Validation, CheckpointSaved,
                                             BestCheckpointSaved, EarlyStopped, RunFinished, RunStopped, RunFailed,
                                             MonitorStatistics, NonFiniteUpdatesSkipped)}


def event_to_dict(event) -> dict:
    """{"event": type name, **fields}: what the event log stores."""
    return {"event": type(event).__name__, **dataclasses.asdict(event)}


def event_from_dict(record: dict):
    """The event a dict from `event_to_dict` (or the event log) describes; pairs come back as tuples.
    A ValueError when it describes none: an unknown kind, a field missing, unknown or of the wrong type."""
    fields = dict(record)
    name = fields.pop("event", None)
    cls = EVENT_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown event {reprlib.repr(name)}")
    types = typing.get_type_hints(cls)
    for key, value in fields.items():
        if key not in types:
            raise ValueError(f"{name} has no field {reprlib.repr(key)}")
        if not _is(value, types[key]):
            raise ValueError(f"{name}.{key}: expected {types[key]}, got {reprlib.repr(value)}")
    for pairs in ("metrics", "statistics"):
        if pairs in fields:
            fields[pairs] = [tuple(pair) for pair in fields[pairs]]
    try:
        return cls(**fields)
    except TypeError as error:  # a field missing
        raise ValueError(f"{name}: {error}") from None


def _is(value, kind) -> bool:
    """Whether plain data (as msgpack reads it back) is of `kind`: int, float, str, or a list or tuple of them."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_is(item, args[0]) for item in value)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(map(_is, value, args))
    return False
