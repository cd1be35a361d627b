"""The cv ensemble's operating point fitted two ways, read on the women set aside by ``cv --ensemble-part``.

A cv run made with ``--ensemble-part F`` holds women no fold model saw. Its ensemble's temperature and
threshold were fitted there, on the ensemble's own (mean) output. The approximation ``cv`` uses without
the part (the single fold models' pooled out-of-fold output) is fitted again here from the run's
``predictions.csv``; both are then applied to the ensemble's output on the set-aside women: the
approximation's figures there are honest (it never saw them), the exact one's are its own fitting data.

    python benchmarks/cv_ensemble_operating_point.py CONFIG CV_RUN [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from mammolens.bundle import load_bundle
    from mammolens.engine.config import load_config
    from mammolens.engine.sources import task_samples
    from mammolens.engine.trainers import choose_operating_point
    from mammolens.evaluate.calibration import apply_temperature
    from mammolens.evaluate.metrics import roc_auc
    from mammolens.evaluate.predict import predict_manifest
    from mammolens.evaluate.predictions import proba_of, read_predictions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("cv_run", type=Path)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    cfg = load_config(args.config)
    if args.cache_dir:
        cfg.cache_dir = args.cache_dir
    reserved = set(json.loads((args.cv_run / "cv.json").read_text())["ensemble_part_samples"])
    if not reserved:
        raise SystemExit("this cv run set no women aside (made without --ensemble-part)")
    manifest, labels, task = task_samples(cfg, progress=False)
    rows = [i for i, s in enumerate(manifest.df["sample_id"]) if s in reserved]
    ensemble = load_bundle(args.cv_run / "ensemble")
    raw = np.mean([predict_manifest(m, manifest.subset(rows), cfg.cache_dir, progress=False)
                   for m in ensemble.members], axis=0)  # the ensemble's output at temperature 1
    y = labels[rows]
    oof, classes = read_predictions(args.cv_run / "predictions.csv")
    approx = choose_operating_point(cfg.operating_point, oof["label_index"].to_numpy(), proba_of(oof, classes))
    print(f"{cfg.name}: {len(rows)} set-aside samples, ensemble AUC there {roc_auc(y, raw):.3f}")
    print("operating point | temperature | threshold | sensitivity | specificity | NLL (set-aside)")
    for name, t, thr in (("exact (fitted on the set-aside output)", ensemble.temperature, ensemble.threshold),
                         ("approximate (pooled single-fold OOF)", approx.temperature, approx.threshold)):
        p = apply_temperature(raw, t)
        pred = (p[:, 1] >= thr).astype(int)
        sens = float((pred[y == 1] == 1).mean()) if (y == 1).any() else float("nan")
        spec = float((pred[y == 0] == 0).mean()) if (y == 0).any() else float("nan")
        nll = float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1))))
        print(f"{name} | {t:.3f} | {thr:.3f} | {sens:.3f} | {spec:.3f} | {nll:.3f}")


if __name__ == "__main__":
    main()
