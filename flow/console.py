"""The console: a run's events as MXNet fit.py's log lines, and a progress bar on a terminal.

The lines go to the `flow` logger (`flow run` points it at stderr, time first, as fit.py's
logging.basicConfig does), worded exactly as MXNet's, so that tools/parse_log.py reads them:

    Epoch[0] Batch [0-20]	Speed: 1234.56 samples/sec	accuracy=0.500000
    Epoch[0] Train-accuracy=0.612000
    Epoch[0] Time cost=12.345
    Saved checkpoint to "runs/shapes-0001.params"
    Epoch[0] Validation-accuracy=0.700000

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

from flow.events import (BatchEnd, CheckpointSaved, CheckpointsSkipped, CheckpointUnverified, EpochEnd,
                         LearningRateAdjusted, LearningRateChanged, NumExamplesBelowRecords, RunStarted, RunStopped,
                         Validation)
from flow.lr_schedule import adjust_line, change_line
from flow.metrics import checkpoint_line, speedometer_line, time_cost_line, train_line, validation_line

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
    finally:
        if bar is not None:
            bar.close()


def _write(bar: tqdm | None, line: str) -> None:
    """Logs `line` above the bar (which would otherwise be torn by it)."""
    if bar is not None:
        bar.clear()
    log.info(line)
    if bar is not None:
        bar.refresh()
