"""The parameter server: what it updates, and what it must leave alone; in a whole run, and alone."""

import pytest
import torch
import trio

from flow.actors.param_server import ServerSettings, StateRequest, Update, param_server
from flow.errors import DistributedError, unwrapped_errors
from flow.optim import Updater, UpdaterSettings
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


# --- the actor alone, driven through its channels. Its torch work runs in a worker thread, so these
# tests keep real time (each bounded by LIMIT) rather than Trio's mock clock.

LIMIT = 10  # seconds; every update here takes milliseconds


def plain_sgd(wd=0.0, mom=0.0):
    settings = UpdaterSettings("sgd", lr=0.1, momentum=mom, nesterov=False, weight_decay=wd, clip_gradient=0.0)
    return lambda parameters: Updater(((f"{i}.weight", p) for i, p in enumerate(parameters)), settings)


async def start(nursery, weights, make_updater, kv_store="local", reply_size=1):
    """A started parameter server for two CPU replicas: (its request channel, its reply channel)."""
    request_send, request_receive = trio.open_memory_channel(0)
    reply_send, reply_receive = trio.open_memory_channel(reply_size)
    await nursery.start(param_server, ServerSettings(kv_store, ("cpu", "cpu")), weights, make_updater,
                        request_receive, reply_send)
    return request_send, reply_receive


def equal(tensors, others) -> bool:
    return len(tensors) == len(others) and all(torch.equal(a, b) for a, b in zip(tensors, others))


async def updater_state(request_send) -> dict:
    reply_send, reply_receive = trio.open_memory_channel(1)
    await request_send.send(StateRequest(reply_send))
    return await reply_receive.receive()


async def test_sums_the_replicas_gradients_and_steps_at_each_updates_lr_in_order():
    initial = [torch.tensor([1.0, 2.0]), torch.tensor([0.5])]
    first = [[torch.tensor([4.0, 0.0]), torch.tensor([1.0])], [torch.tensor([0.0, -8.0]), torch.tensor([3.0])]]
    second = [[torch.tensor([2.0, 2.0]), torch.tensor([0.0])], [torch.tensor([2.0, 2.0]), torch.tensor([4.0])]]
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            requests, replies = await start(nursery, initial, plain_sgd())
            await requests.send(Update(1, 0.5, first, samples=4))
            after_first = [w.clone() for w in (await replies.receive()).weights]
            await requests.send(Update(2, 0.25, second, samples=8))
            after_second = (await replies.receive()).weights
            requests.close()
    # w - lr * (sum over replicas) / samples
    assert equal(after_first, [torch.tensor([1.0 - 0.5 * 1, 2.0 + 0.5 * 2]), torch.tensor([0.5 - 0.5 * 1])])
    assert equal(after_second, [after_first[0] - 0.25 * 0.5, after_first[1] - 0.25 * 0.5])
    assert equal(initial, [torch.tensor([1.0, 2.0]), torch.tensor([0.5])])  # its own copy: replica 0's are left alone


async def test_a_frozen_parameter_stays_bit_for_bit_under_weight_decay():
    initial = [torch.tensor([1.0, -2.0]), torch.tensor([3.0])]
    gradients = [[None, torch.tensor([1.0])], [None, torch.tensor([1.0])]]
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            requests, replies = await start(nursery, initial, plain_sgd(wd=0.1, mom=0.9))
            for num_update in (1, 2, 3):
                await requests.send(Update(num_update, 0.1, gradients, samples=2))
                weights = (await replies.receive()).weights
            requests.close()
    assert torch.equal(weights[0], initial[0])
    assert not torch.equal(weights[1], initial[1])


async def test_its_state_comes_back_on_the_requests_own_reply_and_resumes_the_same_updates():
    initial = [torch.tensor([1.0, 2.0])]

    def update(num_update):
        return Update(num_update, 0.1, [[torch.tensor([1.0, -1.0]) * num_update]] * 2, samples=2)

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            requests, replies = await start(nursery, initial, plain_sgd(mom=0.9))
            await requests.send(update(1))
            saved_weights = [w.clone() for w in (await replies.receive()).weights]
            state = await updater_state(requests)
            assert replies.statistics().current_buffer_used == 0  # nothing on the Updated path
            await requests.send(update(2))
            uninterrupted = (await replies.receive()).weights
            requests.close()

            def resumed_updater(parameters):
                updater = plain_sgd(mom=0.9)(parameters)
                updater.load_state_dict(state)
                return updater
            requests, replies = await start(nursery, saved_weights, resumed_updater)
            await requests.send(update(2))
            resumed = (await replies.receive()).weights
            requests.close()
    assert torch.equal(resumed[0], uninterrupted[0])  # the momentum came back with the state
    assert not torch.equal(saved_weights[0] - 0.1 * torch.tensor([2.0, -2.0]), uninterrupted[0])


async def test_holds_back_while_nobody_takes_its_reply():
    gradients = [[torch.ones(2)], [torch.ones(2)]]
    sent = 0
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            requests, replies = await start(nursery, [torch.zeros(2)], plain_sgd(), reply_size=0)
            with trio.move_on_after(1):
                for num_update in range(1, 11):
                    await requests.send(Update(num_update, 0.1, gradients, samples=2))
                    sent += 1
            assert sent == 1  # the second waits until the first's answer is taken
            await replies.receive()
            await requests.send(Update(2, 0.1, gradients, samples=2))
            weights = (await replies.receive()).weights
            requests.close()
    assert torch.equal(weights[0], torch.full((2,), -0.2))


async def test_a_failed_all_reduce_names_the_update_and_closes_its_channels(monkeypatch):
    def peer_gone(tensor):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                           "[127.0.0.1]:18605. This is typically caused by a crashed peer")
    monkeypatch.setattr(torch.distributed, "all_reduce", peer_gone)
    with trio.fail_after(LIMIT):
        with pytest.raises(DistributedError) as raised:
            with unwrapped_errors():
                async with trio.open_nursery() as nursery:
                    requests, replies = await start(nursery, [torch.zeros(2)], plain_sgd(), kv_store="dist_sync")
                    await requests.send(Update(7, 0.1, [[torch.ones(2)], [torch.ones(2)]], samples=2))
                    await replies.receive()
    assert str(raised.value) == ("update 7: the gradient all_reduce failed, so another process of the job stopped "
                                 "or hangs (Connection closed by peer [127.0.0.1]:18605)")
    with pytest.raises(trio.EndOfChannel):
        replies.receive_nowait()
    with pytest.raises(trio.BrokenResourceError):
        requests.send_nowait(StateRequest(trio.open_memory_channel(1)[0]))


async def test_cancelled_while_its_reply_waits_it_stops_and_closes_its_channels():
    with trio.fail_after(LIMIT):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                requests, replies = await start(nursery, [torch.zeros(2)], plain_sgd(), reply_size=0)
                await requests.send(Update(1, 0.1, [[torch.ones(2)], [torch.ones(2)]], samples=2))
                await trio.sleep(0.5)  # its answer is ready and nobody takes it
                scope.cancel()
    assert scope.cancelled_caught
    with pytest.raises(trio.EndOfChannel):
        replies.receive_nowait()
    with pytest.raises(trio.BrokenResourceError):
        requests.send_nowait(StateRequest(trio.open_memory_channel(1)[0]))
