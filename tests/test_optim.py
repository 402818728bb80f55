import pytest
import torch

from flow.optim import Updater, UpdaterSettings


def updater_for(parameter, **options):
    settings = UpdaterSettings(**{"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "nesterov": False,
                                  "weight_decay": 0.0, "clip_gradient": 0.0, **options})
    return Updater([parameter], settings)


def test_step_averages_summed_gradients_at_the_lr_it_is_given():
    weight = torch.zeros(2, requires_grad=True)
    updater = updater_for(weight, lr=1.0)  # train.lr is not what a step uses: the fit loop picks each lr
    for lr in (0.5, 0.5, 0.25):
        weight.grad = torch.tensor([4.0, -8.0])  # summed over 4 samples
        before = weight.detach().clone()
        updater.step(1 / 4, lr)
        torch.testing.assert_close(weight.detach(), before - lr * torch.tensor([1.0, -2.0]))


def test_clip_gradient_clips_each_element_like_mxnet():
    weight = torch.zeros(3, requires_grad=True)
    updater = updater_for(weight, lr=1.0, clip_gradient=0.5)
    weight.grad = torch.tensor([3.0, -0.2, -9.0])
    updater.step(1.0, 1.0)
    torch.testing.assert_close(weight.detach(), torch.tensor([-0.5, 0.2, 0.5]))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_state_round_trips(optimizer):
    weight = torch.ones(2, requires_grad=True)
    updater = updater_for(weight, optimizer=optimizer, momentum=0.9)
    weight.grad = torch.ones(2)
    updater.step(1.0, 0.1)
    copy = torch.ones(2, requires_grad=True)
    restored = updater_for(copy, optimizer=optimizer, momentum=0.9)
    restored.load_state_dict(updater.state_dict())
    copy.data.copy_(weight.detach())
    for parameter in (weight, copy):
        parameter.grad = torch.full((2,), 0.5)
    updater.step(1.0, 0.1)
    restored.step(1.0, 0.1)
    assert torch.equal(weight, copy)
