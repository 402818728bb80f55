import itertools
import math

import numpy as np
import pytest
import torch

from flow.errors import ConfigError
from flow.optim import (OPTIMIZERS, Updater, UpdaterSettings, check_resumable, decays, multipliers,
                        optimizer_problem, unmatched_pattern)


def settings_for(**options) -> UpdaterSettings:
    return UpdaterSettings(**{"optimizer": "sgd", "lr": 0.1, "momentum": 0.0, "nesterov": False,
                              "weight_decay": 0.0, "clip_gradient": 0.0, **options})


def updater_for(parameter, name="fc.weight", **options):
    return Updater([(name, parameter)], settings_for(**options))


# Plain-numpy (float64) references of MXNet 1.9.1's updates, written from optimizer.py and the Python
# references of its tests/python/unittest/test_optimizer.py. `state` is a dict the reference keeps.
def clip(g, c):
    return np.clip(g, -c, c) if c else g


def reference_sgd(w, g, state, lr, wd, mom, c, t):
    g = clip(g, c)
    if not mom:
        return (1 - lr * wd) * w - lr * g
    state["m"] = mom * state.get("m", 0) - lr * wd * w - lr * g
    return w + state["m"]


def reference_nag(w, g, state, lr, wd, mom, c, t):
    """nag_mom_update's kernel (NAGMomKernel)."""
    g = clip(g, c)
    if not mom:
        return (1 - lr * wd) * w - lr * g
    m = mom * state.get("m", 0)
    w_new = w - m + (mom + 1) * (m - lr * (g + wd * w))
    state["m"] = m - lr * (g + wd * w)
    return w_new


def reference_nag_plain(w, g, state, lr, wd, mom, c, t):
    """PyNAG, with the momentum computed from the weight before the update, as PyNAG does."""
    g = clip(g, c)
    if not mom:
        return w - lr * (g + wd * w)
    m = state.get("m", 0)
    step = g + wd * w
    state["m"] = mom * m - lr * step
    return w + mom ** 2 * m - lr * (mom + 1) * step


def reference_adam(w, g, state, lr, wd, mom, c, t):
    g = clip(g + wd * w, c)
    state["mean"] = 0.9 * state.get("mean", 0) + 0.1 * g
    state["var"] = 0.999 * state.get("var", 0) + 0.001 * g * g
    lr_t = lr * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
    return w - lr_t * state["mean"] / (np.sqrt(state["var"]) + 1e-8)


def reference_rmsprop(w, g, state, lr, wd, mom, c, t):
    g = clip(g + wd * w, c)
    state["n"] = 0.1 * g * g + 0.9 * state.get("n", 0)
    return w - lr * g / np.sqrt(state["n"] + 1e-8)


def reference_rmsprop_centered(w, g, state, lr, wd, mom, c, t):
    g = clip(g + wd * w, c)
    state["n"] = 0.1 * g * g + 0.9 * state.get("n", 0)
    state["g"] = 0.1 * g + 0.9 * state.get("g", 0)
    state["delta"] = 0.9 * state.get("delta", 0) - lr * g / np.sqrt(state["n"] - state["g"] ** 2 + 1e-8)
    return w + state["delta"]


def reference_adagrad(w, g, state, lr, wd, mom, c, t):
    g = clip(g, c)
    state["history"] = state.get("history", 0) + g * g
    return w + (g / np.sqrt(state["history"] + 1e-7) + w * wd) * -lr


def reference_adadelta(w, g, state, lr, wd, mom, c, t):
    g = clip(g, c)
    state["acc_g"] = 0.9 * state.get("acc_g", 0) + 0.1 * g * g
    delta = np.sqrt(state.get("acc_delta", 0) + 1e-5) / np.sqrt(state["acc_g"] + 1e-5) * g
    state["acc_delta"] = 0.9 * state.get("acc_delta", 0) + 0.1 * delta * delta
    return w - (delta + wd * w)


REFERENCES = {  # optimizer, options -> reference, tolerances (MXNet's: NAG looser)
    ("sgd", False): (reference_sgd, 1e-4, 1e-5),
    ("nag", False): (reference_nag_plain, 1e-3, 1e-4),
    ("adam", False): (reference_adam, 1e-4, 1e-5),
    ("rmsprop", False): (reference_rmsprop, 1e-4, 1e-5),
    ("rmsprop", True): (reference_rmsprop_centered, 1e-4, 1e-5),
    ("adagrad", False): (reference_adagrad, 1e-4, 1e-5),
    ("adadelta", False): (reference_adadelta, 1e-4, 1e-5),
}
MOMENTA, CLIPS, RESCALES, WDS = (0.0, 0.9), (0.0, 0.4, 0.5), (1.0, 0.14, 0.8), (0.0, 0.03, 0.05, 0.07)


@pytest.mark.parametrize("optimizer, centered", list(REFERENCES))
def test_each_update_is_mxnet_s_formula_over_the_grid(optimizer, centered):
    reference, rtol, atol = REFERENCES[optimizer, centered]
    momenta = MOMENTA if optimizer in ("sgd", "nag") else (0.0,)
    rng = np.random.default_rng(0)
    lrs = (0.1, 0.1, 0.01) if optimizer not in ("adam", "rmsprop") else (0.01, 0.01, 0.001)  # an lr drop too
    for mom, c, rescale, wd in itertools.product(momenta, CLIPS, RESCALES, WDS):
        w = rng.normal(size=(3, 4, 5))
        weight = torch.tensor(w, dtype=torch.float32)
        updater = updater_for(weight, optimizer=optimizer, centered=centered, momentum=mom, clip_gradient=c,
                              weight_decay=wd)
        state = {}
        for t, lr in enumerate(lrs, start=1):
            g = rng.normal(size=w.shape)
            weight.grad = torch.tensor(g, dtype=torch.float32)
            updater.step(rescale, lr)
            w = reference(w, rescale * g, state, lr, wd, mom, c, t)
            np.testing.assert_allclose(weight.numpy(), w, rtol=rtol, atol=atol,
                                       err_msg=f"{optimizer} mom={mom} clip={c} rescale={rescale} wd={wd} t={t}")


def test_mxnet_s_two_nag_references_agree():
    # The kernel's form (momentum after the step) and PyNAG's are one formula: a check on the references.
    rng = np.random.default_rng(1)
    w1 = w2 = rng.normal(size=5)
    s1, s2 = {}, {}
    for _ in range(3):
        g = rng.normal(size=5)
        w1, w2 = reference_nag(w1, g, s1, 0.1, 0.05, 0.9, 0, 0), reference_nag_plain(w2, g, s2, 0.1, 0.05, 0.9, 0, 0)
    np.testing.assert_allclose(w1, w2)


def test_a_bias_does_not_decay_under_mxnet_s_rule():
    bias, weight = torch.ones(3), torch.ones(3)
    updater = Updater([("fc.bias", bias), ("fc.weight", weight)], settings_for(weight_decay=0.1, momentum=0.9))
    bias.grad, weight.grad = torch.zeros(3), torch.zeros(3)
    updater.step(1.0, 1.0)
    assert torch.equal(bias, torch.ones(3))  # MXNet: wd_mult 0 for a name not ending in weight/gamma
    torch.testing.assert_close(weight, torch.full((3,), 0.9))
    torch_updater = Updater([("fc.bias", bias)], settings_for(optimizer="torch_sgd", weight_decay=0.1))
    bias.grad = torch.zeros(3)
    torch_updater.step(1.0, 1.0)
    torch.testing.assert_close(bias, torch.full((3,), 0.9))  # torch's rule: every parameter decays


@pytest.mark.parametrize("name, decaying", [("conv1.weight", True), ("features.0.bias", False), ("bn.weight", True),
                                            ("bn.bias", False), ("fc1_weight", True), ("prelu_gamma", True),
                                            ("bn_beta", False), ("cls_token", False)])
def test_the_name_rule_on_torch_names(name, decaying):
    assert decays(name) is decaying


def test_lr_mult_and_wd_mult_patterns_override_in_order():
    lr_mult = {"fc.*": 10.0, "fc.bias": 2.0}
    wd_mult = {"*.bias": 0.5, "conv.weight": 0.0}
    assert multipliers("fc.weight", lr_mult, wd_mult) == (10.0, 1.0)
    assert multipliers("fc.bias", lr_mult, wd_mult) == (2.0, 0.5)  # the later pattern wins; wd_mult over the rule
    assert multipliers("conv.weight", lr_mult, wd_mult) == (1.0, 0.0)
    assert multipliers("conv.bias", lr_mult, wd_mult) == (1.0, 0.5)
    assert unmatched_pattern(["fc.weight", "fc.bias"], {"fc.*": 1.0}, {"cnv.*": 0.0}) == ("wd_mult", "cnv.*")
    assert unmatched_pattern(["fc.weight"], {"fc.*": 1.0}, {}) is None


def test_multipliers_reach_the_update():
    head, body, body_bias = torch.ones(2), torch.ones(2), torch.ones(2)
    updater = Updater([("fc.weight", head), ("conv.weight", body), ("conv.bias", body_bias)],
                      settings_for(weight_decay=0.1, lr_mult={"fc.*": 10.0}, wd_mult={"conv.bias": 2.0}))
    for p in (head, body, body_bias):
        p.grad = torch.ones(2)
    updater.step(1.0, 0.01)
    torch.testing.assert_close(head, torch.full((2,), (1 - 0.1 * 0.1) - 0.1))  # lr 0.1, wd 0.1
    torch.testing.assert_close(body, torch.full((2,), (1 - 0.01 * 0.1) - 0.01))
    torch.testing.assert_close(body_bias, torch.full((2,), (1 - 0.01 * 0.2) - 0.01))


def test_an_lr_drop_with_momentum_follows_mxnet_s_buffer():
    # The case: MXNet keeps the lr inside the buffer, so an lr drop does not shrink the momentum
    # already gathered; torch's buffer is multiplied by the new lr.
    for optimizer, expected_second_step in (("sgd", -0.9), ("torch_sgd", -0.09)):
        weight = torch.zeros(1)
        updater = updater_for(weight, optimizer=optimizer, momentum=0.9)
        weight.grad = torch.ones(1)
        updater.step(1.0, 1.0)
        torch.testing.assert_close(weight, torch.tensor([-1.0]))
        weight.grad = torch.zeros(1)
        updater.step(1.0, 0.1)
        torch.testing.assert_close(weight, torch.tensor([-1.0 + expected_second_step]), msg=optimizer)


def test_step_averages_summed_gradients_at_the_lr_it_is_given():
    weight = torch.zeros(2)
    updater = updater_for(weight, lr=1.0)  # train.lr is not what a step uses: the fit loop picks each lr
    for lr in (0.5, 0.5, 0.25):
        weight.grad = torch.tensor([4.0, -8.0])  # summed over 4 samples
        before = weight.detach().clone()
        updater.step(1 / 4, lr)
        torch.testing.assert_close(weight.detach(), before - lr * torch.tensor([1.0, -2.0]))


@pytest.mark.parametrize("optimizer", ["sgd", "torch_sgd"])
def test_clip_gradient_clips_each_element_after_rescale_like_mxnet(optimizer):
    weight = torch.zeros(3)
    updater = updater_for(weight, optimizer=optimizer, lr=1.0, clip_gradient=0.5)
    weight.grad = torch.tensor([6.0, -0.4, -18.0])
    updater.step(0.5, 1.0)
    torch.testing.assert_close(weight.detach(), torch.tensor([-0.5, 0.2, 0.5]))


def test_a_parameter_without_a_gradient_is_left_alone():
    frozen, trained = torch.ones(2), torch.ones(2)
    updater = Updater([("a.weight", frozen), ("b.weight", trained)], settings_for(weight_decay=0.1, momentum=0.9))
    trained.grad = torch.ones(2)
    updater.step(1.0, 0.1)
    assert torch.equal(frozen, torch.ones(2))
    assert not torch.equal(trained, torch.ones(2))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_state_round_trips_bit_for_bit(optimizer):
    def make(parameters):
        return Updater(zip(["fc.weight", "fc.bias"], parameters),
                       settings_for(optimizer=optimizer, momentum=0.9, weight_decay=0.01))

    parameters = [torch.ones(2), torch.ones(2)]
    updater = make(parameters)
    for step in range(2):
        for p in parameters:
            p.grad = torch.full((2,), 0.3 + step)
        updater.step(1.0, 0.1)
    copies = [p.clone() for p in parameters]
    restored = make(copies)
    restored.load_state_dict(updater.state_dict())
    for _ in range(2):
        for p in parameters + copies:
            p.grad = torch.full((2,), 0.5)
        updater.step(0.5, 0.05)
        restored.step(0.5, 0.05)
    assert all(torch.equal(a, b) for a, b in zip(parameters, copies))


def test_resuming_with_another_optimizer_is_refused():
    sgd_state = updater_for(torch.ones(1), momentum=0.9).state_dict()
    check_resumable(sgd_state, "sgd")
    with pytest.raises(ConfigError, match="trained with train.optimizer = 'sgd'.*not 'adam'"):
        check_resumable(sgd_state, "adam")
    old_torch_state = {"optimizer": torch.optim.SGD([torch.ones(1, requires_grad=True)], lr=0.1).state_dict()}
    check_resumable(old_torch_state, "torch_sgd")  # a checkpoint from before MXNet's rules still loads
    with pytest.raises(ConfigError, match='torch.optim.s.*train.optimizer = "torch_sgd"'):
        updater_for(torch.ones(1)).load_state_dict(old_torch_state)


def test_an_old_torch_checkpoint_resumes_torch_sgd():
    weight = torch.ones(2, requires_grad=True)
    old = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    weight.grad = torch.ones(2)
    old.step()
    updater = updater_for(torch.ones(2), optimizer="torch_sgd", momentum=0.9)
    updater.load_state_dict({"optimizer": old.state_dict()})
    assert torch.equal(updater.torch_optimizer.state_dict()["state"][0]["momentum_buffer"], torch.ones(2))


@pytest.mark.parametrize("options, problem", [
    ({"optimizer": "sgdd"}, "optimizer"),
    ({"optimizer": "sgd", "nesterov": True}, "nesterov"),
    ({"optimizer": "torch_sgd", "lr_mult": {"fc.*": 2}}, "lr_mult"),
    ({"optimizer": "sgd", "wd_mult": {"fc.*": -1}}, "wd_mult"),
])
def test_optimizer_problems(options, problem):
    arguments = {"optimizer": "sgd", "nesterov": False, "lr_mult": {}, "wd_mult": {}, **options}
    assert optimizer_problem(**arguments)[0] == problem
    assert optimizer_problem("torch_sgd", True, {}, {}) is None
