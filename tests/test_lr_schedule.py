"""flow.lr_schedule against MXNet 1.9.1's fit.py + MultiFactorScheduler semantics."""

import math
import re

import pytest

from flow.errors import ConfigError
from flow.lr_schedule import (ConstantSchedule, CosineSchedule, FactorSchedule, MultiFactorSchedule, PolySchedule,
                              adjust_line, build_schedule, change_line, updates_per_epoch)


def mxnet_fit_lrs(lr, lr_factor, step_epochs, epoch_size, begin_epoch, num_updates):
    """The lrs MXNet 1.9.1 uses for the first `num_updates` updates of a run: fit.py's
    _get_lr_scheduler, then MultiFactorScheduler.__call__ with the optimizer's count from 1."""
    for s in step_epochs:
        if begin_epoch >= s:
            lr *= lr_factor
    steps = [epoch_size * (x - begin_epoch) for x in step_epochs if x - begin_epoch > 0]
    if not steps:
        return [lr] * num_updates
    base_lr, cur_step_ind, lrs = lr, 0, []
    for num_update in range(1, num_updates + 1):
        while cur_step_ind <= len(steps) - 1 and num_update > steps[cur_step_ind]:
            cur_step_ind += 1
            base_lr *= lr_factor
        lrs.append(base_lr)
    return lrs


def run(schedule, count, done=0):
    """The lrs of the `count` updates after the first `done`: what the fit loop asks a run resumed after `done`."""
    return [schedule.lr_at(num_update) for num_update in range(done + 1, done + count + 1)]


def test_updates_per_epoch_rounds_up_like_fit_py():
    assert updates_per_epoch(1000, 128) == 8  # 7.8125 -> 8: the padded last batch counts
    assert updates_per_epoch(1024, 128) == 8
    assert updates_per_epoch(1000, 128, num_workers=2) == 4  # int(1000 / 2) = 500 -> ceil(3.9)
    with pytest.raises(ConfigError, match="batch_size"):
        updates_per_epoch(1000, 0)


def test_fresh_run_fires_after_the_step_epoch():
    schedule = build_schedule("multifactor", 0.1, epoch_size=10, lr_factor=0.1, lr_step_epochs=(2, 4))
    lrs = run(schedule, 45)
    # Updates 1..20 (epochs 0 and 1) at 0.1; update 21, the first of epoch 2, at 0.01.
    assert lrs[:20] == [0.1] * 20
    assert lrs[20:40] == [0.1 * 0.1] * 20
    assert lrs[40:] == [0.1 * 0.1 * 0.1] * 5
    assert schedule.lr_at(20) == 0.1 and schedule.lr_at(21) == 0.1 * 0.1


def test_resumed_run_starts_reduced_and_fires_at_the_next_step():
    schedule = build_schedule("multifactor", 0.1, epoch_size=10, lr_factor=0.1, lr_step_epochs=(2, 4))
    lrs = run(schedule, 15, done=30)
    assert lrs[:10] == [0.1 * 0.1] * 10  # epoch 3: the step at 2 already applied
    assert lrs[10:] == [0.1 * 0.1 * 0.1] * 5  # epoch 4 begins with the second step


def test_resume_at_a_step_epoch_counts_that_step():
    schedule = build_schedule("multifactor", 0.1, epoch_size=10, lr_factor=0.1, lr_step_epochs=(2, 4))
    assert run(schedule, 1, done=20) == [0.1 * 0.1]


def test_resume_past_every_step_is_a_constant_reduced_lr():
    schedule = build_schedule("multifactor", 0.5, epoch_size=7, lr_factor=0.5, lr_step_epochs=(1, 2))
    assert run(schedule, 30, done=35) == [0.5 * 0.5 * 0.5] * 30


@pytest.mark.parametrize("begin_epoch", [0, 1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("epoch_size", [1, 7, 10])
def test_every_update_matches_mxnet(begin_epoch, epoch_size):
    step_epochs = [2, 4, 5]
    schedule = build_schedule("multifactor", 0.1, epoch_size=epoch_size, lr_factor=0.3, lr_step_epochs=step_epochs)
    count = epoch_size * 8
    assert run(schedule, count, done=epoch_size * begin_epoch) == mxnet_fit_lrs(0.1, 0.3, step_epochs, epoch_size,
                                                                               begin_epoch, count)


def test_no_steps_or_factor_one_is_constant():
    assert isinstance(build_schedule("multifactor", 0.1, epoch_size=10), ConstantSchedule)
    schedule = build_schedule("multifactor", 0.1, epoch_size=10, lr_factor=1.0, lr_step_epochs=(1,))
    assert run(schedule, 30) == [0.1] * 30


def test_linear_warmup_boundaries():
    schedule = MultiFactorSchedule(0.1, [100], 0.1, warmup_steps=5, warmup_begin_lr=0.0)
    assert schedule.lr_at(0) == 0.0
    assert schedule.lr_at(1) == pytest.approx(0.02)
    assert schedule.lr_at(4) == pytest.approx(0.08)
    assert schedule.lr_at(5) == 0.1  # warmup over: the base lr
    assert schedule.lr_at(100) == 0.1 and schedule.lr_at(101) == pytest.approx(0.01)
    begin = ConstantSchedule(0.1, warmup_steps=4, warmup_begin_lr=0.02)
    assert [begin.lr_at(n) for n in range(6)] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1])


def test_cosine_boundaries():
    schedule = CosineSchedule(0.1, max_update=100, final_lr=0.001)
    assert schedule.lr_at(0) == 0.1
    assert schedule.lr_at(50) == pytest.approx((0.1 + 0.001) / 2)
    assert schedule.lr_at(25) == pytest.approx(0.001 + 0.099 * (1 + math.cos(math.pi / 4)) / 2)
    assert schedule.lr_at(100) == pytest.approx(0.001)
    assert schedule.lr_at(1000) == 0.001


def test_cosine_with_warmup_and_build():
    schedule = build_schedule("cosine", 0.1, epoch_size=10, num_epochs=11, warmup_steps=10, warmup_begin_lr=0.01)
    assert schedule.lr_at(0) == 0.01
    assert schedule.lr_at(10) == 0.1  # decay starts where warmup ends
    assert schedule.lr_at(60) == pytest.approx(0.05)
    assert schedule.lr_at(110) == pytest.approx(0.0)


@pytest.mark.parametrize("call, message", [
    (lambda: build_schedule("poly", 0.1, epoch_size=10), "unknown lr schedule 'poly'; valid: multifactor, factor, pow, cosine"),
    (lambda: build_schedule("multifactor", 0.1, epoch_size=10, lr_step_epochs=(4, 2)), "lr_step_epochs"),
    (lambda: build_schedule("multifactor", 0.1, epoch_size=0, lr_step_epochs=(2,)), "epoch_size"),
    (lambda: build_schedule("cosine", 0.1, epoch_size=10), "num_epochs"),
    (lambda: MultiFactorSchedule(0.1, [10], 2.0), "lr_factor"),
    (lambda: MultiFactorSchedule(0.1, [], 0.1), "lr steps"),
    (lambda: ConstantSchedule(0.1, warmup_steps=5, warmup_begin_lr=0.2), "warmup_begin_lr"),
    (lambda: CosineSchedule(0.1, max_update=5, warmup_steps=5), "max_update"),
    (lambda: ConstantSchedule(0.0), "lr"),
    (lambda: ConstantSchedule(0.1, warmup_steps=5, warmup_mode="exponential"), "warmup_mode"),
    (lambda: build_schedule("pow", 0.1, epoch_size=10), "num_epochs"),
    (lambda: FactorSchedule(0.1, 0, 0.5), "factor step"),
    (lambda: PolySchedule(0.1, max_update=10, pwr=0), "lr_pwr"),
])
def test_bad_arguments_are_config_errors(call, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        call()


def mxnet_factor_lrs(base_lr, step, factor, stop_factor_lr, num_updates):
    """MXNet 1.9.1's FactorScheduler.__call__ for updates 1..num_updates (it keeps a count and mutates base_lr)."""
    count, lrs = 0, []
    for num_update in range(1, num_updates + 1):
        while num_update > count + step:
            count += step
            base_lr *= factor
            if base_lr < stop_factor_lr:
                base_lr = stop_factor_lr
        lrs.append(base_lr)
    return lrs


def mxnet_poly_lrs(max_update, base_lr, pwr, num_updates):
    """fit.py's PolyScheduler(max_up, lr, pwr): lr only recomputed up to max_update."""
    lr, lrs = base_lr, []
    for num_update in range(1, num_updates + 1):
        if num_update <= max_update:
            lr = base_lr * pow(1 - float(num_update) / float(max_update), pwr)
        lrs.append(lr)
    return lrs


def test_factor_matches_mxnet_s_factor_scheduler():
    schedule = build_schedule("factor", 0.5, epoch_size=7, lr_factor=0.1, lr_factor_epochs=2)
    assert run(schedule, 60) == mxnet_factor_lrs(0.5, 14, 0.1, 1e-8, 60)
    assert schedule.lr_at(14) == 0.5 and schedule.lr_at(15) == 0.5 * 0.1
    assert run(schedule, 20, done=30) == mxnet_factor_lrs(0.5, 14, 0.1, 1e-8, 50)[30:]  # a resume goes on
    floor = FactorSchedule(1.0, 1, 1e-3, stop_factor_lr=1e-5)
    assert run(floor, 6) == mxnet_factor_lrs(1.0, 1, 1e-3, 1e-5, 6) and floor.lr_at(6) == 1e-5


def test_pow_matches_fit_py_s_poly_scheduler():
    schedule = build_schedule("pow", 0.1, epoch_size=10, num_epochs=3, lr_pwr=2.0)
    assert run(schedule, 35) == pytest.approx(mxnet_poly_lrs(30, 0.1, 2.0, 35), rel=1e-12, abs=0)
    assert schedule.lr_at(15) == pytest.approx(0.1 * 0.25)
    assert PolySchedule(0.1, 30, 1.0, warmup_steps=10).lr_at(20) == pytest.approx(0.05)


def test_constant_warmup_holds_the_begin_lr():
    schedule = MultiFactorSchedule(0.1, [100], 0.1, warmup_steps=5, warmup_begin_lr=0.01, warmup_mode="constant")
    assert run(schedule, 6) == [0.01] * 4 + [0.1] * 2


def test_changes_are_where_a_step_fires_not_in_warmup_or_smooth_decay():
    multifactor = build_schedule("multifactor", 0.1, epoch_size=10, lr_step_epochs=(2, 4), warmup_steps=5)
    assert [n for n in range(1, 60) if multifactor.changes_at(n)] == [21, 41]
    factor = build_schedule("factor", 0.1, epoch_size=10, lr_factor_epochs=1)
    assert [n for n in range(1, 35) if factor.changes_at(n)] == [11, 21, 31]
    for smooth in (build_schedule("pow", 0.1, epoch_size=10, num_epochs=3),
                   build_schedule("cosine", 0.1, epoch_size=10, num_epochs=3)):
        assert not any(smooth.changes_at(n) for n in range(1, 40))


def test_resumed_lr_is_fit_py_s_adjusted_lr():
    schedule = build_schedule("multifactor", 0.1, epoch_size=10, lr_factor=0.1, lr_step_epochs=(2, 4))
    assert schedule.resumed_lr(10) is None  # epoch 1: no step passed, fit.py says nothing
    assert schedule.resumed_lr(20) == pytest.approx(0.01)  # resumed at epoch 2: its step applied
    assert schedule.resumed_lr(50) == pytest.approx(0.001)
    assert build_schedule("pow", 0.1, epoch_size=10, num_epochs=3).resumed_lr(20) is None


def test_the_lines_are_mxnet_s_and_parse_back():
    assert change_line(21, 0.01) == "Update[21]: Change learning rate to 1.00000e-02"
    assert adjust_line(0.001, 4) == "Adjust learning rate to 1.000000e-03 for epoch 4"
    update, lr = re.fullmatch(r"Update\[(\d+)\]: Change learning rate to (\S+)", change_line(1234, 0.01234567)).groups()
    assert (int(update), float(lr)) == (1234, 0.0123457)
    lr, epoch = re.fullmatch(r"Adjust learning rate to (\S+) for epoch (\d+)", adjust_line(2.5e-5, 30)).groups()
    assert (float(lr), int(epoch)) == (2.5e-5, 30)
