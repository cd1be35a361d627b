"""The Bundle: the one thing that crosses from training to use.

A bundle directory holds ``model.safetensors`` (weights; never a pickle), ``bundle.json`` (how to
rebuild the model and feed it: model config, classes, task, preprocessing, normalisation, threshold,
temperature, validation metrics, provenance) and ``config.yaml`` (the resolved experiment config).
It is written to a temporary directory and renamed into place, so a crash never leaves half a bundle.
This module imports neither Lightning nor the training code: a predictor stays light.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from mammolens.models.base import MammoModel
from mammolens.train.losses import probabilities
from mammolens.train.normalisation import check_normalisation, normalise
from mammolens.utils.atomic import make_temp_dir, replace_dir, umask_mode, write_json, write_text
from mammolens.utils.errors import ConfigError, DataError
from mammolens.utils.provenance import git_state, package_versions

FORMAT_VERSION = 1
WEIGHTS, MANIFEST, CONFIG = "model.safetensors", "bundle.json", "config.yaml"
_REQUIRED = (
    "format_version", "model", "classes", "task", "preprocess", "normalisation",
    "threshold", "temperature", "metrics", "provenance", "weights_sha256",
)  # fmt: skip
_VERSIONED_PACKAGES = ("mammolens", "torch", "torchvision", "timm", "lightning", "numpy")


@dataclasses.dataclass
class Bundle:
    """A trained model, in eval mode, with everything needed to reproduce its input and read its output."""

    path: Path
    model: MammoModel
    classes: list[str]
    task: str
    preprocess: dict[str, Any]
    normalisation: dict[str, float]
    threshold: float
    temperature: float
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    config: dict[str, Any]
    # Test-time augmentation: 1 (none) or 8 (the dihedral flips/rotations, probabilities averaged).
    tta: int = 1
    # Lesion descriptors' share of the logits (a linear head over standardised descriptors, see
    # train/linear_head.py): {"names", "mean", "scale", "coef" (outputs x K)}; None when unused.
    descriptor_head: dict[str, Any] | None = None
    # Views -> breast -> exam (evaluate.exams), chosen on validation films: {"method", "params" (the
    # fitted combination's JSON or None), "level", "threshold" (breast/exam decisions; None: the film one)}.
    aggregator: dict[str, Any] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to_input(self, batch: np.ndarray) -> torch.Tensor:
        """(N, H, W) or (N, C, H, W) preprocessed float images in [0, 1] -> the normalised (N, C, H, W)
        model input (C = 1 for 2-D images)."""
        batch = np.asarray(batch)
        if batch.ndim not in (3, 4):
            raise DataError(
                f"expected a batch of preprocessed images shaped (N, H, W) or (N, C, H, W), got shape {batch.shape}"
            )
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        x = x[:, None] if x.ndim == 3 else x
        return normalise(x.to(self.device), self.normalisation)

    def predict_proba(self, batch: np.ndarray, descriptors: np.ndarray | None = None) -> np.ndarray:
        """(N, H, W) or (N, C, H, W) preprocessed images -> (N, C) temperature-scaled class probabilities.

        ``descriptors``: the (N, K) vectors the bundle's preprocessing recorded
        (``Pipeline(bundle.preprocess)(sample).descriptors``), needed when the bundle has a descriptor head.
        """
        x = self.to_input(batch)
        extra = self._descriptor_logits(descriptors, len(x))
        model = _nhwc(self.model)
        probs = None
        with torch.inference_mode():
            for view in dihedral_views(x, self.tta):
                logits = model(view.contiguous(memory_format=torch.channels_last))
                logits = logits if extra is None else logits + extra
                p = probabilities(logits / self.temperature)
                probs = p if probs is None else probs + p
        return self._checked(probs / max(1, self.tta))

    def predict_proba_features(self, features: np.ndarray) -> np.ndarray:
        """(N, D) ``forward_features`` of a frozen model -> the probabilities its images would give
        (bundles without test-time augmentation or descriptors, which need the images)."""
        if self.tta != 1 or self.descriptor_head is not None:
            raise ConfigError("predict_proba_features: this bundle's test-time augmentation or descriptors need the images")
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
            return self._checked(probabilities(self.model.forward_head(x) / self.temperature))

    def _checked(self, probs: torch.Tensor) -> np.ndarray:
        if probs.shape[1] != len(self.classes):
            raise DataError(
                f"the model gives {probs.shape[1]} probabilities for {len(self.classes)} classes", path=self.path
            )
        return probs.cpu().numpy()

    def _descriptor_logits(self, descriptors: np.ndarray | None, n: int) -> torch.Tensor | None:
        head = self.descriptor_head
        if head is None:
            return None
        if descriptors is None:
            raise DataError(
                f"this bundle needs lesion descriptors ({len(head['names'])}: {', '.join(head['names'][:3])}, ...); "
                "pass Pipeline(bundle.preprocess)(sample).descriptors values to predict_proba", path=self.path
            )
        d = np.asarray(descriptors, dtype=np.float64)
        if d.shape != (n, len(head["names"])):
            raise DataError(f"descriptors: expected shape {(n, len(head['names']))}, got {d.shape}", path=self.path)
        z = ((d - np.asarray(head["mean"])) / np.asarray(head["scale"])) @ np.asarray(head["coef"]).T
        return torch.from_numpy(z.astype(np.float32)).to(self.device)


def descriptor_vector(names: Sequence[str], recorded: Sequence[tuple[str, float]]) -> np.ndarray:
    """A descriptor head's (K,) input from the ``(name, value)`` pairs a pipeline recorded on a Sample
    (``Sample.descriptors``): the head was fitted on them in this order, so other names are refused."""
    got = [n for n, _ in recorded]
    if got != list(names):
        raise DataError(f"the preprocessing recorded descriptors {got[:3]}... ({len(got)}), but the bundle's "
                        f"descriptor head takes {list(names)[:3]}... ({len(names)})")  # fmt: skip
    return np.array([v for _, v in recorded], dtype=np.float64)


def _nhwc(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in NHWC, the faster layout on CPU. Converted once (not per call, so threads sharing
    the model never see its weights replaced) and outside inference mode, whose tensors could never
    be trained or explained (gradients) afterwards."""
    if any(p.ndim == 4 and not p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters()):
        model.to(memory_format=torch.channels_last)
    return model


def dihedral_views(x: torch.Tensor, tta: int) -> Iterator[torch.Tensor]:
    """``x`` itself (tta=1), or its 8 flips/rotations (tta=8: each of the 4 flips, also transposed).

    Built from flips and transposes, not ``rot90``, so the views export to ONNX (no ``rot90`` op):
    the 4 quarter turns, each also mirrored, are the same 8 images.
    """
    if tta == 1:
        yield x
        return
    if tta != 8:
        raise ConfigError(f"tta must be 1 or 8, got {tta}")
    for dims in ((), (-1,), (-2,), (-2, -1)):
        flipped = torch.flip(x, dims=dims) if dims else x
        yield flipped
        yield flipped.transpose(-2, -1)


def save_bundle(
    out_dir: str | Path,
    model: MammoModel,
    *,
    classes: Sequence[str],
    task: str,
    preprocess: dict[str, Any],
    normalisation: dict[str, float],
    threshold: float = 0.5,
    temperature: float = 1.0,
    metrics: dict[str, Any],
    provenance: dict[str, Any],
    config: dict[str, Any],
    tta: int = 1,
    descriptor_head: dict[str, Any] | None = None,
    aggregator: dict[str, Any] | None = None,
) -> Path:
    """Write the bundle directory ``out_dir`` (replacing an earlier bundle there) and return its path.

    ``provenance`` should carry the data manifest and split file hashes; the git commit, package
    versions and creation time are added unless given.
    """
    out_dir = Path(out_dir)
    classes = [str(c) for c in classes]
    if len(classes) < 2:
        raise ConfigError(f"a bundle needs at least 2 classes, got {classes}")
    if tta not in (1, 8):
        raise ConfigError(f"tta must be 1 or 8, got {tta}")
    with bundle_writer(out_dir, threshold=threshold, temperature=temperature) as tmp:
        # safetensors stores contiguous tensors only; inference may have left the model in NHWC.
        save_model(model.to(memory_format=torch.contiguous_format), str(tmp / WEIGHTS), metadata={"format": "pt"})
        umask_mode(tmp / WEIGHTS)
        manifest = {
            "format_version": FORMAT_VERSION,
            "model": _plain(model.config, "model.config"),
            "classes": classes,
            "task": task,
            "preprocess": _plain(preprocess, "preprocess"),
            "normalisation": check_normalisation(normalisation),
            "threshold": float(threshold),
            "temperature": float(temperature),
            "metrics": _plain(metrics, "metrics"),
            "provenance": {**_auto_provenance(), **_plain(provenance, "provenance")},
            "weights_sha256": file_sha256(tmp / WEIGHTS),
            "tta": int(tta),
            "descriptor_head": _plain(descriptor_head, "descriptor_head"),
            "aggregator": _plain(aggregator, "aggregator"),
        }
        write_json(tmp / MANIFEST, manifest)
        write_text(tmp / CONFIG, yaml.safe_dump(_plain(config, "config"), sort_keys=False))
    return out_dir


@contextlib.contextmanager
def bundle_writer(out_dir: Path, threshold: float, temperature: float) -> Iterator[Path]:
    """A temporary folder beside ``out_dir`` that replaces it (an earlier bundle only) when the block
    succeeds; the operating point is checked first. Plain and ensemble bundles are written so."""
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"threshold must be within [0, 1], got {threshold}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a positive number, got {temperature}")
    if out_dir.exists() and not (out_dir / MANIFEST).is_file():
        raise ConfigError("exists and is not a bundle; refusing to replace it", path=out_dir)
    tmp = make_temp_dir(out_dir)
    try:
        yield tmp
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model_bundle(path: str | Path, model_factory: Callable[..., MammoModel] | None = None) -> Bundle:
    """Rebuild the model saved in bundle ``path`` (eval mode, on the CPU).

    ``model_factory(**model_config)`` defaults to ``mammolens.models.create_model``.
    """
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(
            "bundle not found (expected a directory with bundle.json, model.safetensors, config.yaml)", path=path
        )
    manifest = _read_manifest(path / MANIFEST)
    config = _read_config(path / CONFIG)
    if model_factory is None:
        from mammolens.models import create_model

        model_factory = create_model
    model = model_factory(**manifest["model"])
    weights = path / WEIGHTS
    if not weights.is_file():
        raise DataError("missing from the bundle", path=weights)
    if file_sha256(weights) != manifest["weights_sha256"]:
        raise DataError("corrupt: its checksum does not match bundle.json", path=weights)
    try:
        load_model(model, str(weights), strict=True)
    except (RuntimeError, SafetensorError) as exc:
        raise DataError(
            f"does not fit model {manifest['model'].get('name', '?')!r}: {str(exc).splitlines()[0]}", path=weights
        ) from None
    model.eval()
    return Bundle(
        path=path,
        model=model,
        classes=list(manifest["classes"]),
        task=manifest["task"],
        preprocess=manifest["preprocess"],
        normalisation=check_normalisation(manifest["normalisation"]),
        threshold=float(manifest["threshold"]),
        temperature=float(manifest["temperature"]),
        metrics=manifest["metrics"],
        provenance=manifest["provenance"],
        config=config,
        tta=int(manifest.get("tta", 1)),
        descriptor_head=manifest.get("descriptor_head"),
        aggregator=manifest.get("aggregator"),
    )


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("missing from the bundle", path=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"corrupt: not valid JSON ({exc})", path=path) from None
    if not isinstance(manifest, dict):
        raise DataError("corrupt: expected a JSON object", path=path)
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise ConfigError(
            f"bundle format version {version!r} is not supported (this mammolens reads 1..{FORMAT_VERSION}); "
            "upgrade mammolens",
            path=path,
        )
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise DataError(f"corrupt: missing key {missing[0]!r}", path=path)
    if not isinstance(manifest["model"], dict):
        raise DataError("corrupt: 'model' must be the model's config mapping", path=path)
    return manifest


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError("missing from the bundle", path=path) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"corrupt: not valid YAML ({str(exc).splitlines()[0]})", path=path) from None
    if not isinstance(config, dict):
        raise DataError("corrupt: expected a mapping", path=path)
    return config


def file_sha256(path: Path) -> str:
    """A file's SHA-256 in hex: the checksums bundle.json (and an ensemble's) records."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _plain(value: Any, where: str) -> Any:
    """JSON/YAML-safe copy: numpy scalars and arrays to Python, NaN/inf to None, paths to str."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    raise ConfigError(f"{where}: a {type(value).__name__} cannot be saved in a bundle")


def _auto_provenance() -> dict[str, Any]:
    commit, dirty = git_state()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "packages": package_versions(_VERSIONED_PACKAGES),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
