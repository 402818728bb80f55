"""flow.models: the fit.py networks, their initialization, fine-tuning and the model spec."""

import json
import math
import textwrap

import pytest
import torch
from torch import nn

from flow.errors import ConfigError
from flow.models import (FixedGammaBatchNorm, build_from_spec, build_model, default_initializer, fine_tune,
                         initialize, model_spec, with_fine_tune)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def forward(model, image_shape, batch=2):
    initialize(model, "xavier", seeded())
    with torch.no_grad():
        return model(torch.randn(batch, *image_shape, generator=seeded(1)))


def residual_convs(model):
    """Weighted layers as the resnet depth counts them: convs off the shortcut, plus the fc."""
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and not name.endswith(".sc")]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return len(convs), len(linears)


@pytest.mark.parametrize("name, image_shape, num_layers", [
    ("mlp", (3, 8, 8), None),
    ("lenet", (1, 28, 28), None),
    ("lenet", (3, 64, 64), None),
    ("alexnet", (3, 67, 67), None),  # the smallest image alexnet's three pools leave a pixel of
    ("resnet", (3, 28, 28), 20),
    ("resnet", (3, 32, 32), 20),
    ("resnet", (3, 32, 32), 18),
    ("resnet", (3, 40, 40), 18),  # over 32 high: 7x7/2 stem + max-pool
])
def test_forward_gives_batch_by_classes(name, image_shape, num_layers):
    model = build_model(name, 7, image_shape, num_layers)
    assert forward(model, image_shape).shape == (2, 7)


def test_resnet50_forward_on_one_image():
    model = build_model("resnet", 5, (3, 32, 32), 50).eval()
    assert forward(model, (3, 32, 32), batch=1).shape == (1, 5)


@pytest.mark.parametrize("num_layers, image_shape, convs", [
    (20, (3, 28, 28), 19),
    (20, (3, 32, 32), 19),
    (56, (3, 28, 28), 55),
    (18, (3, 32, 32), 17),
    (34, (3, 32, 32), 33),
    (50, (3, 32, 32), 49),
    (50, (3, 28, 28), 49),  # MXNet: a 28-high image makes 50 the CIFAR-style 6n+2 depth
])
def test_resnet_depth_counts_convs_plus_fc(num_layers, image_shape, convs):
    model = build_model("resnet", 10, image_shape, num_layers)
    assert residual_convs(model) == (convs, 1)


def test_resnet_layouts():
    cifar = build_model("resnet", 10, (3, 32, 32), 20)
    assert [cifar.get_submodule(f"stage{s}_unit1").conv1.out_channels for s in (1, 2, 3)] == [16, 32, 64]
    assert not hasattr(cifar, "stage4_unit1") and cifar.conv0.kernel_size == (3, 3)
    imagenet = build_model("resnet", 10, (3, 64, 64), 50)
    assert imagenet.conv0.kernel_size == (7, 7) and imagenet.stage4_unit3.conv3.out_channels == 2048
    assert isinstance(imagenet.bn_data, FixedGammaBatchNorm)


@pytest.mark.parametrize("num_layers, image_shape, message", [
    (None, (3, 32, 32), "resnet' needs num_layers"),
    (0, (3, 32, 32), "resnet' needs num_layers"),
    (21, (3, 32, 32), "num_layers 21"),
    (18, (3, 28, 28), "num_layers 18"),  # as MXNet: no ImageNet depths for 28-high images
])
def test_resnet_bad_depths(num_layers, image_shape, message):
    with pytest.raises(ConfigError, match=message):
        build_model("resnet", 10, image_shape, num_layers)


def test_lenet_hidden_option():
    assert build_model("lenet", 10, (3, 28, 28)).fullyconnected0.out_features == 500  # MXNet's lenet.py
    bench = build_model("lenet", 10, (3, 64, 64), hidden=256)  # REFERENCE's conv20-conv50-fc256-fc10
    assert bench.fullyconnected0.out_features == 256 and bench.fullyconnected1.out_features == 10
    with pytest.raises(ConfigError, match="unknown option depth; it takes hidden"):
        build_model("lenet", 10, (3, 28, 28), depth=3)
    with pytest.raises(ConfigError, match="unknown option hidden; it takes no options"):
        build_model("mlp", 10, (3, 28, 28), hidden=3)


def test_unknown_network_and_bad_shapes():
    with pytest.raises(ConfigError, match="unknown network 'vgg'; valid: alexnet, lenet, mlp, resnet"):
        build_model("vgg", 10, (3, 32, 32))
    with pytest.raises(ConfigError, match="image_shape"):
        build_model("mlp", 10, (32, 32))
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("mlp", 0, (3, 32, 32))
    with pytest.raises(ConfigError, match="too small for it"):
        build_model("alexnet", 10, (3, 32, 32))


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "user_nets.py").write_text(textwrap.dedent("""
        from torch import nn

        def small(num_classes, image_shape):
            channels, height, width = image_shape
            return nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, num_classes))

        def anything(**kwargs):
            return nn.Linear(kwargs["num_layers"], kwargs["num_classes"])

        def not_a_module(num_classes):
            return "nope"

        class Classifier(nn.Linear):
            def __init__(self, num_classes=1000, features=4):
                super().__init__(features, num_classes)

        def torchvision_style(*, progress=True, **kwargs):  # as torchvision.models.resnet18
            return Classifier(**kwargs)

        def deep(num_classes, depth):
            return nn.Sequential(*[nn.Linear(num_classes, num_classes) for _ in range(depth)])
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_nets"


def test_factory_strings(factories):
    model = build_model("user_nets:small", 4, (3, 8, 8), num_layers=18)  # num_layers not taken: not passed
    assert forward(model, (3, 8, 8)).shape == (2, 4)
    assert build_model("user_nets:anything", 4, (3, 8, 8), num_layers=6).in_features == 6


@pytest.mark.parametrize("name, options, message", [
    ("user_nets:not_a_module", {}, "network 'user_nets:not_a_module': the factory returned str, not a torch.nn.Module"),
    ("user_nets:missing", {}, "network 'user_nets:missing': user_nets has no missing"),
    ("no_such_package.nets:make", {}, "network 'no_such_package.nets:make': cannot import no_such_package.nets"),
    ("user_nets:small", {"width": 2}, "network 'user_nets:small': the factory takes no option width"),
])
def test_factory_errors_name_the_string(factories, name, options, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        build_model(name, 4, (3, 8, 8), **options)


def test_factory_options_are_passed_as_keyword_arguments(factories):
    assert len(build_model("user_nets:deep", 4, (3, 8, 8), depth=3)) == 3


@pytest.mark.parametrize("name, options, message", [
    ("user_nets:torchvision_style", {"features": 5},
     "model.network 'user_nets:torchvision_style': the factory refused flow's arguments "
     "(Classifier.__init__() got an unexpected keyword argument 'image_shape'): flow passed num_classes=4, "
     "image_shape=(3, 8, 8) and model.options features=5 to torchvision_style(*, progress=True, **kwargs)"),
    ("user_nets:deep", {},
     "model.network 'user_nets:deep': the factory refused flow's arguments (missing a required argument: 'depth'): "
     "flow passed num_classes=4 to deep(num_classes, depth)"),
])
def test_a_factory_that_refuses_flows_arguments_says_what_was_passed_and_what_it_takes(factories, name, options,
                                                                                        message):
    with pytest.raises(ConfigError) as caught:
        build_model(name, 4, (3, 8, 8), **options)
    assert str(caught.value).startswith(message + "; ")
    assert "model.options" in str(caught.value).removeprefix(message) and "\n" not in str(caught.value)


def test_initialization_is_deterministic_per_generator():
    def state(seed):
        model = build_model("resnet", 10, (3, 32, 32), 20)
        initialize(model, "xavier", seeded(seed))
        return model.state_dict()

    first, again, other = state(3), state(3), state(4)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["conv0.weight"], other["conv0.weight"])


def test_xavier_std_matches_mxnet_formula():
    linear, conv = nn.Linear(4096, 512), nn.Conv2d(64, 128, 3)
    model = nn.Sequential(linear, conv)
    initialize(model, "xavier", seeded())
    # Xavier(gaussian, "in", magnitude 2): sigma = sqrt(2 / fan_in), fan_in = in * kh * kw
    assert linear.weight.std().item() == pytest.approx(math.sqrt(2 / 4096), rel=0.01)
    assert linear.weight.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.02)
    assert not linear.bias.any() and not conv.bias.any()


def test_normal_initializer_and_norm_layers():
    model = build_model("resnet", 10, (3, 32, 32), 20)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(5.0)
    initialize(model, "normal", seeded())
    assert model.fc1.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.all(model.bn1.weight == 1) and not model.bn1.bias.any() and not model.bn_data.beta.any()
    assert torch.all(model.bn1.running_var == 1) and not model.bn1.running_mean.any()
    assert default_initializer("alexnet") == "normal" and default_initializer("resnet") == "xavier"
    with pytest.raises(ConfigError, match="unknown initializer 'msra'; valid: xavier, normal"):
        initialize(model, "msra", seeded())


def test_fine_tune_replaces_only_the_last_linear():
    model = build_model("lenet", 10, (3, 28, 28))
    initialize(model, "xavier", seeded())
    before = {key: value.clone() for key, value in model.state_dict().items()}
    tuned = fine_tune(model, 3, generator=seeded(9))
    after = tuned.state_dict()
    assert after["fullyconnected1.weight"].shape == (3, 500)
    kept = [key for key in before if not key.startswith("fullyconnected1.")]
    assert kept and all(torch.equal(before[key], after[key]) for key in kept)
    assert forward_without_init(tuned, (3, 28, 28)).shape == (2, 3)


def forward_without_init(model, image_shape):
    with torch.no_grad():
        return model(torch.randn(2, *image_shape, generator=seeded(1)))


def test_fine_tune_at_layer_before_fullc():
    model = build_model("resnet", 10, (3, 32, 32), 20)
    initialize(model, "xavier", seeded())
    before = {key: value.clone() for key, value in model.state_dict().items()}
    tuned = fine_tune(model, 4, "flatten0", image_shape=(3, 32, 32))  # fine-tune.py's default name
    after = tuned.state_dict()
    assert set(after) == {key for key in before if not key.startswith("fc1.")} | {"fc.weight", "fc.bias"}
    assert all(torch.equal(before[key], after[key]) for key in after if not key.startswith("fc."))
    assert forward_without_init(tuned.eval(), (3, 32, 32)).shape == (2, 4)
    # Cut before the pooling: a flatten is added, as MXNet's FullyConnected flattens its input.
    pooled = fine_tune(build_model("resnet", 10, (3, 32, 32), 20), 4, "relu1", image_shape=(3, 32, 32))
    assert pooled.fc.in_features == 64 * 8 * 8  # stages 2 and 3 halve 32 twice
    with pytest.raises(ConfigError, match="layer_before_fullc 'pool5' is not a layer of the model; valid: bn_data"):
        fine_tune(model, 4, "pool5", image_shape=(3, 32, 32))


def test_spec_rebuilds_the_same_model():
    spec = model_spec("lenet", 10, (3, 28, 28), hidden=64)
    spec = json.loads(json.dumps(spec))  # it is written as {prefix}-model.json
    model = build_model("lenet", 10, (3, 28, 28), hidden=64)
    initialize(model, "xavier", seeded())
    rebuilt = build_from_spec(spec)
    rebuilt.load_state_dict(model.state_dict())  # strict: same names and shapes
    inputs = torch.randn(2, 3, 28, 28, generator=seeded(1))
    assert torch.equal(model(inputs), rebuilt(inputs))


def test_spec_records_fine_tuning():
    spec = with_fine_tune(model_spec("resnet", 10, (3, 32, 32), 20), 4, "flatten0", (3, 32, 32))
    tuned = fine_tune(build_model("resnet", 10, (3, 32, 32), 20), 4, "flatten0", image_shape=(3, 32, 32))
    build_from_spec(json.loads(json.dumps(spec))).load_state_dict(tuned.state_dict())
    with pytest.raises(ConfigError, match="model spec: missing network"):
        build_from_spec({"version": 1, "num_classes": 3, "image_shape": [3, 8, 8]})
    with pytest.raises(ConfigError, match="plain data"):
        model_spec("lenet", 10, (3, 28, 28), hidden=object())
