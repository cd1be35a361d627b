"""One experiment, end to end: source -> manifest -> task -> grouped split -> preprocessing cache ->
model -> Lightning training -> evaluation on the held-out parts -> bundle.

This is the only module that knows every room; each room stays ignorant of the others and speaks
through the Manifest, the Split, the PreprocessCache, the model registry and the Bundle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mammolens import atomic
from mammolens.configuration import apply_overrides, from_dict, load_yaml, to_dict
from mammolens.errors import ConfigError

BUILTIN_CONFIGS = Path(__file__).parent / "configs"


@dataclass
class SyntheticConfig:
    n_per_class: int = 60
    size: int = 256
    seed: int = 0
    calc_fraction: float = 0.3  # abnormal patients with a calcification cluster instead of a mass


@dataclass
class SplitConfig:
    val: float = 0.2
    test: float = 0.2
    folds: int = 0  # 0: hold-out train/val/test; k >= 2: k-fold, this run trains on fold `fold`
    fold: int = 0
    seed: int = 0
    file: str | None = None  # reuse a saved split (checked against the manifest)


@dataclass
class DataConfig:
    source: str = "synthetic"  # a path, or "synthetic" for the built-in generator
    kind: str | None = None  # adapter name; detected from the path when omitted
    options: dict[str, Any] = field(default_factory=dict)  # adapter options (label_map, images_root...)
    task: str = "benign-malignant"
    dedup: bool = False  # merge near-duplicate images into one split group
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    split: SplitConfig = field(default_factory=SplitConfig)


@dataclass
class ModelConfig:
    name: str = "hybrid"
    pretrained: str | None = None  # None, "imagenet", or a weights file
    options: dict[str, Any] = field(default_factory=dict)  # create_model kwargs: hidden, dropout, backbones...


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: dict[str, Any] = field(default_factory=dict)  # PreprocessConfig fields; {} = default pipeline
    image_size: int = 224  # used by the default pipeline when `preprocess` is empty
    roi_crop: bool = False  # default pipeline crops around the lesion annotation
    model: ModelConfig = field(default_factory=ModelConfig)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    cache_dir: str = field(default_factory=lambda: os.environ.get("MAMMOLENS_CACHE", ".cache/mammolens"))
    workers: int | None = None  # preprocessing worker processes (default: one per core)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """An experiment config from YAML (a path, or the name of a built-in config) plus overrides."""
    data = load_yaml(resolve_config_path(path)) if path is not None else {}
    apply_overrides(data, overrides or [])
    cfg = from_dict(ExperimentConfig, data)
    # Validate the room-owned sections and the model name now, so a typo fails before any work is done.
    from mammolens.models import list_models

    if cfg.model.name not in list_models():
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}; known: {', '.join(list_models())}")
    _preprocess_config(cfg)
    _train_config(cfg)
    return cfg


def resolve_config_path(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        return p
    builtin = BUILTIN_CONFIGS / f"{path}.yaml"
    if builtin.exists():
        return builtin
    known = ", ".join(sorted(q.stem for q in BUILTIN_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"config file not found (built-in configs: {known})", path=path)


def _preprocess_config(cfg: ExperimentConfig):
    from mammolens.preprocess import PreprocessConfig, default_config

    if not cfg.preprocess:
        return default_config(size=cfg.image_size, roi=cfg.roi_crop)
    return from_dict(PreprocessConfig, cfg.preprocess, "preprocess")


def _train_config(cfg: ExperimentConfig):
    from mammolens.train.config import TrainConfig

    return from_dict(TrainConfig, cfg.train, "train")


def load_experiment_source(cfg: ExperimentConfig, *, require_images: bool = True, progress: bool = True):
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


def synthetic_source(sc: SyntheticConfig, cache_dir: Path, *, progress: bool = True) -> Path:
    """The built-in synthetic set for these settings, generated once into the cache."""
    from mammolens.data.synthetic import generate

    key = hashlib.sha256(json.dumps(to_dict(sc), sort_keys=True).encode()).hexdigest()[:12]
    out = cache_dir / f"synthetic-{key}"
    if not (out / "synthetic.csv").exists():
        generate(out, n_per_class=sc.n_per_class, size=sc.size, seed=sc.seed, calc_fraction=sc.calc_fraction,
                 progress=progress)
    return out


def make_or_load_split(cfg: ExperimentConfig, manifest, labels, task: str):
    from mammolens.data.splits import load_split, make_holdout, make_kfold

    sc = cfg.data.split
    if sc.file:
        return load_split(sc.file, manifest)
    if sc.folds:
        return make_kfold(manifest, labels, k=sc.folds, seed=sc.seed, task=task)
    return make_holdout(manifest, labels, val=sc.val, test=sc.test, seed=sc.seed, task=task)


def split_parts(cfg: ExperimentConfig, split, manifest) -> dict[str, np.ndarray]:
    """Row indices of train/val(/test) for this run (for k-fold: fold ``fold`` is validation)."""
    if split.kind != "kfold":
        return {part: split.indices(manifest, part) for part in split.parts}
    k = len(split.parts)
    if not 0 <= cfg.data.split.fold < k:
        raise ConfigError(f"data.split.fold: {cfg.data.split.fold} is not in 0..{k - 1}")
    train_ids, val_ids = split.fold(cfg.data.split.fold)
    index = {sid: i for i, sid in enumerate(manifest.df["sample_id"])}
    return {"train": np.array([index[s] for s in train_ids]), "val": np.array([index[s] for s in val_ids])}


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path, *, resume: bool = False, fresh: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Train and evaluate one configured model; returns the summary written to ``summary.json``.

    An earlier run in ``out_dir`` is continued with ``resume``, replaced with ``fresh``, and
    otherwise refused (by ``fit``), so no result is overwritten by accident.
    """
    from mammolens.data.splits import save_split
    from mammolens.data.tasks import TASKS, derive_task
    from mammolens.models import create_model
    from mammolens.preprocess import Pipeline, PreprocessCache
    from mammolens.train import ArrayDataModule, Bundle, fit, num_outputs, save_bundle

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pre_cfg = _preprocess_config(cfg)
    train_cfg = _train_config(cfg)

    manifest, _ = load_experiment_source(cfg, progress=progress)
    task = TASKS.get(cfg.data.task)
    manifest, labels = derive_task(manifest, cfg.data.task)
    split = make_or_load_split(cfg, manifest, labels, cfg.data.task)
    save_split(split, out_dir / "split.json")
    manifest.save(out_dir / "manifest.csv")
    parts = split_parts(cfg, split, manifest)

    cache = PreprocessCache(Path(cfg.cache_dir) / "preprocessed", pre_cfg)
    build = cache.build(manifest, workers=cfg.workers, progress=progress)

    import torch

    torch.manual_seed(train_cfg.seed)  # initial weights are part of what a seed reproduces
    model = create_model(
        cfg.model.name,
        num_outputs(len(task.classes), train_cfg.loss),
        pretrained=cfg.model.pretrained,
        in_chans=1,
        **cfg.model.options,
    )
    sample_ids = manifest.df["sample_id"].tolist()
    dm = ArrayDataModule.from_config(
        cache.load, sample_ids, labels, {k: v.tolist() for k, v in parts.items()}, train_cfg,
        num_classes=len(task.classes), data_key=cache.content_key(sample_ids),
    )
    if fresh and not resume:
        shutil.rmtree(out_dir / "training", ignore_errors=True)
    result = fit(model, dm, train_cfg, out_dir / "training", resume=resume,
                 feature_cache_dir=Path(cfg.cache_dir) / "features")

    # Score the held-out parts through the same Bundle code path that inference uses.
    trained = Bundle(path=out_dir / "bundle", model=result.model, classes=list(task.classes), task=task.name,
                     preprocess=to_dict(pre_cfg), normalisation=result.normalisation, threshold=0.5,
                     temperature=1.0, metrics={}, provenance={}, config={})
    metrics = {
        part: _evaluate_part(trained, [sample_ids[i] for i in idx], cache.load, labels[idx])
        for part, idx in parts.items() if part != "train" and len(idx)
    }
    provenance = {
        "manifest_hash": manifest.content_hash(),
        "split_file_hash": _file_hash(out_dir / "split.json"),
        "split": {"kind": split.kind, "seed": split.seed, "sizes": {p: int(len(v)) for p, v in parts.items()}},
        "source": cfg.data.source,
        "preprocess_hash": Pipeline(pre_cfg).config_hash(),
        "pretrained_from": dict(getattr(model, "pretrained_from", {}) or {}),
    }
    bundle_dir = save_bundle(
        out_dir / "bundle", result.model,
        classes=list(task.classes), task=task.name, preprocess=to_dict(pre_cfg),
        normalisation=result.normalisation, threshold=0.5, temperature=1.0,
        metrics=metrics, provenance=provenance, config=to_dict(cfg),
    )
    summary = {
        "name": cfg.name,
        "task": task.name,
        "classes": list(task.classes),
        "model": cfg.model.name,
        "samples": {p: int(len(v)) for p, v in parts.items()},
        "class_counts": {p: np.bincount(labels[v], minlength=len(task.classes)).tolist() for p, v in parts.items()},
        "groups": int(manifest.df["group"].nunique()),
        "preprocess": build.summary(),
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        "stopped_early": result.stopped_early,
        "history": result.history,
        "metrics": metrics,
        "bundle": str(bundle_dir),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    atomic.write_json(out_dir / "summary.json", summary)
    return summary


def _evaluate_part(bundle, sample_ids: list[str], load, y: np.ndarray, batch: int = 32) -> dict[str, float]:  # noqa: ANN001
    """Threshold-free AUC plus accuracy (and, for two classes, sensitivity/specificity) at 0.5 / argmax.

    Choosing the operating point on validation data belongs to the evaluation room; this is the
    training run's own report.
    """
    from sklearn.metrics import roc_auc_score

    proba = np.concatenate([
        bundle.predict_proba(np.stack([load(s) for s in sample_ids[i:i + batch]]))
        for i in range(0, len(sample_ids), batch)
    ])
    n_classes = proba.shape[1]
    if len(np.unique(y)) < 2:
        auc = float("nan")
    elif n_classes == 2:
        auc = float(roc_auc_score(y, proba[:, 1]))
    else:
        auc = float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=list(range(n_classes))))
    pred = (proba[:, 1] >= 0.5).astype(int) if n_classes == 2 else proba.argmax(1)
    out = {"auc": auc, "accuracy": float((pred == y).mean()), "n": int(len(y))}
    if n_classes == 2:
        pos, neg = y == 1, y == 0
        out["sensitivity@0.5"] = float((pred[pos] == 1).mean()) if pos.any() else float("nan")
        out["specificity@0.5"] = float((pred[neg] == 0).mean()) if neg.any() else float("nan")
    return out


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]



def write_preview(cfg: ExperimentConfig, out: str | Path, *, n: int = 16, seed: int = 0,
                  original: bool = False, only_rois: bool = True) -> list[Path]:
    """A contact sheet of ``n`` preprocessed samples with ROI outlines (``original``: one overlay per
    sample on the untouched image instead, the check that annotation coordinates are read right)."""
    from mammolens.preprocess import PreprocessCache, sample_from_row
    from mammolens.preprocess.preview import contact_sheet, overlay_original
    from mammolens.preprocess.sample import default_loader

    manifest, _ = load_experiment_source(cfg)
    df = manifest.df
    has_roi = (df["rois"] != "[]") | (df["mask_path"] != "")
    pool = np.flatnonzero(has_roi) if only_rois and has_roi.any() else np.arange(len(df))
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist())
    subset = manifest.subset(chosen)
    out = Path(out)
    if original:
        paths = []
        for i, row in enumerate(subset.df.to_dict("records")):
            # Mask-annotated rows (CBIS-DDSM) carry their ROI in the mask file, not in `rois`.
            rois = sample_from_row(row, default_loader)[0].rois if row["mask_path"] else subset.rois(i)
            target = out.with_name(f"{out.stem}-{row['sample_id']}{out.suffix or '.png'}")
            paths.append(overlay_original(row["path"], rois, target, frame=None if row["frame"] < 0 else row["frame"],
                                          title=f"{row['sample_id']} ({row['pathology'] or '?'})"))
        return paths
    cache = PreprocessCache(Path(cfg.cache_dir) / "preprocessed", _preprocess_config(cfg))
    cache.build(subset, workers=cfg.workers)
    return [contact_sheet(cache, subset, out, n=len(subset), seed=seed)]
