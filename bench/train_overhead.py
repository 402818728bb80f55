"""Training throughput side by side: `flow run` against a plain PyTorch loop (the floor) and MXNet's Module.fit.

One run trains the same model on the same batches with every peer, one after the other, each in
a fresh process, so that the ratios in the table are measured under the same machine load
(absolute figures on a shared 2-core machine swing 10-30% between runs, at times 2x; ratios from
one run are what to compare). A second part times a no-op model, so that what is left per batch is the
pipeline's own cost, and a tiny linear model, whose per-step cost flow should stay near the plain loop's.

Usage (from the repository root, with the project venv):

    .venv/bin/python bench/train_overhead.py
    .venv/bin/python bench/train_overhead.py --mxnet-python /work/bench-venvs/mxnet/bin/python
    .venv/bin/python bench/train_overhead.py --only flow-noop,floor-noop --noop-batches 5000 --rounds 5
    .venv/bin/python bench/train_overhead.py --only flow-tiny,floor-tiny --rounds 3

MXNet lives in its own venv (1.9.1 needs numpy 1.23, which torch's venv cannot have); without
--mxnet-python it is skipped with a line saying how to add it:

    python3.11 -m venv /work/bench-venvs/mxnet
    /work/bench-venvs/mxnet/bin/pip install mxnet==1.9.1 numpy==1.23.5 'opencv-python-headless<4.9'

The workload (REFERENCE.md section 5): the LeNet-like net conv 5x5 20 -> tanh -> max-pool 2 ->
conv 5x5 50 -> tanh -> max-pool 2 -> flatten -> fc 256 -> tanh -> fc 10 on the 800 64x64 JPEGs of
the MXNet-made fixture train.rec (10 classes), batch --batch-size, SGD lr 0.01 momentum 0.9
wd 1e-4, softmax cross-entropy, the accuracy metric, CPU, --epochs epochs, shuffled.

The peers:
  flow        what `flow run` does (flow.run.open_run on a config, the CLI's logging), reading
              train.rec with flow's own loader (--decode-threads threads, prefetch 2). The
              net is flow.models' "lenet" with hidden=256, handed in as `model=` because the
              config has no `hidden` key. Epoch times are its EpochEnd events' seconds.
  floor       a hand-written PyTorch loop with every image decoded and normalized beforehand
              into one float32 tensor: per batch gather the shuffled rows, forward,
              cross-entropy, backward, optimizer.step, zero_grad, and the accuracy (argmax ==
              label, summed). Same net, same initial weights as flow.
  mxnet       Module.fit on an mx.sym version of the net, fed by ImageRecordIter over the same
              train.rec (--decode-threads preprocess threads, same mean and std), optimizer sgd
              with the same hyper-parameters, Xavier(gaussian, in, 2) as fit.py, eval_metric acc,
              no Speedometer. Epoch times are Module.fit's own "Time cost" figures.
  flow-noop   flow on a no-op model (one 1-element parameter: logits = data.flatten(1)[:, :10] *
              weight, so backward and the optimizer still run but cost next to nothing), fed
              pre-made in-memory batches of 3x8x8 through `train_data=`, so the loader is out too.
  floor-noop  the floor's loop on the same no-op model and batches.
  flow-tiny   flow on a tiny real model, flatten -> Linear(3*8*8=192, 10) (same initial weights in
              both tiny peers), on the no-op peers' in-memory batches: each step's cost is mostly
              the framework's own (issue 11).
  floor-tiny  the floor's loop on the same tiny model and batches.

The fair rule:
  - Every batch is full: flow pads its last batch (ceil(800 / batch) batches an epoch), the
    floor wraps round its shuffled order to fill it (as many batches), and MXNet wraps round
    into the next epoch's records (round_batch; so some of its epochs are a batch shorter).
    Every row is computed, so samples/s counts rows: batches the epoch ran * batch / seconds.
  - An epoch's clock is the framework's own: from taking the epoch's first batch to the last
    update and metric of the epoch (flow's EpochEnd, Module.fit's Time cost, perf_counter
    around the floor's epoch). Process start, imports, decoding the floor's tensor, building
    and binding the model are not timed. Epoch 1 includes each framework's warm-up inside the
    epoch; steady = rows / seconds over epochs 2..N.
  - Every peer gets the same torch intra-op thread count (--torch-threads, default torch's own
    default, resolved here and passed on; flow as train.torch_threads, over its thread budget);
    MXNet gets it as OMP_NUM_THREADS. Loader decode threads (flow, MXNet) are --decode-threads
    and share the same cores.
  - No-op overhead per batch = flow-noop's steady us/batch - floor-noop's steady us/batch.
  - Tiny model: flow-tiny's steady us/batch / floor-tiny's (target <= 1.3x).
  - "train acc" is the last epoch's training accuracy: a check that every peer learns, not a
    figure to match (orders, padding and MXNet's initial draws differ).
  - The peers run --rounds times, interleaved (flow, floor, mxnet, ..., flow, floor, ...), and
    each peer's best round is reported, with the range over rounds beside it: the machine is a
    shared VM whose slowdowns come from outside and only ever make a round slower.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import arguments  # bench/arguments.py, beside this script

MEAN = (123.68, 116.779, 103.939)
STD = (58.393, 57.12, 57.375)
IMAGE_SHAPE = (3, 64, 64)
NUM_CLASSES = 10
HIDDEN = 256
LR, MOMENTUM, WD = 0.01, 0.9, 1e-4
SEED = 0
NOOP_SHAPE = (3, 8, 8)  # tiny samples: the no-op step costs next to nothing
NOOP_DISTINCT_BATCHES = 8  # pre-made batches cycled through, as a small in-memory dataset would be
PEER_TIMEOUT_S = 900  # a hung peer fails its row instead of stalling the whole run
RESULT_PREFIX = "train-overhead-bench-result: "  # marks the JSON line a worker prints among library chatter
FIXTURES_DIR = Path(__file__).resolve().parents[1] / "tests" / "data"  # the MXNet-made files the tests use

PEERS = {
    "flow": "flow run",
    "floor": "plain PyTorch loop",
    "mxnet": "MXNet Module.fit",
    "flow-noop": "flow run, no-op model",
    "floor-noop": "plain loop, no-op model",
    "flow-tiny": "flow run, tiny linear",
    "floor-tiny": "plain loop, tiny linear",
}
NOOP_PEERS = ("flow-noop", "floor-noop")
TINY_PEERS = ("flow-tiny", "floor-tiny")
IN_MEMORY_PEERS = NOOP_PEERS + TINY_PEERS  # judged by steady us/batch, on --noop-batches in-memory batches
HOW_TO_ADD_MXNET = ("python3.11 -m venv VENV && VENV/bin/pip install mxnet==1.9.1 numpy==1.23.5 "
                    "'opencv-python-headless<4.9'; then --mxnet-python VENV/bin/python")


# --------------------------------------------------------------------------- workers (child processes)
# They import only what their peer needs: the MXNet venv has neither flow nor torch.


def batches_per_epoch(args) -> int:
    return math.ceil(args.records / args.batch_size)


def set_torch_threads(threads: int) -> str:
    import torch

    torch.set_num_threads(threads)
    return torch.__version__


def lenet_256():
    """REFERENCE.md's LeNet-like net, initialized as flow initializes a configured network."""
    import torch

    from flow import models

    model = models.build_model("lenet", NUM_CLASSES, IMAGE_SHAPE, hidden=HIDDEN)
    models.initialize(model, "xavier", torch.Generator().manual_seed(SEED))
    return model


def noop_model():
    import torch

    class NoOp(torch.nn.Module):
        """Ten logits that are the sample's first ten values times one learnt number."""

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, data):
            return data.flatten(1)[:, :NUM_CLASSES] * self.weight

    return NoOp()


def tiny_model():
    """flatten -> Linear(192, 10), its initial weights drawn from SEED."""
    import torch

    torch.manual_seed(SEED)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(NOOP_SHAPE), NUM_CLASSES))


def noop_pool(args) -> list:
    import torch

    generator = torch.Generator().manual_seed(SEED)
    return [(torch.randn(args.batch_size, *NOOP_SHAPE, generator=generator),
             torch.randint(0, NUM_CLASSES, (args.batch_size,), generator=generator))
            for _ in range(NOOP_DISTINCT_BATCHES)]


def run_flow_config(args, raw_config: dict, model, train_data=None) -> dict:
    """Trains with flow as `flow run` does; (seconds, batches) of each epoch from its EpochEnd events."""
    import trio

    from flow.config import config_from_dict
    from flow.events import EpochEnd, RunStarted
    from flow.run import open_run
    from flow.run_command import configure_logging

    torch_version = set_torch_threads(args.torch_threads)
    config = config_from_dict(raw_config)
    configure_logging()  # the CLI's MXNet-style log lines on stderr, part of what `flow run` costs
    epochs, accuracy = [], None
    cpu_marks = []  # process CPU time at the start and at each epoch's end (its EpochEnd event)

    async def train() -> None:
        nonlocal accuracy
        async with open_run(config, model=model, train_data=train_data) as run:
            async for event in run.events():
                if isinstance(event, RunStarted):
                    cpu_marks.append(time.process_time())
                if isinstance(event, EpochEnd):
                    epochs.append((event.seconds, event.batches))
                    cpu_marks.append(time.process_time())
                    accuracy = dict(event.metrics)["accuracy"]
            await run.wait()

    trio.run(train)
    return {"version": f"flow {importlib.metadata.version('flow-fit')}, torch {torch_version}",
            "epochs": epochs, "cpu": [end - start for start, end in zip(cpu_marks, cpu_marks[1:])],
            "accuracy": accuracy}


def run_flow(args) -> dict:
    raw_config = {
        "data": {"data_train": str(args.fixtures / "train.rec"), "image_shape": list(IMAGE_SHAPE),
                 "num_classes": NUM_CLASSES, "batch_size": args.batch_size, "data_nthreads": args.decode_threads,
                 "rgb_mean": list(MEAN), "rgb_std": list(STD), "shuffle": True, "last_batch": "pad"},
        "train": {"num_epochs": args.epochs, "optimizer": "sgd", "lr": LR, "mom": MOMENTUM, "wd": WD,
                  "metrics": ["accuracy"], "seed": SEED, "torch_threads": args.torch_threads},
    }
    return run_flow_config(args, raw_config, lenet_256())


def run_flow_in_memory(args, model) -> dict:
    """flow on the in-memory batches of noop_pool, handed in through `train_data=`."""
    pool = noop_pool(args)

    def batches(epoch: int):
        async def epoch_batches():
            for index in range(args.noop_batches):
                yield pool[index % len(pool)]
        return epoch_batches()

    raw_config = {
        "data": {"image_shape": list(NOOP_SHAPE), "num_classes": NUM_CLASSES, "batch_size": args.batch_size},
        "train": {"num_epochs": args.epochs, "optimizer": "sgd", "lr": LR, "mom": MOMENTUM, "wd": WD,
                  "metrics": ["accuracy"], "seed": SEED, "torch_threads": args.torch_threads},
    }
    return run_flow_config(args, raw_config, model, train_data=batches)


def plain_loop(args, model, batch_of, batches: int) -> dict:
    """The floor: what a PyTorch user hand-writes. `batch_of(epoch, index)` -> (data, int64 label)."""
    import torch
    import torch.nn.functional as F

    torch_version = set_torch_threads(args.torch_threads)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    model.train()
    epochs, cpu, accuracy = [], [], None
    for epoch in range(args.epochs):
        correct = seen = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        for index in range(batches):
            data, label = batch_of(epoch, index)
            logits = model(data)
            loss = F.cross_entropy(logits, label)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            correct += (logits.argmax(1) == label).sum().item()
            seen += label.shape[0]
        epochs.append((time.perf_counter() - start, batches))
        cpu.append(time.process_time() - cpu_start)
        accuracy = correct / seen
    return {"version": f"torch {torch_version}", "epochs": epochs, "cpu": cpu, "accuracy": accuracy}


def run_floor(args) -> dict:
    import numpy as np
    import torch

    from flow.image import decode
    from flow.recordio import IndexedRecordReader, unpack

    # Decoded and normalized once, outside the clock, with the decoder and formula flow's loader uses.
    with IndexedRecordReader(args.fixtures / "train.rec") as reader:
        pairs = [unpack(record) for record in reader]
    pixels = np.stack([decode(jpeg) for _, jpeg in pairs])
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    images = ((torch.from_numpy(pixels).permute(0, 3, 1, 2).float() - mean) / std).contiguous()
    labels = torch.tensor([int(header.label) for header, _ in pairs], dtype=torch.int64)
    rows = batches_per_epoch(args) * args.batch_size
    orders = {}

    def batch_of(epoch: int, index: int):
        if epoch not in orders:  # a fresh shuffle per epoch, wrapped round to fill the last batch
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SEED + epoch))
            orders[epoch] = order.repeat(math.ceil(rows / len(order)))[:rows]
        chosen = orders[epoch][index * args.batch_size:(index + 1) * args.batch_size]
        return images[chosen], labels[chosen]

    return plain_loop(args, lenet_256(), batch_of, batches_per_epoch(args))


def run_floor_in_memory(args, model) -> dict:
    pool = noop_pool(args)
    return plain_loop(args, model, lambda epoch, index: pool[index % len(pool)], args.noop_batches)


def run_mxnet(args) -> dict:
    import logging

    import mxnet as mx

    data = mx.sym.Variable("data")
    net = mx.sym.Convolution(data, kernel=(5, 5), num_filter=20)
    net = mx.sym.Pooling(mx.sym.Activation(net, act_type="tanh"), pool_type="max", kernel=(2, 2), stride=(2, 2))
    net = mx.sym.Convolution(net, kernel=(5, 5), num_filter=50)
    net = mx.sym.Pooling(mx.sym.Activation(net, act_type="tanh"), pool_type="max", kernel=(2, 2), stride=(2, 2))
    net = mx.sym.Activation(mx.sym.FullyConnected(mx.sym.Flatten(net), num_hidden=HIDDEN), act_type="tanh")
    net = mx.sym.SoftmaxOutput(mx.sym.FullyConnected(net, num_hidden=NUM_CLASSES), name="softmax")

    train_iter = mx.io.ImageRecordIter(
        path_imgrec=str(args.fixtures / "train.rec"), path_imgidx=str(args.fixtures / "train.idx"),
        data_shape=IMAGE_SHAPE, batch_size=args.batch_size, shuffle=True, seed=SEED,
        preprocess_threads=args.decode_threads, mean_r=MEAN[0], mean_g=MEAN[1], mean_b=MEAN[2],
        std_r=STD[0], std_g=STD[1], std_b=STD[2], dtype="float32")

    class EpochFigures(logging.Handler):
        """Module.fit's own per-epoch figures, read from its log records' arguments (full precision)."""

        def __init__(self):
            super().__init__()
            self.seconds, self.accuracy = [], None

        def emit(self, record):
            if record.msg == "Epoch[%d] Time cost=%.3f":
                self.seconds.append(record.args[1])
            elif record.msg == "Epoch[%d] Train-%s=%f":
                self.accuracy = record.args[2]

    figures = EpochFigures()
    logger = logging.getLogger("train-overhead-mxnet")
    logger.setLevel(logging.INFO)
    logger.addHandler(figures)
    logger.propagate = False
    batches = [0] * args.epochs

    def count_batch(params) -> None:
        batches[params.epoch] += 1

    mx.random.seed(SEED)
    module = mx.mod.Module(net, context=mx.cpu(), logger=logger)
    module.fit(train_iter, num_epoch=args.epochs, optimizer="sgd",
               optimizer_params={"learning_rate": LR, "momentum": MOMENTUM, "wd": WD},
               initializer=mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2),
               eval_metric="acc", batch_end_callback=count_batch)
    return {"version": f"MXNet {mx.__version__}", "epochs": list(zip(figures.seconds, batches)),
            "accuracy": figures.accuracy}


WORKERS = {"flow": run_flow, "floor": run_floor, "mxnet": run_mxnet,
           "flow-noop": lambda args: run_flow_in_memory(args, noop_model()),
           "floor-noop": lambda args: run_floor_in_memory(args, noop_model()),
           "flow-tiny": lambda args: run_flow_in_memory(args, tiny_model()),
           "floor-tiny": lambda args: run_floor_in_memory(args, tiny_model())}


def worker_main(args) -> None:
    """Child-process mode: run one peer, print its timings as one JSON line."""
    try:
        result = WORKERS[args.worker](args)
    except ImportError as error:
        if args.worker != "mxnet" or error.name != "mxnet":
            raise
        result = {"missing": f"mxnet is not installed in {sys.executable}"}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent


class PeerFailed(Exception):
    pass


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run_worker(args, peer: str, python: str) -> dict:
    command = [python, str(Path(__file__).resolve()), "--worker", peer, "--fixtures", str(args.fixtures),
               "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
               "--torch-threads", str(args.torch_threads), "--decode-threads", str(args.decode_threads),
               "--noop-batches", str(args.noop_batches), "--records", str(args.records)]
    # MXNet's operators parallelize with OpenMP: the same thread count as torch's intra-op pool.
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.torch_threads)}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=PEER_TIMEOUT_S, env=environment)
    results = [line[len(RESULT_PREFIX):] for line in finished.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if finished.returncode != 0 or not results:
        raise PeerFailed(last_line(finished.stderr) or f"exit status {finished.returncode}, no result line")
    return json.loads(results[-1])


def measure(args, peer: str) -> dict:
    """One peer's result: {"version", "epochs", "accuracy"}, or {"skipped": why} / {"failed": why}."""
    python = args.mxnet_python if peer == "mxnet" else sys.executable
    if python is None:
        return {"skipped": f"no --mxnet-python given; to add it: {HOW_TO_ADD_MXNET}"}
    try:
        result = run_worker(args, peer, python)
    except subprocess.TimeoutExpired:
        return {"failed": f"no result within {PEER_TIMEOUT_S} s"}
    except (PeerFailed, OSError) as error:
        return {"failed": str(error)}
    if "missing" in result:
        return {"skipped": f"{result['missing']}; to add it: {HOW_TO_ADD_MXNET}"}
    if len(result["epochs"]) != args.epochs:
        return {"failed": f"{len(result['epochs'])} of {args.epochs} epochs reported"}
    return result


def steady(epochs: list) -> tuple[float, int] | None:
    """(seconds, batches) over epochs 2..N; None with one epoch."""
    rest = epochs[1:]
    return (sum(seconds for seconds, _ in rest), sum(batches for _, batches in rest)) if rest else None


def samples_per_second(args, epochs: list) -> tuple[float, float | None]:
    """Epoch-1 and steady samples/s, counting every computed row."""
    (first_seconds, first_batches), rest = epochs[0], steady(epochs)
    steady_rate = rest[1] * args.batch_size / rest[0] if rest else None
    return first_batches * args.batch_size / first_seconds, steady_rate


def microseconds_per_batch(epochs: list) -> float:
    seconds, batches = steady(epochs) or epochs[0]
    return seconds / batches * 1e6


def cpu_microseconds_per_batch(result: dict) -> float:
    """Process CPU time (every thread) per batch over the steady epochs: steadier than wall time on a
    shared machine, where the CPU a process gets moves its wall time."""
    epochs = [(cpu, batches) for cpu, (_, batches) in zip(result["cpu"], result["epochs"])]
    return microseconds_per_batch(epochs)


def median_round_ratio(rounds: dict[str, list[dict]], peer: str, reference: str, measure) -> float | None:
    """The median over rounds of peer / reference, each ratio from one round (the two ran back to back)."""
    ratios = sorted(measure(mine) / measure(theirs) for mine, theirs in zip(rounds[peer], rounds[reference])
                    if "epochs" in mine and "epochs" in theirs)
    return ratios[len(ratios) // 2] if ratios else None


def figure(args, peer: str, result: dict) -> float:
    """The figure a peer is judged by: steady samples/s, or for the in-memory peers us/batch."""
    if peer in IN_MEMORY_PEERS:
        return microseconds_per_batch(result["epochs"])
    first, steady_rate = samples_per_second(args, result["epochs"])
    return steady_rate or first


def best_rounds(args, rounds: dict[str, list[dict]], notes: list[str]) -> dict[str, tuple[dict, str]]:
    """Each peer's best round and the range of its figure over rounds; a peer with none is left out."""
    best = {}
    for peer, results in rounds.items():
        for result in results:
            if "epochs" not in result:
                status = "skipped" if "skipped" in result else "failed"
                notes.append(f"{peer}: {status}: {result.get('skipped') or result.get('failed')}")
        figures = sorted((figure(args, peer, result), index) for index, result in enumerate(results)
                         if "epochs" in result)
        if figures:
            pick = figures[0 if peer in IN_MEMORY_PEERS else -1][1]  # fewest us/batch, most samples/s
            best[peer] = (results[pick], f"{figures[0][0]:,.0f}-{figures[-1][0]:,.0f}")
    return best


def print_table(args, rounds: dict[str, list[dict]]) -> None:
    notes: list[str] = []
    best = best_rounds(args, rounds, notes)
    threads = (f"{args.torch_threads} torch thread{'s' if args.torch_threads != 1 else ''}"
               f"{' (torch default)' if args.torch_threads_default else ''}")
    rounds_text = f"best of {args.rounds} rounds" if args.rounds > 1 else "1 round"

    def ratio(value: float | None, reference: float | None) -> str:
        return f"{value / reference:.2f}x" if value and reference else "-"

    def missing_row(peer: str) -> str:
        return f"{PEERS[peer]:<24} {'skipped' if 'skipped' in rounds[peer][0] else 'failed'}"

    training = [peer for peer in rounds if peer not in IN_MEMORY_PEERS]
    if training:
        rates = {peer: figure(args, peer, best[peer][0]) for peer in training if peer in best}
        steady_label = f"steady (ep 2-{args.epochs})" if args.epochs > 2 else "steady (ep 2)"
        print(f"\nLeNet-like conv20-conv50-fc256-fc10, {args.records} 64x64 JPEGs, batch {args.batch_size}, "
              f"{args.epochs} epochs, SGD, accuracy, CPU, {threads}, {args.decode_threads} decode threads; "
              f"samples/s, {rounds_text}")
        header = (f"{'peer':<24} {'version':<30} {'epoch 1':>8} {steady_label:>16} {'steady range':>13} "
                  f"{'vs floor':>9} {'vs MXNet':>9} {'train acc':>10}")
        print(header)
        print("-" * len(header))
        for peer in training:
            if peer not in best:
                print(missing_row(peer))
                continue
            result, spread = best[peer]
            first, steady_rate = samples_per_second(args, result["epochs"])
            steady_text = f"{steady_rate:,.1f}" if steady_rate else "-"
            print(f"{PEERS[peer]:<24} {result['version']:<30} {first:>8,.1f} {steady_text:>16} {spread:>13} "
                  f"{ratio(rates[peer], rates.get('floor')):>9} {ratio(rates[peer], rates.get('mxnet')):>9} "
                  f"{result['accuracy']:>10.3f}")
        if rates.get("flow") and rates.get("floor"):
            print(f"target: flow >= 0.95x floor: {rates['flow'] / rates['floor']:.2f}x")
        if rates.get("flow") and rates.get("mxnet"):
            print(f"target: flow >= 2x MXNet: {rates['flow'] / rates['mxnet']:.2f}x")
    for title, pair in (("No-op model", NOOP_PEERS), ("Tiny flatten -> Linear(192, 10)", TINY_PEERS)):
        peers = [peer for peer in rounds if peer in pair]
        if not peers:
            continue
        print(f"\n{title}, {args.noop_batches} in-memory batches of {args.batch_size}x"
              f"{'x'.join(map(str, NOOP_SHAPE))} an epoch, {args.epochs} epochs, {threads}; "
              f"steady microseconds per batch, {rounds_text}")
        for peer in peers:
            if peer not in best:
                print(missing_row(peer))
                continue
            result, spread = best[peer]
            first_seconds, first_batches = result["epochs"][0]
            print(f"{PEERS[peer]:<24} {result['version']:<30} {figure(args, peer, result):>8,.0f} us/batch "
                  f"(range {spread}; epoch 1: {first_seconds / first_batches * 1e6:,.0f}; "
                  f"CPU {cpu_microseconds_per_batch(result):,.0f} us/batch)")
        if all(peer in best for peer in pair):
            flow_us, floor_us = (figure(args, peer, best[peer][0]) for peer in pair)
            wall = median_round_ratio(rounds, *pair, lambda result: microseconds_per_batch(result["epochs"]))
            cpu = median_round_ratio(rounds, *pair, cpu_microseconds_per_batch)
            print(f"flow / plain loop, median of per-round ratios: {wall:.2f}x wall time, {cpu:.2f}x CPU time")
            if pair == NOOP_PEERS:
                print(f"flow's pipeline overhead: {flow_us - floor_us:,.0f} us/batch (target < 300 us)")
            else:
                print(f"target: flow <= 1.3x the plain loop: {flow_us / floor_us:.2f}x (best rounds)")
    if notes:
        print()
    for note in dict.fromkeys(notes):  # a failure repeated every round is said once
        print(note)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="See the module docstring for "
                                     "the peers, the fair rule and how to install MXNet.")
    parser.add_argument("--fixtures", type=Path, default=FIXTURES_DIR,
                        help="folder with the MXNet-made train.rec and train.idx (default: %(default)s)")
    parser.add_argument("--mxnet-python", help="interpreter with mxnet 1.9.1 (default: skip MXNet)")
    parser.add_argument("--epochs", type=int, default=3, help="epoch 1 is reported apart; steady is the rest")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--torch-threads", type=int,
                        help="intra-op threads of every peer (default: torch's default on this machine)")
    parser.add_argument("--decode-threads", type=int, default=2, help="JPEG decode threads of flow and MXNet")
    parser.add_argument("--noop-batches", type=int, default=2000, help="batches an epoch of the no-op and tiny peers")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times every peer runs, interleaved; its best round is reported (default: 3)")
    parser.add_argument("--only", default=",".join(PEERS),
                        help=f"comma-separated peers to run, in order (default: {','.join(PEERS)})")
    parser.add_argument("--records", type=int, help=argparse.SUPPRESS)  # counted from train.idx in the parent
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)  # child-process mode
    return arguments.check(parser, parser.parse_args(argv),
                           ("epochs", "batch_size", "decode_threads", "noop_batches", "torch_threads", "rounds"), PEERS)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    import torch

    # Resolved once here, so every peer, MXNet included, gets the same explicit count.
    args.torch_threads_default = args.torch_threads is None
    args.torch_threads = args.torch_threads or torch.get_num_threads()
    with open(args.fixtures / "train.idx") as index:
        args.records = sum(1 for line in index if line.strip())
    rounds: dict[str, list[dict]] = {peer: [] for peer in args.only}
    for round_number in range(1, args.rounds + 1):
        for peer, results in rounds.items():
            if results and "skipped" in results[0]:
                continue  # not installed: no use asking again
            print(f"round {round_number}/{args.rounds}: running {peer} ...", file=sys.stderr, flush=True)
            results.append(measure(args, peer))
    print_table(args, rounds)


if __name__ == "__main__":
    main()
