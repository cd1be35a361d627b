"""Patch-encoder features, computed once per film and kept on disk (or, for a fine-tuned encoder, in memory).

With a frozen encoder a patch's features are a fixed function of its pixels, so every film's
sliding-window features and its training patches' features are computed once and shared by every
fold, repeat and film task (normal-abnormal, 3 and 7 classes): the cache key covers the encoder's
architecture and weights, the patch geometry, and the preprocessing cache's content key of the film
(which changes with the source file, its ROIs, the pipeline config and the code). The weights' key
is taken again whenever any encoder tensor has changed since (an optimiser step, a state load), so
features of an encoder before fine-tuning are never served for it afterwards. A fine-tuned encoder
is one fold's own: its features stay in memory (``root=None``) rather than fill the shared cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from mammolens.patches.model import PatchFilmModel
from mammolens.utils.atomic import atomic_open


def encoder_key(model: PatchFilmModel) -> str:
    header: dict = {"backbone": model.config.get("backbone"), "patch": model.patch_size}
    if model.input_size:  # patches resized before the encoder
        header["input_size"] = model.input_size
    digest = hashlib.sha256(json.dumps(header).encode())
    for name, tensor in model.encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def _fingerprint(model: PatchFilmModel) -> tuple:
    """Cheap marks of the encoder's tensors: each in-place change (optimiser step, copy_) bumps a version."""
    tensors = [*model.encoder.parameters(), *model.encoder.buffers()]
    return (id(model.encoder), *((id(t), t._version) for t in tensors))


class PatchFeatureStore:
    """``grid``: a film's sliding-window features; ``at``: features of patches at given positions."""

    def __init__(self, root: str | Path | None, model: PatchFilmModel) -> None:
        self.model, self.root = model, None if root is None else Path(root)
        self._marks: tuple | None = None
        self._key = ""
        self._memory: dict[str, dict[str, np.ndarray]] = {}

    @property
    def key(self) -> str:
        """The encoder key of the weights as they are now."""
        marks = _fingerprint(self.model)
        if marks != self._marks:
            self._key, self._marks = encoder_key(self.model), marks
        return self._key

    def _load(self, name: str) -> dict[str, np.ndarray] | None:
        key = self.key
        if self.root is None:
            return self._memory.get(f"{key}/{name}")
        try:
            with np.load(self.root / "patches" / key / f"{name}.npz", allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, KeyError):
            return None  # absent or unreadable: computed again

    def _save(self, name: str, key: str, arrays: dict[str, np.ndarray]) -> None:
        if self.root is None:
            self._memory[f"{key}/{name}"] = arrays
            return
        with atomic_open(self.root / "patches" / key / f"{name}.npz", "wb") as fh:
            np.savez(fh, **arrays)

    @torch.inference_mode()
    def grid(self, sample_key: str, film: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features of the valid windows (n, D), valid (N,) bool over the row-major grid)."""
        m = self.model
        name = f"{sample_key}-grid-{m.patch_size}-{m.stride}-{m.min_tissue:g}-{film.shape[0]}x{film.shape[1]}"
        cached = self._load(name)
        if cached is not None and {"features", "valid"} <= set(cached):
            return cached["features"], cached["valid"]
        key = self.key
        m.eval()
        patches = m.cut(torch.from_numpy(np.ascontiguousarray(film, np.float32))[None, None])[0]
        valid = m.valid(patches)
        features = m.encode(patches[valid]).float().numpy()
        self._save(name, key, {"features": features, "valid": valid.numpy()})
        return features, valid.numpy()

    @torch.inference_mode()
    def at(self, sample_key: str, film: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """(n, D) features of the patches whose top-left corners are ``positions`` (row, col)."""
        m = self.model
        tag = hashlib.blake2b(np.ascontiguousarray(positions, np.int64).tobytes(), digest_size=8).hexdigest()
        name = f"{sample_key}-at-{tag}"
        cached = self._load(name)
        if cached is not None and "features" in cached and cached["features"].shape[0] == len(positions):
            return cached["features"]
        key = self.key
        m.eval()
        p = m.patch_size
        patches = np.stack([film[y:y + p, x:x + p] for y, x in positions])[:, None]
        features = m.encode(torch.from_numpy(np.ascontiguousarray(patches, np.float32))).float().numpy()
        self._save(name, key, {"features": features})
        return features
