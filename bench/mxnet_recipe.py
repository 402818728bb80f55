"""fit.py's recipe side by side: LeNet on the bundled example data, flow against MXNet's Module.fit.

Issue 12's last acceptance line: with fit.py's defaults (sgd, momentum 0.9, wd 1e-4, lr steps)
flow must train the bundled example (examples/train.toml: the shapes data, 10 classes, 32x32,
batch 64, 4 epochs) to the same validation accuracy band as MXNet does on the same `.rec` files.
For each seed, each framework trains once, each in a fresh process (flow, then MXNet, then the
next seed), and the table gives each run's final validation accuracy and cross-entropy, then each
framework's band (min-max, mean) over the seeds and whether the bands overlap.

Usage (from the repository root, with the project venv):

    .venv/bin/python bench/mxnet_recipe.py --mxnet-python /work/mxnet-venv/bin/python
    .venv/bin/python bench/mxnet_recipe.py --mxnet-python /work/mxnet-venv/bin/python --same-start
    .venv/bin/python bench/mxnet_recipe.py --seeds 0,1,2,3,4,5,6,7 --lr 0.1 --lr-step-epochs 2,3
    .venv/bin/python bench/mxnet_recipe.py --aug-level 1 --log-dir /tmp/recipe-logs

MXNet lives in its own venv (1.9.1 needs numpy 1.23, which torch's venv cannot have); without
--mxnet-python, or when that interpreter cannot import mxnet, MXNet is skipped with a line
saying how to add it:

    python3.11 -m venv V && V/bin/pip install mxnet==1.9.1 numpy==1.23.5

(ImageRecordIter lives inside libmxnet: no OpenCV wheel is needed.)

The runs:
  flow   `python -m flow run examples/train.toml` with --set overrides: network lenet,
         initializer xavier, optimizer sgd, --lr, --mom, --wd, schedule multifactor at
         --lr-step-epochs times --lr-factor, --aug-level, train.seed = the seed, and no
         checkpoints (checkpoint.model_prefix = ""). Everything else (data, mean/std, batch,
         epochs, decode threads) is the example's own.
  mxnet  a Module.fit script written to a temporary file and run with --mxnet-python: the
         symbol of MXNet's symbols/lenet.py (conv 5x5 20, tanh, max-pool 2/2, conv 5x5 50, tanh,
         max-pool 2/2, flatten, fc 500, tanh, fc 10, SoftmaxOutput), which is flow's "lenet"
         layer for layer; ImageRecordIter as data.py builds it on the example's .rec/.idx files
         with the example's mean and std (train: shuffle, rand_crop and rand_mirror = aug level
         >= 1, round_batch; validation: no crop, mirror or shuffle, round_batch = False);
         mx.random.seed, np.random.seed and the train iterator's seed = the seed;
         Xavier(gaussian, in, 2) as fit.py; sgd with the same lr, momentum, wd and a
         MultiFactorScheduler at epoch_size * step epochs (fit.py's epoch_size =
         ceil(num_examples / batch_size)); eval_metric acc + ce; a Speedometer every
         train.disp_batches batches; each epoch's validation by an epoch_end_callback (below).

What is compared, and what differs by construction:
  - Each run's last `Epoch[N] Validation-accuracy=` and `Validation-cross-entropy=` lines: both
    over the 500 validation records exactly once. flow leaves a batch's pad rows out of its
    metrics. MXNet's own Module.score does not: under data.py's round_batch = False, MXNet 1.9.1's
    ImageRecordIter returns a last batch of 64 rows, 52 records and 12 rows left from earlier,
    with pad = 0; their labels are stale or NaN, and a NaN makes the ce metric raise IndexError
    (seen in the second epoch's score). So the MXNet script scores in an epoch_end_callback with
    Module.score's loop (forward is_train=False, MXNet's own acc and ce metric classes) over the
    first 500 rows, and logs Module.score's lines itself.
  - The initial weights are the same distribution (Xavier gaussian, factor in, magnitude 2,
    biases 0) drawn from different generators, and the data orders differ: same seed does not
    mean the same run, which is why bands over seeds are compared, not single runs.
  - flow's last training batch (2000 = 31 x 64 + 16) is padded, and its update is the gradient
    averaged over its 16 real rows; MXNet fills it with 48 records of the next epoch (round_batch)
    and averages over all 64.

--same-start takes both differences out for one epoch: MXNet draws its Xavier weights and saves
them (as epoch 1), flow imports them (`flow import-mxnet`) and resumes from them (`--load-epoch
1`); both read the training records in file order, unaugmented. Every batch of that epoch but
the last is then the same in both, and the Speedometer windows over those batches (on the
example: [0-10], [10-20], [20-30] of 32 batches) must agree to float rounding; the epoch's
Train- and Validation- figures differ by what the last batch does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "train.toml"
RUN_TIMEOUT_S = 900  # a hung run fails its row instead of stalling the whole bench
HOW_TO_ADD_MXNET = ("python3.11 -m venv V && V/bin/pip install mxnet==1.9.1 numpy==1.23.5; "
                    "then --mxnet-python V/bin/python")
VALIDATION_LINE = re.compile(r"Epoch\[(\d+)\] Validation-([\w-]+)=(\S+)")
EPOCH_LINE = re.compile(r"Epoch\[(\d+)\] (Train|Validation)-accuracy=(\S+)")
SPEEDOMETER_LINE = re.compile(r"Epoch\[(\d+)\] Batch \[(\d+-\d+)\]\tSpeed: \S+ samples/sec\t(.*)")

MXNET_SCRIPT = r'''
import json, logging, math, sys

import mxnet as mx
import numpy as np

s = json.loads(sys.argv[1])
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
mx.random.seed(s["seed"])
np.random.seed(s["seed"])


def lenet(num_classes):
    """MXNet's example/image-classification/symbols/lenet.py."""
    data = mx.sym.Variable("data")
    conv1 = mx.sym.Convolution(data=data, kernel=(5, 5), num_filter=20)
    tanh1 = mx.sym.Activation(data=conv1, act_type="tanh")
    pool1 = mx.sym.Pooling(data=tanh1, pool_type="max", kernel=(2, 2), stride=(2, 2))
    conv2 = mx.sym.Convolution(data=pool1, kernel=(5, 5), num_filter=50)
    tanh2 = mx.sym.Activation(data=conv2, act_type="tanh")
    pool2 = mx.sym.Pooling(data=tanh2, pool_type="max", kernel=(2, 2), stride=(2, 2))
    flatten = mx.sym.Flatten(data=pool2)
    fc1 = mx.sym.FullyConnected(data=flatten, num_hidden=500)
    tanh3 = mx.sym.Activation(data=fc1, act_type="tanh")
    fc2 = mx.sym.FullyConnected(data=tanh3, num_hidden=num_classes)
    return mx.sym.SoftmaxOutput(data=fc2, name="softmax")


common = dict(label_width=1, data_name="data", label_name="softmax_label", data_shape=tuple(s["image_shape"]),
              batch_size=s["batch_size"], preprocess_threads=s["threads"],
              mean_r=s["mean"][0], mean_g=s["mean"][1], mean_b=s["mean"][2],
              std_r=s["std"][0], std_g=s["std"][1], std_b=s["std"][2])
augment = s["aug_level"] >= 1
train = mx.io.ImageRecordIter(path_imgrec=s["train_rec"], path_imgidx=s["train_idx"], shuffle=s["shuffle"],
                              rand_crop=augment, rand_mirror=augment, seed=s["seed"], **common)
val = mx.io.ImageRecordIter(path_imgrec=s["val_rec"], path_imgidx=s["val_idx"], rand_crop=False,
                            rand_mirror=False, round_batch=False, **common)

epoch_size = math.ceil(s["num_examples"] / s["batch_size"])  # fit.py's get_epoch_size, one worker
steps = [epoch_size * epoch for epoch in s["lr_step_epochs"] if epoch > 0]
optimizer_params = {"learning_rate": s["lr"], "momentum": s["mom"], "wd": s["wd"]}
if steps:
    optimizer_params["lr_scheduler"] = mx.lr_scheduler.MultiFactorScheduler(step=steps, factor=s["lr_factor"])
module = mx.mod.Module(lenet(s["num_classes"]), context=mx.cpu())
initializer = mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2)
if s["init_prefix"]:  # --same-start: the initial weights, for flow to start from (fit keeps them)
    module.bind(data_shapes=train.provide_data, label_shapes=train.provide_label)
    module.init_params(initializer)
    module.save_checkpoint(s["init_prefix"], 1)


def validate(epoch, symbol, arg_params, aux_params):
    """Module.score's loop and log lines over the validation records only: the last batch's rows
    past them are trimmed by count (this ImageRecordIter reports pad 0 for them; Module.score
    would count them, and their labels are stale or NaN, which makes the ce metric raise)."""
    metric = mx.metric.create(["acc", "ce"])
    val.reset()
    seen = 0
    for batch in val:
        module.forward(batch, is_train=False)
        real = min(batch.data[0].shape[0], s["val_examples"] - seen)
        seen += real
        metric.update([batch.label[0][:real]], [module.get_outputs()[0][:real]])
    for name, value in metric.get_name_value():
        logging.info("Epoch[%d] Validation-%s=%f", epoch, name, value)


module.fit(train, eval_metric=mx.metric.create(["acc", "ce"]), kvstore="local",
           optimizer="sgd", optimizer_params=optimizer_params,
           initializer=initializer, batch_end_callback=mx.callback.Speedometer(s["batch_size"], s["disp_batches"]),
           epoch_end_callback=validate, num_epoch=s["num_epochs"])
'''


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated train.seed values (default 0,1,2,3,4)")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    parser.add_argument("--mom", type=float, default=0.9, help="sgd momentum (default 0.9)")
    parser.add_argument("--wd", type=float, default=1e-4, help="weight decay (default 1e-4)")
    parser.add_argument("--lr-factor", type=float, default=0.1, help="lr multiplier at each step (default 0.1)")
    parser.add_argument("--lr-step-epochs", default="2",
                        help="comma-separated epochs at whose start the lr drops (default 2; '' for none)")
    parser.add_argument("--aug-level", type=int, choices=(0, 1), default=0,
                        help="0: no augmentation (the example's); 1: random crop + mirror in both")
    parser.add_argument("--mxnet-python", help="interpreter with mxnet 1.9.1 (default: skip MXNet)")
    parser.add_argument("--same-start", action="store_true",
                        help="also train one epoch from MXNet's initial weights in both, records in file order")
    parser.add_argument("--log-dir", help="keep every run's log here (default: a temporary folder, removed)")
    args = parser.parse_args()
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",") if seed.strip()]
        args.lr_step_epochs = [int(epoch) for epoch in args.lr_step_epochs.split(",") if epoch.strip()]
    except ValueError as error:
        parser.error(f"--seeds and --lr-step-epochs take comma-separated integers: {error}")
    if not args.seeds:
        parser.error("--seeds: give at least one seed")
    if any(later <= earlier for earlier, later in zip(args.lr_step_epochs, args.lr_step_epochs[1:])):
        parser.error("--lr-step-epochs: expected increasing epochs")
    return args


def example_settings() -> dict:
    """The example's data and training keys that both frameworks must share, paths made absolute."""
    config = tomllib.loads(EXAMPLE.read_text())
    data, train = config["data"], config["train"]

    def beside_example(path: str) -> str:
        return str((EXAMPLE.parent / path).resolve())

    train_rec, val_rec = beside_example(data["data_train"]), beside_example(data["data_val"])
    train_idx = str(Path(train_rec).with_suffix(".idx"))
    return {"train_rec": train_rec, "train_idx": train_idx, "val_rec": val_rec,
            "val_idx": str(Path(val_rec).with_suffix(".idx")), "image_shape": data["image_shape"],
            "num_classes": data["num_classes"], "batch_size": data["batch_size"], "threads": data["data_nthreads"],
            "mean": data["rgb_mean"], "std": data["rgb_std"], "num_epochs": train["num_epochs"],
            "disp_batches": train["disp_batches"], "num_examples": records_in(train_idx),
            "val_examples": records_in(str(Path(val_rec).with_suffix(".idx")))}


def records_in(index_path: str) -> int:
    """Records listed in an .idx file (one `key<TAB>offset` line each)."""
    return sum(1 for line in Path(index_path).read_text().splitlines() if line.strip())


def flow_command(args, seed: int) -> list[str]:
    overrides = {
        "model.network": '"lenet"', "model.initializer": '"xavier"', "train.optimizer": '"sgd"',
        "train.lr": repr(args.lr), "train.mom": repr(args.mom), "train.wd": repr(args.wd),
        "train.lr_schedule": '"multifactor"', "train.lr_factor": repr(args.lr_factor),
        "train.lr_step_epochs": json.dumps(args.lr_step_epochs), "data.aug_level": str(args.aug_level),
        "train.seed": str(seed), "checkpoint.model_prefix": '""',
    }
    command = [sys.executable, "-m", "flow", "run", str(EXAMPLE.relative_to(REPO))]
    for key, value in overrides.items():
        command += ["--set", f"{key}={value}"]
    return command


def mxnet_settings(args, example: dict, seed: int) -> dict:
    return {**example, "seed": seed, "lr": args.lr, "mom": args.mom, "wd": args.wd, "lr_factor": args.lr_factor,
            "lr_step_epochs": args.lr_step_epochs, "aug_level": args.aug_level, "shuffle": True, "init_prefix": ""}


def run_logged(command: list[str], log_path: Path, environment: dict | None = None) -> tuple[str, float, str | None]:
    """Runs `command` from the repository root; (its stdout + stderr, seconds, why it failed or None)."""
    start = time.perf_counter()
    try:
        finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                                  env=environment)
    except subprocess.TimeoutExpired:
        return "", RUN_TIMEOUT_S, f"no result within {RUN_TIMEOUT_S} s"
    seconds = time.perf_counter() - start
    log = finished.stdout + finished.stderr
    log_path.write_text(log)
    if finished.returncode != 0:
        tail = log.strip().splitlines()[-1:] or ["(no output)"]
        return log, seconds, f"exit status {finished.returncode}: {tail[0]} (log: {log_path})"
    return log, seconds, None


def final_validation(log: str) -> dict:
    """The last epoch's Validation-<metric> figures from MXNet's log lines."""
    by_epoch: dict[int, dict[str, float]] = {}
    for epoch, name, value in VALIDATION_LINE.findall(log):
        by_epoch.setdefault(int(epoch), {})[name] = float(value)
    if not by_epoch:
        return {}
    last = max(by_epoch)
    return {"epoch": last, **by_epoch[last]}


def speedometer_windows(log: str, epoch: int) -> dict[str, dict[str, float]]:
    """{"0-10": {"accuracy": ..., "cross-entropy": ...}, ...}: `epoch`'s Speedometer lines."""
    windows = {}
    for line_epoch, window, pairs in SPEEDOMETER_LINE.findall(log):
        if int(line_epoch) == epoch:
            windows[window] = {name: float(value) for name, value in
                               (pair.split("=", 1) for pair in pairs.split("\t") if "=" in pair)}
    return windows


def epoch_accuracies(log: str, epoch: int) -> dict[str, float]:
    """{"Train": ..., "Validation": ...} of `epoch`."""
    return {split: float(value) for line_epoch, split, value in EPOCH_LINE.findall(log) if int(line_epoch) == epoch}


def same_start(args, example: dict, seed: int, log_dir: Path, mxnet_script: Path, mxnet_environment: dict) -> None:
    """One epoch from the same weights on the same batches: MXNet draws its Xavier weights and saves
    them as epoch 1; flow imports them (`flow import-mxnet`) and resumes there (`--load-epoch 1`)
    for one epoch. No shuffle, no augmentation: both read the records in file order, so every
    batch but the epoch's last (flow: its 16 records; MXNet: those and 48 of the next epoch) is
    the same, and so are the Speedometer windows that cover only those."""
    init_prefix, flow_prefix = log_dir / "same-start-mxnet", log_dir / "same-start-flow"
    settings = {**mxnet_settings(args, example, seed), "num_epochs": 1, "aug_level": 0, "shuffle": False,
                "init_prefix": str(init_prefix)}
    mxnet_log, _, failed = run_logged([args.mxnet_python, str(mxnet_script), json.dumps(settings)],
                                      log_dir / "same-start-mxnet.log", mxnet_environment)
    if not failed:
        shape = ",".join(str(size) for size in example["image_shape"])
        _, _, failed = run_logged([sys.executable, "-m", "flow", "import-mxnet", str(init_prefix), "1", str(flow_prefix),
                                   "--network", "lenet", "--image-shape", shape], log_dir / "same-start-import.log")
    if not failed:
        flow_steps = [epoch + 1 for epoch in args.lr_step_epochs if epoch > 0]  # flow's epoch 1 is MXNet's epoch 0
        command = flow_command(args, seed) + [
            "--set", "data.shuffle=false", "--set", "data.aug_level=0", "--set", f"train.lr_step_epochs={flow_steps}",
            "--set", f"checkpoint.model_prefix={json.dumps(str(flow_prefix))}", "--set", "checkpoint.load_epoch=1",
            "--set", "train.num_epochs=2"]
        flow_log, _, failed = run_logged(command, log_dir / "same-start-flow.log")
    print()
    if failed:
        print(f"same start: failed: {failed}")
        return
    flow_windows, mxnet_windows = speedometer_windows(flow_log, 1), speedometer_windows(mxnet_log, 0)
    batches = -(-example["num_examples"] // example["batch_size"])
    print(f"same start: MXNet's Xavier draw (seed {seed}) imported into flow, records in file order, no "
          f"augmentation, one epoch (flow's Epoch[1] is MXNet's Epoch[0])")
    print("Speedometer window   flow acc  MXNet acc    flow ce   MXNet ce")
    differences = {"accuracy": 0.0, "cross-entropy": 0.0}
    for window in mxnet_windows:
        flow, mxnet = flow_windows.get(window, {}), mxnet_windows[window]
        print(f"Batch [{window}]{'':<{12 - len(window)}} {figure(flow, 'accuracy', 6):>9} {figure(mxnet, 'accuracy', 6):>10}"
              f" {figure(flow, 'cross-entropy', 6):>10} {figure(mxnet, 'cross-entropy', 6):>10}")
        for name in differences:
            if name in flow and name in mxnet:
                differences[name] = max(differences[name], abs(flow[name] - mxnet[name]))
    print(f"largest difference over those windows: accuracy {differences['accuracy']:.6f}, "
          f"cross-entropy {differences['cross-entropy']:.6f}")
    flow_epoch, mxnet_epoch = epoch_accuracies(flow_log, 1), epoch_accuracies(mxnet_log, 0)
    print(f"after batch {batches - 1}, the epoch's last, which differs: Train-accuracy flow "
          f"{figure(flow_epoch, 'Train', 6)} MXNet {figure(mxnet_epoch, 'Train', 6)}, Validation-accuracy flow "
          f"{figure(flow_epoch, 'Validation', 6)} MXNet {figure(mxnet_epoch, 'Validation', 6)}")


def mxnet_available(python: str | None) -> str | None:
    """Why MXNet is skipped, or None when `python` imports it."""
    if not python:
        return f"no --mxnet-python given; to add it: {HOW_TO_ADD_MXNET}"
    try:
        probe = subprocess.run([python, "-c", "import mxnet"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{python} does not run ({error}); to add it: {HOW_TO_ADD_MXNET}"
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        return f"{python} cannot import mxnet ({last}); to add it: {HOW_TO_ADD_MXNET}"
    return None


def band(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.4f}-{max(values):.4f}, mean {statistics.fmean(values):.4f}"


def overlap(first: list[float], second: list[float]) -> str:
    if not first or not second:
        return "n/a"
    return "yes" if max(min(first), min(second)) <= min(max(first), max(second)) else "NO"


def figure(result: dict, key: str, places: int = 4) -> str:
    return f"{result[key]:.{places}f}" if key in result else "-"


def main() -> None:
    args = parse_arguments()
    example = example_settings()
    skip_mxnet = mxnet_available(args.mxnet_python)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="mxnet-recipe-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    mxnet_script = log_dir / "mxnet_recipe_fit.py"
    mxnet_script.write_text(MXNET_SCRIPT)
    mxnet_environment = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}

    print(f"commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; example {EXAMPLE.relative_to(REPO)}: "
          f"{example['num_examples']} train records, batch {example['batch_size']}, {example['num_epochs']} epochs, "
          f"image {example['image_shape']}")
    print(f"recipe: lenet, sgd lr {args.lr} mom {args.mom} wd {args.wd}, lr x{args.lr_factor} at epochs "
          f"{args.lr_step_epochs or 'none'}, aug level {args.aug_level}, xavier(gaussian, in, 2); seeds {args.seeds}")
    print("flow: " + " ".join(flow_command(args, args.seeds[0])).replace(sys.executable, "python"))
    if skip_mxnet:
        print(f"MXNet skipped: {skip_mxnet}")
    print(f"logs: {log_dir}", flush=True)

    rows, notes = [], []
    for seed in args.seeds:
        log, seconds, failed = run_logged(flow_command(args, seed), log_dir / f"flow-seed{seed}.log")
        flow = {"seconds": seconds, **final_validation(log)}
        if failed:
            notes.append(f"flow seed {seed}: {failed}")
        mxnet: dict = {}
        if not skip_mxnet:
            command = [args.mxnet_python, str(mxnet_script), json.dumps(mxnet_settings(args, example, seed))]
            log, seconds, failed = run_logged(command, log_dir / f"mxnet-seed{seed}.log", mxnet_environment)
            mxnet = {"seconds": seconds, **final_validation(log)}
            if failed:
                notes.append(f"mxnet seed {seed}: {failed}")
        rows.append((seed, flow, mxnet))
        mxnet_done = f", MXNet {figure(mxnet, 'accuracy')} ({mxnet['seconds']:.0f} s)" if mxnet else ""
        print(f"seed {seed}: flow {figure(flow, 'accuracy')} ({flow['seconds']:.0f} s){mxnet_done}", flush=True)

    print()
    print("final validation (epoch %d)   flow acc   flow ce  MXNet acc  MXNet ce" % (example["num_epochs"] - 1))
    for seed, flow, mxnet in rows:
        print(f"seed {seed:<24} {figure(flow, 'accuracy'):>9} {figure(flow, 'cross-entropy'):>9} "
              f"{figure(mxnet, 'accuracy'):>10} {figure(mxnet, 'cross-entropy'):>9}")
    print()

    def values(results: list[dict], key: str) -> list[float]:
        return [result[key] for result in results if key in result]

    flows, mxnets = [row[1] for row in rows], [row[2] for row in rows]
    for label, key in (("accuracy", "accuracy"), ("cross-entropy", "cross-entropy")):
        print(f"{label:<14} flow  {band(values(flows, key))}")
        print(f"{'':<14} MXNet {band(values(mxnets, key))}")
        print(f"{'':<14} bands overlap: {overlap(values(flows, key), values(mxnets, key))}")
    for note in notes:
        print(note)
    if args.same_start and not skip_mxnet:
        same_start(args, example, args.seeds[0], log_dir, mxnet_script, mxnet_environment)
    if not args.log_dir and not notes:  # a failed run's log stays for reading
        shutil.rmtree(log_dir)


if __name__ == "__main__":
    main()
