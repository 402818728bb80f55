import pytest
import torch

from flow.lr_schedule import build_schedule
from flow.optim import Updater, UpdaterSettings


def updater_for(parameter, **options):
    settings = UpdaterSettings(**{"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "nesterov": False,
                                  "weight_decay": 0.0, "clip_gradient": 0.0, **options})
    schedule = build_schedule("multifactor", settings.lr, epoch_size=2, lr_step_epochs=(1,), lr_factor=0.5)
    return Updater([parameter], settings, schedule)


def test_step_averages_summed_gradients_and_follows_the_schedule():
    weight = torch.zeros(2, requires_grad=True)
    updater = updater_for(weight, lr=1.0)
    for expected_lr in (1.0, 1.0, 0.5):  # the step at epoch 1 = after 2 updates
        assert updater.lr == expected_lr
        weight.grad = torch.tensor([4.0, -8.0])  # summed over 4 samples
        before = weight.detach().clone()
        updater.step(1 / 4)
        torch.testing.assert_close(weight.detach(), before - expected_lr * torch.tensor([1.0, -2.0]))
    assert updater.num_update == 3


def test_clip_gradient_clips_each_element_like_mxnet():
    weight = torch.zeros(3, requires_grad=True)
    updater = updater_for(weight, lr=1.0, clip_gradient=0.5)
    weight.grad = torch.tensor([3.0, -0.2, -9.0])
    updater.step(1.0)
    torch.testing.assert_close(weight.detach(), torch.tensor([-0.5, 0.2, 0.5]))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_state_round_trips(optimizer):
    weight = torch.ones(2, requires_grad=True)
    updater = updater_for(weight, optimizer=optimizer, momentum=0.9)
    weight.grad = torch.ones(2)
    updater.step(1.0)
    copy = torch.ones(2, requires_grad=True)
    restored = updater_for(copy, optimizer=optimizer, momentum=0.9)
    restored.load_state_dict(updater.state_dict())
    copy.data.copy_(weight.detach())
    for parameter in (weight, copy):
        parameter.grad = torch.full((2,), 0.5)
    updater.step(1.0)
    restored.step(1.0)
    assert restored.num_update == 2 and torch.equal(weight, copy)
