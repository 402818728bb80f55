"""flow.loss_scaling through the updater that owns it: unscaled updates, skipped overflows, state."""

import torch

from flow.optim import Updater, UpdaterSettings


def updater_for(parameter):
    settings = UpdaterSettings(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0,
                               clip_gradient=0.0, loss_scaling=True)
    return Updater([("fc.weight", parameter)], settings)


def test_fp16_loss_scaling_unscales_and_skips_an_overflowing_step():
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    updater = updater_for(weight)
    scale = updater.loss_scaler.get_scale()
    updater.scale_loss((weight * torch.tensor([3.0, 4.0])).sum()).backward()
    torch.testing.assert_close(weight.grad, torch.tensor([3.0, 4.0]) * scale)
    updater.step(0.5, 0.1)  # sees the unscaled gradients: w -= 0.1 * 0.5 * g
    torch.testing.assert_close(weight.detach(), torch.tensor([1.0 - 0.15, 2.0 - 0.2]))
    assert updater.updates == 1 and updater.loss_scaler.get_scale() == scale
    before = weight.detach().clone()
    momentum = updater.state_dict()["states"]["fc.weight"][0]
    weight.grad = torch.tensor([float("inf"), 1.0])
    updater.step(0.5, 0.1)
    assert torch.equal(weight.detach(), before) and updater.updates == 1  # skipped, not counted
    assert torch.equal(updater.state_dict()["states"]["fc.weight"][0], momentum)
    assert updater.loss_scaler.get_scale() == scale / 2
    resumed = updater_for(torch.nn.Parameter(before.clone()))
    resumed.load_state_dict(updater.state_dict())
    assert resumed.loss_scaler.state_dict() == updater.loss_scaler.state_dict()
