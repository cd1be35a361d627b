"""Contact sheet of a patch-classifier cv run: held-out films with their patch score maps.

    python -m mammolens.engine.patch_sheet CV_DIR --out sheet.png [--abnormal 4 --normal 4 --seed 0]

Each film is scored by the fold bundle that held it out (``repeat0/fold<k>/bundle``), so every map
is an out-of-fold map. Shown: the preprocessed film, the abnormal score (1 - P(normal)) of every
window as a heat overlay (a pixel takes its hottest covering window), and the radiologists' circles
in green; each film's line (printed, and in its title) gives the score of the window holding each
circle's centre and how many windows are hotter. Abnormal films are drawn among those with located findings; which films, is the seed's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def make_sheet(cv_dir: str | Path, out: str | Path, *, abnormal: int = 4, normal: int = 4, seed: int = 0) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from mammolens.bundle.model import load_model_bundle
    from mammolens.engine.config import ExperimentConfig
    from mammolens.evaluate.predictions import read_predictions
    from mammolens.patches.geometry import map_to_pixels
    from mammolens.preprocess import PreprocessCache
    from mammolens.utils.atomic import atomic_path
    from mammolens.utils.configuration import from_dict

    cv_dir = Path(cv_dir)
    cfg = from_dict(ExperimentConfig, json.loads((cv_dir / "cv.json").read_text())["config"])
    df, classes = read_predictions(cv_dir / "predictions.csv")
    bundles: dict[int, object] = {}
    first = load_model_bundle(cv_dir / "repeat0" / "fold0" / "bundle")
    cache = PreprocessCache(Path(cfg.cache_dir) / "preprocessed", first.preprocess)
    normal_class = int(first.model.normal_class)
    has_roi = np.array([bool(cache.load_rois(s)) for s in df["sample_id"]])
    is_normal = df["label_index"].to_numpy() == normal_class
    rng = np.random.default_rng(seed)
    picks = [*rng.choice(np.flatnonzero(~is_normal & has_roi), abnormal, replace=False),
             *rng.choice(np.flatnonzero(is_normal), normal, replace=False)]
    fig, axes = plt.subplots(2, (len(picks) + 1) // 2, figsize=(3.2 * ((len(picks) + 1) // 2), 8.0))
    for ax, i in zip(axes.flat, picks):
        row = df.iloc[int(i)]
        fold = int(row["fold"])
        if fold not in bundles:
            bundles[fold] = load_model_bundle(cv_dir / "repeat0" / f"fold{fold}" / "bundle")
        bundle = bundles[fold]
        film = cache.load(row["sample_id"])
        with torch.inference_mode():
            maps = bundle.model.score_map(bundle.to_input(film[None]))[0].numpy()
        heat = map_to_pixels(1.0 - maps[normal_class], bundle.model.grid(*film.shape), bundle.model.patch_size, film.shape)
        ax.imshow(film, cmap="gray", vmin=0, vmax=1)
        ax.imshow(np.ma.masked_less(heat, 0.05), cmap="jet", vmin=0, vmax=1, alpha=0.45)
        for x, y, r in cache.load_rois(row["sample_id"]):
            ax.add_patch(plt.Circle((x, y), r, fill=False, color="lime", linewidth=1.5))
        p_abn = 1.0 - float(row[f"p_{classes[normal_class]}"])
        scores = 1.0 - maps[normal_class]
        ys, xs = bundle.model.grid(*film.shape)
        where = [f"{scores[_last(ys, y), _last(xs, x)]:.2f} ({int((scores > scores[_last(ys, y), _last(xs, x)]).sum())} hotter)"
                 for x, y, _ in cache.load_rois(row["sample_id"])]
        line = (f"{row['sample_id']}: {row['label']}, fold {fold}, P(abnormal) {p_abn:.2f}, hottest window {scores.max():.2f}"
                + (f", window at each circle's centre {', '.join(where)}" if where else ""))
        print(line)
        ax.set_title(f"{row['sample_id'].removeprefix('mias-')} ({row['label']}, fold {fold})\n"
                     f"P(abnormal) {p_abn:.2f}, hottest window {scores.max():.2f}"
                     + (f"\ncircle's window {where[0]}" if where else ""), fontsize=8)
        ax.axis("off")
    for ax in list(axes.flat)[len(picks):]:
        ax.axis("off")
    fig.suptitle(f"{cfg.name}: out-of-fold patch score maps (1 - P(normal)); green: radiologists' circles", fontsize=9)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    return out


def _last(starts: list[int], value: float) -> int:
    """Index of the last window start at or before ``value`` (the window holding that pixel)."""
    return max(k for k, start in enumerate(starts) if start <= value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cv_dir")
    parser.add_argument("--out", required=True)
    parser.add_argument("--abnormal", type=int, default=4)
    parser.add_argument("--normal", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_sheet(args.cv_dir, args.out, abnormal=args.abnormal, normal=args.normal, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
