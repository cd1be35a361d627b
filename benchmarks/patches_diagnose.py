"""Where a patch-classifier cv run loses its signal: patch level or film aggregation.

For each fold of ``mammolens cv CONFIG`` (same folds, seed and inner validation), the fold
bundle's patch head scores the sampled patches of the fold's held-out films (positives on
findings vs tissue away from them, exactly as training samples them, features from the cache):
the patch-level AUC, next to the film-level AUC of the same fold. Nothing here is chosen on it.

    MAMMOLENS_CACHE=/work/cache python benchmarks/patches_diagnose.py CONFIG CV_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch


def main(config: str, cv_dir: str) -> None:
    from mammolens.bundle.model import load_model_bundle
    from mammolens.engine.config import preprocess_config
    from mammolens.engine.crossval import fold_parts
    from mammolens.engine.config import load_config
    from mammolens.engine.patch_trainer import training_patches
    from mammolens.engine.sources import task_samples
    from mammolens.evaluate.metrics import roc_auc
    from mammolens.patches.features import PatchFeatureStore
    from mammolens.preprocess import PreprocessCache

    cfg = load_config(config)
    record = json.loads((Path(cv_dir) / "cv.json").read_text())
    manifest, labels, task = task_samples(cfg, progress=False)
    cache = PreprocessCache(Path(cfg.cache_dir) / "preprocessed", preprocess_config(cfg))
    folds = fold_parts(manifest, labels, folds=record["folds"], seed=cfg.data.split.seed,
                       inner_val=record["inner_val"], task=task.name)
    for i, parts in enumerate(folds):
        bundle = load_model_bundle(Path(cv_dir) / "repeat0" / f"fold{i}" / "bundle")
        model = bundle.model
        tuned = bundle.provenance.get("finetune_epoch") is not None  # a fold's own encoder: features in memory
        store = PatchFeatureStore(None if tuned else Path(cfg.cache_dir) / "features", model)
        held = training_patches(model, store, cache, manifest, labels, task, parts["test"], progress=False)
        with torch.inference_mode():
            p = torch.softmax(model.patch_head(torch.from_numpy(held.features)), 1).numpy()
        y = (held.labels != model.normal_class).astype(int)
        abnormal = 1.0 - p[:, model.normal_class]
        film = json.loads((Path(cv_dir) / "metrics.json").read_text())["folds"][i]["auc"]
        print(f"fold {i}: held-out patches {len(y)} ({y.sum()} on findings)  patch AUC {roc_auc(y, np.c_[1 - abnormal, abnormal]):.3f}"
              f"  film AUC {film:.3f}  chosen {bundle.provenance['chosen']}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
