"""Input pipelines side by side: flow's loader against DALI, MXNet, a plain DataLoader and the decode ceiling.

One run times every peer on the same `.rec`, one after the other, each in a fresh process, in
--rounds interleaved rounds; each peer's best round is reported with the range beside it, so
that the ratios are measured under the same machine load (absolute figures on this shared
2-core machine swing 10-40% between rounds, and a disturbance only ever slows a round down).

Usage (from the repository root, with the project venv):

    .venv/bin/python bench/test_io.py
    .venv/bin/python bench/test_io.py --dali-python /work/bench-venvs/dali/bin/python \\
        --mxnet-python /work/bench-venvs/mxnet/bin/python
    .venv/bin/python bench/test_io.py --only flow,ceiling --epochs 3

Peers DALI and MXNet live in their own venvs, outside the repository (DALI is ~1.1 GB; MXNet
1.9.1 needs numpy 1.23, which torch's venv cannot have). A peer that is not installed is skipped
with a line saying how to add it:

    python3.11 -m venv /work/bench-venvs/dali
    /work/bench-venvs/dali/bin/pip install nvidia-dali-cuda120 numpy    # runs CPU-only without a GPU
    python3.11 -m venv /work/bench-venvs/mxnet
    /work/bench-venvs/mxnet/bin/pip install mxnet==1.9.1 numpy==1.23.5 'opencv-python-headless<4.9'

The peers:
  flow        `python -m flow test-io CONFIG` with a config this script writes; its figures are
              the ones its own lines print: `test-io: epoch N: S samples in T s, R samples/sec`.
  dali        fn.readers.mxnet -> fn.decoders.image(device="cpu") -> fn.crop_mirror_normalize,
              device_id=None (CPU only), num_threads = --threads, random_shuffle=True (DALI's
              shuffle is a 1024-record buffer, its default), pad_last_batch=True so that every
              epoch is ceil(records / batch) runs.
  mxnet       mx.io.ImageRecordIter(shuffle=True, preprocess_threads = --threads), reset() after
              each epoch as Module.fit does.
  dataloader  what a PyTorch user writes: a map-style dataset reading records through
              flow.recordio.IndexedRecordReader (opened lazily in each worker), PIL decode,
              normalized float CHW tensor; DataLoader(num_workers = --threads, shuffle=True),
              other arguments left at their defaults (so workers start anew each epoch).
  ceiling     no loader: every record's JPEG decoded with flow.image.decode (simplejpeg) by
              --threads threads, one slice of the records each; payloads are read before timing.

The workload, the same for every peer: --records 64x64 JPEG records (the 1000 images of the
MXNet-made fixtures train.rec + val.rec, repeated with new keys and ids, written once into
--data-dir), batch --batch-size, --threads threads, shuffled order, no augmentation, out a
float32 NCHW batch normalized with MEAN and STD below.

The fair rule:
  - Every peer hands its loop a host float32 NCHW array per batch, in the form a training loop
    would take it: DataLoader's CPU tensor; DALI's CPU TensorList as a numpy view (as_tensor(),
    no copy); MXNet's NDArray through asnumpy() (its way to host memory, which also waits for
    its asynchronous engine; a 6 MB copy per batch). Each batch's shape and dtype are checked.
  - Samples are the rows of the batches handed out. Padding rows count (DALI repeats the last
    record, MXNet wraps round to the next pass): each was read, decoded and normalized like any
    other, and MXNet's Speedometer counts them the same way.
  - The epoch-1 clock starts before the loader is built (pipeline build, iterator start,
    worker start), so epoch 1 includes warm-up; imports and interpreter start are not timed.
    Steady = samples / seconds over epochs 2..N.
  - "vs DALI" and "vs ceiling" are steady samples/s divided by that peer's steady samples/s.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import arguments  # bench/arguments.py, beside this script

MEAN = (123.68, 116.779, 103.939)
STD = (58.393, 57.12, 57.375)
IMAGE_SHAPE = (3, 64, 64)
NUM_CLASSES = 10
SEED = 0
PEER_TIMEOUT_S = 900  # a hung peer fails its row instead of stalling the whole run
RESULT_PREFIX = "test-io-bench-result: "  # marks the JSON line a worker prints among library chatter
FIXTURES_DIR = Path(__file__).resolve().parents[1] / "tests" / "data"  # the MXNet-made files the tests use

PEERS = {
    "flow": "flow test-io",
    "dali": "DALI CPU pipeline",
    "mxnet": "MXNet ImageRecordIter",
    "dataloader": "DataLoader + PIL",
    "ceiling": "decode-only ceiling",
}
HOW_TO_ADD = {
    "dali": "python3.11 -m venv VENV && VENV/bin/pip install nvidia-dali-cuda120 numpy; "
            "then --dali-python VENV/bin/python",
    "mxnet": "python3.11 -m venv VENV && VENV/bin/pip install mxnet==1.9.1 numpy==1.23.5 "
             "'opencv-python-headless<4.9'; then --mxnet-python VENV/bin/python",
}
FLOW_EPOCH_LINE = re.compile(r"^test-io: epoch (\d+): (\d+) samples in ([0-9.]+) s, ([0-9.]+) samples/sec$", re.M)


def dataset_paths(data_dir: Path, records: int) -> tuple[Path, Path]:
    rec_path = data_dir / f"train-{records}.rec"
    return rec_path, rec_path.with_suffix(".idx")


# --------------------------------------------------------------------------- workers (child processes)
# They import only what their peer needs: the DALI and MXNet venvs have neither flow nor torch.


def time_epochs(make_loader, run_epoch, epochs: int) -> list[tuple[float, int, float]]:
    """(seconds, samples, process CPU seconds, all threads) of each epoch; building the loader is part of epoch 1."""
    timings = []
    start, cpu_start = time.perf_counter(), time.process_time()
    loader = make_loader()
    for _ in range(epochs):
        samples = run_epoch(loader)
        end, cpu_end = time.perf_counter(), time.process_time()
        timings.append((end - start, samples, cpu_end - cpu_start))
        start, cpu_start = end, cpu_end
    return timings


def check_batch(batch, batch_size: int, image_shape: tuple[int, int, int] = IMAGE_SHAPE) -> int:
    """The rows of a batch, after checking it is the agreed float32 NCHW output."""
    if str(batch.dtype) not in ("float32", "torch.float32") or tuple(batch.shape[1:]) != image_shape \
            or not 0 < batch.shape[0] <= batch_size:
        raise RuntimeError(f"batch is {batch.dtype} {tuple(batch.shape)}, expected float32 (<={batch_size}, "
                           f"{', '.join(map(str, image_shape))})")
    return batch.shape[0]


def run_dali(args, rec_path: Path, idx_path: Path) -> dict:
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=args.batch_size, num_threads=args.threads, device_id=None, seed=SEED)
    def pipeline():
        jpegs, labels = fn.readers.mxnet(path=[str(rec_path)], index_path=[str(idx_path)],
                                         random_shuffle=True, pad_last_batch=True, name="reader")
        images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        images = fn.crop_mirror_normalize(images, device="cpu", dtype=types.FLOAT, output_layout="CHW",
                                          mean=list(MEAN), std=list(STD))
        return images, labels

    return time_dali(args, pipeline, IMAGE_SHAPE)


def time_dali(args, pipeline, image_shape: tuple[int, int, int]) -> dict:
    """A DALI peer's result: `pipeline` (a pipeline_def of images and labels) built afresh, then
    --epochs epochs of ceil(records / batch) runs, each batch checked."""
    import numpy as np
    import nvidia.dali

    def build():
        built = pipeline()
        built.build()
        return built

    runs_per_epoch = math.ceil(args.records / args.batch_size)

    def run_epoch(built) -> int:
        samples = 0
        for _ in range(runs_per_epoch):
            images, _labels = built.run()
            samples += check_batch(np.asarray(images.as_tensor()), args.batch_size, image_shape)
        return samples

    return {"version": f"DALI {nvidia.dali.__version__}", "epochs": time_epochs(build, run_epoch, args.epochs)}


def run_mxnet(args, rec_path: Path, idx_path: Path) -> dict:
    import mxnet as mx

    def make_iter():
        return mx.io.ImageRecordIter(
            path_imgrec=str(rec_path), path_imgidx=str(idx_path), data_shape=IMAGE_SHAPE,
            batch_size=args.batch_size, shuffle=True, seed=SEED, preprocess_threads=args.threads,
            mean_r=MEAN[0], mean_g=MEAN[1], mean_b=MEAN[2], std_r=STD[0], std_g=STD[1], std_b=STD[2],
            dtype="float32")

    def run_epoch(record_iter) -> int:
        samples = sum(check_batch(batch.data[0].asnumpy(), args.batch_size) for batch in record_iter)
        record_iter.reset()
        return samples

    return {"version": f"MXNet {mx.__version__}", "epochs": time_epochs(make_iter, run_epoch, args.epochs)}


class RecordImageDataset:
    """Map-style dataset: record -> PIL decode -> normalized float CHW tensor, and its label.

    DataLoader needs only __len__ and __getitem__; not subclassing torch's Dataset keeps this file
    importable in the DALI and MXNet venvs. The reader is opened in each worker on first use,
    as a memory map does not travel to worker processes.
    """

    def __init__(self, rec_path: Path, idx_path: Path, length: int):
        import torch
        # Loaded here in the parent, as a user's top-level import would be, so forked workers inherit it.
        from PIL import Image  # noqa: F401

        self.rec_path, self.idx_path, self.length = rec_path, idx_path, length
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)
        self.reader = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, position: int):
        import numpy as np
        import torch
        from PIL import Image

        from flow.recordio import IndexedRecordReader, unpack

        if self.reader is None:
            self.reader = IndexedRecordReader(self.rec_path, self.idx_path)
        header, jpeg = unpack(self.reader.read_position(position))
        with Image.open(io.BytesIO(jpeg)) as image:
            pixels = np.asarray(image.convert("RGB"))
        chw = torch.from_numpy(pixels).permute(2, 0, 1).float()
        return (chw - self.mean) / self.std, int(header.label)


def run_dataloader(args, rec_path: Path, idx_path: Path) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from flow.recordio import read_index

    torch.manual_seed(SEED)
    dataset = RecordImageDataset(rec_path, idx_path, len(read_index(idx_path)[0]))

    def make_loader():
        return DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.threads)

    def run_epoch(loader) -> int:
        return sum(check_batch(images, args.batch_size) for images, _labels in loader)

    return {"version": f"torch {torch.__version__}", "epochs": time_epochs(make_loader, run_epoch, args.epochs)}


def run_ceiling(args, rec_path: Path, idx_path: Path) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import simplejpeg

    from flow.image import decode
    from flow.recordio import IndexedRecordReader, unpack

    with IndexedRecordReader(rec_path, idx_path) as reader:
        jpegs = [unpack(record)[1] for record in reader]
    slices = [jpegs[thread::args.threads] for thread in range(args.threads)]
    height, width = IMAGE_SHAPE[1:]

    def decode_slice(payloads: list[bytes]) -> int:
        pixels = np.empty((height, width, 3), np.uint8)  # one buffer a thread: time decoding, not allocation
        for payload in payloads:
            decode(payload, out=pixels)
        return len(payloads)

    def make_pool():
        return ThreadPoolExecutor(args.threads)

    def run_epoch(pool) -> int:
        return sum(pool.map(decode_slice, slices))

    return {"version": f"simplejpeg {simplejpeg.__version__}", "epochs": time_epochs(make_pool, run_epoch, args.epochs)}


WORKERS = {"dali": run_dali, "mxnet": run_mxnet, "dataloader": run_dataloader, "ceiling": run_ceiling}
PEER_MODULE = {"dali": "nvidia.dali", "mxnet": "mxnet"}  # when this import fails the peer is skipped, not failed


def worker_main(args) -> None:
    """Child-process mode: run one peer, print its timings as one JSON line."""
    rec_path, idx_path = dataset_paths(args.data_dir, args.records)
    try:
        result = WORKERS[args.worker](args, rec_path, idx_path)
    except ImportError as error:
        module = PEER_MODULE.get(args.worker, "")
        if error.name not in (module, module.split(".")[0]):
            raise
        result = {"missing": f"{module} is not installed in {sys.executable}"}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent


def build_dataset(fixtures: Path, data_dir: Path, records: int) -> tuple[Path, Path]:
    """`records` image records made from the fixtures' JPEGs, written once and reused after."""
    from flow.recordio import IRHeader, RecordReader, RecordWriter, pack, unpack

    rec_path, idx_path = dataset_paths(data_dir, records)
    if idx_path.exists():  # RecordWriter renames the .idx into place last: present means complete
        return rec_path, idx_path
    sources = []
    for name in ("train.rec", "val.rec"):
        with RecordReader(fixtures / name) as reader:
            sources += [unpack(record) for record in reader]
    data_dir.mkdir(parents=True, exist_ok=True)
    with RecordWriter(rec_path, index=True) as writer:
        for key in range(records):
            header, jpeg = sources[key % len(sources)]
            writer.write(pack(IRHeader(0, header.label, key, 0), jpeg), key=key)
    return rec_path, idx_path


def write_flow_config(config_path: Path, args, rec_path: Path, image_shape: tuple[int, ...], num_classes: int,
                      augmentation: str = "") -> Path:
    """The `flow test-io` config of a bench run: `augmentation`, TOML lines of [data] keys, added."""
    config_path.write_text(
        "[data]\n"
        f"data_train = {json.dumps(str(rec_path))}\n"
        f"image_shape = {list(image_shape)}\n"
        f"batch_size = {args.batch_size}\n"
        f"data_nthreads = {args.threads}\n"
        f"rgb_mean = {list(MEAN)}\n"
        f"rgb_std = {list(STD)}\n"
        "shuffle = true\n"
        f"num_classes = {num_classes}\n"
        'layout = "float32_nchw"\n'
        + augmentation +
        "[train]\n"
        f"num_epochs = {args.epochs}\n"
        f"disp_batches = {math.ceil(args.records / args.batch_size)}\n"  # one progress line an epoch
        f"seed = {SEED}\n"
    )
    return config_path


def run_flow(args, rec_path: Path) -> dict:
    config_path = write_flow_config(args.data_dir / "flow-test-io.toml", args, rec_path, IMAGE_SHAPE, NUM_CLASSES)
    finished = subprocess.run([sys.executable, "-m", "flow", "test-io", str(config_path)],
                              capture_output=True, text=True, timeout=PEER_TIMEOUT_S)
    epochs = [(float(seconds), int(samples))
              for _, samples, seconds, _ in FLOW_EPOCH_LINE.findall(finished.stdout + finished.stderr)]
    if finished.returncode != 0 or len(epochs) != args.epochs:
        raise PeerFailed(last_line(finished.stderr or finished.stdout)
                         or f"exit status {finished.returncode}, {len(epochs)} of {args.epochs} epoch lines")
    return {"version": f"flow {importlib.metadata.version('flow-fit')}", "epochs": epochs}


def run_worker(args, peer: str, python: str) -> dict:
    command = [python, str(Path(__file__).resolve()), "--worker", peer, "--data-dir", str(args.data_dir),
               "--records", str(args.records), "--threads", str(args.threads),
               "--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=PEER_TIMEOUT_S)
    results = [line[len(RESULT_PREFIX):] for line in finished.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if finished.returncode != 0 or not results:
        raise PeerFailed(last_line(finished.stderr) or f"exit status {finished.returncode}, no result line")
    return json.loads(results[-1])


class PeerFailed(Exception):
    pass


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def interpreter_for(args, peer: str) -> str | None:
    """The Python that runs `peer`; None when the peer is to be skipped without trying."""
    if peer == "dali":
        return args.dali_python or sys.executable  # the worker reports it missing if it is not there
    if peer == "mxnet":
        return args.mxnet_python
    return sys.executable


def measure(args, peer: str, rec_path: Path) -> dict:
    """One peer's result: {"version", "epochs"}, or {"skipped": why} / {"failed": why}."""
    try:
        if peer == "flow":
            return run_flow(args, rec_path)
        python = interpreter_for(args, peer)
        if python is None:
            return {"skipped": f"no --{peer}-python given; to add it: {HOW_TO_ADD[peer]}"}
        result = run_worker(args, peer, python)
        if "missing" in result:
            return {"skipped": f"{result['missing']}; to add it: {HOW_TO_ADD[peer]}"}
        return result
    except subprocess.TimeoutExpired:
        return {"failed": f"no result within {PEER_TIMEOUT_S} s"}
    except (PeerFailed, OSError) as error:
        return {"failed": str(error)}


def rates(epochs: list[tuple]) -> tuple[float, float | None]:
    """Epoch-1 samples/s and steady samples/s (epochs 2..N together; None with one epoch), from
    (seconds, samples, ...) per epoch."""
    first_seconds, first_samples = epochs[0][:2]
    rest = epochs[1:]
    steady = sum(epoch[1] for epoch in rest) / sum(epoch[0] for epoch in rest) if rest else None
    return first_samples / first_seconds, steady


def best_rounds(rounds: dict[str, list[dict]]) -> tuple[dict[str, dict], dict[str, tuple[float, float]]]:
    """Each peer's round with the highest steady rate (this machine's disturbances only ever slow a
    round down), and the (lowest, highest) steady rate over its rounds."""
    best, spread = {}, {}
    for peer, results in rounds.items():
        timed = [result for result in results if "epochs" in result and rates(result["epochs"])[1]]
        if not timed:
            best[peer] = results[0]
            continue
        steadies = [rates(result["epochs"])[1] for result in timed]
        best[peer] = timed[steadies.index(max(steadies))]
        spread[peer] = (min(steadies), max(steadies))
    return best, spread


def print_table(args, results: dict[str, dict], spread: dict[str, tuple[float, float]]) -> None:
    steady_of = {peer: rates(result["epochs"])[1] for peer, result in results.items() if "epochs" in result}

    def ratio(value: float | None, reference: float | None) -> str:
        return f"{value / reference:.2f}x" if value and reference else "-"

    steady_label = f"steady (ep 2-{args.epochs})" if args.epochs > 2 else "steady (ep 2)"
    print(f"\n{args.records} records of 64x64 JPEG, batch {args.batch_size}, {args.threads} threads, "
          f"float32 NCHW normalized out, shuffled, {args.epochs} epochs; samples/s, best of {args.rounds} "
          f"interleaved round(s)")
    header = (f"{'peer':<22} {'version':<22} {'epoch 1':>9} {steady_label:>17} {'steady range':>15} "
              f"{'vs DALI':>8} {'vs ceiling':>10}")
    print(header)
    print("-" * len(header))
    notes = []
    for peer, result in results.items():
        if "epochs" not in result:
            status = "skipped" if "skipped" in result else "failed"
            print(f"{PEERS[peer]:<22} {status:<22}")
            notes.append(f"{peer}: {status}: {result.get('skipped') or result.get('failed')}")
            continue
        first, steady = rates(result["epochs"])
        steady_text = f"{steady:,.0f}" if steady else "-"
        low, high = spread.get(peer, (steady, steady))
        range_text = f"{low / 1000:,.1f}k-{high / 1000:,.1f}k" if steady else "-"
        print(f"{PEERS[peer]:<22} {result['version']:<22} {first:>9,.0f} {steady_text:>17} {range_text:>15} "
              f"{ratio(steady, steady_of.get('dali')):>8} {ratio(steady, steady_of.get('ceiling')):>10}")
    if notes:
        print()
    for note in notes:
        print(note)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="See the module docstring for "
                                     "the peers, the fair rule and how to install DALI and MXNet.")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/flow-bench"),
                        help="where the benchmark .rec is built and cached (default: %(default)s)")
    parser.add_argument("--fixtures", type=Path, default=FIXTURES_DIR,
                        help="folder with the MXNet-made train.rec and val.rec (default: %(default)s)")
    parser.add_argument("--dali-python", help="interpreter with nvidia-dali-cuda120 (default: this one, "
                        "skipped if DALI is not installed here)")
    parser.add_argument("--mxnet-python", help="interpreter with mxnet 1.9.1 (default: skip MXNet)")
    parser.add_argument("--threads", type=int, default=2, help="threads / workers of every peer (default: 2)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5, help="epoch 1 is reported apart; steady is the rest")
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of every peer; each peer's best round is reported (default: 3)")
    parser.add_argument("--only", default=",".join(PEERS),
                        help=f"comma-separated peers to run, in order (default: {','.join(PEERS)})")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)  # child-process mode
    return arguments.check(parser, parser.parse_args(argv),
                           ("threads", "batch_size", "epochs", "records", "rounds"), PEERS)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    rec_path, _ = build_dataset(args.fixtures, args.data_dir, args.records)
    rounds: dict[str, list[dict]] = {peer: [] for peer in args.only}
    for number in range(1, args.rounds + 1):
        for peer in args.only:
            if rounds[peer] and "epochs" not in rounds[peer][0]:
                continue  # skipped or failed once: it will not do better
            print(f"round {number}/{args.rounds}: running {peer} ...", file=sys.stderr, flush=True)
            rounds[peer].append(measure(args, peer, rec_path))
    print_table(args, *best_rounds(rounds))


if __name__ == "__main__":
    main()
