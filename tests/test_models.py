"""The model zoo's contract, checked on every registered model with tiny inputs."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from mammolens.models import MammoModel, create_model, list_models
from mammolens.models.adapters import ConvAdapter
from mammolens.models.backbones import MIN_INPUT_SIZE
from mammolens.utils.errors import ConfigError

EXPECTED = {
    "attention", "densenet121", "hybrid", "hybrid-lite", "inception_v3", "mobilenetv2_100",
    "resnet50", "scratch-cnn", "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2",
    "vgg16", "vit_small_patch14_dinov2",
}  # fmt: skip
PAIRED = {"bilateral"}  # reads (film, other film) pairs, not one grey film: tests/test_bilateral_model.py
SLIDING = {"patch-classifier"}  # a patch classifier slid over a whole film: tests/test_patches_model.py


def input_size(model: MammoModel) -> int:
    names = model.config.get("backbones") or [model.config["name"]]
    return max(MIN_INPUT_SIZE.get(n, 32) for n in names)


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def model(request) -> MammoModel:
    torch.manual_seed(0)
    return create_model(request.param, num_classes=3)


def test_registry_lists_every_model():
    assert set(list_models()) == EXPECTED | PAIRED | SLIDING


def test_forward_gives_logits_for_grayscale_batch(model):
    size = input_size(model)
    model.eval()
    with torch.no_grad():
        x = torch.rand(2, 1, size, size)
        features = model.forward_features(x)
        logits = model(x)
    assert features.shape == (2, model.num_features)
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()
    assert torch.allclose(model.forward_head(features), logits)


def test_gradient_reaches_first_conv_and_every_parameter(model):
    size = input_size(model)
    model.train()
    model.zero_grad(set_to_none=True)
    model(torch.rand(2, 1, size, size)).sum().backward()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1  # the grayscale input's own first layer
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == []


def test_config_rebuilds_identical_architecture(model):
    config = json.loads(json.dumps(model.config))  # survives a JSON/YAML round trip
    assert config["pretrained"] is None
    with torch.device("meta"):  # shapes only: no need to initialise the weights again
        rebuilt = create_model(**config)
    original = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == original
    assert rebuilt.config == model.config


def test_blocks_and_head_partition_the_parameters(model):
    owners: dict[int, int] = {}
    groups = model.backbone_blocks() + model.head_modules()
    for i, module in enumerate(groups):
        for p in module.parameters():
            assert id(p) not in owners, "a parameter belongs to two blocks"
            owners[id(p)] = i
    assert set(owners) == {id(p) for p in model.parameters()}
    head_params = {id(p) for m in model.head_modules() for p in m.parameters()}
    assert head_params and head_params.isdisjoint(id(p) for m in model.backbone_blocks() for p in m.parameters())


def test_cam_layers_are_spatial_maps_inside_the_model(model):
    layers = model.cam_target_layers()
    assert layers
    submodules = {id(m) for m in model.modules()}
    shapes = {}
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape)))
        for name, layer in layers.items()
    ]
    size = input_size(model)
    with torch.no_grad():
        model.eval()(torch.rand(1, 1, size, size))
    for hook in hooks:
        hook.remove()
    assert all(id(layer) in submodules for layer in layers.values())
    assert set(shapes) == set(layers)
    assert all(len(s) == 4 and s[0] == 1 for s in shapes.values())


def test_hybrid_is_densenet_plus_resnet_with_interleaved_stages():
    model = create_model("hybrid", num_classes=2)
    assert list(model.backbones) == ["densenet121", "resnet50"]
    assert model.num_features == 1024 + 2048
    assert isinstance(model.head[0], nn.Linear) and model.head[0].out_features == 256
    blocks = model.backbone_blocks()
    dense = model.backbones["densenet121"].model.features
    resnet = model.backbones["resnet50"].model
    assert blocks[0] is model.adapter
    assert list(blocks[-1]) == [resnet.layer4]
    assert list(blocks[-2]) == [dense.denseblock4, dense.norm5]
    assert list(blocks[-3]) == [resnet.layer3]
    assert set(model.cam_target_layers()) == {"densenet121", "resnet50"}
    assert model.cam_target_layers()["resnet50"] is resnet.layer4


def test_hybrid_lite_and_custom_fusion():
    lite = create_model("hybrid-lite", num_classes=2)
    assert list(lite.backbones) == ["mobilenetv2_100", "tf_efficientnet_lite0"]
    assert lite.num_features == 1280 + 1280
    custom = create_model("hybrid", num_classes=2, backbones=["resnet50", "mobilenetv2_100"], hidden=0)
    assert custom.num_features == 2048 + 1280
    assert custom.config["backbones"] == ["resnet50", "mobilenetv2_100"]


def test_conv_adapter_starts_as_channel_replication():
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(ConvAdapter(1)(x), x.expand(-1, 3, -1, -1))


def test_timm_adapter_puts_one_channel_into_the_backbone():
    model = create_model("resnet50", num_classes=2, input_adapter="timm")
    assert isinstance(model.adapter, nn.Identity)
    assert model.backbones["resnet50"].model.conv1.in_channels == 1
    assert model.eval()(torch.rand(1, 1, 32, 32)).shape == (1, 2)


@pytest.mark.parametrize("encoder", ["scratch", "mobilenetv2_100"])
def test_attention_keeps_normalised_maps(encoder):
    torch.manual_seed(0)
    model = create_model("attention", num_classes=2, encoder=encoder, steps=3, encoder_depth=3, encoder_width=8)
    model.eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 64, 64))
    attn = model.last_attention
    grid = 8 if encoder == "scratch" else 2  # 64 / 2**3, and MobileNetV2's stride 32
    assert logits.shape == (2, 2)
    assert attn.shape == (2, 3, grid, grid)
    assert torch.allclose(attn.sum(dim=(2, 3)), torch.ones(2, 3), atol=1e-5)
    assert (attn >= 0).all()


def test_attention_depends_on_the_image():
    torch.manual_seed(0)
    model = create_model("attention", num_classes=2, encoder_depth=2, encoder_width=8).eval()
    x = torch.zeros(1, 1, 32, 32)
    x[..., :8, :8] = 1.0  # a bright corner should pull attention away from uniform
    with torch.no_grad():
        model(x)
        bright = model.last_attention.clone()
        model(torch.zeros(1, 1, 32, 32))
    assert not torch.allclose(bright, model.last_attention)


def test_scratch_cnn_depth_and_width():
    model = create_model("scratch-cnn", num_classes=4, depth=2, width=8, double_conv=False)
    assert len(model.backbone_blocks()) == 2
    assert model.num_features == 16
    assert model(torch.rand(3, 1, 16, 16)).shape == (3, 4)


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_unknown_model_lists_known_names():
    with pytest.raises(ConfigError) as err:
        create_model("densenet", num_classes=2)
    message = one_line_error(err)
    assert "'densenet'" in message and "densenet121" in message and "hybrid-lite" in message


def test_unknown_option_is_named():
    with pytest.raises(ConfigError) as err:
        create_model("resnet50", num_classes=2, pretrain="imagenet")
    message = one_line_error(err)
    assert "'pretrain'" in message and "pretrained" in message


@pytest.mark.parametrize(
    ("name", "options", "fragment"),
    [
        ("resnet50", {"dropout": 1.5}, "'dropout'"),
        ("resnet50", {"input_adapter": "rgb"}, "'input_adapter'"),
        ("resnet50", {"hidden": -1}, "'hidden'"),
        ("hybrid", {"backbones": ["resnet50"]}, "two or more"),
        ("hybrid", {"backbones": ["resnet50", "resnet18"]}, "'resnet18'"),
        ("hybrid", {"backbones": "resnet50"}, "'backbones'"),
        ("scratch-cnn", {"depth": 0}, "'depth'"),
        ("attention", {"encoder": "vgg16"}, "'encoder'"),
        ("attention", {"steps": 0}, "'steps'"),
    ],
)
def test_bad_option_values(name, options, fragment):
    with pytest.raises(ConfigError) as err:
        create_model(name, num_classes=2, **options)
    assert fragment in one_line_error(err)


@pytest.mark.parametrize("num_classes", [0, 2.0, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("scratch-cnn", num_classes=num_classes)


@pytest.mark.parametrize("name", ["scratch-cnn", "attention"])
def test_scratch_models_refuse_pretrained_weights(name):
    with pytest.raises(ConfigError, match="pretrained=None"):
        create_model(name, num_classes=2, pretrained="imagenet")


@pytest.mark.parametrize(("name", "options", "chans"), [
    ("resnet50", {}, 1), ("hybrid-lite", {}, 1), ("mobilenetv2_100", {"input_adapter": "repeat"}, 1),
    ("densenet121", {"in_chans": 3}, 3),
])  # fmt: skip
def test_a_pointwise_adapter_folds_exactly_into_the_first_convs(name, options, chans):
    model = create_model(name, num_classes=2, **options).eval()
    folded = copy.deepcopy(model)
    assert folded.fold_input_adapter()
    assert isinstance(folded.adapter, nn.Identity)
    assert all(b.first_conv().weight.shape[1] == chans for b in folded.backbones.values())
    x = torch.rand(2, chans, 40, 40)  # edges included: the adapter maps the stem's zero padding to zero
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=0, atol=2e-6)


def test_an_adapter_that_mixes_space_or_normalised_backbones_are_not_folded():
    model = create_model("mobilenetv2_100", num_classes=2).eval()
    with torch.no_grad():
        model.adapter.weight[0, 0, 0, 0] = 0.1  # training moved an off-centre tap
    assert not model.fold_input_adapter() and isinstance(model.adapter, ConvAdapter)
    normalised = create_model("mobilenetv2_100", num_classes=2, normalize=True)
    assert not normalised.fold_input_adapter()  # the padding would be shifted by the mean
