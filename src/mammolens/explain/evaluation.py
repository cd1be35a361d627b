"""Localisation of a bundle's heatmaps on every marked finding of a source, against the baselines.

Each image is preprocessed once (with its geometry), every method runs on that input, and every
map is scored on the original film inside the model's field of view (see ``localisation``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mammolens.bundle.model import Bundle
from mammolens.explain.api import explain_preprocessed, preprocess_for, sample_descriptors
from mammolens.explain.localisation import baseline_maps, finding_mask, scores
from mammolens.explain.overlay import overlay_rgb
from mammolens.preprocess.sample import default_loader, sample_from_row
from mammolens.utils.errors import DataError

DEFAULT_METHODS = ("gradcam", "gradcam++", "eigencam", "occlusion")


@dataclass
class Evaluated:
    rows: list[dict] = field(default_factory=list)  # one per (image, method), baselines included
    tiles: list[tuple[np.ndarray, str]] = field(default_factory=list)  # (overlay RGB, caption) for the page
    skipped: list[str] = field(default_factory=list)  # "sample_id: why"


def evaluate_localisation(
    bundle: Bundle,
    records: Sequence[dict],
    *,
    model_name: str,
    methods: Sequence[str] = DEFAULT_METHODS,
    top_percent: float = 5.0,
    overlay_method: str | None = None,
    overlay_limit: int = 12,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluated:
    """Score every method (and both baselines) on each manifest record that has a marked finding."""
    result = Evaluated()
    overlay_method = overlay_method or methods[0]
    for i, row in enumerate(records):
        if progress:
            progress(i, len(records))
        sample, _ = sample_from_row(row, default_loader)
        if not sample.rois and sample.mask is None:
            continue
        try:
            pre, geometry = preprocess_for(bundle, sample.pixels, sample.rois, sample.laterality, sample.pixel_mm)
        except DataError as exc:
            result.skipped.append(f"{row['sample_id']}: {exc}")
            continue
        fov = geometry.field_of_view()
        finding = finding_mask(sample.pixels.shape, sample.rois, sample.mask)
        if not (finding & fov).any():
            result.skipped.append(f"{row['sample_id']}: the finding lies outside the model's field of view")
            continue
        maps: dict[str, np.ndarray] = {}
        for method in methods:
            explanation = explain_preprocessed(bundle, pre.pixels, geometry, method=method,
                                               descriptors=sample_descriptors(bundle, pre))
            maps[method] = explanation.heatmap
            if method == overlay_method and len(result.tiles) < overlay_limit:
                rgb = overlay_rgb(sample.pixels, explanation.heatmap, contour_top=top_percent, rois=sample.rois,
                                  outline=sample.mask)
                p = explanation.probabilities[explanation.target]
                caption = f"{row['sample_id']} {row.get('pathology', '')} P({explanation.target})={p:.2f}"
                result.tiles.append((rgb, caption))
        maps.update(baseline_maps(sample.pixels, fov))
        for method, heatmap in maps.items():
            result.rows.append({
                "model": model_name, "method": method, "sample_id": row["sample_id"],
                "group": row.get("group", row["sample_id"]), "pathology": row.get("pathology", ""),
                **scores(heatmap, finding, fov, top_percent),
            })  # fmt: skip
    return result


def evaluate_out_of_fold(
    folds: Mapping[Path, set[str]],
    records: Sequence[dict],
    *,
    model_name: str,
    methods: Sequence[str] = DEFAULT_METHODS,
    top_percent: float = 5.0,
    overlay_limit: int = 12,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluated:
    """``evaluate_localisation`` with each record scored by the cv fold bundle that held it out
    (``crossval.held_out_bundles``): maps of models that never trained on the film. A record no
    fold held out is skipped, said so, never scored in-sample."""
    from mammolens.bundle.model import load_model_bundle

    result = Evaluated()
    held = set().union(*folds.values())
    result.skipped = [f"{r['sample_id']}: in no held-out fold of this cv run" for r in records if r["sample_id"] not in held]
    done = 0
    for path, ids in folds.items():
        part = [r for r in records if r["sample_id"] in ids]
        if not part:
            continue
        step = (lambda i, n, start=done: progress(start + i, len(records))) if progress else None
        fold = evaluate_localisation(load_model_bundle(path), part, model_name=model_name, methods=methods,
                                     top_percent=top_percent, overlay_limit=overlay_limit - len(result.tiles),
                                     progress=step)
        result.rows += fold.rows
        result.tiles += fold.tiles
        result.skipped += fold.skipped
        done += len(part)
    return result
