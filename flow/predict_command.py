"""Predict each record of a .rec with a checkpoint: `flow predict train.toml --load-epoch N --data FILE.rec -o preds.npy`.

Writes one row a record, in the file's order: its IRHeader id and the class probabilities, or
with `--top-k K` the K most probable classes, best first, with their probabilities. `-o` ends in
`.npy` (a structured array: np.load(path)["id"], ["probabilities"] or ["classes"], ["scores"]) or
`.csv` (a header row, then `id,p0,p1,...` or `id,class1,score1,...`). The records are read as
validation reads them (data.image_shape, data.resize, data.rgb_mean/rgb_std, no augmentation),
a batch (data.batch_size) at a time, and written as they come, so the file may be larger than
memory; it appears once complete. `flow.predict(config, data, epoch)` is the same from Python.
"""

from __future__ import annotations

import argparse
import logging

# unknown_option_hint is for the CLI, which asks each command's module for one.
from flow.run_command import add_override_arguments, unknown_option_hint  # noqa: F401

# The keys predicting reads besides [data] (--top-k here is the output's, not the metric's).
READS = ("checkpoint.model_prefix", "checkpoint.load_epoch", "train.devices")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = ("%(prog)s [-h] [--debug] --load-epoch N --data FILE.rec -o OUT.npy|OUT.csv [--top-k K] "
                    "[--set SECTION.KEY=VALUE] [fit.py's flags] config")
    parser.add_argument("config", help="the train.toml of the run that wrote the checkpoint")
    parser.add_argument("--data", required=True, metavar="FILE.rec", help="the records to predict")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.npy|OUT.csv", help="where to write the predictions")
    parser.add_argument("--top-k", type=int, default=0, metavar="K",
                        help="write the K most probable classes and their probabilities (0: every probability)")
    add_override_arguments(parser, reads=lambda key: (key.startswith("data.") and key not in IGNORED) or key in READS)


# fit.py's flags for the training and validation files: --data names the file here.
IGNORED = ("data.data_train", "data.data_val")


def run(args: argparse.Namespace) -> int:
    from flow.cli import interrupts_deferred

    with interrupts_deferred():  # torch imports here: Ctrl-C must not land inside its C++ initialization
        import trio

        from flow.config import load_config
        from flow.run_command import configure_logging

    config = load_config(args.config, args.set)
    configure_logging()
    rows = trio.run(write_predictions, config, args.data, args.output, args.top_k,
                    restrict_keyboard_interrupt_to_checkpoints=True)
    logging.getLogger("flow").info("Wrote %d predictions to \"%s\"", rows, args.output)
    return 0


async def write_predictions(config, data: str, output: str, top_k: int = 0) -> int:
    """Predicts the records of `data` with checkpoint.load_epoch's checkpoint into `output` (.npy or
    .csv, `top_k` as --top-k); returns the rows written."""
    from flow.inference import predict
    from flow.prediction_files import PredictionWriter

    with PredictionWriter(output, top_k) as writer:  # a bad name fails before the model loads
        async with predict(config, data) as batches:
            async for ids, probabilities in batches:
                writer.write(ids, probabilities)
    return writer.written
