"""The user's own code failing (model, loss, data source, network factory): one line naming the
exception, the user's file:line, and the epoch and batch; the exception itself as the cause."""

import logging
import traceback

import pytest
import torch

from flow.cli import main
from flow.errors import ConfigError, UserCodeError
from flow.event_log import event_log_path, read_events
from flow.events import RunFailed
from flow.run import open_run, softmax_cross_entropy, train
from flow.user_code import user_code_error
from tests.test_run import small_config, synthetic_data

HERE = "tests/test_user_code.py"


def line_of(marker: str) -> int:
    """The line of this file that holds `marker` (the raising line a message must name)."""
    with open(__file__) as source:
        return next(number for number, line in enumerate(source, 1) if marker in line and "line_of" not in line)


def test_the_line_names_the_users_frame_under_torchs_and_the_first_line_of_the_message():
    def users_layer():
        return torch.zeros(2, 3) @ torch.zeros(4, 5)  # marker: users_layer

    with pytest.raises(RuntimeError) as raised:
        users_layer()
    error = user_code_error(raised.value, "the model", "training Epoch[1] Batch[2]")
    assert str(error) == (f"the model raised RuntimeError: {str(raised.value).splitlines()[0]} "
                          f"({HERE}:{line_of('marker: users_layer')}; training Epoch[1] Batch[2])")
    assert str(user_code_error(MemoryError(), "the loss", "here")).startswith("the loss raised MemoryError (")


class FailsAt(torch.nn.Module):
    """A small net that raises `error` at its `call`th forward in `mode` ("train" or "eval")."""

    def __init__(self, error: BaseException, call: int, mode: str = "train", in_backward: bool = False):
        super().__init__()
        self.linear = torch.nn.Linear(3 * 8 * 8, 4)
        self.error, self.call, self.mode, self.in_backward = error, call, mode, in_backward
        self.calls = 0

    def forward(self, data):
        if self.training == (self.mode == "train"):
            self.calls += 1
            if self.calls == self.call:
                if self.in_backward:
                    return RaisesInBackward.apply(self.linear(data.flatten(1)), self.error)
                raise self.error  # marker: forward raises
        return self.linear(data.flatten(1))


class RaisesInBackward(torch.autograd.Function):
    @staticmethod
    def forward(context, logits, error):
        context.error = error
        return logits.clone()

    @staticmethod
    def backward(context, gradient):
        raise context.error  # marker: backward raises


def failing_loss(after: int):
    calls = []

    def loss(logits, label):
        calls.append(1)
        if len(calls) > after:
            raise KeyError("no such label")  # marker: loss raises
        return softmax_cross_entropy(logits, label)
    return loss


def failing_data(epoch_to_fail: int, batch_to_fail: int):
    whole = synthetic_data()

    def batches(epoch):
        async def iterate():
            index = 0
            async for item in whole(epoch):
                if (epoch, index) == (epoch_to_fail, batch_to_fail):
                    raise OSError("the share went away")  # marker: data raises
                yield item
                index += 1
        return iterate()
    return batches


# 6 training batches an epoch, 2 of validation: call 9 is Epoch[1] Batch[2].
CASES = {
    "forward": ({"model": FailsAt(ZeroDivisionError("division by zero"), 9)},
                "the model raised ZeroDivisionError: division by zero", "forward raises", "training Epoch[1] Batch[2]"),
    "backward": ({"model": FailsAt(ValueError("bad gradient"), 9, in_backward=True)},
                 "the model's backward raised ValueError: bad gradient", "backward raises",
                 "training Epoch[1] Batch[2]"),
    "validation": ({"model": FailsAt(IndexError("out of range"), 3, mode="eval")},
                   "the model raised IndexError: out of range", "forward raises", "validation Epoch[1] Batch[0]"),
    "loss": ({"loss": failing_loss(after=8)}, "the loss raised KeyError: 'no such label'", "loss raises",
             "training Epoch[1] Batch[2]"),
    "data": ({"train_data": failing_data(1, 2)}, "the custom data source raised OSError: the share went away",
             "data raises", "Epoch[1] Batch[2]"),
    "exit": ({"model": FailsAt(SystemExit(3), 9)}, "the model raised SystemExit: 3", "forward raises",
             "training Epoch[1] Batch[2]"),
    "memory": ({"model": FailsAt(MemoryError(), 9)}, "the model raised MemoryError", "forward raises",
               "training Epoch[1] Batch[2]"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_the_users_code_failing_ends_the_run_with_one_line_naming_where_and_when(tmp_path, case):
    options, raised, marker, when = CASES[case]
    options = {"train_data": synthetic_data(), "val_data": synthetic_data(epoch_batches=2, seed=1), **options}
    with pytest.raises(UserCodeError) as failed:
        async with open_run(small_config(tmp_path, train={"num_epochs": 3}), **options) as run:
            events = [event async for event in run.events()]
    message = f"{raised} ({HERE}:{line_of('marker: ' + marker)}; {when})"
    assert str(failed.value) == message
    assert failed.value.__cause__ is not None and type(failed.value.__cause__).__name__ in raised
    assert events[-1] == RunFailed("UserCodeError", message)


def failing_network(num_classes, image_shape):
    """A `package.module:factory` whose model fails at its third training step."""
    return FailsAt(ZeroDivisionError("division by zero"), 3)


def exiting_network(num_classes, image_shape):
    return FailsAt(SystemExit(3), 2)


def unbuildable_network(num_classes, image_shape):
    raise RuntimeError("weights file missing")  # marker: factory raises


async def test_a_network_factory_failing_is_one_line_naming_it(tmp_path):
    config = small_config(tmp_path, model={"network": "tests.test_user_code:unbuildable_network"})
    with pytest.raises(UserCodeError) as failed:
        await train(config, train_data=synthetic_data())
    assert str(failed.value) == (f"the network factory tests.test_user_code:unbuildable_network raised RuntimeError: "
                                 f"weights file missing ({HERE}:{line_of('marker: factory raises')}; building the model)")


def test_cuda_devices_on_a_machine_without_cuda_are_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^train.devices: 'cuda:0', but this machine has no CUDA GPU"):
        import trio
        trio.run(lambda: train(small_config(tmp_path, train={"devices": ["cuda:0"]}), train_data=synthetic_data()))


@pytest.fixture
def cli_config(tmp_path):
    """A train.toml for `flow run` on the benchmark's synthetic batches with a network of this file; restores logging."""
    def write(network):
        toml = tmp_path / "train.toml"
        toml.write_text(f'[data]\nbenchmark = true\nimage_shape = [3, 8, 8]\nnum_classes = 4\nbatch_size = 8\n'
                        f'[model]\nnetwork = "tests.test_user_code:{network}"\n[train]\nnum_epochs = 2\n'
                        f'[checkpoint]\nmodel_prefix = "{tmp_path / "model"}"\n')
        return str(toml)
    logger = logging.getLogger("flow")
    saved = logger.handlers[:], logger.propagate, logger.level
    yield write
    logger.handlers[:], logger.propagate = saved[:2]
    logger.setLevel(saved[2])


@pytest.mark.parametrize("network, raised", [("failing_network", "ZeroDivisionError: division by zero"),
                                             ("exiting_network", "SystemExit: 3")])
def test_cli_prints_the_users_error_as_one_line_and_the_traceback_with_debug(tmp_path, capsys, cli_config,
                                                                              network, raised):
    toml = cli_config(network)
    assert main(["run", toml]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    batch = 2 if network == "failing_network" else 1
    assert err.splitlines()[-1] == (f"flow run: error: the model raised {raised} "
                                    f"({HERE}:{line_of('marker: forward raises')}; training Epoch[0] Batch[{batch}])")
    assert read_events(event_log_path(str(tmp_path / "model")))[-1].error_type == "UserCodeError"
    with pytest.raises(UserCodeError) as failed:
        main(["--debug", "run", toml])
    shown = "".join(traceback.format_exception(failed.value))
    assert f'{HERE}", line {line_of("marker: forward raises")}, in forward' in shown
