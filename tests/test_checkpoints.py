import pytest
import torch

from flow import checkpoints
from flow.errors import FlowError


def save(prefix, epoch, value=1.0):
    checkpoints.save_checkpoint(prefix, epoch, {"weight": torch.full((2,), value)}, {"epoch": epoch}, {"network": "mlp"})


def test_save_and_load_round_trip(tmp_path):
    prefix = str(tmp_path / "runs" / "model")
    save(prefix, 3, 2.5)
    model_state, states = checkpoints.load_checkpoint(prefix, 3)
    assert torch.equal(model_state["weight"], torch.full((2,), 2.5)) and states == {"epoch": 3}
    assert checkpoints.load_model_spec(prefix) == {"network": "mlp"}
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["model-0003.params", "model-0003.states",
                                                                      "model-model.json"]


def test_saved_epochs_needs_both_files(tmp_path):
    prefix = str(tmp_path / "model")
    for epoch in (1, 2, 10):
        save(prefix, epoch)
    checkpoints.states_path(prefix, 2).unlink()  # an epoch whose save was cut short
    (tmp_path / "model-0005.params.tmp").write_bytes(b"half")
    assert checkpoints.saved_epochs(prefix) == [1, 10]


def test_damaged_or_missing_checkpoint_is_a_clear_error(tmp_path):
    prefix = str(tmp_path / "model")
    with pytest.raises(FlowError, match=r"model-0001.params: no such checkpoint file"):
        checkpoints.load_checkpoint(prefix, 1)
    save(prefix, 1)
    checkpoints.params_path(prefix, 1).write_bytes(b"not a torch file")
    with pytest.raises(FlowError, match=r"model-0001.params: cannot load checkpoint"):
        checkpoints.load_checkpoint(prefix, 1)


def test_loading_refuses_pickled_code(tmp_path):
    prefix = str(tmp_path / "model")
    save(prefix, 1)
    torch.save({"weight": torch.zeros(1), "evil": print}, checkpoints.params_path(prefix, 1))
    with pytest.raises(FlowError, match="cannot load checkpoint"):
        checkpoints.load_checkpoint(prefix, 1)
