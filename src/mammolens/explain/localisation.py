"""Does the heatmap land on the lesion? Three scores on marked findings, and two maps to beat.

Scores, per image, on the original film, inside the model's field of view (the pixels that
reached its input; a lesion model sees only its ROI crop):

- pointing game: the map's maximum lies inside the finding (ties: the share of the tied
  maximal pixels inside, i.e. the expected hit under random tie-breaking);
- energy inside: the share of the map's total inside the finding;
- top-k IoU: IoU of the finding with the hottest k % of the field of view.

Baselines, on the same field of view: a centre prior (a Gaussian at its centre, sigma a quarter
of its side) and the breast mask (uniform over the breast). A CAM that cannot beat them tells a
clinician nothing about where the lesion is.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from mammolens.preprocess import breast_mask

BASELINES = ("centre-prior", "breast-mask")


def finding_mask(shape: tuple[int, int], rois: Sequence[Sequence[float]] = (), mask: np.ndarray | None = None) -> np.ndarray:
    """Bool mask of the marked findings: the annotation mask when given, else the ROI circles."""
    if mask is not None:
        return np.asarray(mask, bool)
    out = np.zeros(shape, np.uint8)
    for x, y, r in rois:
        cv2.circle(out, (int(round(x)), int(round(y))), max(1, int(round(r))), 1, thickness=cv2.FILLED)
    return out.astype(bool)


def pointing_game(heatmap: np.ndarray, finding: np.ndarray, fov: np.ndarray) -> float:
    values = np.where(fov, heatmap, -np.inf)
    peak = values.max()
    if not np.isfinite(peak):
        return 0.0
    tied = values == peak
    return float((tied & finding).sum() / tied.sum())


def energy_inside(heatmap: np.ndarray, finding: np.ndarray, fov: np.ndarray) -> float:
    inside = heatmap * fov
    total = float(inside.sum())
    return float(inside[finding].sum() / total) if total > 0 else 0.0


def top_iou(heatmap: np.ndarray, finding: np.ndarray, fov: np.ndarray, top_percent: float = 5.0) -> float:
    values = heatmap[fov]
    if values.size == 0:
        return 0.0
    cut = np.percentile(values, 100.0 - top_percent)
    region = fov & (heatmap >= cut) & (heatmap > 0)
    union = (region | finding).sum()
    return float((region & finding).sum() / union) if union else 0.0


def scores(heatmap: np.ndarray, finding: np.ndarray, fov: np.ndarray, top_percent: float = 5.0) -> dict[str, float]:
    finding = finding & fov
    return {
        "pointing": pointing_game(heatmap, finding, fov),
        "energy_inside": energy_inside(heatmap, finding, fov),
        f"iou_top{top_percent:g}": top_iou(heatmap, finding, fov, top_percent),
    }


def centre_prior(fov: np.ndarray) -> np.ndarray:
    """A Gaussian at the centre of the field of view's bounding box, sigma = 1/4 of each side."""
    rows, cols = np.nonzero(fov)
    if rows.size == 0:
        return np.zeros(fov.shape, np.float32)
    cy, cx = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
    sy, sx = max(1.0, (rows.max() - rows.min() + 1) / 4), max(1.0, (cols.max() - cols.min() + 1) / 4)
    y = np.arange(fov.shape[0], dtype=np.float32)[:, None]
    x = np.arange(fov.shape[1], dtype=np.float32)[None, :]
    prior = np.exp(-0.5 * (((y - cy) / sy) ** 2 + ((x - cx) / sx) ** 2))
    return (prior * fov).astype(np.float32)


def breast_prior(image: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """The breast mask (mammolens.preprocess.breast_mask) at full size, within the field of view."""
    small, _ = breast_mask(np.asarray(image, np.float32))
    full = cv2.resize(small.astype(np.uint8), image.shape[::-1], interpolation=cv2.INTER_NEAREST).astype(bool)
    return (full & fov).astype(np.float32)


def baseline_maps(image: np.ndarray, fov: np.ndarray) -> dict[str, np.ndarray]:
    return {"centre-prior": centre_prior(fov), "breast-mask": breast_prior(image, fov)}


def summarise(rows: list[dict], metrics: Sequence[str], *, seed: int = 0, n_boot: int = 1000) -> list[dict]:
    """Mean of each metric per (model, method) with a 95 % bootstrap interval over patient groups."""
    rng = np.random.default_rng(seed)
    keys = sorted({(r["model"], r["method"]) for r in rows}, key=lambda k: (k[0], k[1] in BASELINES, k[1]))
    table = []
    for model, method in keys:
        part = [r for r in rows if r["model"] == model and r["method"] == method]
        groups = sorted({r["group"] for r in part})
        index = {g: i for i, g in enumerate(groups)}
        entry: dict = {"model": model, "method": method, "images": len(part), "groups": len(groups)}
        for metric in metrics:
            sums = np.zeros(len(groups))
            counts = np.zeros(len(groups))
            for r in part:
                sums[index[r["group"]]] += r[metric]
                counts[index[r["group"]]] += 1
            draws = rng.integers(0, len(groups), size=(n_boot, len(groups)))
            boot = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
            entry[metric] = float(sums.sum() / counts.sum())
            entry[f"{metric}_lo"], entry[f"{metric}_hi"] = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
        table.append(entry)
    return table
