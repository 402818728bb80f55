"""The parameter server: what it updates, and what it must leave alone."""

import pytest
import torch

from flow.run import train
from tests.test_run import final_params, small_config, synthetic_data


def net_with_a_frozen_layer():
    """The same weights every time; the first Linear is frozen (requires_grad False), as in fine-tuning."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    net[1].requires_grad_(False)
    return net


@pytest.mark.parametrize("devices", [["cpu"], ["cpu", "cpu"]])
async def test_weight_decay_leaves_frozen_parameters_bit_for_bit(tmp_path, devices):
    net = net_with_a_frozen_layer()
    before = {name: tensor.clone() for name, tensor in net.state_dict().items()}
    await train(small_config(tmp_path, train={"devices": devices, "wd": 0.01}), model=net,
                train_data=synthetic_data())
    after = final_params(tmp_path, 2)
    for name in ("1.weight", "1.bias"):
        assert torch.equal(after[name], before[name]), name
    for name in ("3.weight", "3.bias"):
        assert not torch.equal(after[name], before[name]), name
