"""Checkpoint files, as fit.py names them, written atomically, checked against their checksums and
read back with weights_only=True.

    {prefix}-{epoch:04d}.manifest.json   size and sha256 of the epoch's .states and .params
    {prefix}-{epoch:04d}.states          optimizer state, update count, epoch, seed
    {prefix}-{epoch:04d}.params          the model's state_dict
    {prefix}-model.json                  what is needed to rebuild the model (flow.models.model_spec)
    {prefix}-best.manifest.json/.states/.params   the epoch with the best validation metric (checkpoint.best_metric)

A run stopped mid-epoch (flow/fit.py: SIGINT, SIGTERM or `run.stop()`) saves its position as
`{prefix}-{epoch:04d}-batch{batch:05d}.*`: `epoch` epochs and `batch` batches of the next one done,
its `.states` also holding the replicas' random states. fit.py's `prefix-NNNN` counts whole epochs
only, and a mid-epoch checkpoint must not take the name of the epoch checkpoint before it (which
`load_epoch` names); `--resume` orders them all by (epoch, batch), an epoch checkpoint being batch 0.

Each file goes to a temporary name, is fsynced, then renamed, in the order above. `.params` comes
last, so an epoch whose `.params` exists is complete. The manifest comes first (the checksums are
of the bytes in memory), so a complete epoch without one was written by a flow from before
checksums, never cut short between its files: such a checkpoint still loads, with a warning that
it is unverified, since refusing it would strand every run trained before them. A file whose size
or sha256 differs from its manifest (torn, truncated, a flipped bit, or replaced by another run's)
is refused; so is one holding anything but tensors and plain containers (torch.load's
weights_only: a pickled object could run code), and a model with NaN or inf weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from flow.atomic import write_atomically
from flow.errors import CheckpointError, FlowError

HASH_CHUNK = 1 << 20


def _name(prefix: str, epoch: int, batch: int) -> str:
    return f"{prefix}-{epoch:04d}" + (f"-batch{batch:05d}" if batch else "")


def params_path(prefix: str, epoch: int, batch: int = 0) -> Path:
    return Path(f"{_name(prefix, epoch, batch)}.params")


def states_path(prefix: str, epoch: int, batch: int = 0) -> Path:
    return Path(f"{_name(prefix, epoch, batch)}.states")


def manifest_path(prefix: str, epoch: int, batch: int = 0) -> Path:
    return Path(f"{_name(prefix, epoch, batch)}.manifest.json")


def best_params_path(prefix: str) -> Path:
    return Path(f"{prefix}-best.params")


def best_states_path(prefix: str) -> Path:
    return Path(f"{prefix}-best.states")


def model_json_path(prefix: str) -> Path:
    return Path(f"{prefix}-model.json")


def _torch_bytes(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _file_entry(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def save_checkpoint(prefix: str, epoch: int, model_state: dict, states: dict, model_spec: dict | None,
                    batch: int = 0) -> None:
    if model_spec is not None:
        write_atomically(model_json_path(prefix), json.dumps(model_spec, indent=1).encode())
    states_bytes, params_bytes = _torch_bytes(states), _torch_bytes(model_state)
    manifest = {"states": _file_entry(states_bytes), "params": _file_entry(params_bytes)}
    write_atomically(manifest_path(prefix, epoch, batch), json.dumps(manifest, indent=1).encode())
    write_atomically(states_path(prefix, epoch, batch), states_bytes)
    write_atomically(params_path(prefix, epoch, batch), params_bytes)


def non_finite_tensor(model_state: dict) -> str | None:
    """The name of the first floating-point tensor of `model_state` holding a NaN or inf; None if none does."""
    for name, tensor in model_state.items():
        if (isinstance(tensor, torch.Tensor) and (tensor.is_floating_point() or tensor.is_complex())
                and not bool(torch.isfinite(tensor).all())):
            return name
    return None


def _folder_and_pattern(prefix: str, suffixes: str) -> tuple[Path, re.Pattern]:
    prefix_path = Path(prefix)
    folder = prefix_path.parent if str(prefix_path.parent) else Path(".")
    return folder, re.compile(re.escape(prefix_path.name) + r"-(\d{4,})(?:-batch(\d{5,}))?\.(" + suffixes + r")$")


def _position(match: re.Match) -> tuple[int, int]:
    """(epoch, batch) of a checkpoint file name matched by `_folder_and_pattern`'s pattern."""
    return int(match.group(1)), int(match.group(2) or 0)


def _positions_with_params(prefix: str) -> set[tuple[int, int]]:
    """(epoch, batch) of every checkpoint of `prefix` whose `.params` exists (batch 0: an epoch's)."""
    folder, pattern = _folder_and_pattern(prefix, "params")
    names = os.listdir(folder) if folder.is_dir() else []
    return {_position(match) for name in names if (match := pattern.match(name))}


def save_best_checkpoint(prefix: str, model_state: dict, states: dict, model_spec: dict | None) -> None:
    """The best checkpoint, written as save_checkpoint writes an epoch's (`states["epoch"]` says which one it is)."""
    if model_spec is not None:
        write_atomically(model_json_path(prefix), json.dumps(model_spec, indent=1).encode())
    states_bytes, params_bytes = _torch_bytes(states), _torch_bytes(model_state)
    manifest = {"states": _file_entry(states_bytes), "params": _file_entry(params_bytes)}
    write_atomically(Path(f"{prefix}-best.manifest.json"), json.dumps(manifest, indent=1).encode())
    write_atomically(best_states_path(prefix), states_bytes)
    write_atomically(best_params_path(prefix), params_bytes)


def saved_epochs(prefix: str) -> list[int]:
    """Epochs with a complete checkpoint (both files), oldest first; whether they verify is load_checkpoint's say.
    Mid-epoch checkpoints are not among them."""
    return sorted(epoch for epoch, batch in _positions_with_params(prefix)
                  if not batch and states_path(prefix, epoch).exists())


def remove_mid_epoch_checkpoints(prefix: str, before: tuple[int, int]) -> None:
    """Removes the mid-epoch checkpoints older than position `before` (epoch, batch): a later
    checkpoint has been written, so they are what a stopped run left and its resumed run went past."""
    for epoch, batch in sorted(_positions_with_params(prefix)):
        if batch and (epoch, batch) < before:
            remove_checkpoint(prefix, epoch, batch)


def remove_checkpoint(prefix: str, epoch: int, batch: int = 0) -> None:
    # `.params` first: from then on the epoch is incomplete, and a crash leaves only leftovers.
    for path in (params_path(prefix, epoch, batch), states_path(prefix, epoch, batch),
                 manifest_path(prefix, epoch, batch)):
        try:
            path.unlink(missing_ok=True)
        except OSError as error:
            raise FlowError(f"cannot remove an old checkpoint file (checkpoint.keep): {error.strerror}", path) from None


def prune(prefix: str, newest_epoch: int, keep: int) -> None:
    """Removes all but the newest `keep` checkpoints up to `newest_epoch`, the one just written (good
    and whole), which is never removed. Later epochs on disk are an earlier run's, left as they are
    (a run resumed from an older epoch overwrites them as it gets there)."""
    older = [epoch for epoch in saved_epochs(prefix) if epoch < newest_epoch]
    for epoch in older[: max(len(older) - (keep - 1), 0)]:
        remove_checkpoint(prefix, epoch)


def remove_leftovers(prefix: str) -> None:
    """Removes what a killed run leaves of `prefix`'s checkpoints: temporary files, and the `.states`
    and manifests of epochs without `.params` (a save or a removal cut short), which can never load."""
    folder, pattern = _folder_and_pattern(prefix, r"params|states|manifest\.json")
    if not folder.is_dir():
        return
    model_json_tmp = model_json_path(prefix).name + ".tmp"
    try:
        for name in os.listdir(folder):
            if name == model_json_tmp:
                (folder / name).unlink(missing_ok=True)
            elif match := pattern.match(name.removesuffix(".tmp")):
                unfinished = name.endswith(".tmp") or not params_path(prefix, *_position(match)).exists()
                if unfinished:
                    (folder / name).unlink(missing_ok=True)
    except OSError as error:
        raise FlowError(f"cannot remove a killed run's leftover checkpoint files: {error.strerror}", folder) from None


@dataclass(frozen=True)
class Checkpoint:
    epoch: int
    model_state: dict
    states: dict
    verified: bool  # False: no manifest (written by a flow from before checksums), so damage would go unseen
    batch: int = 0  # batches of epoch `epoch` (counting from 0) done: a mid-epoch checkpoint; 0: a whole epoch's


def _checked_bytes(path: Path, entry: dict | None, manifest: Path) -> bytes:
    """The file's bytes, if it is as its manifest `entry` says (None: no manifest, nothing to check)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError("no such checkpoint file", path) from None
    except OSError as error:
        raise CheckpointError(f"cannot read: {error.strerror}", path) from None
    if entry is None:
        return data
    if len(data) != entry["bytes"]:
        raise CheckpointError(f"{len(data)} bytes, but {entry['bytes']} were written (truncated or overwritten "
                              f"since; {manifest.name} has its size)", path)
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(f"its sha256 differs from the one {manifest.name} recorded when it was written "
                              f"(damaged since)", path)
    return data


def _manifest(prefix: str, epoch: int, batch: int) -> dict | None:
    path = manifest_path(prefix, epoch, batch)
    try:
        manifest = json.loads(path.read_bytes())
        for key in ("states", "params"):
            if not (isinstance(manifest[key]["bytes"], int) and isinstance(manifest[key]["sha256"], str)):
                raise TypeError(key)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise CheckpointError(f"cannot read: {error.strerror}", path) from None
    except (ValueError, KeyError, TypeError):
        raise CheckpointError("not a checkpoint manifest (JSON with the size and sha256 of .states and .params)",
                              path) from None
    return manifest


def _unpickled(data: bytes, path: Path):
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file; all mean the same here
        refused = re.search(r"WeightsUnpickler error: (.*?)(?: Please use|$)", str(error), re.MULTILINE)
        if refused:
            raise CheckpointError(f"refused: it holds a pickled object, not only tensors ({refused.group(1)}); "
                                  f"flow loads checkpoints with weights_only=True so that they run no code",
                                  path) from None
        raise CheckpointError(f"cannot load checkpoint: {error}".splitlines()[0], path) from None


def read_checkpoint(prefix: str, epoch: int, batch: int = 0) -> Checkpoint:
    """The checkpoint saved at `epoch` (`batch`: mid-epoch), checked against its manifest; a
    CheckpointError names the file and what is wrong with it."""
    manifest = _manifest(prefix, epoch, batch)
    entries = manifest or {}
    loaded = {}
    for key, path in (("params", params_path(prefix, epoch, batch)), ("states", states_path(prefix, epoch, batch))):
        data = _checked_bytes(path, entries.get(key), manifest_path(prefix, epoch, batch))
        loaded[key] = _unpickled(data, path)
        if not isinstance(loaded[key], dict):
            raise CheckpointError(f"not a checkpoint: holds a {type(loaded[key]).__name__}, not a dict", path)
    if (name := non_finite_tensor(loaded["params"])) is not None:
        raise CheckpointError(f"the model's weights are not finite (NaN or inf in {name!r})",
                              params_path(prefix, epoch, batch))
    return Checkpoint(epoch, loaded["params"], loaded["states"], verified=manifest is not None, batch=batch)


def load_checkpoint(prefix: str, epoch: int) -> tuple[dict, dict]:
    """(model state_dict, states) saved at `epoch`, checked as read_checkpoint does."""
    checkpoint = read_checkpoint(prefix, epoch)
    return checkpoint.model_state, checkpoint.states


def newest_checkpoint(prefix: str) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint of `prefix` that is complete and verifies (None: there is none), and
    one line for each newer one passed over: the file and what is wrong with it. Mid-epoch
    checkpoints count too, after their epoch's start: (epoch, batch) orders them all.

    An epoch with `.params` but no `.states` counts as a checkpoint that is incomplete; `.states`
    or a manifest without `.params` is a save cut short, not a checkpoint.
    """
    skipped = []
    for epoch, batch in sorted(_positions_with_params(prefix), reverse=True):
        try:
            return read_checkpoint(prefix, epoch, batch), skipped
        except CheckpointError as error:
            skipped.append(str(error))
    return None, skipped


def load_model_spec(prefix: str) -> dict:
    path = model_json_path(prefix)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FlowError("no such file (the model description saved beside the checkpoints)", path) from None
    except ValueError as error:
        raise FlowError(f"not the model description flow writes (JSON): {error}", path) from None
