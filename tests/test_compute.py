"""The compute actor alone, driven through its channels: what it answers, in which order, how it
holds back, fails and stops. Its torch work runs in a worker thread, so these tests keep real time
(each bounded by `LIMIT`) rather than Trio's mock clock."""

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch
import trio

from flow import augment
from flow.actors import compute as compute_module
from flow.actors.compute import (ComputeSettings, EvalResult, EvalSlice, ReplicaState, SnapshotRequest, TrainResult,
                                 TrainSlice, _Replica, compute)
from flow.errors import NonFiniteLossError, UserCodeError, unwrapped_errors
from flow.metrics import create_metric
from flow.optim import Updater, UpdaterSettings
from flow.run import softmax_cross_entropy

LIMIT = 10  # seconds; every step here takes milliseconds
SETTINGS = ComputeSettings("cpu", replica=0, precision="fp32", seed=0, metrics=("accuracy", "ce"))


def tiny_net():
    """The same weights every time, without touching torch's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))


def batch(size=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 3, 2, 2, generator=generator), torch.randint(0, 3, (size,), generator=generator).float()


def plain_sgd(parameters):
    return Updater(((f"{i}.weight", p) for i, p in enumerate(parameters)), UpdaterSettings("sgd", lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0,
                                               clip_gradient=0.0))


def train_slice(data, label, *, weight=None, scale=1.0, lr=0.1, weights=None, epoch=0):
    samples = len(label) if weight is None else int(weight.sum())
    return TrainSlice(epoch, data, label, samples, weight, scale, lr, weights)


def eval_slice(data, weights=None, label=None):
    label = torch.zeros(len(data)) if label is None else label
    return EvalSlice(data, label, len(data), weights)


def metric_statistics(label, probabilities):
    """What the metric actor must get for these rows: the statistics of SETTINGS' metrics."""
    return create_metric(SETTINGS.metrics).statistics(label, probabilities)


def summed_gradients(net, data, label, weight=None):
    """What a replica must send the parameter server: the loss summed over the real samples, differentiated."""
    net.zero_grad()
    loss = softmax_cross_entropy(net(data), label)
    (loss if weight is None else loss * weight).sum().backward()
    return [p.grad.clone() for p in net.parameters()]


async def snapshot(work_send) -> ReplicaState:
    reply_send, reply_receive = trio.open_memory_channel(1)
    await work_send.send(SnapshotRequest(None, reply_send))
    return await reply_receive.receive()


async def start(nursery, net, *, make_updater=None, work_size=8, result_size=8, settings=SETTINGS):
    """A started compute actor: (its work channel, its result channel)."""
    work_send, work_receive = trio.open_memory_channel(work_size)
    result_send, result_receive = trio.open_memory_channel(result_size)
    await nursery.start(compute, settings, net, softmax_cross_entropy, work_receive, result_send, make_updater)
    return work_send, result_receive


async def test_answers_each_slice_in_order_with_its_outputs_and_summed_gradients():
    data, label = batch()
    weight = torch.tensor([1.0, 1.0, 1.0, 0.0])  # the last sample is a pad: no loss
    reference = tiny_net()
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            work_send, results = await start(nursery, tiny_net())
            async with work_send:
                await work_send.send(train_slice(data, label, weight=weight))
                await work_send.send(eval_slice(data[:2], label=label[:2]))
                await work_send.send(train_slice(data[2:], label[2:]))
            answers = [answer async for answer in results]  # the actor ends once its work channel does
    assert [type(answer) for answer in answers] == [TrainResult, EvalResult, TrainResult]
    assert all(answer.replica == 0 for answer in answers)
    with torch.no_grad():
        probabilities = torch.softmax(reference(data), dim=1)
    # the metrics' statistics of the real rows only (the pad is in no metric), each slice reporting its batch's
    assert answers[0].statistics == ((0, metric_statistics(label[:3], probabilities[:3])),)
    assert answers[1].statistics == ((0, metric_statistics(label[:2], probabilities[:2])),)
    assert answers[2].statistics == ((0, metric_statistics(label[2:], probabilities[2:])),)
    assert answers[0].statistics[0][1][0][1] == 3 and answers[1].statistics[0][1][0][1] == 2
    for got, expected in zip(answers[0].gradients, summed_gradients(reference, data, label, weight)):
        torch.testing.assert_close(got, expected)
    for got, expected in zip(answers[2].gradients, summed_gradients(reference, data[2:], label[2:])):
        torch.testing.assert_close(got, expected)


async def test_a_frozen_parameter_has_no_gradient():
    net = tiny_net()
    net[1].bias.requires_grad_(False)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            work_send, results = await start(nursery, net)
            await work_send.send(train_slice(*batch()))
            result = await results.receive()
            work_send.close()
    weight_gradient, bias_gradient = result.gradients
    assert bias_gradient is None and weight_gradient.abs().sum() > 0


async def test_loads_the_weights_a_slice_brings_before_computing():
    data, label = batch()
    zeros = [torch.zeros_like(p) for p in tiny_net().parameters()]
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            work_send, results = await start(nursery, tiny_net())
            await work_send.send(eval_slice(data, zeros, label))
            evaluated = await results.receive()
            await work_send.send(eval_slice(data, None, label))  # None: keep what it has
            again = await results.receive()
            state = await snapshot(work_send)
            work_send.close()
    uniform = torch.full((4, 3), 1 / 3)  # zero logits
    assert evaluated.statistics == again.statistics == ((0, metric_statistics(label, uniform)),)
    assert all(torch.equal(tensor, torch.zeros_like(tensor)) for tensor in state.model.values())


async def test_a_replica_with_its_own_updater_steps_at_each_slices_lr_and_scale():
    data, label = batch()
    reference = tiny_net()
    first = summed_gradients(reference, data, label)
    with torch.no_grad():
        for parameter, gradient in zip(reference.parameters(), first):
            parameter -= 0.5 * gradient / 4
    second = summed_gradients(reference, data, label)
    with torch.no_grad():
        for parameter, gradient in zip(reference.parameters(), second):
            parameter -= 0.25 * gradient / 4
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            work_send, results = await start(nursery, tiny_net(), make_updater=plain_sgd)
            before = await snapshot(work_send)
            await work_send.send(train_slice(data, label, scale=1 / 4, lr=0.5))
            await work_send.send(train_slice(data, label, scale=1 / 4, lr=0.25))
            state = await snapshot(work_send)  # sent behind both slices: taken after both updates
            trained = [await results.receive(), await results.receive()]
            work_send.close()
    assert [result.gradients for result in trained] == [None, None]  # it updated itself: nothing to send
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(state.model[name], tensor)
    assert state.updater["rule"] == "sgd"
    # a snapshot is a copy: the steps after it leave it as it was
    assert all(torch.equal(before.model[name], tensor) for name, tensor in tiny_net().state_dict().items())


async def test_a_snapshot_comes_back_on_its_own_reply_not_among_the_results():
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            work_send, results = await start(nursery, tiny_net())
            state = await snapshot(work_send)
            work_send.close()
            leftovers = [result async for result in results]
    assert leftovers == []
    assert state.updater is None  # no updater of its own: the parameter server holds that state
    assert all(torch.equal(state.model[name], tensor) for name, tensor in tiny_net().state_dict().items())


async def test_holds_back_when_nobody_takes_its_results():
    data = batch()[0]
    sent = 0

    async def send_all(work_send):
        nonlocal sent
        async with work_send:
            for _ in range(20):
                await work_send.send(eval_slice(data))
                sent += 1

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            work_send, results = await start(nursery, tiny_net(), work_size=1, result_size=1)
            nursery.start_soon(send_all, work_send)
            while not (results.statistics().current_buffer_used == 1
                       and work_send.statistics().tasks_waiting_send == 1):  # both channels full
                await trio.sleep(0.01)
            await trio.sleep(0.5)  # time to take more, were it to
            # 1 result in its channel, 1 queued for the actor, and what the actor holds: the step whose
            # result waits for room, and the steps it took in the same thread call (what was queued then)
            assert 2 <= sent <= 5
            answered = [result async for result in results]  # taking them lets it go on to the end
    assert len(answered) == 20


async def test_an_error_in_the_model_comes_out_as_a_user_code_error_and_closes_its_channels():
    class Broken(torch.nn.Module):
        def forward(self, data):
            raise ArithmeticError("broken model")

    with trio.fail_after(LIMIT):
        with pytest.raises(UserCodeError, match=r"^the model raised ArithmeticError: broken model \(tests/test_compute"
                                                r"\.py:\d+; validation Epoch\[0\] Batch\[0\]\)$") as failed:
            with unwrapped_errors():
                async with trio.open_nursery() as nursery:
                    work_send, results = await start(nursery, Broken())
                    await work_send.send(eval_slice(batch()[0]))
                    await trio.sleep_forever()
    assert isinstance(failed.value.__cause__, ArithmeticError)
    with pytest.raises(trio.EndOfChannel):
        results.receive_nowait()
    with pytest.raises(trio.BrokenResourceError):
        work_send.send_nowait(eval_slice(batch()[0]))


async def test_labels_the_metric_cannot_read_are_its_error_and_close_its_channels():
    data, _ = batch()
    two_labels_a_sample = torch.zeros(4, 2)  # accuracy wants one label a sample
    with trio.fail_after(LIMIT):
        with pytest.raises(ValueError, match="8 labels but 4 predictions"):
            with unwrapped_errors():
                async with trio.open_nursery() as nursery:
                    work_send, results = await start(nursery, tiny_net())
                    await work_send.send(eval_slice(data, label=two_labels_a_sample))
                    await trio.sleep_forever()
    with pytest.raises(trio.EndOfChannel):
        results.receive_nowait()


async def test_cancelling_waits_for_the_step_in_its_thread_and_no_longer():
    entered, finished = threading.Event(), threading.Event()
    calls = []

    class Slow(torch.nn.Module):
        def forward(self, data):
            calls.append(len(data))
            entered.set()
            time.sleep(0.5)
            finished.set()
            return data.flatten(1)[:, :3]

    with trio.fail_after(LIMIT):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                work_send, results = await start(nursery, Slow())
                await work_send.send(eval_slice(batch()[0]))
                while not entered.is_set():
                    await trio.sleep(0.01)
                await work_send.send(eval_slice(batch()[0]))  # queued behind the step under way
                scope.cancel()
    assert scope.cancelled_caught
    assert finished.is_set()  # no thread of the actor is left running
    assert calls == [4]  # the queued step never started
    with pytest.raises(trio.EndOfChannel):
        results.receive_nowait()


def nan_on_call(call: int):
    """tiny_net whose `call`th forward (counting from 1) gives NaN logits."""
    net = tiny_net()
    calls = []

    def poison(module, inputs, output):
        calls.append(1)
        return output * float("nan") if len(calls) == call else output
    net.register_forward_hook(poison)
    return net


async def test_a_nan_loss_ends_the_run_at_the_windows_report_naming_its_epoch_and_batch():
    data, label = batch()
    net = nan_on_call(2)
    with trio.fail_after(LIMIT):
        with pytest.raises(NonFiniteLossError, match=r"^the loss is nan in training Epoch\[3\] Batch\[7\] "
                                                     r"\(train.skip_nonfinite = true skips such updates\)$"):
            with unwrapped_errors():
                async with trio.open_nursery() as nursery:
                    work_send, results = await start(nursery, net, make_updater=plain_sgd)
                    unreported = []
                    for index in (6, 7, 8):  # one window: only the last step reads the device back
                        await work_send.send(TrainSlice(3, data, label, 4, None, 0.25, 0.1, None, index,
                                                        report=index == 8))
                        unreported.append(await results.receive())
    assert [result.statistics for result in unreported] == [None, None]  # batch 7's NaN not seen yet
    assert all(torch.isnan(p).all() for p in net.parameters())  # the updates up to the report were made


@pytest.mark.parametrize("own_updater", [True, False])
async def test_with_skip_nonfinite_a_nan_loss_skips_its_update_and_says_so(own_updater):
    data, label = batch()
    net = nan_on_call(1)
    settings = ComputeSettings("cpu", replica=0, precision="fp32", seed=0, skip_nonfinite=True)
    before = [p.detach().clone() for p in net.parameters()]
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            work_send, results = await start(nursery, net, make_updater=plain_sgd if own_updater else None,
                                             settings=settings)
            await work_send.send(train_slice(data, label, scale=0.25))
            skipped = await results.receive()
            assert skipped.nonfinite_loss
            assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))
            if not own_updater:  # the parameter server is told, and skips
                assert all(torch.isnan(g).any() for g in skipped.gradients)
            await work_send.send(train_slice(data, label, scale=0.25))
            made = await results.receive()
            assert not made.nonfinite_loss
            assert all(torch.isfinite(p).all() for p in net.parameters())
            assert own_updater == any(not torch.equal(p, q) for p, q in zip(net.parameters(), before))
            work_send.close()


def conv_net():
    """A small convolutional net (3x4x4 images, 3 classes), the same weights every time."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3),
                                   torch.nn.Flatten(), torch.nn.Linear(16, 3))


async def run_slices(net, slices, *, make_updater=None, settings=SETTINGS):
    """Every slice through a compute actor, one at a time: their results, and its state after them."""
    answers = []
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            work_send, results = await start(nursery, net, make_updater=make_updater, settings=settings)
            for message in slices:
                await work_send.send(message)
                answers.append(await results.receive())
            state = await snapshot(work_send)
            work_send.close()
    return answers, state


def an_epoch(steps, disp_batches):
    """TrainSlices of `steps` batches, reporting as the fit loop marks them (every `disp_batches`, and the last)."""
    slices = []
    for index in range(steps):
        data, label = batch(seed=index)
        report = (index % disp_batches == 0 and index > 0) or index == steps - 1
        slices.append(TrainSlice(0, data, label, 4, None, 0.25, 0.1, None, index, report))
    return slices


class HostReads:
    """Counts the calls that read a tensor back to the host (a GPU's synchronizations) made off the test's
    thread: the compute actor's worker thread."""

    def __init__(self, monkeypatch):
        self.calls = []
        test_thread = threading.get_ident()
        for name in ("item", "cpu", "tolist"):
            original = getattr(torch.Tensor, name)

            def spy(tensor, *args, _original=original, _name=name, **kwargs):
                if threading.get_ident() != test_thread:
                    self.calls.append(_name)
                return _original(tensor, *args, **kwargs)
            monkeypatch.setattr(torch.Tensor, name, spy)


@pytest.mark.parametrize("own_updater", [True, False])
async def test_reads_the_device_back_once_a_window_and_reports_each_steps_statistics_as_a_step_by_step_read(
        monkeypatch, own_updater):
    make_updater = plain_sgd if own_updater else None
    every_step = [dataclasses.replace(message, report=True) for message in an_epoch(23, 5)]
    expected, _ = await run_slices(tiny_net(), every_step, make_updater=make_updater)
    reads = HostReads(monkeypatch)
    # a GPU's path: outputs read back from the device (a CPU replica's are on the host already: no reads)
    monkeypatch.setattr(compute_module, "_on_host", lambda device: False)
    windowed, state = await run_slices(tiny_net(), an_epoch(23, 5), make_updater=make_updater)
    reports = [result.statistics for result in windowed if result.statistics is not None]
    assert len(reports) == 5  # at batches 5, 10, 15 and 20, and the epoch's last, 22
    assert 1 <= len(reads.calls) <= len(reports)  # at most one a window, not one a step
    # the same statistics, bit for bit, in order: each report the steps since the one before
    assert [entry for report in reports for entry in report] == [result.statistics[0] for result in expected]
    assert [[batch for batch, _ in report] for report in reports] == [
        [0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15], [16, 17, 18, 19, 20], [21, 22]]


def test_normalizes_and_mirrors_uint8_batches_on_the_device_as_the_loaders_c_loop_does():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 7, 3), dtype=np.uint8)
    flags = np.array([True, False, True, True, False, False])
    mean, std = (123.68, 116.779, 103.939), (58.393, 57.12, 57.375)
    expected = np.empty((6, 3, 5, 7), np.float32)
    augment.normalize(images, expected, np.asarray(mean, np.float32), 1 / np.asarray(std, np.float32), flags)
    for channels_last in (False, True):
        settings = dataclasses.replace(SETTINGS, mean=mean, std=std, channels_last=channels_last)
        replica = _Replica(settings, tiny_net(), softmax_cross_entropy, None, None)
        inputs = replica.inputs(torch.from_numpy(images), torch.from_numpy(flags))
        assert inputs.dtype == torch.float32 and torch.equal(inputs, torch.from_numpy(expected))
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert inputs.is_contiguous(memory_format=layout)
    unflipped = np.empty_like(expected)
    augment.normalize(images, unflipped, np.asarray(mean, np.float32), 1 / np.asarray(std, np.float32))
    assert torch.equal(replica.inputs(torch.from_numpy(images)), torch.from_numpy(unflipped))  # no flags: none flipped


def test_a_gpu_replica_turns_cudnn_autotuning_on_for_its_calls_and_puts_the_callers_flag_back():
    found = torch.backends.cudnn.benchmark
    for chosen in (True, False):
        replica = _Replica(dataclasses.replace(SETTINGS, cudnn_benchmark=chosen), tiny_net(), softmax_cross_entropy,
                           None, None)
        with replica.cudnn_autotune():  # a CPU replica leaves the flag alone
            assert torch.backends.cudnn.benchmark == found
        replica.device = torch.device("cuda", 0)  # the flag's handling alone: nothing runs on the device here
        torch.backends.cudnn.benchmark = not chosen
        try:
            with pytest.raises(RuntimeError, match="a step failed"):
                with replica.cudnn_autotune():
                    assert torch.backends.cudnn.benchmark == chosen
                    raise RuntimeError("a step failed")
            assert torch.backends.cudnn.benchmark == (not chosen)
        finally:
            torch.backends.cudnn.benchmark = found


async def test_channels_last_trains_its_conv_weights_in_nhwc_memory_to_the_same_loss_and_gradients():
    data, label = torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(3)), torch.tensor([0.0, 1, 2, 1])
    replica = _Replica(dataclasses.replace(SETTINGS, channels_last=True), conv_net(), softmax_cross_entropy, None, None)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in replica.parameters if p.dim() == 4)
    assert any(not p.is_contiguous() for p in replica.parameters if p.dim() == 4)  # NHWC memory, not NCHW
    nchw, _ = await run_slices(conv_net(), [train_slice(data, label)])
    nhwc, state = await run_slices(conv_net(), [train_slice(data, label)],
                                   settings=dataclasses.replace(SETTINGS, channels_last=True))
    (_, (nchw_accuracy, nchw_ce)), = nchw[0].statistics
    (_, (nhwc_accuracy, nhwc_ce)), = nhwc[0].statistics
    assert nchw_accuracy == nhwc_accuracy
    assert nhwc_ce == pytest.approx(nchw_ce, rel=1e-5)  # the same sums, added in another order
    for got, expected in zip(nhwc[0].gradients, nchw[0].gradients):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert all(tensor.is_contiguous() for tensor in state.model.values())  # checkpoints in the usual layout


async def test_compile_runs_the_compiled_model_and_keeps_the_modules_own_parameter_names(monkeypatch):
    compiled = []
    real_compile = torch.compile

    def eager_compile(model, **options):  # inductor takes a minute to build here; dynamo's tracing is still real
        compiled.append(model)
        return real_compile(model, backend="eager", **options)
    monkeypatch.setattr(torch, "compile", eager_compile)
    data, label = batch()
    plain, _ = await run_slices(tiny_net(), [train_slice(data, label)] * 2, make_updater=plain_sgd)
    net = tiny_net()
    traced, state = await run_slices(net, [train_slice(data, label)] * 2, make_updater=plain_sgd,
                                     settings=dataclasses.replace(SETTINGS, compile=True))
    assert compiled == [net]
    assert list(state.model) == list(tiny_net().state_dict()) == ["1.weight", "1.bias"]  # no "_orig_mod."
    assert [result.statistics for result in traced] == [result.statistics for result in plain]
    assert all(torch.equal(tensor, net.state_dict()[name]) for name, tensor in state.model.items())
