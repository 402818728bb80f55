"""Checkpoint files, as fit.py names them, written atomically and read back with weights_only=True.

    {prefix}-{epoch:04d}.params   the model's state_dict
    {prefix}-{epoch:04d}.states   optimizer state, update count, epoch, seed
    {prefix}-model.json           what is needed to rebuild the model (flow.models.model_spec)
    {prefix}-best.params/.states  the epoch with the best validation metric (checkpoint.best_metric)

Each file goes to a temporary name, is fsynced, then renamed; `.params` is written last, so an
epoch whose `.params` exists is complete.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import torch

from flow.atomic import write_atomically
from flow.errors import FlowError


def params_path(prefix: str, epoch: int) -> Path:
    return Path(f"{prefix}-{epoch:04d}.params")


def states_path(prefix: str, epoch: int) -> Path:
    return Path(f"{prefix}-{epoch:04d}.states")


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


def save_checkpoint(prefix: str, epoch: int, model_state: dict, states: dict, model_spec: dict | None) -> None:
    if model_spec is not None:
        write_atomically(model_json_path(prefix), json.dumps(model_spec, indent=1).encode())
    write_atomically(states_path(prefix, epoch), _torch_bytes(states))
    write_atomically(params_path(prefix, epoch), _torch_bytes(model_state))


def save_best_checkpoint(prefix: str, model_state: dict, states: dict, model_spec: dict | None) -> None:
    """The best checkpoint, as save_checkpoint writes an epoch's (`states["epoch"]` says which epoch it is)."""
    if model_spec is not None:
        write_atomically(model_json_path(prefix), json.dumps(model_spec, indent=1).encode())
    write_atomically(best_states_path(prefix), _torch_bytes(states))
    write_atomically(best_params_path(prefix), _torch_bytes(model_state))


def saved_epochs(prefix: str) -> list[int]:
    """Epochs with a complete checkpoint (both files), oldest first."""
    prefix_path = Path(prefix)
    pattern = re.compile(re.escape(prefix_path.name) + r"-(\d{4,})\.params$")
    folder = prefix_path.parent if str(prefix_path.parent) else Path(".")
    if not folder.is_dir():
        return []
    epochs = [int(match.group(1)) for name in os.listdir(folder) if (match := pattern.match(name))]
    return sorted(epoch for epoch in epochs if states_path(prefix, epoch).exists())


def remove_checkpoint(prefix: str, epoch: int) -> None:
    params_path(prefix, epoch).unlink(missing_ok=True)
    states_path(prefix, epoch).unlink(missing_ok=True)


def _load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FlowError("no such checkpoint file", path) from None
    except Exception as error:  # torch raises many types for a damaged file; all mean the same here
        raise FlowError(f"cannot load checkpoint: {error}".splitlines()[0], path) from None


def load_checkpoint(prefix: str, epoch: int) -> tuple[dict, dict]:
    """(model state_dict, states) saved at `epoch`."""
    return _load(params_path(prefix, epoch)), _load(states_path(prefix, epoch))


def load_model_spec(prefix: str) -> dict:
    path = model_json_path(prefix)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FlowError("no such file (the model description saved beside the checkpoints)", path) from None
