"""The console: a run's events as MXNet fit.py's log lines, and a progress bar on a terminal.

The lines go to the `flow` logger (`flow run` points it at stderr, time first, as fit.py's
logging.basicConfig does), worded exactly as MXNet's, so that tools/parse_log.py reads them:

    Epoch[0] Batch [0-20]	Speed: 1234.56 samples/sec	accuracy=0.500000
    Epoch[0] Train-accuracy=0.612000
    Epoch[0] Time cost=12.345
    Saved checkpoint to "runs/shapes-0001.params"
    Epoch[0] Validation-accuracy=0.700000
    Batch:       1 fc1.weight                     0.0712316

and flow's own (no MXNet line says these): the best checkpoint, and why a run stopped early:

    Saved best checkpoint to "runs/shapes-best.params" (Epoch[0] accuracy=0.700000)
    Epoch[5] Early stop: accuracy has not improved by more than 0.001 for 3 epochs (best 0.700000 at Epoch[2])

`flow run` attaches it to its run; a program that embeds flow may as well (with the `flow`
logger shown, e.g. by logging.basicConfig(level=logging.INFO)). Subscribe before the block's first
await, so that RunStarted (which sizes the bar) is seen:

    async with flow.open_run(config) as run:
        await flow.log_run(run.events())
        result = await run.wait()
"""

from __future__ import annotations

import logging
import sys
from typing import AsyncIterable

from tqdm import tqdm

from flow.events import (BatchEnd, BestCheckpointSaved, CheckpointSaved, CheckpointsSkipped, CheckpointUnverified,
                         EarlyStopped, EpochEnd, LearningRateAdjusted, LearningRateChanged, MonitorStatistics,
                         NonFiniteUpdatesSkipped, NumExamplesBelowRecords, RunStarted, RunStopped,
                         ThreadsOversubscribed, Validation)
from flow.lr_schedule import adjust_line, change_line
from flow.metrics import checkpoint_line, speedometer_line, time_cost_line, train_line, validation_line
from flow.monitor import monitor_line

log = logging.getLogger("flow")


async def log_run(events: AsyncIterable, progress: bool | None = None) -> None:
    """Logs the lines of each event until the stream ends; `progress`: whether to draw a bar of each
    training epoch's batches (None: when stderr is a terminal). The bar moves at each BatchEnd."""
    show_bar = sys.stderr.isatty() if progress is None else progress
    batches_per_epoch = 0  # 0: unknown, no bar
    bar = None
    try:
        async for event in events:
            if isinstance(event, RunStarted):
                batches_per_epoch = event.batches_per_epoch
            elif isinstance(event, NumExamplesBelowRecords):
                log.warning("data.num_examples (%d) is less than the %d records of %s: the lr schedule counts "
                            "epochs of %d examples, so its epochs end mid-epoch, ahead of the epochs the log shows",
                            event.num_examples, event.records, event.path, event.num_examples)
            elif isinstance(event, CheckpointsSkipped):
                log.warning("resuming from epoch %d, the newest checkpoint that verifies; skipped: %s",
                            event.epoch, "; ".join(event.reasons))
            elif isinstance(event, CheckpointUnverified):
                log.warning("%s: no checksums to verify (written by a flow from before them); loaded as it is",
                            event.path)
            elif isinstance(event, ThreadsOversubscribed):
                log.warning("train.torch_threads (%d) on %d CPU device(s) and data.data_nthreads (%d) exceed the %d "
                            "cores this process may use: torch and the loader will take turns on them "
                            "(train.torch_threads = 0 shares them out)", event.torch_threads, event.cpu_devices,
                            event.decode_threads, event.cores)
            elif isinstance(event, LearningRateAdjusted):
                log.info(adjust_line(event.lr, event.epoch))
            elif isinstance(event, LearningRateChanged):
                _write(bar, change_line(event.num_update, event.lr))
            elif isinstance(event, BatchEnd):
                if bar is None and show_bar and batches_per_epoch:
                    bar = tqdm(total=batches_per_epoch, desc=f"epoch {event.epoch}", leave=False, unit="batch",
                               file=sys.stderr)
                if bar is not None:
                    bar.update(event.batch + 1 - bar.n)
                _write(bar, speedometer_line(event.epoch, event.since_batch, event.batch, event.samples_per_second,
                                             event.metrics))
            elif isinstance(event, EpochEnd):
                if bar is not None:
                    bar.close()
                    bar = None
                for name, value in event.metrics:
                    log.info(train_line(event.epoch, name, value))
                log.info(time_cost_line(event.epoch, event.seconds))
            elif isinstance(event, Validation):
                for name, value in event.metrics:
                    log.info(validation_line(event.epoch, name, value))
            elif isinstance(event, CheckpointSaved):  # written beside training: the next epoch's bar may be up
                _write(bar, checkpoint_line(event.params_path))
            elif isinstance(event, RunStopped):
                _write(bar, f"Stopped on request at Epoch[{event.epoch}] Batch[{event.batch}]; resume goes on from there")
            elif isinstance(event, MonitorStatistics):
                for name, value in event.statistics:
                    _write(bar, monitor_line(event.batch, name, value))
            elif isinstance(event, NonFiniteUpdatesSkipped):
                log.warning("Epoch[%d] skipped %d of its %d updates: their loss was NaN or inf (train.skip_nonfinite)",
                            event.epoch, event.skipped, event.batches)
            elif isinstance(event, BestCheckpointSaved):
                _write(bar, best_checkpoint_line(event))
            elif isinstance(event, EarlyStopped):
                log.info(early_stop_line(event))
    finally:
        if bar is not None:
            bar.close()


def best_checkpoint_line(event: BestCheckpointSaved) -> str:
    return 'Saved best checkpoint to "%s" (Epoch[%d] %s=%f)' % (event.params_path, event.epoch - 1, event.metric,
                                                              event.value)


def early_stop_line(event: EarlyStopped) -> str:
    return "Epoch[%d] Early stop: %s has not improved by more than %g for %d epochs (best %f at Epoch[%d])" % (
        event.epoch, event.metric, event.min_delta, event.patience, event.best, event.best_epoch)


def _write(bar: tqdm | None, line: str) -> None:
    """Logs `line` above the bar (which would otherwise be torn by it)."""
    if bar is not None:
        bar.clear()
    log.info(line)
    if bar is not None:
        bar.refresh()
