"""The feature fast path: with a frozen backbone, run it once per part and train the head on the result.

``forward_features`` of a frozen model (eval mode, un-augmented input) is a fixed function of the
image, so computing it every epoch is wasted work: caching it turns minutes of training into seconds
and gives the head the same inputs, hence the same weights, as end-to-end training. The cache key
covers everything the features depend on: model config, every non-head weight, the part's sample
ids, the normalisation and the caller's hash of the image content.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mammolens.models.base import MammoModel
from mammolens.train.datamodule import ArrayDataModule
from mammolens.utils.atomic import save_npy


def feature_cache_key(model: MammoModel, sample_ids: list[str], normalisation: dict[str, float], data_key: str) -> str:
    digest = hashlib.sha256()
    # num_classes shapes only the head, which the features do not depend on: tasks with other
    # class counts (normal-abnormal, the 7 MIAS classes) share one backbone's features.
    architecture = {k: v for k, v in model.config.items() if k != "num_classes"}
    header = {"model": architecture, "samples": sample_ids, "normalisation": normalisation, "data": data_key}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    head = {id(t) for m in model.head_modules() for t in [*m.parameters(), *m.buffers()]}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in head:
            continue  # the head is what gets trained; the features do not depend on it
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def extract_features(
    model: MammoModel, datamodule: ArrayDataModule, part: str, device: torch.device, progress: bool = True
) -> np.ndarray:
    """(N, D) float32 ``forward_features`` of ``part`` in row order, the model in eval mode."""
    was_training = model.training
    home = next(model.parameters()).device
    model.eval().to(device, memory_format=torch.channels_last)  # NHWC: the faster convolutions on CPU
    batches = tqdm(datamodule.eval_dataloader(part), desc=f"features ({part})", unit="batch", disable=not progress)
    try:
        chunks = [model.forward_features(_nhwc(x.to(device))).float().cpu() for x, _ in batches]
    finally:
        model.train(was_training).to(home, memory_format=torch.contiguous_format)
    return torch.cat(chunks).numpy()


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


def part_features(
    model: MammoModel,
    datamodule: ArrayDataModule,
    part: str,
    *,
    device: torch.device,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Features of ``part``, from ``cache_dir`` when the same model saw the same data before.

    Nothing is cached unless the datamodule carries a ``data_key``: without one, the image content
    cannot be vouched for, and stale features would be silently wrong.
    """
    if getattr(model, "film_model", None) is not None:  # bilateral: one pass per film, pairs after
        from mammolens.train.paired import paired_part_features

        return paired_part_features(model, datamodule, part, lambda m, dm, p: part_features(
            m, dm, p, device=device, cache_dir=cache_dir, progress=progress))
    if cache_dir is not None and datamodule.sample_keys is not None:
        return _per_sample_features(model, datamodule, part, device, Path(cache_dir), progress)
    if cache_dir is None or datamodule.data_key is None:
        return extract_features(model, datamodule, part, device, progress)
    sample_ids = [datamodule.sample_ids[r] for r in datamodule.rows(part)]
    key = feature_cache_key(model, sample_ids, datamodule.normalisation, datamodule.data_key)
    path = Path(cache_dir) / f"{part}-{key[:24]}.npy"
    try:
        cached = np.load(path, allow_pickle=False)
        if cached.ndim == 2 and len(cached) == len(sample_ids):
            return cached
    except (OSError, ValueError):
        pass  # absent or unreadable: compute it again
    features = extract_features(model, datamodule, part, device, progress)
    save_npy(path, features)
    return features


def _per_sample_features(
    model: MammoModel, datamodule: ArrayDataModule, part: str, device: torch.device, cache_dir: Path, progress: bool
) -> np.ndarray:
    """Features of ``part`` from one file per sample (keyed by the model's non-head weights and the
    sample's content key): only samples never seen with this backbone are run through it."""
    folder = cache_dir / feature_cache_key(model, [], datamodule.normalisation, "per-sample")[:24]
    rows = datamodule.rows(part)
    paths = [folder / f"{datamodule.sample_keys[r]}.npy" for r in rows]
    cached: dict[int, np.ndarray] = {}
    for i, path in enumerate(paths):
        try:
            cached[i] = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            pass  # absent or unreadable: computed below
    missing = [i for i in range(len(rows)) if i not in cached]
    if missing:
        view = copy.copy(datamodule)
        view.parts = {**datamodule.parts, "_missing": rows[missing]}
        features = extract_features(model, view, "_missing", device, progress)
        for i, row in zip(missing, features):
            save_npy(paths[i], row)
            cached[i] = row
    return np.stack([cached[i] for i in range(len(rows))]).astype(np.float32, copy=False)
