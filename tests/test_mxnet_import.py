"""Bringing MXNet checkpoints over: MXNet-made lenet, mlp and resnet-8 (tests/data/mxnet_models, made by
tests/data/make_mxnet_models.py with MXNet 1.9.1) give MXNet's own logits in flow; a symbol that does
not match is refused, naming what differs; `flow import-mxnet`; and runs that resume or fine-tune
from the result."""

import json

import numpy as np
import pytest
import torch

from flow import checkpoints, models
from flow.cli import main
from flow.config import config_from_dict
from flow.mxnet_import import MXNetImportError, import_model, read_symbol
from flow.mxnet_params import ndarray_list_bytes, read_ndarray_list
from flow.run import train
from tests.fixtures import MXNET_FIXTURES

MODELS = MXNET_FIXTURES / "mxnet_models"
EPOCH = 3
# MXNet's logits against flow's: both float32, the same formulas summed in other orders (measured
# max difference 1.2e-6 on logits up to 3.8).
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
NETWORKS = {  # fixture -> flow network, image_shape, num_layers
    "lenet": ("lenet", (3, 16, 16), None),
    "mlp": ("mlp", (1, 8, 8), None),
    "resnet-8": ("resnet", (3, 16, 16), 8),
}


def flow_logits(model, name):
    with np.load(MODELS / f"{name}-io.npz") as saved:
        data, logits = saved["data"], saved["logits"]
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(data)).numpy(), logits


@pytest.mark.parametrize("name", NETWORKS)
def test_imported_model_gives_mxnets_outputs(name):
    network, image_shape, num_layers = NETWORKS[name]
    model, spec = import_model(str(MODELS / name), EPOCH, network, image_shape, num_layers)
    assert spec["num_classes"] == 10 and spec["network"] == network
    ours, mxnets = flow_logits(model, name)
    np.testing.assert_allclose(ours, mxnets, **TOLERANCE)


def test_batchnorm_statistics_and_fixed_gamma_come_over():
    model, _ = import_model(str(MODELS / "resnet-8"), EPOCH, "resnet", (3, 16, 16), 8)
    arrays = read_ndarray_list(MODELS / "resnet-8-0003.params")
    unit = model.stage2_unit1
    np.testing.assert_array_equal(unit.bn2.running_var.numpy(), arrays["aux:stage2_unit1_bn2_moving_var"])
    np.testing.assert_array_equal(unit.bn2.weight.detach().numpy(), arrays["arg:stage2_unit1_bn2_gamma"])
    np.testing.assert_array_equal(model.bn_data.norm.running_mean.numpy(), arrays["aux:bn_data_moving_mean"])
    assert not np.allclose(arrays["arg:bn_data_gamma"], 1.0)  # saved, yet MXNet's fix_gamma uses 1: flow's too


def copy_model(tmp_path, name, symbol_edit=None, arrays_edit=None):
    prefix = tmp_path / name
    symbol = json.loads((MODELS / f"{name}-symbol.json").read_text())
    if symbol_edit:
        symbol_edit(symbol)
    (tmp_path / f"{name}-symbol.json").write_text(json.dumps(symbol))
    arrays = read_ndarray_list(MODELS / f"{name}-{EPOCH:04d}.params")
    if arrays_edit:
        arrays = arrays_edit(arrays)
    (tmp_path / f"{name}-{EPOCH:04d}.params").write_bytes(ndarray_list_bytes(arrays))
    return str(prefix)


def test_auto_names_numbered_from_elsewhere_still_match(tmp_path):
    """A lenet built second in its MXNet process is convolution2, convolution3, fullyconnected2, ..."""
    def shift(text):
        for op in ("convolution", "fullyconnected", "activation", "pooling", "flatten"):
            for index in (1, 0):
                text = text.replace(f"{op}{index}", f"{op}{index + 2}")
        return text

    prefix = copy_model(tmp_path, "lenet", arrays_edit=lambda arrays: {shift(k): v for k, v in arrays.items()})
    symbol_file = tmp_path / "lenet-symbol.json"
    symbol_file.write_text(shift(symbol_file.read_text()))
    assert "convolution3" in read_symbol(symbol_file).renamed
    model, _ = import_model(prefix, EPOCH, "lenet", (3, 16, 16))
    ours, mxnets = flow_logits(model, "lenet")
    np.testing.assert_allclose(ours, mxnets, **TOLERANCE)


def import_error(*args) -> str:
    with pytest.raises(MXNetImportError) as raised:
        import_model(*args)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_another_depth_is_refused_with_the_names_that_differ():
    message = import_error(str(MODELS / "resnet-8"), EPOCH, "resnet", (3, 16, 16), 14)
    assert message.startswith(str(MODELS / "resnet-8-0003.params") + ": does not match flow's resnet (num_layers 14)")
    assert "missing from MXNet's: stage1_unit2_bn1_beta, stage1_unit2_bn1_gamma" in message and "(+" in message


def test_another_network_is_refused():
    message = import_error(str(MODELS / "lenet"), EPOCH, "mlp", (3, 16, 16))
    assert "missing from MXNet's: fc1_bias, fc1_weight, fc2_bias" in message
    assert "not in flow's network: convolution0_bias, convolution0_weight" in message


def test_another_image_shape_is_refused_with_the_shapes():
    message = import_error(str(MODELS / "lenet"), EPOCH, "lenet", (3, 28, 28))
    assert "shapes differ: fullyconnected0_weight (500, 50) in MXNet, (500, 800) in flow" in message


def test_a_layer_that_computes_otherwise_is_refused(tmp_path):
    def stride_2(symbol):
        for node in symbol["nodes"]:
            if node["name"] == "stage1_unit1_conv1":
                node["attrs"]["stride"] = "(2, 2)"

    message = import_error(copy_model(tmp_path, "resnet-8", symbol_edit=stride_2), EPOCH, "resnet", (3, 16, 16), 8)
    assert "stage1_unit1_conv1 has stride (2, 2) in MXNet, (1, 1) in flow" in message


def test_arrays_the_symbol_lacks_are_refused(tmp_path):
    prefix = copy_model(tmp_path, "mlp", arrays_edit=lambda arrays: {**arrays, "arg:fc9_weight": arrays["arg:fc1_weight"]})
    assert "arrays the symbol mlp-symbol.json has no variable for: arg:fc9_weight" in import_error(
        prefix, EPOCH, "mlp", (1, 8, 8))


def test_a_missing_or_broken_symbol_file(tmp_path):
    prefix = copy_model(tmp_path, "mlp")
    symbol_file = tmp_path / "mlp-symbol.json"
    symbol_file.write_text("{nodes")
    assert import_error(prefix, EPOCH, "mlp", (1, 8, 8)).startswith(f"{symbol_file}: not an MXNet symbol file")
    symbol_file.unlink()
    assert "no such file (MXNet's symbol" in import_error(prefix, EPOCH, "mlp", (1, 8, 8))


def test_the_command_writes_a_flow_checkpoint_that_rebuilds(tmp_path, capsys):
    out = tmp_path / "flow" / "resnet"
    assert main(["import-mxnet", str(MODELS / "resnet-8"), "3", str(out), "--network", "resnet",
                 "--num-layers", "8", "--image-shape", "3,16,16"]) == 0
    assert "wrote" in capsys.readouterr().out
    model = models.build_from_spec(checkpoints.load_model_spec(str(out)))
    state, states = checkpoints.load_checkpoint(str(out), EPOCH)
    model.load_state_dict(state)
    assert states["num_update"] is None and states["epoch"] == EPOCH
    ours, mxnets = flow_logits(model, "resnet-8")
    np.testing.assert_allclose(ours, mxnets, **TOLERANCE)


def test_the_command_says_what_does_not_match_in_one_line(tmp_path, capsys):
    assert main(["import-mxnet", str(MODELS / "lenet"), "3", str(tmp_path / "x"), "--network", "lenet",
                 "--image-shape", "3,16,16", "--option", "hidden=256"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("flow import-mxnet: error: ")
    assert "fullyconnected0_weight (500, 50) in MXNet, (256, 50) in flow" in error
    assert not list(tmp_path.iterdir())


def lenet_config(tmp_path, **sections):
    raw = {
        "data": {"image_shape": [3, 16, 16], "num_classes": 10, "batch_size": 8, "num_examples": 16},
        "model": {"network": "lenet"},
        "train": {"num_epochs": 4, "lr": 1e-9, "wd": 0.0, "seed": 1},
        "checkpoint": {"model_prefix": str(tmp_path / "run")},
    }
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    return config_from_dict(raw)


def batches(num_classes):
    def epoch_batches(epoch):
        generator = torch.Generator().manual_seed(epoch)

        async def iterate():
            for _ in range(2):
                yield torch.randn(8, 3, 16, 16, generator=generator), torch.randint(num_classes, (8,), generator=generator).float()
        return iterate()
    return epoch_batches


async def test_a_run_resumes_from_an_imported_checkpoint(tmp_path):
    assert main(["import-mxnet", str(MODELS / "lenet"), "3", str(tmp_path / "run"), "--network", "lenet",
                 "--image-shape", "3,16,16"]) == 0
    result = await train(lenet_config(tmp_path, checkpoint={"load_epoch": 3}), train_data=batches(10))
    assert result.updates == 4 * 2  # MXNet counts no updates: epochs x epoch size, as fit.py's --load-epoch
    state, states = checkpoints.load_checkpoint(str(tmp_path / "run"), 4)
    assert states["num_update"] == 8
    imported = read_ndarray_list(MODELS / "lenet-0003.params")["arg:convolution1_weight"]
    np.testing.assert_allclose(state["convolution1.weight"].numpy(), imported, atol=1e-6)  # lr 1e-9: barely moved


@pytest.mark.parametrize("source", ["flow", "mxnet"])
async def test_fine_tuning_starts_from_an_imported_model(tmp_path, source):
    prefix = str(MODELS / "lenet")
    if source == "flow":
        prefix = str(tmp_path / "imported")
        assert main(["import-mxnet", str(MODELS / "lenet"), "3", prefix, "--network", "lenet",
                     "--image-shape", "3,16,16"]) == 0
    config = lenet_config(tmp_path, data={"num_classes": 4}, train={"num_epochs": 1},
                          model={"pretrained_prefix": prefix, "pretrained_epoch": 3})
    await train(config, train_data=batches(4))
    state, _ = checkpoints.load_checkpoint(str(tmp_path / "run"), 1)
    imported = read_ndarray_list(MODELS / "lenet-0003.params")
    np.testing.assert_allclose(state["convolution0.weight"].numpy(), imported["arg:convolution0_weight"], atol=1e-6)
    assert state["fullyconnected1.weight"].shape == (4, 500)  # a new classifier for 4 classes
    spec = checkpoints.load_model_spec(str(tmp_path / "run"))
    assert spec["network"] == "lenet" and spec["num_classes"] == 10 and spec["fine_tune"][0]["num_classes"] == 4

