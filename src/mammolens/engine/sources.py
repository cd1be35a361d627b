"""A config's data, without the training room: source -> manifest -> task samples -> split.

Light (no torch), so ``data inspect``, ``data split`` and config checks start at once; training,
cross-validation and evaluation all take their samples from here, so they agree on them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from mammolens.engine.config import ExperimentConfig, SyntheticConfig, preprocess_config
from mammolens.utils.configuration import to_dict
from mammolens.utils.errors import ConfigError


def load_experiment_source(cfg: ExperimentConfig, *, require_images: bool = True, progress: bool = True):  # noqa: ANN201
    """The manifest of the configured source (generating the built-in synthetic set if asked)."""
    from mammolens.data.adapters.base import load_source

    source = cfg.data.source
    if source == "synthetic":
        source = str(synthetic_source(cfg.data.synthetic, Path(cfg.cache_dir), progress=progress))
    result = load_source(source, cfg.data.kind, require_images=require_images, **cfg.data.options)
    manifest = result.manifest
    if cfg.data.dedup:
        from mammolens.data.dedup import merge_duplicate_groups

        manifest, _ = merge_duplicate_groups(manifest, workers=cfg.workers, progress=progress)
    return manifest, result


def task_samples(cfg: ExperimentConfig, *, progress: bool = True):  # noqa: ANN201
    """(manifest of the task's samples, labels, task): one sample per finding for a lesion task."""
    from mammolens.data.tasks import TASKS, derive_task

    manifest, _ = load_experiment_source(cfg, progress=progress)
    manifest, labels = derive_task(manifest, cfg.data.task, keep_unlocated=cfg.data.keep_unlocated_lesions)
    if cfg.data.keep_unlocated_lesions and TASKS.get(cfg.data.task).unit == "lesion":
        manifest.notes.append(
            "data.keep_unlocated_lesions is on: findings without coordinates enter as whole images among "
            "lesion crops, so the kind of input can predict the label"
        )
    if cfg.data.holdout:
        manifest, labels = without_holdout(manifest, labels, cfg.data.holdout)
    return manifest, labels, TASKS.get(cfg.data.task)


def without_holdout(manifest, labels: np.ndarray, path: str):  # noqa: ANN001, ANN201
    """The task samples less the saved split's 'test' part (checked against this very manifest)."""
    from mammolens.data.splits import load_split

    split = load_split(path, manifest)
    if "test" not in split.parts or not split.parts["test"]:
        raise ConfigError(f"data.holdout: the split has no 'test' part to hold out (parts: {', '.join(split.parts)})",
                          path=path)
    keep = np.ones(len(manifest), bool)
    keep[split.indices(manifest, "test")] = False
    out = manifest.subset(keep)
    out.notes = [*manifest.notes, f"{int((~keep).sum())} held-out sample(s) of {path} ('test' part) set aside"]
    return out, labels[keep]


def synthetic_source(sc: SyntheticConfig, cache_dir: Path, *, progress: bool = True) -> Path:
    """The built-in synthetic set for these settings, generated once into the cache."""
    from mammolens.data.synthetic import generate

    key = hashlib.sha256(json.dumps(to_dict(sc), sort_keys=True).encode()).hexdigest()[:12]
    out = cache_dir / f"synthetic-{key}"
    if not (out / "synthetic.csv").exists():
        generate(out, n_per_class=sc.n_per_class, size=sc.size, seed=sc.seed, calc_fraction=sc.calc_fraction,
                 progress=progress)
    return out


def make_or_load_split(cfg: ExperimentConfig, manifest, labels, task: str):  # noqa: ANN001, ANN201
    from mammolens.data.splits import load_split, make_holdout, make_kfold, make_official

    sc = cfg.data.split
    if sc.file:
        return load_split(sc.file, manifest)
    if sc.official:
        if sc.folds:
            raise ConfigError("data.split: official (the source's train/test split) and folds do not go together")
        return make_official(manifest, labels, val=sc.val, seed=sc.seed, task=task)
    if sc.folds:
        return make_kfold(manifest, labels, k=sc.folds, seed=sc.seed, task=task)
    return make_holdout(manifest, labels, val=sc.val, test=sc.test, seed=sc.seed, task=task)


def split_parts(cfg: ExperimentConfig, split, manifest) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Row indices of train/val(/test) for this run (for k-fold: fold ``fold`` is validation)."""
    if split.kind != "kfold":
        return {part: split.indices(manifest, part) for part in split.parts}
    k = len(split.parts)
    if not 0 <= cfg.data.split.fold < k:
        raise ConfigError(f"data.split.fold: {cfg.data.split.fold} is not in 0..{k - 1}")
    train_ids, val_ids = split.fold(cfg.data.split.fold)
    index = {sid: i for i, sid in enumerate(manifest.df["sample_id"])}
    return {"train": np.array([index[s] for s in train_ids]), "val": np.array([index[s] for s in val_ids])}


def write_preview(cfg: ExperimentConfig, out: str | Path, *, n: int = 16, seed: int = 0,
                  original: bool = False, only_rois: bool = True) -> Path:
    """A PNG contact sheet of ``n`` samples with ROI outlines: preprocessed model inputs, or with
    ``original`` the untouched films (the check that annotation coordinates are read right)."""
    from mammolens.preprocess import PreprocessCache
    from mammolens.preprocess.preview import contact_sheet, originals_sheet

    manifest, _ = load_experiment_source(cfg)
    df = manifest.df
    has_roi = (df["rois"] != "[]") | (df["mask_path"] != "")
    pool = np.flatnonzero(has_roi) if only_rois and has_roi.any() else np.arange(len(df))
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist())
    subset = manifest.subset(chosen)
    if original:
        return originals_sheet(subset, out)
    cache = PreprocessCache(Path(cfg.cache_dir) / "preprocessed", preprocess_config(cfg))
    cache.build(subset, workers=cfg.workers)
    return contact_sheet(cache, subset, out, n=len(subset), seed=seed)
