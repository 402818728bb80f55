"""Input pipelines on ImageNet-like photos: flow's loader against DALI's CPU pipeline, MXNet and the decode ceiling.

bench/test_io.py's method (each peer in a fresh process, interleaved rounds, 2 threads each) on
the work ImageNet training does: photos of ~500x375 px read with resize + random crop, or with
RandomResizedCrop. Ratios, not absolute figures: on a shared machine the CPU a process gets moves
its samples/s, so each round's figures are divided by that round's DALI figures and the median of
those per-round ratios is reported, for samples/s and for samples per CPU-second.

Usage (from the repository root, with the project venv and its `bench` extra:
`.venv/bin/pip install -e '.[bench]'`):

    .venv/bin/python bench/natural_io.py --dali-python /work/bench-venvs/dali/bin/python \\
        --mxnet-python /work/mxnet-venv/bin/python
    .venv/bin/python bench/natural_io.py --only flow,ceiling --workloads rrc --rounds 1

The data set (--records photos, default 2,048, written once into --data-dir): random crops of the
photographs that ship inside scikit-image (astronaut, coffee, chelsea, rocket) and scikit-learn
(china, flower), of an aspect (width / height) drawn log-uniform in 0.6-1.8 and 50-100% of the
largest such window, resized (Pillow bicubic) so that the shorter side is 300-500 px, mirrored on a
coin, JPEG quality 85-95 (libjpeg-turbo, 4:2:0), labelled by source photo, packed into a .rec with
its .idx by flow's own RecordWriter. No download.

Workloads, each out a float32 NCHW 224x224 batch of --batch-size, normalized with MEAN and STD:
  resize  shorter side to 256, a random 224x224 crop, random mirror.
          flow: data.resize = 256, random_crop, random_mirror.
          DALI: fn.readers.mxnet -> fn.decoders.image -> fn.resize(resize_shorter=256) ->
                fn.crop_mirror_normalize(crop 224, random crop_pos_x/y, mirror = coin flip).
          MXNet: ImageRecordIter(resize=256, rand_crop=True, rand_mirror=True).
  rrc     RandomResizedCrop 224 (area 0.08-1, aspect 3/4-4/3, 10 tries) + random mirror.
          flow: data.random_resized_crop with min_random_area 0.08, aspect 0.75-1.3333, random_mirror.
          DALI: fn.decoders.image_random_crop (decodes only the window) -> fn.resize(224x224) ->
                fn.crop_mirror_normalize(mirror = coin flip).
          MXNet: ImageRecordIter(random_resized_crop=True, min_random_area=0.08, min/max_aspect_ratio).
Peers:
  flow     `python -m flow test-io CONFIG` with a config this script writes; its epoch lines give
           the times, and its process CPU time (/proc/PID/stat, all threads) is read as each line
           arrives.
  dali     CPU only (device_id=None), num_threads = --threads; the workers of test_io.py otherwise.
  mxnet    preprocess_threads = --threads; reset() after each epoch, as Module.fit.
  ceiling  no loader and no augmentation: every photo decoded at full size with flow.image.decode
           (simplejpeg) by --threads threads; the same row under both workloads.

Samples/s is steady: samples / seconds over epochs 2..N (epoch 1 builds the loader and warms up).
Samples per CPU-second: the same samples / the process's CPU time (user + system, all threads)
over those epochs: what a peer costs, whatever share of the machine it got.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import arguments  # bench/arguments.py, beside this script
import test_io  # the peers' shared machinery: timing, batch checks, worker processes

MEAN, STD, SEED = test_io.MEAN, test_io.STD, test_io.SEED
IMAGE_SHAPE = (3, 224, 224)
RESIZE = 256
RRC_AREA = (0.08, 1.0)
RRC_ASPECT = (3 / 4, 4 / 3)
SHORTER_SIDE = (300, 500)
QUALITY = (85, 95)
SOURCE_ASPECT = (0.6, 1.8)
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
DATASET_VERSION = 1  # in the file name: a change to how the photos are made writes a new set

WORKLOADS = {
    "resize": "resize 256 + random crop 224 + mirror",
    "rrc": "RandomResizedCrop 224 (area 0.08-1, aspect 3/4-4/3) + mirror",
}
PEERS = {
    "flow": "flow test-io",
    "dali": "DALI CPU pipeline",
    "mxnet": "MXNet ImageRecordIter",
    "ceiling": "decode-only ceiling",
}


def dataset_paths(data_dir: Path, records: int) -> tuple[Path, Path]:
    rec_path = data_dir / f"photos-v{DATASET_VERSION}-{records}.rec"
    return rec_path, rec_path.with_suffix(".idx")


# --------------------------------------------------------------------------- workers (child processes)


def run_dali(args, rec_path: Path, idx_path: Path) -> dict:
    from nvidia.dali import fn, pipeline_def, types

    height, width = IMAGE_SHAPE[1:]

    @pipeline_def(batch_size=args.batch_size, num_threads=args.threads, device_id=None, seed=SEED)
    def pipeline():
        jpegs, labels = fn.readers.mxnet(path=[str(rec_path)], index_path=[str(idx_path)],
                                         random_shuffle=True, pad_last_batch=True, name="reader")
        mirror = fn.random.coin_flip()
        if args.workload == "resize":
            images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
            images = fn.resize(images, resize_shorter=RESIZE)
            images = fn.crop_mirror_normalize(images, crop=(height, width), crop_pos_x=fn.random.uniform(range=(0, 1)),
                                              crop_pos_y=fn.random.uniform(range=(0, 1)), mirror=mirror,
                                              dtype=types.FLOAT, output_layout="CHW", mean=list(MEAN), std=list(STD))
        else:
            images = fn.decoders.image_random_crop(jpegs, device="cpu", output_type=types.RGB,
                                                   random_area=list(RRC_AREA), random_aspect_ratio=list(RRC_ASPECT),
                                                   num_attempts=10)
            images = fn.resize(images, resize_x=width, resize_y=height)
            images = fn.crop_mirror_normalize(images, mirror=mirror, dtype=types.FLOAT, output_layout="CHW",
                                              mean=list(MEAN), std=list(STD))
        return images, labels

    return test_io.time_dali(args, pipeline, IMAGE_SHAPE)


def run_mxnet(args, rec_path: Path, idx_path: Path) -> dict:
    import mxnet as mx

    if args.workload == "resize":
        augmentation = {"resize": RESIZE, "rand_crop": True}
    else:
        augmentation = {"random_resized_crop": True, "min_random_area": RRC_AREA[0], "max_random_area": RRC_AREA[1],
                        "min_aspect_ratio": RRC_ASPECT[0], "max_aspect_ratio": RRC_ASPECT[1]}

    def make_iter():
        return mx.io.ImageRecordIter(
            path_imgrec=str(rec_path), path_imgidx=str(idx_path), data_shape=IMAGE_SHAPE,
            batch_size=args.batch_size, shuffle=True, seed=SEED, preprocess_threads=args.threads,
            rand_mirror=True, mean_r=MEAN[0], mean_g=MEAN[1], mean_b=MEAN[2], std_r=STD[0], std_g=STD[1],
            std_b=STD[2], dtype="float32", **augmentation)

    def run_epoch(record_iter) -> int:
        samples = sum(test_io.check_batch(batch.data[0].asnumpy(), args.batch_size, IMAGE_SHAPE)
                      for batch in record_iter)
        record_iter.reset()
        return samples

    return {"version": f"MXNet {mx.__version__}", "epochs": test_io.time_epochs(make_iter, run_epoch, args.epochs)}


def run_ceiling(args, rec_path: Path, idx_path: Path) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    import simplejpeg

    from flow.image import decode
    from flow.recordio import IndexedRecordReader, unpack

    with IndexedRecordReader(rec_path, idx_path) as reader:
        jpegs = [unpack(record)[1] for record in reader]
    slices = [jpegs[thread::args.threads] for thread in range(args.threads)]

    def decode_slice(payloads: list[bytes]) -> int:
        for payload in payloads:
            decode(payload)  # the photos' sizes differ: a new array each, as a loader's first decode
        return len(payloads)

    def run_epoch(pool) -> int:
        return sum(pool.map(decode_slice, slices))

    return {"version": f"simplejpeg {simplejpeg.__version__}",
            "epochs": test_io.time_epochs(lambda: ThreadPoolExecutor(args.threads), run_epoch, args.epochs)}


WORKERS = {"dali": run_dali, "mxnet": run_mxnet, "ceiling": run_ceiling}


def worker_main(args) -> None:
    """Child-process mode: run one peer on one workload, print its timings as one JSON line."""
    rec_path, idx_path = dataset_paths(args.data_dir, args.records)
    try:
        result = WORKERS[args.worker](args, rec_path, idx_path)
    except ImportError as error:
        module = test_io.PEER_MODULE.get(args.worker, "")
        if error.name not in (module, module.split(".")[0]):
            raise
        result = {"missing": f"{module} is not installed in {sys.executable}"}
    print(test_io.RESULT_PREFIX + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- the data set


def source_photos() -> list:
    """The RGB photographs scikit-image and scikit-learn ship in their wheels."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    return [getattr(data, name)() for name in SKIMAGE_PHOTOS] + list(load_sample_images().images)


def make_photo(rng, source):
    """A random window of `source` of a random aspect, resized so its shorter side is 300-500 px."""
    import numpy as np
    from PIL import Image

    aspect = math.exp(rng.uniform(math.log(SOURCE_ASPECT[0]), math.log(SOURCE_ASPECT[1])))  # width / height
    shorter = int(rng.integers(SHORTER_SIDE[0], SHORTER_SIDE[1] + 1))
    height, width = (shorter, round(shorter * aspect)) if aspect >= 1 else (round(shorter / aspect), shorter)
    source_height, source_width = source.shape[:2]
    largest = min(source_height, source_width / aspect)  # the largest window of this aspect, its height
    window_height = max(1, round(largest * rng.uniform(0.5, 1.0)))
    window_width = min(source_width, max(1, round(window_height * aspect)))
    top = int(rng.integers(0, source_height - window_height + 1))
    left = int(rng.integers(0, source_width - window_width + 1))
    window = Image.fromarray(source[top:top + window_height, left:left + window_width])
    pixels = np.asarray(window.resize((width, height), Image.Resampling.BICUBIC))
    return pixels[:, ::-1] if rng.random() < 0.5 else pixels


def build_dataset(data_dir: Path, records: int) -> tuple[Path, Path]:
    """`records` photos (see the module docstring), written once and reused after."""
    import numpy as np

    from flow.image import encode
    from flow.recordio import IRHeader, RecordWriter, pack

    rec_path, idx_path = dataset_paths(data_dir, records)
    if idx_path.exists():  # RecordWriter renames the .idx into place last: present means complete
        return rec_path, idx_path
    sources = source_photos()
    rng = np.random.default_rng(SEED)
    data_dir.mkdir(parents=True, exist_ok=True)
    with RecordWriter(rec_path, index=True) as writer:
        for key in range(records):
            label = key % len(sources)
            jpeg = encode(make_photo(rng, sources[label]), ".jpg", int(rng.integers(QUALITY[0], QUALITY[1] + 1)))
            writer.write(pack(IRHeader(0, label, key, 0), jpeg), key=key)
    return rec_path, idx_path


def describe_dataset(rec_path: Path, idx_path: Path) -> str:
    from flow.image import decode_size
    from flow.recordio import IndexedRecordReader, unpack

    sizes, lengths = [], []
    with IndexedRecordReader(rec_path, idx_path) as reader:
        for record in reader:
            jpeg = unpack(record)[1]
            sizes.append(decode_size(jpeg))
            lengths.append(len(jpeg))
    heights, widths = zip(*sizes)
    return (f"{len(sizes)} photos, mean {statistics.mean(widths):.0f}x{statistics.mean(heights):.0f} px "
            f"(shorter side {min(map(min, sizes))}-{max(map(min, sizes))}), mean {statistics.mean(lengths) / 1024:.0f} KB")


# --------------------------------------------------------------------------- parent


def flow_config(args, rec_path: Path, workload: str) -> Path:
    if workload == "resize":
        augmentation = f"resize = {RESIZE}\nrandom_crop = true\n"
    else:
        augmentation = (f"random_resized_crop = true\nmin_random_area = {RRC_AREA[0]}\nmax_random_area = {RRC_AREA[1]}\n"
                        f"min_random_aspect_ratio = {RRC_ASPECT[0]}\nmax_random_aspect_ratio = {RRC_ASPECT[1]}\n")
    return test_io.write_flow_config(args.data_dir / f"flow-natural-io-{workload}.toml", args, rec_path, IMAGE_SHAPE,
                                     len(SKIMAGE_PHOTOS) + 2, "random_mirror = true\n" + augmentation)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, all its threads (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_flow(args, rec_path: Path, workload: str) -> dict:
    """`flow test-io` in a child process; its CPU time is read as each epoch line arrives."""
    command = [sys.executable, "-m", "flow", "test-io", str(flow_config(args, rec_path, workload))]
    stderr_path = args.data_dir / "flow-natural-io.stderr"
    epochs, cpu_before = [], 0.0
    with open(stderr_path, "w+") as stderr, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr,
                                                             text=True) as process:
        timer = threading.Timer(test_io.PEER_TIMEOUT_S, process.kill)  # a hung peer fails its row
        timer.start()
        try:
            for line in process.stdout:
                match = test_io.FLOW_EPOCH_LINE.match(line.strip())
                if match:
                    cpu = process_cpu_seconds(process.pid)
                    epochs.append((float(match[3]), int(match[2]), cpu - cpu_before))
                    cpu_before = cpu
            process.wait()
        finally:
            timer.cancel()
        stderr.seek(0)
        error = test_io.last_line(stderr.read())
    if process.returncode != 0 or len(epochs) != args.epochs:
        raise test_io.PeerFailed(error or f"exit status {process.returncode}, {len(epochs)} of {args.epochs} epoch lines")
    return {"version": f"flow {importlib.metadata.version('flow-fit')}", "epochs": epochs}


def run_worker(args, peer: str, python: str, workload: str) -> dict:
    command = [python, str(Path(__file__).resolve()), "--worker", peer, "--workload", workload,
               "--data-dir", str(args.data_dir), "--records", str(args.records), "--threads", str(args.threads),
               "--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=test_io.PEER_TIMEOUT_S)
    prefix = test_io.RESULT_PREFIX
    results = [line[len(prefix):] for line in finished.stdout.splitlines() if line.startswith(prefix)]
    if finished.returncode != 0 or not results:
        raise test_io.PeerFailed(test_io.last_line(finished.stderr) or f"exit status {finished.returncode}, no result")
    return json.loads(results[-1])


def measure(args, peer: str, rec_path: Path, workload: str) -> dict:
    """One peer's result on one workload: {"version", "epochs"}, or {"skipped": why} / {"failed": why}."""
    try:
        if peer == "flow":
            return run_flow(args, rec_path, workload)
        python = test_io.interpreter_for(args, peer)
        if python is None:
            return {"skipped": f"no --{peer}-python given; to add it: {test_io.HOW_TO_ADD[peer]}"}
        result = run_worker(args, peer, python, workload)
        if "missing" in result:
            return {"skipped": f"{result['missing']}; to add it: {test_io.HOW_TO_ADD[peer]}"}
        return result
    except subprocess.TimeoutExpired:
        return {"failed": f"no result within {test_io.PEER_TIMEOUT_S} s"}
    except (test_io.PeerFailed, OSError) as error:
        return {"failed": str(error)}


def steady(result: dict) -> tuple[float, float] | None:
    """(samples/s, samples per CPU-second) over epochs 2..N, or None when the result has no timings."""
    rest = result.get("epochs", [])[1:]
    if not rest:
        return None
    samples = sum(epoch[1] for epoch in rest)
    return samples / sum(epoch[0] for epoch in rest), samples / sum(epoch[2] for epoch in rest)


def round_ratios(rounds: list[dict], reference: list[dict]) -> list[tuple[float, float]]:
    """Per round, this peer's steady (samples/s, samples/CPU-s) divided by the reference's in that round."""
    pairs = [(steady(mine), steady(theirs)) for mine, theirs in zip(rounds, reference)]
    return [(mine[0] / theirs[0], mine[1] / theirs[1]) for mine, theirs in pairs if mine and theirs]


def print_tables(args, rounds: dict[tuple[str, str], list[dict]], dataset: str, load: list[tuple]) -> None:
    print(f"\n{dataset}; batch {args.batch_size}, {args.threads} threads,\nfloat32 NCHW 224x224 normalized out, "
          f"shuffled, {args.epochs} epochs (steady: 2-{args.epochs}), {args.rounds} interleaved round(s);\n"
          f"load average (1, 5, 15 min) before {load[0][0]:.2f} {load[0][1]:.2f} {load[0][2]:.2f}, "
          f"after {load[1][0]:.2f} {load[1][1]:.2f} {load[1][2]:.2f}")
    notes, rounds_text = [], []
    for workload in args.workloads:
        print(f"\n{WORKLOADS[workload]}")
        header = (f"{'peer':<22} {'version':<20} {'samples/s':>10} {'samples/CPU-s':>14} {'vs DALI':>8} "
                  f"{'vs DALI per CPU-s':>18}")
        print(header)
        print("-" * len(header))
        reference = rounds.get((workload, "dali"), [])
        for peer in args.only:
            results = rounds[(workload, peer)]
            timed = [figures for figures in map(steady, results) if figures]
            if not timed:
                status = "skipped" if "skipped" in results[0] else "failed"
                print(f"{PEERS[peer]:<22} {status:<20}")
                notes.append(f"{peer}: {status}: {results[0].get('skipped') or results[0].get('failed')}")
                continue
            ratios = round_ratios(results, reference)
            ratio_text = f"{'-':>8} {'-':>18}"
            if ratios:
                ratio_text = (f"{statistics.median(r[0] for r in ratios):>7.2f}x "
                              f"{statistics.median(r[1] for r in ratios):>17.2f}x")
            print(f"{PEERS[peer]:<22} {results[0]['version']:<20} {statistics.median(f[0] for f in timed):>10,.0f} "
                  f"{statistics.median(f[1] for f in timed):>14,.0f} {ratio_text}")
            if ratios and peer != "dali":
                rounds_text.append(f"  {workload} {peer}: " + ", ".join(f"{a:.2f}x/{b:.2f}x" for a, b in ratios))
    print("\nsamples/s and samples/CPU-s: medians over the rounds; vs DALI: medians of the per-round ratios;"
          "\nper round, vs DALI in samples/s / per CPU-s:")
    for line in rounds_text:
        print(line)
    for note in dict.fromkeys(notes):
        print(note)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="See the module docstring for "
                                     "the data set, the workloads and the peers; bench/test_io.py's for installing "
                                     "DALI and MXNet.")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/flow-bench-natural"),
                        help="where the photos' .rec is built and cached (default: %(default)s)")
    parser.add_argument("--dali-python", help="interpreter with nvidia-dali-cuda120 (default: this one, "
                        "skipped if DALI is not installed here)")
    parser.add_argument("--mxnet-python", help="interpreter with mxnet 1.9.1 (default: skip MXNet)")
    parser.add_argument("--threads", type=int, default=2, help="threads of every peer (default: 2)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="epoch 1 warms up; steady is the rest (default: 3)")
    parser.add_argument("--records", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every peer (default: 3)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated, in order (default: {','.join(WORKLOADS)})")
    parser.add_argument("--only", default=",".join(PEERS),
                        help=f"comma-separated peers to run, in order (default: {','.join(PEERS)})")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)  # child-process mode
    parser.add_argument("--workload", choices=list(WORKLOADS), default="resize", help=argparse.SUPPRESS)
    args = arguments.check(parser, parser.parse_args(argv), ("threads", "batch_size", "epochs", "records", "rounds"),
                           PEERS)
    args.workloads = [workload.strip() for workload in args.workloads.split(",") if workload.strip()]
    unknown = [workload for workload in args.workloads if workload not in WORKLOADS]
    if unknown:
        parser.error(f"--workloads: unknown {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the steady figures are epochs 2..N")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    rec_path, idx_path = build_dataset(args.data_dir, args.records)
    dataset = describe_dataset(rec_path, idx_path)
    load = [os.getloadavg()]
    rounds: dict[tuple[str, str], list[dict]] = {(w, p): [] for w in args.workloads for p in args.only}
    ceiling: list[dict] = []
    for number in range(1, args.rounds + 1):
        for workload in args.workloads:
            for peer in args.only:
                done = ceiling if peer == "ceiling" else rounds[(workload, peer)]
                if peer == "ceiling" and len(ceiling) == number:
                    rounds[(workload, peer)].append(ceiling[-1])  # decode only: one run a round serves both
                    continue
                if done and "epochs" not in done[0]:
                    done.append(done[0])  # skipped or failed once: it will not do better
                else:
                    print(f"round {number}/{args.rounds}: {workload}: running {peer} ...", file=sys.stderr, flush=True)
                    done.append(measure(args, peer, rec_path, workload))
                if peer == "ceiling":
                    rounds[(workload, peer)].append(ceiling[-1])
    load.append(os.getloadavg())
    results_path = args.data_dir / "natural-io-results.json"
    results_path.write_text(json.dumps({f"{workload} {peer}": results for (workload, peer), results in rounds.items()}))
    print(f"every round's epochs (seconds, samples, CPU seconds): {results_path}", file=sys.stderr)
    print_tables(args, rounds, dataset, load)


if __name__ == "__main__":
    main()
