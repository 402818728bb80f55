"""The checkpoint actor alone, driven through its channels: Saves in, files and CheckpointSaved out."""

import errno
import io
import os
import threading

import pytest
import torch
import trio
import trio.testing

import flow.atomic
from flow import checkpoints
from flow.actors.checkpoint import CheckpointSettings, Save, checkpoint
from flow.errors import FlowError
from flow.events import BestCheckpointSaved, CheckpointSaved


def save(epoch, value=None):
    value = float(epoch) if value is None else value
    return Save(epoch, {"weight": torch.full((2,), value)}, {"epoch": epoch, "num_update": 10 * epoch},
                {"network": "mlp"})


def saved(prefix, epoch):
    return CheckpointSaved(epoch, f"{prefix}-{epoch:04d}.params", f"{prefix}-{epoch:04d}.states")


async def run_actor(settings, saves):
    """Every event the actor sends for `saves`, in order."""
    save_send, save_receive = trio.open_memory_channel(len(saves))
    event_send, event_receive = trio.open_memory_channel(len(saves))
    for message in saves:
        save_send.send_nowait(message)
    save_send.close()
    await checkpoint(settings, save_receive, event_send)
    return [event async for event in event_receive]


@pytest.fixture
def gated_writes(monkeypatch):
    """save_checkpoint waits for `gate` in its worker thread; `writing` is set once a write has begun."""
    gate, writing = threading.Event(), threading.Event()
    real_save = checkpoints.save_checkpoint

    def gated(*args):
        writing.set()
        gate.wait(10)
        real_save(*args)
    monkeypatch.setattr(checkpoints, "save_checkpoint", gated)
    return gate, writing


async def test_each_save_is_written_then_announced_in_order_keeping_the_newest(tmp_path):
    prefix = str(tmp_path / "model")
    events = await run_actor(CheckpointSettings(prefix, keep=2), [save(1), save(2), save(3)])
    assert events == [saved(prefix, 1), saved(prefix, 2), saved(prefix, 3)]
    assert checkpoints.saved_epochs(prefix) == [2, 3]
    params, states = checkpoints.load_checkpoint(prefix, 3)
    assert torch.equal(params["weight"], torch.full((2,), 3.0)) and states == {"epoch": 3, "num_update": 30}
    assert checkpoints.load_model_spec(prefix) == {"network": "mlp"}


async def test_a_best_save_goes_to_the_best_checkpoint_which_keep_never_removes(tmp_path):
    prefix = str(tmp_path / "model")
    best = [Save(s.epoch, s.model_state, s.states, s.model_spec, best=("accuracy", s.epoch / 10))
            for s in map(save, (1, 3))]
    events = await run_actor(CheckpointSettings(prefix, keep=1), [save(1), best[0], save(2), save(3), best[1], save(4)])
    best_files = (f"{prefix}-best.params", f"{prefix}-best.states")
    assert events == [saved(prefix, 1), BestCheckpointSaved(1, "accuracy", 0.1, *best_files), saved(prefix, 2),
                      saved(prefix, 3), BestCheckpointSaved(3, "accuracy", 0.3, *best_files), saved(prefix, 4)]
    assert checkpoints.saved_epochs(prefix) == [4]
    params, states = torch.load(best_files[0], weights_only=True), torch.load(best_files[1], weights_only=True)
    assert torch.equal(params["weight"], torch.full((2,), 3.0)) and states == {"epoch": 3, "num_update": 30}
    assert sorted(path.name for path in tmp_path.iterdir()) == [  # written atomically: no temporary file left
        "model-0004.manifest.json", "model-0004.params", "model-0004.states", "model-best.manifest.json",
        "model-best.params", "model-best.states", "model-model.json"]


async def test_keep_0_keeps_every_checkpoint(tmp_path):
    prefix = str(tmp_path / "model")
    await run_actor(CheckpointSettings(prefix, keep=0), [save(1), save(2), save(3)])
    assert checkpoints.saved_epochs(prefix) == [1, 2, 3]


async def test_a_slow_disk_holds_the_fit_loop_back(tmp_path, gated_writes):
    gate, writing = gated_writes
    prefix = str(tmp_path / "model")
    save_send, save_receive = trio.open_memory_channel(1)  # as the composition root opens it
    event_send, event_receive = trio.open_memory_channel(3)
    with trio.fail_after(10):  # a wrong channel size would deadlock
        async with trio.open_nursery() as nursery:
            nursery.start_soon(checkpoint, CheckpointSettings(prefix, 0), save_receive, event_send)
            await save_send.send(save(1))
            await trio.to_thread.run_sync(writing.wait, 10)
            save_send.send_nowait(save(2))  # waits in the channel while epoch 1 is written
            with pytest.raises(trio.WouldBlock):  # and the next one must wait for the disk
                save_send.send_nowait(save(3))
            assert event_receive.statistics().current_buffer_used == 0  # nothing announced before it is on disk
            gate.set()
            await save_send.send(save(3))
            save_send.close()
    assert [event.epoch async for event in event_receive] == [1, 2, 3]
    assert checkpoints.saved_epochs(prefix) == [1, 2, 3]


async def test_a_failed_write_is_its_error_and_closes_its_channels(tmp_path, monkeypatch):
    def disk_full(prefix, *args):
        raise FlowError("no space left on device", prefix)
    monkeypatch.setattr(checkpoints, "save_checkpoint", disk_full)
    save_send, save_receive = trio.open_memory_channel(1)
    event_send, event_receive = trio.open_memory_channel(1)
    save_send.send_nowait(save(1))
    with pytest.raises(FlowError, match="no space left on device"):
        await checkpoint(CheckpointSettings(str(tmp_path / "model"), 2), save_receive, event_send)
    with pytest.raises(trio.BrokenResourceError):  # the fit loop learns it at its next save
        save_send.send_nowait(save(2))
    with pytest.raises(trio.EndOfChannel):  # nothing announced, and the bus ends
        event_receive.receive_nowait()


async def test_cancelled_mid_write_it_finishes_the_file_and_announces_nothing(tmp_path, gated_writes):
    gate, writing = gated_writes
    prefix = str(tmp_path / "model")
    save_send, save_receive = trio.open_memory_channel(1)
    event_send, event_receive = trio.open_memory_channel(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(checkpoint, CheckpointSettings(prefix, 0), save_receive, event_send)
        await save_send.send(save(1))
        await trio.to_thread.run_sync(writing.wait, 10)
        nursery.cancel_scope.cancel()
        gate.set()  # the write in hand runs to its end: the worker thread is not abandoned
    assert checkpoints.saved_epochs(prefix) == [1]
    with pytest.raises(trio.EndOfChannel):
        event_receive.receive_nowait()
    with pytest.raises(trio.BrokenResourceError):
        save_send.send_nowait(save(2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
async def test_a_non_finite_model_is_not_written_and_ends_the_run_keeping_the_good_ones(tmp_path, bad):
    prefix = str(tmp_path / "model")
    save_send, save_receive = trio.open_memory_channel(4)
    event_send, event_receive = trio.open_memory_channel(4)
    for message in (save(1), save(2), save(3, bad), save(4)):
        save_send.send_nowait(message)
    with pytest.raises(FlowError) as refused:
        await checkpoint(CheckpointSettings(prefix, keep=2), save_receive, event_send)
    assert str(refused.value) == (f"{prefix}-0003.params: not written: the model after Epoch[2] has NaN or inf "
                                  f"weights (in 'weight'); the checkpoints before it are kept as they were")
    assert [event async for event in event_receive] == [saved(prefix, 1), saved(prefix, 2)]
    assert checkpoints.saved_epochs(prefix) == [1, 2]
    assert checkpoints.newest_checkpoint(prefix)[0].epoch == 2


async def test_at_its_start_it_removes_a_killed_runs_leftovers(tmp_path):
    prefix = str(tmp_path / "model")
    checkpoints.save_checkpoint(prefix, 1, {"weight": torch.zeros(2)}, {"epoch": 1}, None)
    checkpoints.params_path(prefix, 1).unlink()  # killed between the removals keep makes: an orphan .states
    (tmp_path / "model-0002.params.tmp").write_bytes(b"torn")
    await run_actor(CheckpointSettings(prefix, keep=0), [save(2)])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model-0002.manifest.json", "model-0002.params", "model-0002.states", "model-model.json"]


class FullDisk(io.FileIO):
    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("error_number", [errno.ENOSPC, errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("failing_file", ["0002.manifest.json", "0002.states", "0002.params"])
async def test_a_full_disk_or_read_only_folder_is_one_line_and_the_last_checkpoint_stays(
        tmp_path, monkeypatch, error_number, failing_file):
    """ENOSPC as a write fails on a full disk; EROFS and EACCES as opening a file fails in a read-only folder."""
    prefix = str(tmp_path / "model")
    real_open = open

    def failing_open(path, mode="r", *args, **kwargs):
        if not str(path).endswith(failing_file + ".tmp"):
            return real_open(path, mode, *args, **kwargs)
        if error_number == errno.ENOSPC:
            return FullDisk(path, "w")
        raise OSError(error_number, os.strerror(error_number), str(path))
    monkeypatch.setattr(flow.atomic, "open", failing_open, raising=False)
    save_send, save_receive = trio.open_memory_channel(3)
    event_send, event_receive = trio.open_memory_channel(3)
    for message in (save(1), save(2), save(3)):
        save_send.send_nowait(message)
    with pytest.raises(FlowError) as failed:
        await checkpoint(CheckpointSettings(prefix, keep=1), save_receive, event_send)
    assert str(failed.value) == f"{prefix}-{failing_file}: cannot write: {os.strerror(error_number)}"
    assert [event async for event in event_receive] == [saved(prefix, 1)]
    newest, skipped = checkpoints.newest_checkpoint(prefix)
    assert newest.epoch == 1 and skipped == [] and torch.equal(newest.model_state["weight"], torch.full((2,), 1.0))
    assert not list(tmp_path.glob("*.tmp"))


async def test_a_model_prefix_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "runs").write_text("a file, not a folder")
    prefix = str(tmp_path / "runs" / "model")
    with pytest.raises(FlowError) as failed:
        await run_actor(CheckpointSettings(prefix, keep=0), [save(1)])
    assert str(failed.value) == f"{prefix}-model.json: cannot write: {tmp_path / 'runs'} or a folder above it is a regular file"
