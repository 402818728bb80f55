"""GPU training side by side: flow against plain PyTorch loops, ResNet-50 bf16 on one GPU.

The plain loops: one on synthetic batches already on the device (the compute ceiling), one fed by
a DataLoader over a `.rec` (what a user writes); flow on the same `.rec`, and on its synthetic data.

One run trains the same network, flow's own `flow.models.build_model("resnet", 1000, (3, 224, 224),
num_layers=50)`, with every peer on the same device, each in a fresh process, in --rounds
interleaved rounds; each peer's best round is reported with the range beside it, and the ratios
flow's issue 17 asks for are printed under the table.

Usage (from the repository root; on a GPU machine, see bench/gpu_run.sh, which installs flow there
without network and runs this with a time cap):

    python bench/gpu_train.py                                   # cuda:0, 2 rounds x 60 steps
    python bench/gpu_train.py --only ceiling,flow-synthetic --steps 100 --rounds 3
    python bench/gpu_train.py --smoke                           # CPU, tiny net: every peer end to end

The peers (all on --device, batch --batch-size, bf16 autocast, SGD momentum 0.9, wd 1e-4):
  ceiling         (a) a plain PyTorch loop on one random batch made on the device beforehand:
                  zero_grad, forward under autocast, cross-entropy, backward, torch.optim.SGD.step;
                  no host sync in the loop. What the GPU can do with this model and step.
  dataloader      (b) the same loop fed by torch.utils.data.DataLoader over the `.rec`: a map-style
                  dataset reading records with flow.recordio.IndexedRecordReader (opened lazily in
                  each worker), PIL decode, random crop to the image size and random mirror,
                  ToTensor + Normalize as float32 CHW; num_workers = --workers, pin_memory,
                  persistent_workers, shuffle, drop_last; batches copied with non_blocking=True.
  flow-synthetic  (c0) flow (flow.open_run on the config this script writes, as `flow run` does) with
                  data.benchmark = true: the loader's synthetic uint8 batches, no IO. flow's own
                  overhead over the ceiling: the host-to-device copy, its fit loop and metrics.
  flow-rec        (c) flow on the `.rec`: CPU decode with data_nthreads = --workers, the same
                  random crop and mirror (data.random_crop, data.random_mirror), data.layout =
                  "uint8_nhwc" (normalized on the device).
  Both flow peers: network resnet, num_layers, devices [--device], precision "bf16", and
  `train.channels_last = true` with --channels-last, no `train.skip_nonfinite` (it reads the loss
  back every step). flow's GPU JPEG decode (`data.decode = "gpu"`, peer c2 of issue 17) is not
  built yet, so there is no such peer.

The `.rec`: --records RGB JPEGs of --image-size pixels square (smooth random images, bilinear
blow-ups of 7x7 random colours, quality 90), labels 0..999 in turn, packed with flow.recordio's
writer into --work-dir once and reused by later runs. At 224 they are ~6.7 KB each, smaller than
photos of that size (~15-30 KB), so they decode faster than real data would: the two peers that
decode have it easier here than on ImageNet. Random crops of an image the size of the network's
input keep the whole image (as flow's would): what is left of augmentation is the mirror.

The fair rule:
  - Every peer runs --steps full batches (flow: whole epochs, at least --steps batches) and the
    first --warmup steps are not timed (cuDNN's autotuning, allocator growth, worker start).
  - Steady samples/s = batch x steps / seconds from the end of warm-up to the end of the last
    step, where "end" is a point the host knows the GPU is done: the plain loops call
    torch.cuda.synchronize() there; flow is timed at its BatchEnd and EpochEnd events (every
    train.disp_batches = 10 batches and at epoch ends), which come once the step results, and
    so the GPU work, are in. flow's window starts at the first such event past --warmup steps.
  - GPU busy: torch.cuda.utilization() (NVML through pynvml), or else `nvidia-smi
    --query-gpu=utilization.gpu --loop-ms=100`, sampled every 100 ms in the peer's process; the share
    is the mean over the samples inside the steady window (N/A on the CPU or with neither).
    NVML's figure is the share of time at least one kernel ran, not how full the SMs were.
  - MFU = steady samples/s x training FLOPs per sample / (--peak-tflops x 1e12). Training FLOPs
    are counted by torch.utils.flop_counter on the network's forward and backward for one image
    (2 FLOPs a multiply-add: ResNet-50 at 224 is 8.18 GFLOPs forward, 24.5 training; the 4.09
    often quoted is multiply-adds). --peak-tflops defaults to the H200's datasheet dense bf16 rate,
    989; a bf16 matmul reached ~790 TFLOP/s on the device machine here.
  - cuDNN's benchmark mode (torch.backends.cudnn.benchmark) is on in every peer's process, flow's
    too, unless --no-cudnn-benchmark: flow's compute actor does not set it itself.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import arguments  # bench/arguments.py, beside this script

MEAN = (123.68, 116.779, 103.939)
STD = (58.393, 57.12, 57.375)
NUM_CLASSES = 1000
LR, MOMENTUM, WD = 0.01, 0.9, 1e-4  # lr small enough that random labels never drive a bf16 step to NaN
SEED = 0
JPEG_QUALITY = 90
FLOW_DISP_BATCHES = 10  # flow's BatchEnd events, and so its timing marks, every this many batches
SAMPLE_SECONDS = 0.1  # GPU utilization sampling period
FAILURE_LINES = 25  # of a failed peer's stderr, shown on ours: a one-shot GPU run has no second look
RESULT_PREFIX = "gpu-train-bench-result: "  # marks the JSON line a worker prints among library chatter

PEERS = {
    "ceiling": "(a) plain loop, data on device",
    "flow-synthetic": "(c0) flow, data.benchmark",
    "dataloader": "(b) plain loop + DataLoader",
    "flow-rec": "(c) flow on the .rec",
}
# A peer whose import of these fails is skipped, with how to add them; any other error fails its row.
FLOW_MODULES = ("trio", "outcome", "sniffio", "simplejpeg", "msgpack")
PEER_MODULES = {"dataloader": ("PIL",), "flow-synthetic": FLOW_MODULES, "flow-rec": FLOW_MODULES}
HOW_TO_ADD = {"dataloader": "pip install pillow",
              "flow-synthetic": "pip install -e . (without network: bench/gpu_run.sh)",
              "flow-rec": "pip install -e . (without network: bench/gpu_run.sh)"}

# What --smoke and a GPU run default to; an option given on the command line wins over both.
GPU_DEFAULTS = {"device": "cuda:0", "image_size": 224, "num_layers": 50, "batch_size": 256, "records": 4096,
                "steps": 60, "warmup": 10, "rounds": 2, "workers": os.cpu_count() or 4, "channels_last": True,
                "torch_threads": 0, "peer_timeout": 300}
SMOKE_DEFAULTS = {"device": "cpu", "image_size": 16, "num_layers": 8, "batch_size": 8, "records": 32,
                  "steps": 6, "warmup": 2, "rounds": 1, "workers": 2, "channels_last": False,
                  "torch_threads": 1, "peer_timeout": 120}


def rec_path_for(settings: dict) -> Path:
    return Path(settings["work_dir"]) / f"synthetic-{settings['records']}x{settings['image_size']}px.rec"


# --------------------------------------------------------------------------- workers (child processes)


class UtilizationSampler:
    """The GPU's utilization every SAMPLE_SECONDS in a background thread: (perf_counter, percent) pairs."""

    def __init__(self, device):
        self.samples: list[tuple[float, float]] = []
        self.source = None
        self.process = None
        self.stopped = threading.Event()
        if device.type != "cuda":
            return
        import torch

        index = device.index if device.index is not None else torch.cuda.current_device()
        try:
            torch.cuda.utilization(index)
            self.source = "NVML"
            threading.Thread(target=self._poll_nvml, args=(index,), daemon=True).start()
        except Exception:  # no pynvml, or NVML refuses: nvidia-smi's own sampling loop instead
            try:
                self.process = subprocess.Popen(
                    ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                     f"--loop-ms={int(SAMPLE_SECONDS * 1000)}"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            except OSError:
                return
            self.source = "nvidia-smi"
            threading.Thread(target=self._read_smi, daemon=True).start()

    def _poll_nvml(self, index: int) -> None:
        import torch

        while not self.stopped.wait(SAMPLE_SECONDS):
            self.samples.append((time.perf_counter(), float(torch.cuda.utilization(index))))

    def _read_smi(self) -> None:
        for line in self.process.stdout:
            try:
                self.samples.append((time.perf_counter(), float(line.strip())))
            except ValueError:
                continue

    def busy_share(self, start: float, end: float) -> float | None:
        """Mean utilization (0-1) of the samples taken between `start` and `end`."""
        self.stopped.set()
        if self.process is not None:
            self.process.terminate()
        inside = [percent for at, percent in self.samples if start <= at <= end]
        return sum(inside) / len(inside) / 100 if inside else None


def prepare_torch(settings: dict):
    """The device, with every peer's process-wide torch settings."""
    import torch

    torch.manual_seed(SEED)
    if settings["torch_threads"]:
        torch.set_num_threads(settings["torch_threads"])
    device = torch.device(settings["device"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = settings["cudnn_benchmark"]
    return device


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def resnet(settings: dict):
    """flow's network, initialized as flow initializes it (so every peer trains the same weights)."""
    import torch

    from flow import models

    size = settings["image_size"]
    model = models.build_model("resnet", NUM_CLASSES, (3, size, size), num_layers=settings["num_layers"])
    models.initialize(model, models.default_initializer("resnet"), torch.Generator().manual_seed(SEED))
    return model


def training_flops_per_sample(settings: dict) -> float:
    """FLOPs of one image's forward and backward through the network, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from flow import models

    size = settings["image_size"]
    with torch.device("meta"):
        model = models.build_model("resnet", NUM_CLASSES, (3, size, size), num_layers=settings["num_layers"])
        data = torch.empty(1, 3, size, size)
    with FlopCounterMode(display=False) as counter:
        model(data).float().sum().backward()
    return float(counter.get_total_flops())


def plain_loop(settings: dict, batches, note: str) -> dict:
    """The plain PyTorch step on the (data, label) pairs on the device that `batches(device, memory_format)`
    yields, timed from the end of --warmup steps to the end of --steps, with a device sync at both
    ends and none between."""
    import torch
    import torch.nn.functional as F

    device = prepare_torch(settings)
    sampler = UtilizationSampler(device)
    memory_format = torch.channels_last if settings["channels_last"] else torch.contiguous_format
    model = resnet(settings).to(device, memory_format=memory_format)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    steps, warmup = settings["steps"], settings["warmup"]
    start = None
    for step, (data, target) in enumerate(batches(device, memory_format)):
        if step == warmup:
            synchronize()
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(data)
        loss = F.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step + 1 == steps:
            break
    synchronize()
    end = time.perf_counter()
    return {"version": f"torch {torch.__version__}", "device": device_name(device), "steps": steps - warmup,
            "flops_per_sample": training_flops_per_sample(settings),
            "seconds": end - start, "busy": sampler.busy_share(start, end), "busy_source": sampler.source,
            "note": note}


def run_ceiling(settings: dict) -> dict:
    import torch

    def batches(device, memory_format):
        generator = torch.Generator(device=device).manual_seed(SEED)
        size, batch = settings["image_size"], settings["batch_size"]
        data = torch.randn(batch, 3, size, size, device=device, generator=generator).contiguous(
            memory_format=memory_format)
        target = torch.randint(0, NUM_CLASSES, (batch,), device=device, generator=generator)
        while True:
            yield data, target

    return plain_loop(settings, batches, "")


class RecordImageDataset:
    """Map-style dataset over a `.rec`: PIL decode, random crop and mirror, ToTensor + Normalize.

    The reader is opened in each worker on first use (a memory map does not travel to worker
    processes). Random draws use Python's `random`, which DataLoader seeds anew in each worker.
    """

    def __init__(self, rec_path: Path, length: int, size: int):
        import torch
        from PIL import Image  # noqa: F401 (imported in the parent, as a user's top-level import: workers inherit it)

        self.rec_path, self.length, self.size = rec_path, length, size
        self.mean = torch.tensor(MEAN).view(3, 1, 1) / 255  # Normalize after ToTensor's / 255
        self.std = torch.tensor(STD).view(3, 1, 1) / 255
        self.reader = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, position: int):
        import numpy as np
        import torch
        from PIL import Image

        from flow.recordio import IndexedRecordReader, unpack

        if self.reader is None:
            self.reader = IndexedRecordReader(self.rec_path)
        header, jpeg = unpack(self.reader.read_position(position))
        with Image.open(io.BytesIO(jpeg)) as image:
            pixels = np.array(image.convert("RGB"))  # writable, as ToTensor copies
        top = random.randint(0, pixels.shape[0] - self.size)
        left = random.randint(0, pixels.shape[1] - self.size)
        pixels = pixels[top:top + self.size, left:left + self.size]
        if random.random() < 0.5:
            pixels = pixels[:, ::-1]
        chw = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float().div_(255)
        return (chw - self.mean) / self.std, int(header.label)


def run_dataloader(settings: dict) -> dict:
    from torch.utils.data import DataLoader

    from flow.recordio import read_index

    rec_path = rec_path_for(settings)
    dataset = RecordImageDataset(rec_path, len(read_index(rec_path.with_suffix(".idx"))[0]), settings["image_size"])
    cuda = settings["device"].startswith("cuda")

    def batches(device, memory_format):
        loader = DataLoader(dataset, batch_size=settings["batch_size"], shuffle=True, drop_last=True,
                            num_workers=settings["workers"], pin_memory=cuda, persistent_workers=True)
        while True:  # epochs, until the loop has its steps
            for data, target in loader:
                yield (data.to(device, non_blocking=True).contiguous(memory_format=memory_format),
                       target.to(device, non_blocking=True))

    return plain_loop(settings, batches, f"{settings['workers']} workers")


def flow_config_text(settings: dict, synthetic: bool) -> str:
    """The TOML config flow's peer runs (`flow run` takes the same file)."""
    size, batch = settings["image_size"], settings["batch_size"]
    batches_per_epoch = settings["records"] // batch
    data = (["benchmark = true", f"num_examples = {settings['records']}"] if synthetic else
            [f"data_train = {json.dumps(str(rec_path_for(settings)))}", "shuffle = true", "random_crop = true",
             "random_mirror = true"])
    train = [f"num_epochs = {math.ceil(settings['steps'] / batches_per_epoch)}",
             f"devices = [{json.dumps(settings['device'])}]", 'precision = "bf16"', 'optimizer = "sgd"',
             f"lr = {LR}", f"mom = {MOMENTUM}", f"wd = {WD}", f"disp_batches = {FLOW_DISP_BATCHES}", f"seed = {SEED}"]
    # (no skip_nonfinite: it reads the loss back every step, a host sync that the plain loops do not make)
    if settings["channels_last"]:
        train.append("channels_last = true")
    return "\n".join([
        "[data]", *data, f"image_shape = [3, {size}, {size}]", f"num_classes = {NUM_CLASSES}",
        f"batch_size = {batch}", f"data_nthreads = {settings['workers']}", 'layout = "uint8_nhwc"',
        'last_batch = "discard"', f"rgb_mean = {list(MEAN)}", f"rgb_std = {list(STD)}",
        "[model]", 'network = "resnet"', f"num_layers = {settings['num_layers']}",
        "[train]", *train, ""])


def run_flow(settings: dict, synthetic: bool) -> dict:
    """flow as `flow run` runs the config; timed between its BatchEnd/EpochEnd events."""
    import torch
    import trio

    from flow.config import load_config
    from flow.events import BatchEnd, EpochEnd
    from flow.run import open_run
    from flow.run_command import configure_logging

    device = prepare_torch(settings)
    config_path = Path(settings["work_dir"]) / f"flow-{'synthetic' if synthetic else 'rec'}.toml"
    config_path.write_text(flow_config_text(settings, synthetic))
    config = load_config(config_path)
    configure_logging()  # the CLI's log lines on stderr, part of what `flow run` costs
    sampler = UtilizationSampler(device)
    marks = []  # (steps done, perf_counter) at each BatchEnd and EpochEnd

    async def train() -> None:
        done_before_epoch = 0
        async with open_run(config) as run:
            async for event in run.events():
                if isinstance(event, BatchEnd):
                    marks.append((done_before_epoch + event.batch + 1, time.perf_counter()))
                elif isinstance(event, EpochEnd):
                    done_before_epoch += event.batches
                    marks.append((done_before_epoch, time.perf_counter()))
            await run.wait()

    trio.run(train)
    timed = [mark for mark in marks if mark[0] >= settings["warmup"]]
    if len(timed) < 2:
        raise RuntimeError(f"flow reported {len(marks)} timing marks, too few past {settings['warmup']} warm-up steps")
    (first_step, start), (last_step, end) = timed[0], timed[-1]
    notes = [] if synthetic else [f"{settings['workers']} decode threads"]
    return {"version": f"flow {importlib.metadata.version('flow-fit')}, torch {torch.__version__}",
            "device": device_name(device), "steps": last_step - first_step, "seconds": end - start,
            "flops_per_sample": training_flops_per_sample(settings),
            "busy": sampler.busy_share(start, end), "busy_source": sampler.source,
            "note": "; ".join(notes), "config": str(config_path)}


WORKERS = {"ceiling": run_ceiling, "dataloader": run_dataloader,
           "flow-synthetic": lambda settings: run_flow(settings, synthetic=True),
           "flow-rec": lambda settings: run_flow(settings, synthetic=False)}


def worker_main(peer: str, settings: dict) -> None:
    """Child-process mode: run one peer, print its result as one JSON line."""
    try:
        result = WORKERS[peer](settings)
    except ImportError as error:
        if error.name not in PEER_MODULES.get(peer, ()):
            raise
        result = {"missing": f"{error.name} is not installed in {sys.executable}; to add it: {HOW_TO_ADD[peer]}"}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent


def smooth_images(count: int, size: int, rng) -> "np.ndarray":
    """`count` RGB uint8 images: 7x7 random colours blown up bilinearly (smooth, not noise)."""
    import numpy as np

    knots = 7
    position = np.linspace(0, knots - 1, size)
    low = np.floor(position).astype(int).clip(0, knots - 2)
    weight = position - low
    blow_up = np.zeros((size, knots))  # each output row (or column) as a blend of two knots
    blow_up[np.arange(size), low] = 1 - weight
    blow_up[np.arange(size), low + 1] = weight
    colours = rng.uniform(0, 255, (count, 3, knots, knots))
    images = blow_up @ colours @ blow_up.T  # (count, 3, size, size)
    return images.transpose(0, 2, 3, 1).round().astype(np.uint8)


def build_rec(settings: dict) -> Path:
    """The benchmark's `.rec` + `.idx`, written once into the work dir and reused after."""
    import numpy as np

    from flow.image import encode
    from flow.recordio import IRHeader, RecordWriter, pack

    rec_path = rec_path_for(settings)
    if rec_path.with_suffix(".idx").exists():  # RecordWriter renames the .idx into place last: present means complete
        return rec_path
    rec_path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    chunk = 256
    with RecordWriter(rec_path, index=True) as writer:
        for first in range(0, settings["records"], chunk):
            images = smooth_images(min(chunk, settings["records"] - first), settings["image_size"], rng)
            for offset, image in enumerate(images):
                key = first + offset
                writer.write(pack(IRHeader(0, float(key % NUM_CLASSES), key, 0), encode(image, quality=JPEG_QUALITY)),
                             key=key)
    return rec_path


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def measure(settings: dict, peer: str) -> dict:
    """One peer's result: {"version", "steps", "seconds", "busy", ...}, or {"skipped": why} / {"failed": why}."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", peer,
               "--worker-settings", json.dumps(settings)]
    try:
        finished = subprocess.run(command, capture_output=True, text=True, timeout=settings["peer_timeout"])
    except subprocess.TimeoutExpired:
        return {"failed": f"no result within {settings['peer_timeout']} s"}
    results = [line[len(RESULT_PREFIX):] for line in finished.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if finished.returncode != 0 or not results:
        tail = "\n".join(finished.stderr.strip().splitlines()[-FAILURE_LINES:])
        print(f"{peer} failed (exit status {finished.returncode}); its stderr ends:\n{tail}",
              file=sys.stderr, flush=True)
        return {"failed": last_line(finished.stderr) or f"exit status {finished.returncode}, no result line"}
    result = json.loads(results[-1])
    if "missing" in result:
        return {"skipped": result["missing"]}
    return result


def rate(settings: dict, result: dict) -> float:
    return result["steps"] * settings["batch_size"] / result["seconds"]


def median_round_ratio(settings: dict, rounds: dict[str, list[dict]], peer: str, reference: str) -> float | None:
    """The median over rounds of peer / reference samples/s, each ratio from one round."""
    ratios = sorted(rate(settings, mine) / rate(settings, theirs)
                    for mine, theirs in zip(rounds[peer], rounds[reference]) if "steps" in mine and "steps" in theirs)
    return ratios[len(ratios) // 2] if ratios else None


def table_lines(settings: dict, rounds: dict[str, list[dict]]) -> list[str]:
    best, notes = {}, []
    for peer, results in rounds.items():
        for result in results:
            if "steps" not in result:
                notes.append(f"{peer}: {'skipped' if 'skipped' in result else 'failed'}: "
                             f"{result.get('skipped') or result.get('failed')}")
        done = sorted((rate(settings, result), index) for index, result in enumerate(results) if "steps" in result)
        if done:
            best[peer] = (results[done[-1][1]], f"{done[0][0]:,.0f}-{done[-1][0]:,.0f}")
    rates = {peer: rate(settings, result) for peer, (result, _) in best.items()}
    device = next((result["device"] for result, _ in best.values()), settings["device"])
    flops = next((result["flops_per_sample"] for result, _ in best.values()), 0.0)
    cuda = settings["device"].startswith("cuda")
    size = settings["image_size"]
    rounds_done = max((len(results) for results in rounds.values()), default=0)
    flops_text = (f"{flops / 1e9:.2f} GFLOPs a sample trained, MFU against {settings['peak_tflops']:g} TFLOP/s"
                  if flops else "no peer ran")
    lines = [f"resnet-{settings['num_layers']} (flow.models), {size}x{size}, batch {settings['batch_size']}, bf16, "
             f"{'channels_last' if settings['channels_last'] else 'NCHW'}, SGD momentum, {device}; "
             f"{settings['records']} JPEG records, {settings['workers']} workers/threads",
             f"steady samples/s over steps {settings['warmup'] + 1}-{settings['steps']}, best of {rounds_done} "
             f"round{'s' * (rounds_done != 1)}; " + flops_text, ""]
    header = (f"{'peer':<32} {'version':<30} {'samples/s':>10} {'range':>13} {'ms/step':>8} {'GPU busy':>9} "
              f"{'MFU':>6} {'vs (a)':>7}  note")
    lines += [header, "-" * len(header)]
    for peer in rounds:
        if peer not in best:
            missing = "skipped" if rounds[peer] and "skipped" in rounds[peer][0] else "failed"
            lines.append(f"{PEERS[peer]:<32} {missing}")
            continue
        result, spread = best[peer]
        samples = rates[peer]
        busy = f"{result['busy']:.0%}" if result["busy"] is not None else "N/A"
        mfu = f"{samples * flops / (settings['peak_tflops'] * 1e12):.1%}" if cuda else "N/A"
        versus = f"{samples / rates['ceiling']:.2f}x" if "ceiling" in rates else "-"
        lines.append(f"{PEERS[peer]:<32} {result['version']:<30} {samples:>10,.1f} {spread:>13} "
                     f"{settings['batch_size'] / samples * 1e3:>8.1f} {busy:>9} {mfu:>6} {versus:>7}  {result['note']}")
    lines.append("")
    for peer, reference, target in (("flow-synthetic", "ceiling", "target >= 0.97x"),
                                    ("flow-rec", "dataloader", "target >= 1.5x, or flow-rec = the ceiling"),
                                    ("flow-rec", "ceiling", "1.00x: the loader keeps up")):
        if peer in rates and reference in rates:
            median = median_round_ratio(settings, rounds, peer, reference)
            lines.append(f"{peer} / {reference}: {rates[peer] / rates[reference]:.2f}x best rounds, "
                         f"{median:.2f}x median of per-round ratios ({target})")
    busy_sources = {result.get("busy_source") for result, _ in best.values()} - {None}
    if busy_sources:
        lines.append(f"GPU busy read from {', '.join(sorted(busy_sources))}")
    lines += list(dict.fromkeys(notes))  # a failure repeated every round is said once
    return lines


def resolve(args: argparse.Namespace) -> dict:
    """The settings every worker gets: the smoke or GPU defaults, under what the command line gave."""
    defaults = SMOKE_DEFAULTS if args.smoke else GPU_DEFAULTS
    settings = {name: getattr(args, name) if getattr(args, name) is not None else default
                for name, default in defaults.items()}
    if settings["records"] < settings["batch_size"]:
        raise SystemExit(f"--records ({settings['records']}) must be at least --batch-size ({settings['batch_size']})")
    if not 0 <= settings["warmup"] < settings["steps"]:
        raise SystemExit(f"--warmup ({settings['warmup']}) must be 0 or more and below --steps ({settings['steps']})")
    if settings["device"].startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"--device {settings['device']}: torch {torch.__version__} sees no GPU here "
                             f"(--smoke runs every peer on the CPU)")
    return {**settings, "work_dir": str(args.work_dir), "peak_tflops": args.peak_tflops,
            "cudnn_benchmark": args.cudnn_benchmark}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="See the module docstring for the "
                                     "peers and the fair rule. Defaults are a GPU run's; --smoke changes them.")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, resnet-8 on 16x16, 32 records, batch 8, 6 steps, 1 round: every peer end to end")
    parser.add_argument("--device", help=f"torch device (default: {GPU_DEFAULTS['device']})")
    parser.add_argument("--image-size", type=int, help="records' and network input's side (default: 224)")
    parser.add_argument("--num-layers", type=int, help="resnet depth, as flow's model.num_layers (default: 50)")
    parser.add_argument("--batch-size", type=int, help="default: 256")
    parser.add_argument("--records", type=int, help="JPEG records in the generated .rec (default: 4096)")
    parser.add_argument("--steps", type=int, help="training steps a peer runs, warm-up included (default: 60)")
    parser.add_argument("--warmup", type=int, help="first steps not timed (default: 10)")
    parser.add_argument("--rounds", type=int, help="times every peer runs, interleaved (default: 2)")
    parser.add_argument("--workers", type=int,
                        help="DataLoader workers and flow's data_nthreads (default: this machine's cores)")
    parser.add_argument("--torch-threads", type=int,
                        help="intra-op threads of every peer (default: torch's own; 1 with --smoke)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                        help="channels_last memory format (flow: train.channels_last; default: on, off with --smoke)")
    parser.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.backends.cudnn.benchmark in every peer's process (default: on)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the device's peak dense bf16 TFLOP/s, for MFU (default: H200/H100 SXM, 989)")
    parser.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "flow-gpu-train-bench",
                        help="where the .rec and flow's configs are written (default: %(default)s)")
    parser.add_argument("--peer-timeout", type=int,
                        help="seconds before a peer's round counts as failed (default: 300)")
    parser.add_argument("--time-budget", type=float,
                        help="seconds after which no further peer run starts; the table shows what ran")
    parser.add_argument("--json", type=Path, help="also write every round's raw results here (after each peer run)")
    parser.add_argument("--only", default=",".join(PEERS),
                        help=f"comma-separated peers to run, in order (default: {','.join(PEERS)})")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)  # child-process mode
    parser.add_argument("--worker-settings", help=argparse.SUPPRESS)
    positive = ("image_size", "num_layers", "batch_size", "records", "steps", "rounds", "workers", "torch_threads",
                "peer_timeout")
    return arguments.check(parser, parser.parse_args(argv), positive, PEERS)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, json.loads(args.worker_settings))
        return
    started = time.monotonic()
    settings = resolve(args)
    print(f"writing {settings['records']} JPEG records into {settings['work_dir']} (once) ...",
          file=sys.stderr, flush=True)
    build_rec(settings)
    rounds: dict[str, list[dict]] = {peer: [] for peer in args.only}
    runs = [(round_number, peer) for round_number in range(1, settings["rounds"] + 1) for peer in rounds]
    for round_number, peer in runs:
        results = rounds[peer]
        if results and "skipped" in results[0]:
            continue  # not installed: no use asking again
        if args.time_budget is not None and time.monotonic() - started > args.time_budget:
            print(f"time budget of {args.time_budget:g} s spent: no more peer runs", file=sys.stderr, flush=True)
            break
        print(f"round {round_number}/{settings['rounds']}: running {peer} ...", file=sys.stderr, flush=True)
        results.append(measure(settings, peer))
        if args.json:
            args.json.write_text(json.dumps({"settings": settings, "rounds": rounds},
                                            indent=1))
    print("\n".join(table_lines(settings, rounds)))


if __name__ == "__main__":
    main()
