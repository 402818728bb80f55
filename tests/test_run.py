"""The training pipeline end to end: actors wired by flow.run, on small data, on the CPU."""

import dataclasses
import logging
import re
import sys
import threading
import traceback

import pytest
import torch
import trio

from flow import checkpoints
from flow.config import config_from_dict
from flow.console import log_run
from flow.errors import CheckpointError, ConfigError, FlowError, NonFiniteLossError, RecordIOError, UserCodeError
from flow.event_log import event_log_path, read_events
from flow.events import (BatchEnd, CheckpointSaved, CheckpointsSkipped, CheckpointUnverified, EpochEnd,
                         LearningRateAdjusted, LearningRateChanged, NonFiniteUpdatesSkipped, RunFailed,
                         RunFinished, RunStarted, RunStopped, Validation)
from flow.run import open_run, softmax_cross_entropy, train
from tests.fixtures import MXNET_FIXTURES, REPO_ROOT


def synthetic_data(epoch_batches=6, batch_size=16, seed=0):
    """A callable epoch -> async iterable of (data, label): different batches every epoch, fixed by seed."""
    def batches(epoch):
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)

        async def iterate():
            for _ in range(epoch_batches):
                data = torch.randn(batch_size, 3, 8, 8, generator=generator)
                label = (data.mean(dim=(1, 2, 3)) > 0).float() + 2 * (data[:, 0].mean(dim=(1, 2)) > 0).float()
                yield data, label
        return iterate()
    return batches


def small_config(tmp_path, **sections):
    raw = {
        "data": {"image_shape": [3, 8, 8], "num_classes": 4, "batch_size": 16, "num_examples": 96},
        "model": {"network": "mlp"},
        "train": {"num_epochs": 2, "lr": 0.1, "mom": 0.9, "wd": 0.0001, "disp_batches": 2, "seed": 3},
        "checkpoint": {"model_prefix": str(tmp_path / "model")},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return config_from_dict(raw)


def threads_running_flow_code():
    """Threads (other than this one) whose stack is inside flow's own code."""
    ours = (str(REPO_ROOT / "flow"), str(REPO_ROOT / "actors"))
    return [thread_id for thread_id, frame in sys._current_frames().items()
            if thread_id != threading.get_ident()
            and any(entry.filename.startswith(ours) for entry in traceback.extract_stack(frame))]


def final_params(tmp_path, epoch):
    return checkpoints.load_checkpoint(str(tmp_path / "model"), epoch)[0]


async def test_two_cpu_replicas_match_one_device(tmp_path):
    one = tmp_path / "one"
    two = tmp_path / "two"
    await train(small_config(one, train={"devices": ["cpu"]}), train_data=synthetic_data())
    await train(small_config(two, train={"devices": ["cpu", "cpu"]}), train_data=synthetic_data())
    for name, tensor in final_params(one, 2).items():
        torch.testing.assert_close(final_params(two, 2)[name], tensor, atol=1e-5, rtol=0)


async def test_replicas_with_device_kvstore_and_uneven_slices_match(tmp_path):
    await train(small_config(tmp_path / "one"), train_data=synthetic_data(batch_size=15))
    await train(small_config(tmp_path / "three", train={"devices": ["cpu"] * 3, "kv_store": "device"}),
                train_data=synthetic_data(batch_size=15))
    for name, tensor in final_params(tmp_path / "one", 2).items():
        torch.testing.assert_close(final_params(tmp_path / "three", 2)[name], tensor, atol=1e-5, rtol=0)


def dropout_net(p=0.5):
    """A small net with dropout, the same weights every time (built without touching torch's RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 32), torch.nn.ReLU(), torch.nn.Dropout(p),
                                   torch.nn.Linear(32, 4))


async def test_dropout_draws_repeat_and_resume_bit_for_bit_with_two_replicas(tmp_path):
    steps = {"num_epochs": 3, "devices": ["cpu", "cpu"]}
    for name in ("whole", "again"):
        await train(small_config(tmp_path / name, train=steps), model=dropout_net(), train_data=synthetic_data())
    await train(small_config(tmp_path / "split", train={**steps, "num_epochs": 1}), model=dropout_net(),
                train_data=synthetic_data())
    await train(small_config(tmp_path / "split", train=steps, checkpoint={"load_epoch": 1}), model=dropout_net(),
                train_data=synthetic_data())
    await train(small_config(tmp_path / "no-dropout", train=steps), model=dropout_net(p=0.0), train_data=synthetic_data())
    whole = final_params(tmp_path / "whole", 3)
    for other in ("again", "split"):
        assert all(torch.equal(whole[name], tensor) for name, tensor in final_params(tmp_path / other, 3).items())
    assert not torch.equal(whole["1.weight"], final_params(tmp_path / "no-dropout", 3)["1.weight"])


async def test_a_run_leaves_torchs_global_rng_as_it_found_it(tmp_path):
    before = torch.get_rng_state()
    await train(small_config(tmp_path / "built"), train_data=synthetic_data())  # builds the configured mlp
    await train(small_config(tmp_path / "dropout", train={"devices": ["cpu", "cpu"]}), model=dropout_net(),
                train_data=synthetic_data())
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("devices, optimizer", [(["cpu"], {}), (["cpu", "cpu"], {}), (["cpu"], {"optimizer": "adam"}),
                                                (["cpu", "cpu"], {"optimizer": "rmsprop", "centered": True}),
                                                (["cpu"], {"optimizer": "torch_sgd"}), (["cpu"], {"precision": "fp16"})])
async def test_resume_equals_uninterrupted_bit_for_bit(tmp_path, devices, optimizer):
    steps = {"lr_step_epochs": [1, 3], "lr_factor": 0.5, "num_epochs": 4, "devices": devices, **optimizer}
    await train(small_config(tmp_path / "whole", train=steps), train_data=synthetic_data())
    await train(small_config(tmp_path / "split", train={**steps, "num_epochs": 2}), train_data=synthetic_data())
    await train(small_config(tmp_path / "split", train=steps, checkpoint={"load_epoch": 2}),
                train_data=synthetic_data())
    whole, split = final_params(tmp_path / "whole", 4), final_params(tmp_path / "split", 4)
    assert all(torch.equal(whole[name], split[name]) for name in whole)
    assert not torch.equal(final_params(tmp_path / "whole", 2)["fc1.weight"], whole["fc1.weight"])


async def test_resume_falls_back_past_a_damaged_newest_checkpoint_says_so_and_stays_bit_for_bit(tmp_path, caplog):
    steps = {"lr_step_epochs": [1, 2], "lr_factor": 0.5, "num_epochs": 3}
    await train(small_config(tmp_path / "whole", train=steps), train_data=synthetic_data())
    await train(small_config(tmp_path / "split", train=steps), train_data=synthetic_data())
    damaged = tmp_path / "split" / "model-0003.params"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x10
    damaged.write_bytes(bytes(data))
    caplog.set_level(logging.INFO, logger="flow")
    config = small_config(tmp_path / "split", train=steps, checkpoint={"resume": True})
    async with open_run(config, train_data=synthetic_data()) as run:
        events = run.events()
        await log_run(run.events())
    reason = f"{damaged}: its sha256 differs from the one model-0003.manifest.json recorded when it was written"
    assert [event async for event in events if isinstance(event, CheckpointsSkipped)] == [
        CheckpointsSkipped(2, [reason + " (damaged since)"])]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [f"resuming from epoch 2, the newest checkpoint that verifies; skipped: {reason} (damaged since)"]
    whole, split = final_params(tmp_path / "whole", 3), final_params(tmp_path / "split", 3)
    assert all(torch.equal(whole[name], split[name]) for name in whole)


async def test_loading_a_damaged_checkpoint_by_its_epoch_is_one_line_naming_the_file(tmp_path):
    await train(small_config(tmp_path, train={"num_epochs": 1}), train_data=synthetic_data())
    states = tmp_path / "model-0001.states"
    size = len(states.read_bytes())
    states.write_bytes(states.read_bytes()[:-1])
    with pytest.raises(CheckpointError) as refused:
        await train(small_config(tmp_path, checkpoint={"load_epoch": 1}), train_data=synthetic_data())
    assert str(refused.value).startswith(f"{states}: {size - 1} bytes, but {size} were written (truncated")


async def test_a_checkpoint_without_checksums_loads_with_a_warning_event(tmp_path):
    await train(small_config(tmp_path, train={"num_epochs": 1}), train_data=synthetic_data())
    (tmp_path / "model-0001.manifest.json").unlink()  # as a flow from before manifests wrote it
    async with open_run(small_config(tmp_path, checkpoint={"resume": True}), train_data=synthetic_data()) as run:
        events = [event async for event in run.events()]
    assert CheckpointUnverified(str(tmp_path / "model-0001.params")) in events
    assert isinstance(events[-1], RunFinished) and events[-1].epochs == 1


class TurnsNaN(torch.nn.Module):
    """A small net whose buffer turns NaN after `steps` training steps, while its loss stays finite."""

    def __init__(self, steps):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4))
        self.register_buffer("scale", torch.ones(1))
        self.steps = steps

    def forward(self, data):
        if self.training:
            self.steps -= 1
            if self.steps < 0:
                self.scale.fill_(float("nan"))
        return self.net(data)


async def test_a_model_gone_nan_ends_the_run_naming_the_epoch_and_keeps_the_good_checkpoint(tmp_path):
    config = small_config(tmp_path, train={"num_epochs": 3}, checkpoint={"keep": 1})
    with pytest.raises(FlowError) as failed:
        async with open_run(config, model=TurnsNaN(steps=8), train_data=synthetic_data()) as run:  # 6 steps an epoch
            events = [event async for event in run.events()]
    assert str(failed.value).startswith(f"{tmp_path / 'model'}-0002.params: not written: the model after Epoch[1] "
                                        f"has NaN or inf weights (in 'scale')")
    assert isinstance(events[-1], RunFailed) and [e.epoch for e in events if isinstance(e, CheckpointSaved)] == [1]
    assert checkpoints.saved_epochs(str(tmp_path / "model")) == [1]
    assert torch.equal(final_params(tmp_path, 1)["scale"], torch.ones(1))


async def test_resume_past_every_step_runs_at_the_reduced_lr(tmp_path):
    steps = {"lr_step_epochs": [1], "lr_factor": 0.5, "num_epochs": 2}
    await train(small_config(tmp_path, train=steps), train_data=synthetic_data())
    config = small_config(tmp_path, train={**steps, "num_epochs": 3}, checkpoint={"load_epoch": 2})
    async with open_run(config, train_data=synthetic_data()) as run:
        events = [event async for event in run.events()]
    speeds = [event for event in events if isinstance(event, BatchEnd)]
    assert speeds and all(event.lr == pytest.approx(0.05) for event in speeds)
    assert events[0] == LearningRateAdjusted(2, pytest.approx(0.05))  # fit.py's line, before RunStarted
    assert not any(isinstance(event, LearningRateChanged) for event in events)
    assert isinstance(events[-1], RunFinished) and events[-1].updates == 18


async def test_each_lr_step_is_announced_at_its_first_update(tmp_path):
    config = small_config(tmp_path, train={"lr_step_epochs": [1, 3], "lr_factor": 0.5, "num_epochs": 4,
                                           "warmup_epochs": 0.5})
    async with open_run(config, train_data=synthetic_data()) as run:
        events = [event async for event in run.events()]
    assert [event for event in events if isinstance(event, (LearningRateChanged, LearningRateAdjusted))] == [
        LearningRateChanged(7, 0.05), LearningRateChanged(19, 0.025)]  # 6 updates an epoch; none in warmup


async def test_resuming_sgd_from_torch_s_optimizer_state_is_refused(tmp_path):
    await train(small_config(tmp_path, train={"optimizer": "torch_sgd", "num_epochs": 1}), train_data=synthetic_data())
    with pytest.raises(ConfigError, match='trained with train.optimizer = .torch_sgd.: resume it with that'):
        await train(small_config(tmp_path, checkpoint={"load_epoch": 1}), train_data=synthetic_data())


async def test_a_multiplier_pattern_that_matches_nothing_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"train.lr_mult: pattern 'fc9.\*' matches no parameter name .*fc1.weight"):
        await train(small_config(tmp_path, train={"lr_mult": {"fc9.*": 2}}), train_data=synthetic_data())


async def test_events_in_order_with_checkpoints_and_validation(tmp_path):
    config = small_config(tmp_path, checkpoint={"keep": 1})
    async with open_run(config, train_data=synthetic_data(), val_data=synthetic_data(epoch_batches=2, seed=9)) as run:
        events = [event async for event in run.events()]
        result = await run.wait()
    kinds = [type(event).__name__ for event in events]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished"
    epoch_ends = [event for event in events if isinstance(event, EpochEnd)]
    assert [event.epoch for event in epoch_ends] == [0, 1] and all(event.samples == 96 for event in epoch_ends)
    assert [event.epoch for event in events if isinstance(event, Validation)] == [0, 1]
    assert [event.epoch for event in events if isinstance(event, CheckpointSaved)] == [1, 2]
    assert [(event.since_batch, event.batch) for event in events if isinstance(event, BatchEnd)] == [(0, 2), (2, 4)] * 2
    assert checkpoints.saved_epochs(str(tmp_path / "model")) == [2]  # keep = 1
    assert result.updates == 12 and result.epochs == 2
    assert result.validation_metrics[0][0] == "accuracy"


async def test_console_lines_parse_with_mxnet_parse_log(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="flow")
    async with open_run(small_config(tmp_path), train_data=synthetic_data(),
                        val_data=synthetic_data(epoch_batches=2)) as run:
        await log_run(run.events())
    lines = [record.getMessage() for record in caplog.records if record.name == "flow"]
    train_re = re.compile(r".*Epoch\[(\d+)\] Train-accuracy.*=([.\d]+)")
    val_re = re.compile(r".*Epoch\[(\d+)\] Validation-accuracy.*=([.\d]+)")
    time_re = re.compile(r".*Epoch\[(\d+)\] Time.*=([.\d]+)")
    speed_re = re.compile(r"^Epoch\[(\d+)\] Batch \[(\d+)-(\d+)\]\tSpeed: ([.\d]+) samples/sec\taccuracy=([.\d]+)$")
    assert [train_re.match(line).group(1) for line in lines if train_re.match(line)] == ["0", "1"]
    assert [val_re.match(line).group(1) for line in lines if val_re.match(line)] == ["0", "1"]
    assert len([line for line in lines if time_re.match(line)]) == 2
    assert [speed_re.match(line).group(2, 3) for line in lines if speed_re.match(line)] == [("0", "2"), ("2", "4")] * 2
    assert lines.count(f'Saved checkpoint to "{tmp_path / "model"}-0002.params"') == 1


async def test_a_failing_model_surfaces_as_a_user_code_error_caused_by_its_exception(tmp_path):
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3 * 8 * 8, 4)

        def forward(self, data):
            raise ArithmeticError("broken model")

    seen = []
    with pytest.raises(UserCodeError, match=r"^the model raised ArithmeticError: broken model ") as failed:
        async with open_run(small_config(tmp_path), model=Broken(), train_data=synthetic_data()) as run:
            async for event in run.events():
                seen.append(event)
    assert isinstance(failed.value.__cause__, ArithmeticError)
    assert isinstance(seen[0], RunStarted)
    assert seen[-1] == RunFailed("UserCodeError", str(failed.value))


async def test_trains_on_mxnet_records_and_learns(tmp_path):
    config = config_from_dict({
        "data": {"data_train": str(MXNET_FIXTURES / "train.rec"), "data_val": str(MXNET_FIXTURES / "val.rec"),
                 "image_shape": [3, 64, 64], "num_classes": 10, "batch_size": 100, "data_nthreads": 2},
        "model": {"network": "mlp"},
        "train": {"num_epochs": 1, "lr": 0.05, "disp_batches": 4},
    })
    async with open_run(config) as run:
        events = [event async for event in run.events()]
    assert isinstance(events[0], RunStarted)
    assert [event.samples for event in events if isinstance(event, EpochEnd)] == [800]
    assert [event.samples for event in events if isinstance(event, Validation)] == [200]


@pytest.mark.parametrize("lr_step_epochs", [[], [1]])
async def test_an_empty_record_file_is_nothing_to_train_on(tmp_path, lr_step_epochs):
    (tmp_path / "empty.rec").write_bytes(b"")
    config = small_config(tmp_path, data={"data_train": str(tmp_path / "empty.rec"), "num_examples": 0},
                          train={"lr_step_epochs": lr_step_epochs})
    with pytest.raises(RecordIOError, match=r"empty.rec: no records: nothing to train on \(data.data_train\)"):
        await train(config)
    assert not list(tmp_path.glob("model*"))  # no checkpoint, no event log


async def test_cancelling_the_callers_scope_mid_epoch_stops_promptly(tmp_path):
    yielded = []

    def counted_data(epoch):
        async def batches():
            for index in range(6):
                yielded.append((epoch, index))
                data = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(epoch * 10 + index))
                yield data, torch.zeros(16)
        return batches()

    at_cancel = None
    saved = []  # the checkpoint actor saves beside training: epoch 2's may land after epoch 2's first batches
    nurseries_before = list(trio.lowlevel.current_task().child_nurseries)
    with trio.CancelScope() as scope:
        async with open_run(small_config(tmp_path, train={"num_epochs": 50}), train_data=counted_data) as run:
            async for event in run.events():
                if isinstance(event, CheckpointSaved):
                    saved.append(event.epoch)
                if isinstance(event, BatchEnd) and event.epoch >= 2 and 2 in saved:
                    at_cancel = len(yielded)
                    scope.cancel()
    assert scope.cancelled_caught and at_cancel is not None
    # The loader is at most a few batches ahead (bounded channels); nothing runs after the scope ends.
    assert len(yielded) - at_cancel <= 4
    on_disk = checkpoints.saved_epochs(str(tmp_path / "model"))
    assert on_disk[:len(saved)] == saved == list(range(1, len(saved) + 1))
    assert len(on_disk) <= len(saved) + 1  # at most the save under way when the scope was cancelled
    model_state, states = checkpoints.load_checkpoint(str(tmp_path / "model"), on_disk[-1])
    assert states["epoch"] == on_disk[-1] and "fc1.weight" in model_state
    assert not list(tmp_path.glob("*.tmp"))
    assert trio.lowlevel.current_task().child_nurseries == nurseries_before  # no task of the run left
    assert not threads_running_flow_code()


async def test_two_concurrent_runs_equal_two_sequential_ones(tmp_path):
    configs = {name: small_config(tmp_path / name, train={"seed": seed, "devices": devices})
               for name, seed, devices in [("a", 1, ["cpu"]), ("b", 2, ["cpu", "cpu"])]}
    async with trio.open_nursery() as nursery:
        for name, config in configs.items():
            nursery.start_soon(lambda config=config: train(config, train_data=synthetic_data(seed=5)))
    concurrent = {name: final_params(tmp_path / name, 2) for name in configs}
    for name, config in configs.items():
        await train(small_config(tmp_path / f"{name}-alone", train={"seed": config.train.seed,
                                                                     "devices": list(config.train.devices)}),
                    train_data=synthetic_data(seed=5))
        alone = final_params(tmp_path / f"{name}-alone", 2)
        assert all(torch.equal(alone[key], concurrent[name][key]) for key in alone)
    assert not torch.equal(concurrent["a"]["fc1.weight"], concurrent["b"]["fc1.weight"])


async def test_a_stalled_subscriber_with_drop_policy_does_not_hold_training(tmp_path):
    config = small_config(tmp_path, train={"num_epochs": 3, "disp_batches": 1})
    async with open_run(config, train_data=synthetic_data()) as run:
        stalled = run.events(max_buffer=2, policy="drop_oldest")  # never read while training runs
        result = await run.wait()
        left = [event async for event in stalled]
    assert result.updates == 18
    assert len(left) == 2 and isinstance(left[-1], RunFinished)
    assert stalled.dropped > 10


async def test_the_event_log_holds_every_event_of_the_run(tmp_path):
    from flow.event_log import event_log_path, read_events

    async with open_run(small_config(tmp_path), train_data=synthetic_data()) as run:
        seen = [event async for event in run.events()]
    assert read_events(event_log_path(str(tmp_path / "model"))) == seen


async def test_fine_tune_from_a_checkpoint_keeps_the_body_and_replaces_the_classifier(tmp_path):
    await train(small_config(tmp_path / "base"), train_data=synthetic_data())
    base = final_params(tmp_path / "base", 2)
    tuned = small_config(tmp_path / "tuned", data={"num_classes": 3}, train={"num_epochs": 1, "lr": 1e-9, "wd": 0.0},
                         model={"pretrained_prefix": str(tmp_path / "base" / "model"), "pretrained_epoch": 2})
    three_classes = synthetic_data()

    def relabel(epoch):
        async def batches():
            async for data, label in three_classes(epoch):
                yield data, label.clamp(max=2)
        return batches()

    await train(tuned, train_data=relabel)
    params = final_params(tmp_path / "tuned", 1)
    torch.testing.assert_close(params["fc1.weight"], base["fc1.weight"], atol=1e-6, rtol=0)
    assert params["fc3.weight"].shape[0] == 3
    spec = checkpoints.load_model_spec(str(tmp_path / "tuned" / "model"))
    assert spec["fine_tune"][0]["num_classes"] == 3


@pytest.mark.parametrize("train_options", [{"precision": "bf16"}, {"optimizer": "adam", "lr": 0.01},
                                           {"optimizer": "torch_sgd", "nesterov": True, "clip_gradient": 0.1,
                                            "lr_schedule": "cosine", "warmup_epochs": 0.5},
                                           {"optimizer": "nag", "lr_schedule": "pow", "lr_mult": {"fc3.*": 2.0}},
                                           {"optimizer": "adagrad", "lr_schedule": "factor", "warmup_mode": "constant",
                                            "warmup_epochs": 0.5, "warmup_begin_lr": 0.01},
                                           {"optimizer": "adadelta", "wd_mult": {"*.bias": 1.0}}])
async def test_optimizer_and_precision_options_train(tmp_path, train_options):
    result = await train(small_config(tmp_path, train=train_options), train_data=synthetic_data())
    assert result.updates == 12 and 0 <= result.train_metrics[0][1] <= 1


async def test_fp16_trains_with_a_loss_scale_on_one_device_only(tmp_path):
    config = small_config(tmp_path, train={"precision": "fp16", "num_epochs": 4})
    fp32 = await train(small_config(tmp_path / "fp32", train={"num_epochs": 4}), train_data=synthetic_data())
    result = await train(config, train_data=synthetic_data())
    assert result.updates == 24
    # as fp32 does (0.5 here), to fp16's rounding: well above the 0.25 of guessing among 4 classes
    assert result.train_metrics[0][1] > 0.4
    assert abs(result.train_metrics[0][1] - fp32.train_metrics[0][1]) < 0.1
    assert "loss_scale" in checkpoints.load_checkpoint(str(tmp_path / "model"), 4)[1]["updater"]
    with pytest.raises(ConfigError, match="train.precision: fp16 trains on one device only"):
        await train(small_config(tmp_path / "two", train={"precision": "fp16", "devices": ["cpu", "cpu"]}),
                    train_data=synthetic_data())


async def test_a_custom_loss_is_what_the_model_learns_from(tmp_path):
    calls = []

    def weighted_loss(logits, label):
        calls.append(len(label))
        return torch.nn.functional.cross_entropy(logits, label.long(), reduction="none") * 0.0  # learns nothing

    await train(small_config(tmp_path, train={"wd": 0.0, "mom": 0.0}), train_data=synthetic_data(), loss=weighted_loss)
    model_state, _ = checkpoints.load_checkpoint(str(tmp_path / "model"), 1)
    assert calls == [16] * 12
    assert torch.equal(model_state["fc1.weight"], final_params(tmp_path, 2)["fc1.weight"])


class NaNOn(torch.nn.Module):
    """A small net whose training forwards number `calls` (from 1) give NaN logits."""

    def __init__(self, calls):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 4))
        self.calls, self.count = calls, 0

    def forward(self, data):
        logits = self.net(data)
        if self.training:
            self.count += 1
            if self.count in self.calls:
                return logits * float("nan")
        return logits


async def test_a_nan_loss_ends_the_run_naming_epoch_and_batch_and_keeps_the_checkpoints(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"^the loss is nan in training Epoch\[1\] Batch\[2\] \(train\."):
        await train(small_config(tmp_path, train={"num_epochs": 3}), model=NaNOn({9}), train_data=synthetic_data())
    assert checkpoints.saved_epochs(str(tmp_path / "model")) == [1]


@pytest.mark.parametrize("devices", [["cpu"], ["cpu", "cpu"]])  # the replica updates itself; the server does
async def test_skip_nonfinite_skips_those_updates_and_counts_them_each_epoch(tmp_path, devices, caplog):
    config = small_config(tmp_path, train={"skip_nonfinite": True, "devices": devices})
    caplog.set_level(logging.INFO, logger="flow")
    async with open_run(config, model=NaNOn({2, 3, 9}), train_data=synthetic_data()) as run:
        await log_run(run.events(), progress=False)
    events = read_events(event_log_path(config.checkpoint.model_prefix))
    assert [e for e in events if isinstance(e, NonFiniteUpdatesSkipped)] == [
        NonFiniteUpdatesSkipped(0, 2, 6), NonFiniteUpdatesSkipped(1, 1, 6)]
    assert "Epoch[0] skipped 2 of its 6 updates: their loss was NaN or inf (train.skip_nonfinite)" in caplog.messages
    assert all(torch.isfinite(tensor).all() for tensor in final_params(tmp_path, 2).values())


def dropout_image_net():
    """dropout_net for 3x32x32 images."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 32), torch.nn.ReLU(),
                                   torch.nn.Dropout(0.5), torch.nn.Linear(32, 10))


def shuffled_records_config(folder, devices, resume=False):
    """MXNet's 800 training records, shuffled, randomly cropped and mirrored: 80 batches an epoch."""
    return config_from_dict({
        "data": {"data_train": str(MXNET_FIXTURES / "train.rec"), "image_shape": [3, 32, 32], "num_classes": 10,
                 "batch_size": 10, "data_nthreads": 1, "random_crop": True, "random_mirror": True,
                 "rgb_mean": [123.68, 116.779, 103.939], "rgb_std": [58.393, 57.12, 57.375]},
        "train": {"num_epochs": 2, "lr": 0.01, "mom": 0.9, "lr_step_epochs": [1], "disp_batches": 20,
                  "devices": devices},
        "checkpoint": {"model_prefix": str(folder / "model"), "resume": resume},
    })


@pytest.mark.parametrize("devices", [["cpu"], ["cpu", "cpu"]])
async def test_a_run_stopped_mid_epoch_then_resumed_equals_one_never_stopped_bit_for_bit(tmp_path, devices):
    """The stopped run saves its position in the epoch's shuffled order and each replica's dropout
    draws; the resumed one skips the batches done and ends with the uninterrupted run's weights."""
    whole = await train(shuffled_records_config(tmp_path / "whole", devices), model=dropout_image_net())
    assert whole.stopped_at is None
    losses = 0
    stop_at_loss = (80 + 3) * len(devices)  # in the 4th step of epoch 1 (a loss a replica a step)

    def stopping_loss(logits, label):
        nonlocal losses
        losses += 1
        if losses == stop_at_loss:  # from the replica's worker thread, as a program's own thread would
            trio.from_thread.run_sync(run.stop)
        return softmax_cross_entropy(logits, label)

    async with open_run(shuffled_records_config(tmp_path / "split", devices), model=dropout_image_net(),
                        loss=stopping_loss) as run:
        events = run.events()
        stopped = await run.wait()
    events = [event async for event in events]
    epoch, batch = stopped.stopped_at
    # The steps already sent finish, and the batch held back (the loop's look-ahead): with a parameter
    # server one step at a time, else up to 16 ahead.
    assert epoch == 1 and (batch == 5 if len(devices) > 1 else 4 <= batch < 80)
    assert [(e.epoch, e.batch) for e in events if isinstance(e, CheckpointSaved)] == [(1, 0), (1, batch)]
    assert isinstance(events[-1], RunStopped) and (events[-1].epoch, events[-1].batch) == (1, batch)
    mid_epoch = tmp_path / "split" / f"model-0001-batch{batch:05d}.params"
    assert mid_epoch.exists()

    resumed = await train(shuffled_records_config(tmp_path / "split", devices, resume=True), model=dropout_image_net())
    assert resumed.stopped_at is None and resumed.updates == whole.updates == 160
    whole_params, split_params = final_params(tmp_path / "whole", 2), final_params(tmp_path / "split", 2)
    assert all(torch.equal(whole_params[name], split_params[name]) for name in whole_params)
    assert not mid_epoch.exists()  # the epoch-2 checkpoint went past it


async def test_a_stop_mid_epoch_with_a_watch_saves_the_watches_and_is_no_early_stop(tmp_path):
    """The mid-epoch checkpoint holds the watches after the last validation, so the resumed run's early
    stopping counts on from them; the stopped run ends with RunStopped, not EarlyStopped."""
    config = small_config(tmp_path, train={"num_epochs": 3, "devices": ["cpu", "cpu"], "early_stop_patience": 5})
    losses = 0

    def stopping_loss(logits, label):
        nonlocal losses
        losses += 1
        if losses == (6 + 3) * 2:  # in the 4th step of epoch 1; a parameter server: one step at a time
            trio.from_thread.run_sync(run.stop)
        return softmax_cross_entropy(logits, label)

    async with open_run(config, model=None, loss=stopping_loss, train_data=synthetic_data(),
                        val_data=synthetic_data(seed=1)) as run:
        events = run.events()
        stopped = await run.wait()
    events = [event async for event in events]
    assert stopped.stopped_at == (1, 5) and isinstance(events[-1], RunStopped)  # the 4th step sent, and the one held
    assert not [event for event in events if type(event).__name__ == "EarlyStopped"]
    mid_epoch = checkpoints.read_checkpoint(str(tmp_path / "model"), 1, 5)
    assert mid_epoch.states["watch"]["early_stop"]["best_epoch"] == 0

    resumed = await train(dataclasses.replace(config, checkpoint=dataclasses.replace(config.checkpoint, resume=True)),
                          train_data=synthetic_data(), val_data=synthetic_data(seed=1))
    whole = small_config(tmp_path / "whole", train={"num_epochs": 3, "devices": ["cpu", "cpu"],
                                                    "early_stop_patience": 5})
    await train(whole, train_data=synthetic_data(), val_data=synthetic_data(seed=1))
    assert resumed.stopped_at is None and resumed.epochs == 2
    assert (checkpoints.read_checkpoint(str(tmp_path / "model"), 3).states["watch"]
            == checkpoints.read_checkpoint(str(tmp_path / "whole" / "model"), 3).states["watch"])
