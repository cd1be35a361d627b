"""Frozen-encoder patch features, computed once per film and kept on disk.

With a frozen encoder a patch's features are a fixed function of its pixels, so every film's
sliding-window features and its training patches' features are computed once and shared by every
fold, repeat and film task (normal-abnormal, 3 and 7 classes): the cache key covers the encoder's
architecture and weights, the patch geometry, and the preprocessing cache's content key of the film
(which changes with the source file, its ROIs, the pipeline config and the code).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from mammolens.atomic import atomic_open, save_npy
from mammolens.patches.model import PatchFilmModel


def encoder_key(model: PatchFilmModel) -> str:
    header: dict = {"backbone": model.config.get("backbone"), "patch": model.patch_size}
    if model.input_size:  # patches resized before the encoder
        header["input_size"] = model.input_size
    digest = hashlib.sha256(json.dumps(header).encode())
    for name, tensor in model.encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


class PatchFeatureStore:
    """``grid``: a film's sliding-window features; ``at``: features of patches at given positions."""

    def __init__(self, root: str | Path, model: PatchFilmModel) -> None:
        self.model = model
        self.dir = Path(root) / "patches" / encoder_key(model)

    @torch.inference_mode()
    def grid(self, sample_key: str, film: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features of the valid windows (n, D), valid (N,) bool over the row-major grid)."""
        m = self.model
        path = self.dir / f"{sample_key}-grid-{m.patch_size}-{m.stride}-{m.min_tissue:g}-{film.shape[0]}x{film.shape[1]}.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                return data["features"], data["valid"]
        except (OSError, ValueError, KeyError):
            pass  # absent or unreadable: computed below
        m.eval()
        patches = m.cut(torch.from_numpy(np.ascontiguousarray(film, np.float32))[None, None])[0]
        valid = m.valid(patches)
        features = m.encode(patches[valid]).float().numpy()
        with atomic_open(path, "wb") as fh:
            np.savez(fh, features=features, valid=valid.numpy())
        return features, valid.numpy()

    @torch.inference_mode()
    def at(self, sample_key: str, film: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """(n, D) features of the patches whose top-left corners are ``positions`` (row, col)."""
        m = self.model
        tag = hashlib.blake2b(np.ascontiguousarray(positions, np.int64).tobytes(), digest_size=8).hexdigest()
        path = self.dir / f"{sample_key}-at-{tag}.npy"
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape[0] == len(positions):
                return cached
        except (OSError, ValueError):
            pass
        m.eval()
        p = m.patch_size
        patches = np.stack([film[y:y + p, x:x + p] for y, x in positions])[:, None]
        features = m.encode(torch.from_numpy(np.ascontiguousarray(patches, np.float32))).float().numpy()
        save_npy(path, features)
        return features
