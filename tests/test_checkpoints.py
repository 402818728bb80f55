import json
from pathlib import Path

import pytest
import torch

from flow import checkpoints
from flow.errors import CheckpointError, FlowError


def save(prefix, epoch, value=1.0):
    checkpoints.save_checkpoint(prefix, epoch, {"weight": torch.full((2,), value)}, {"epoch": epoch}, {"network": "mlp"})


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def test_save_and_load_round_trip(tmp_path):
    prefix = str(tmp_path / "runs" / "model")
    save(prefix, 3, 2.5)
    model_state, states = checkpoints.load_checkpoint(prefix, 3)
    assert torch.equal(model_state["weight"], torch.full((2,), 2.5)) and states == {"epoch": 3}
    assert checkpoints.read_checkpoint(prefix, 3).verified
    assert checkpoints.load_model_spec(prefix) == {"network": "mlp"}
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "model-0003.manifest.json", "model-0003.params", "model-0003.states", "model-model.json"]
    manifest = json.loads((tmp_path / "runs" / "model-0003.manifest.json").read_text())
    params = (tmp_path / "runs" / "model-0003.params").read_bytes()
    assert manifest["params"]["bytes"] == len(params) and len(manifest["params"]["sha256"]) == 64


def test_saved_epochs_needs_both_files(tmp_path):
    prefix = str(tmp_path / "model")
    for epoch in (1, 2, 10):
        save(prefix, epoch)
    checkpoints.states_path(prefix, 2).unlink()  # an epoch whose save was cut short
    (tmp_path / "model-0005.params.tmp").write_bytes(b"half")
    assert checkpoints.saved_epochs(prefix) == [1, 10]


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
    prefix = str(tmp_path / "model")
    with pytest.raises(CheckpointError, match=r"model-0001.params: no such checkpoint file"):
        checkpoints.load_checkpoint(prefix, 1)
    save(prefix, 1)
    checkpoints.states_path(prefix, 1).unlink()
    with pytest.raises(CheckpointError, match=r"model-0001.states: no such checkpoint file"):
        checkpoints.load_checkpoint(prefix, 1)


@pytest.mark.parametrize("suffix", ["params", "states"])
def test_a_flipped_bit_anywhere_is_refused_naming_the_file(tmp_path, suffix):
    prefix = str(tmp_path / "model")
    save(prefix, 1)
    path = tmp_path / f"model-0001.{suffix}"
    original = path.read_bytes()
    size = len(original)
    for offset in sorted({0, 1, 37, size // 3, size // 2, size - 23, size - 1}):
        for bit in (0, 7):
            flip_bit(path, offset, bit)
            with pytest.raises(CheckpointError) as refused:
                checkpoints.load_checkpoint(prefix, 1)
            assert str(refused.value) == (f"{path}: its sha256 differs from the one model-0001.manifest.json "
                                          f"recorded when it was written (damaged since)")
            path.write_bytes(original)
    assert checkpoints.load_checkpoint(prefix, 1)[1] == {"epoch": 1}  # the bytes put back load again


@pytest.mark.parametrize("kept", [0, 100, -1])
def test_a_truncated_file_is_refused_with_its_sizes(tmp_path, kept):
    prefix = str(tmp_path / "model")
    save(prefix, 1)
    path = checkpoints.params_path(prefix, 1)
    size = len(path.read_bytes())
    path.write_bytes(path.read_bytes()[:kept])
    with pytest.raises(CheckpointError, match=rf"model-0001.params: {size + kept if kept < 0 else kept} bytes, "
                                              rf"but {size} were written \(truncated"):
        checkpoints.load_checkpoint(prefix, 1)


def test_a_damaged_manifest_is_refused(tmp_path):
    prefix = str(tmp_path / "model")
    save(prefix, 1)
    checkpoints.manifest_path(prefix, 1).write_text('{"params": {"bytes": 3}}')
    with pytest.raises(CheckpointError, match=r"model-0001.manifest.json: not a checkpoint manifest"):
        checkpoints.load_checkpoint(prefix, 1)


def test_newest_checkpoint_falls_back_past_damaged_and_incomplete_ones_saying_why(tmp_path):
    prefix = str(tmp_path / "model")
    for epoch in (1, 2, 3, 4, 5):
        save(prefix, epoch, float(epoch))
    flip_bit(checkpoints.params_path(prefix, 5), 200)
    checkpoints.states_path(prefix, 4).unlink()  # e.g. removed by hand
    path = checkpoints.states_path(prefix, 3)
    path.write_bytes(path.read_bytes()[:-10])
    checkpoints.params_path(prefix, 2).unlink()
    checkpoints.manifest_path(prefix, 2).unlink()  # a .states alone is a cut-short save, not a checkpoint
    newest, skipped = checkpoints.newest_checkpoint(prefix)
    assert newest.epoch == 1 and newest.verified and torch.equal(newest.model_state["weight"], torch.full((2,), 1.0))
    assert [reason.split(": ")[0] for reason in skipped] == [
        str(checkpoints.params_path(prefix, 5)), str(checkpoints.states_path(prefix, 4)), str(path)]
    assert "sha256 differs" in skipped[0] and "no such checkpoint file" in skipped[1] and "truncated" in skipped[2]


def test_newest_checkpoint_of_nothing_is_none(tmp_path):
    assert checkpoints.newest_checkpoint(str(tmp_path / "absent" / "model")) == (None, [])


def test_a_checkpoint_without_a_manifest_loads_unverified_and_a_torn_one_is_refused(tmp_path):
    """Written by a flow from before checksums: whole files (written atomically) load, with verified False."""
    prefix = str(tmp_path / "model")
    save(prefix, 1, 4.0)
    checkpoints.manifest_path(prefix, 1).unlink()
    old = checkpoints.read_checkpoint(prefix, 1)
    assert not old.verified and torch.equal(old.model_state["weight"], torch.full((2,), 4.0))
    path = checkpoints.params_path(prefix, 1)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match=r"model-0001.params: cannot load checkpoint"):
        checkpoints.read_checkpoint(prefix, 1)


def test_a_model_with_nan_weights_is_refused(tmp_path):
    prefix = str(tmp_path / "model")
    checkpoints.save_checkpoint(prefix, 1, {"steps": torch.tensor(3), "weight": torch.tensor([1.0, float("inf")])},
                                {"epoch": 1}, None)
    with pytest.raises(CheckpointError, match=r"model-0001.params: the model's weights are not finite .* 'weight'"):
        checkpoints.read_checkpoint(prefix, 1)
    assert checkpoints.newest_checkpoint(prefix)[0] is None


def write_marker(path):
    """What the payload below runs when unpickled without weights_only: it writes a file."""
    Path(path).write_text("code ran")


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return write_marker, (self.marker,)


def test_loading_refuses_pickled_code_and_runs_none(tmp_path):
    prefix = str(tmp_path / "model")
    marker = tmp_path / "marker"
    # Its manifest matches: whoever can write the checkpoint can write the checksums too.
    checkpoints.save_checkpoint(prefix, 1, {"weight": torch.zeros(1), "evil": Payload(str(marker))}, {}, None)
    with pytest.raises(CheckpointError) as refused:
        checkpoints.load_checkpoint(prefix, 1)
    assert str(refused.value).startswith(f"{checkpoints.params_path(prefix, 1)}: refused: it holds a pickled object")
    assert "tests.test_checkpoints.write_marker" in str(refused.value) and "\n" not in str(refused.value)
    assert not marker.exists()
    torch.load(checkpoints.params_path(prefix, 1), weights_only=False)  # the payload is live: it would have run
    assert marker.read_text() == "code ran"


def test_leftovers_of_a_killed_run_are_removed_and_nothing_else(tmp_path):
    prefix = str(tmp_path / "model")
    for epoch in (1, 2, 3):
        save(prefix, epoch)
    checkpoints.params_path(prefix, 2).unlink()  # a keep removal cut short: .states and manifest left
    checkpoints.params_path(prefix, 3).unlink()
    checkpoints.states_path(prefix, 3).unlink()  # a save cut short after its manifest
    leftovers = ["model-0004.params.tmp", "model-0004.states.tmp", "model-0004.manifest.json.tmp",
                 "model-model.json.tmp"]
    others = ["model-events.msgpack", "other-0001.params.tmp", "model-0001.params.bak", "notes.tmp"]
    for name in leftovers + others:
        (tmp_path / name).write_bytes(b"x")
    checkpoints.remove_leftovers(prefix)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model-0001.manifest.json", "model-0001.params", "model-0001.states", "model-model.json"] + others)
    checkpoints.remove_leftovers(str(tmp_path / "absent" / "model"))  # no folder yet: nothing to do


def test_prune_keeps_the_newest_up_to_the_one_just_written_and_never_it(tmp_path):
    prefix = str(tmp_path / "model")
    for epoch in (1, 2, 3, 4, 5):
        save(prefix, epoch)
    checkpoints.prune(prefix, 3, keep=2)  # 4 and 5: an earlier run's, which this one (resumed at 2) overwrites later
    assert checkpoints.saved_epochs(prefix) == [2, 3, 4, 5]
    checkpoints.prune(prefix, 5, keep=1)
    assert checkpoints.saved_epochs(prefix) == [5]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model-0005.manifest.json", "model-0005.params", "model-0005.states", "model-model.json"]


def test_model_spec_that_is_not_json_is_a_clear_error(tmp_path):
    prefix = str(tmp_path / "model")
    checkpoints.model_json_path(prefix).write_text("{not json")
    with pytest.raises(FlowError, match=r"model-model.json: not the model description flow writes"):
        checkpoints.load_model_spec(prefix)
