"""Makes tests/data/mxnet_models/ with MXNet 1.9.1 itself (not run by the tests; its output is shipped).

    python3.11 -m venv /work/mxnet-venv && /work/mxnet-venv/bin/pip install mxnet==1.9.1 numpy==1.23.5
    /work/mxnet-venv/bin/python tests/data/make_mxnet_models.py

For each network (MXNet's example/image-classification/symbols lenet.py, mlp.py and resnet.py,
as fit.py builds them, on small images): Module.save_checkpoint's `NAME-symbol.json` and
`NAME-0003.params` (Xavier weights, then random gammas, betas, biases and BatchNorm moving
statistics so that every mapped value matters), and `NAME-io.npz` with a batch of inputs and
MXNet's logits for it (the last FullyConnected's output, inference mode).

`arrays-v2.params` and `arrays-v3.params` are `nd.save` of one array of each dtype (V3: in numpy
shape mode, with a 0-dimensional array), and `arrays.npz` the same arrays, for the reader.

Then it checks flow's writer against MXNet: flow.mxnet_params (numpy only) writes those arrays as
V1, V2 and V3, MXNet must load each back equal, and the V2/V3 bytes must be MXNet's own.
"""

import json
import sys
from pathlib import Path

import mxnet as mx
import numpy as np

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "data" / "mxnet_models"
EPOCH = 3
BATCH = 4
sys.path.insert(0, str(REPO))


# --- the symbols, as MXNet 1.9.1's example/image-classification/symbols/*.py build them -------

def lenet(num_classes):
    data = mx.symbol.Variable("data")
    conv1 = mx.symbol.Convolution(data=data, kernel=(5, 5), num_filter=20)
    tanh1 = mx.symbol.Activation(data=conv1, act_type="tanh")
    pool1 = mx.symbol.Pooling(data=tanh1, pool_type="max", kernel=(2, 2), stride=(2, 2))
    conv2 = mx.symbol.Convolution(data=pool1, kernel=(5, 5), num_filter=50)
    tanh2 = mx.symbol.Activation(data=conv2, act_type="tanh")
    pool2 = mx.symbol.Pooling(data=tanh2, pool_type="max", kernel=(2, 2), stride=(2, 2))
    flatten = mx.symbol.Flatten(data=pool2)
    fc1 = mx.symbol.FullyConnected(data=flatten, num_hidden=500)
    tanh3 = mx.symbol.Activation(data=fc1, act_type="tanh")
    fc2 = mx.symbol.FullyConnected(data=tanh3, num_hidden=num_classes)
    return mx.symbol.SoftmaxOutput(data=fc2, name="softmax")


def mlp(num_classes):
    data = mx.symbol.Flatten(data=mx.symbol.Variable("data"))
    fc1 = mx.symbol.FullyConnected(data=data, name="fc1", num_hidden=128)
    act1 = mx.symbol.Activation(data=fc1, name="relu1", act_type="relu")
    fc2 = mx.symbol.FullyConnected(data=act1, name="fc2", num_hidden=64)
    act2 = mx.symbol.Activation(data=fc2, name="relu2", act_type="relu")
    fc3 = mx.symbol.FullyConnected(data=act2, name="fc3", num_hidden=num_classes)
    return mx.symbol.SoftmaxOutput(data=fc3, name="softmax")


def residual_unit(data, num_filter, stride, dim_match, name):
    """resnet.py's residual_unit with bottle_neck=False, bn_mom 0.9, eps 2e-5."""
    bn1 = mx.sym.BatchNorm(data=data, fix_gamma=False, momentum=0.9, eps=2e-5, name=name + "_bn1")
    act1 = mx.sym.Activation(data=bn1, act_type="relu", name=name + "_relu1")
    conv1 = mx.sym.Convolution(data=act1, num_filter=num_filter, kernel=(3, 3), stride=stride, pad=(1, 1),
                               no_bias=True, workspace=256, name=name + "_conv1")
    bn2 = mx.sym.BatchNorm(data=conv1, fix_gamma=False, momentum=0.9, eps=2e-5, name=name + "_bn2")
    act2 = mx.sym.Activation(data=bn2, act_type="relu", name=name + "_relu2")
    conv2 = mx.sym.Convolution(data=act2, num_filter=num_filter, kernel=(3, 3), stride=(1, 1), pad=(1, 1),
                               no_bias=True, workspace=256, name=name + "_conv2")
    if dim_match:
        shortcut = data
    else:
        shortcut = mx.sym.Convolution(data=act1, num_filter=num_filter, kernel=(1, 1), stride=stride, no_bias=True,
                                      workspace=256, name=name + "_sc")
    return conv2 + shortcut


def resnet(num_classes, num_layers, height):
    """resnet.py's get_symbol for CIFAR-style depths (6n+2, images up to 28 high)."""
    assert (num_layers - 2) % 6 == 0 and height <= 28
    units, filters = [(num_layers - 2) // 6] * 3, [16, 16, 32, 64]
    data = mx.sym.identity(data=mx.sym.Variable(name="data"), name="id")
    data = mx.sym.BatchNorm(data=data, fix_gamma=True, eps=2e-5, momentum=0.9, name="bn_data")
    body = mx.sym.Convolution(data=data, num_filter=filters[0], kernel=(3, 3), stride=(1, 1), pad=(1, 1),
                              no_bias=True, name="conv0", workspace=256)
    for i in range(3):
        body = residual_unit(body, filters[i + 1], (1 if i == 0 else 2,) * 2, False, "stage%d_unit%d" % (i + 1, 1))
        for j in range(units[i] - 1):
            body = residual_unit(body, filters[i + 1], (1, 1), True, "stage%d_unit%d" % (i + 1, j + 2))
    bn1 = mx.sym.BatchNorm(data=body, fix_gamma=False, eps=2e-5, momentum=0.9, name="bn1")
    relu1 = mx.sym.Activation(data=bn1, act_type="relu", name="relu1")
    pool1 = mx.sym.Pooling(data=relu1, global_pool=True, kernel=(7, 7), pool_type="avg", name="pool1")
    flat = mx.sym.Flatten(data=pool1)
    fc1 = mx.sym.FullyConnected(data=flat, num_hidden=num_classes, name="fc1")
    return mx.sym.SoftmaxOutput(data=fc1, name="softmax")


# --- checkpoints and outputs -------------------------------------------------------------------

def make_model(name, symbol, image_shape, rng):
    data_shape = (BATCH, *image_shape)
    module = mx.mod.Module(symbol, context=mx.cpu())
    module.bind(data_shapes=[("data", data_shape)], label_shapes=[("softmax_label", (BATCH,))], for_training=False)
    mx.random.seed(1)
    module.init_params(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    args, auxs = module.get_params()
    for key, value in args.items():
        if not key.endswith("_weight"):  # biases, gammas, betas: away from their 0/1 start
            base = 1.0 if key.endswith("_gamma") else 0.0
            args[key] = mx.nd.array(base + rng.normal(0, 0.2, value.shape).astype(np.float32))
    for key, value in auxs.items():
        if key.endswith("_moving_mean"):
            auxs[key] = mx.nd.array(rng.normal(0, 0.3, value.shape).astype(np.float32))
        else:
            auxs[key] = mx.nd.array(rng.uniform(0.5, 2.0, value.shape).astype(np.float32))
    module.set_params(args, auxs)
    module.save_checkpoint(str(OUT / name), EPOCH)

    last_fc = [node["name"] for node in json.loads(symbol.tojson())["nodes"]
               if node["op"] == "FullyConnected"][-1]
    logits_symbol = symbol.get_internals()[last_fc + "_output"]
    scorer = mx.mod.Module(logits_symbol, context=mx.cpu(), label_names=None)
    scorer.bind(data_shapes=[("data", data_shape)], for_training=False)
    scorer.set_params(args, auxs, allow_extra=True)
    inputs = rng.normal(0, 1, data_shape).astype(np.float32)
    scorer.forward(mx.io.DataBatch([mx.nd.array(inputs)]), is_train=False)
    logits = scorer.get_outputs()[0].asnumpy()
    np.savez(OUT / f"{name}-io.npz", data=inputs, logits=logits)
    print(f"{name}: {len(args)} args, {len(auxs)} aux, logits {logits.shape}")


def make_arrays(rng):
    arrays = {
        "f32": rng.normal(0, 1, (2, 3)).astype(np.float32),
        "f64": rng.normal(0, 1, (3,)).astype(np.float64),
        "f16": rng.normal(0, 1, (2, 2)).astype(np.float16),
        "u8": rng.integers(0, 256, (4,)).astype(np.uint8),
        "i32": rng.integers(-1000, 1000, (2, 1, 2)).astype(np.int32),
        "i8": rng.integers(-128, 128, (5,)).astype(np.int8),
        "i64": rng.integers(-2**40, 2**40, (2,)).astype(np.int64),
    }
    mx.nd.save(str(OUT / "arrays-v2.params"), {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()})
    with mx.util.np_shape(True):
        numpy_mode = {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()}
        numpy_mode["scalar"] = mx.nd.array(np.float32(2.5)).reshape(())
        mx.nd.save(str(OUT / "arrays-v3.params"), numpy_mode)
    np.savez(OUT / "arrays.npz", scalar=np.float32(2.5), **arrays)
    return arrays


def check_flow_writer(arrays):
    from flow.mxnet_params import ndarray_list_bytes

    for version in (1, 2, 3):
        written = dict(arrays, scalar=np.array(2.5, np.float32)) if version == 3 else arrays
        path = OUT / f"flow-written-v{version}.params"
        path.write_bytes(ndarray_list_bytes(written, version))
        with mx.util.np_shape(version == 3):
            loaded = mx.nd.load(str(path))
        assert list(loaded) == list(written), (version, list(loaded))
        for key, value in written.items():
            assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape, (version, key)
            assert np.array_equal(loaded[key].asnumpy(), value), (version, key)
        if version in (2, 3):
            assert path.read_bytes() == (OUT / f"arrays-v{version}.params").read_bytes(), version
        path.unlink()
        print(f"flow's writer, version {version}: MXNet loads it equal" + (", bytes are MXNet's" if version > 1 else ""))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12)
    for name, build, image_shape in (
        ("lenet", lambda: lenet(10), (3, 16, 16)),
        ("mlp", lambda: mlp(10), (1, 8, 8)),
        ("resnet-8", lambda: resnet(10, 8, 16), (3, 16, 16)),
    ):
        with mx.name.NameManager():  # auto names (convolution0, ...) count from 0 for each network, as in fit.py
            make_model(name, build(), image_shape, rng)
    check_flow_writer(make_arrays(rng))


if __name__ == "__main__":
    main()
