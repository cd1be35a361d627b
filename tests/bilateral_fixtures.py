"""A synthetic source where every woman has a left and a right film of one view (the built-in
synthetic set has one breast per patient, so it has no pairs)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from mammolens.data.synthetic import CSV_COLUMNS, generate_array


def paired_source(out: Path, *, women: int = 12, size: int = 64, seed: int = 0, unpaired: int = 0) -> Path:
    """``women`` women with an L and an R MLO film each (every other woman with a mass on one
    side), plus ``unpaired`` women with a single film; returns the folder holding synthetic.csv."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for w in range(women + unpaired):
        sides = ("L", "R") if w < women else ("L",)
        sick = "L" if w % 2 else ""
        for side in sides:
            pathology = "malignant" if side == sick else "normal"
            image, rois = generate_array(rng, size, pathology, view="MLO", laterality=side, label=False)
            name = f"w{w:02d}-{side}.png"
            cv2.imwrite(str(out / name), np.rint(image * 65535).astype(np.uint16))
            x, y, r = rois[0] if rois else ("", "", "")
            rows.append({"file": name, "patient": f"woman-{w:02d}", "laterality": side, "view": "MLO",
                         "pathology": pathology, "lesion_type": "mass" if rois else "none",
                         "roi_x": x, "roi_y": y, "roi_r": r})
    with open(out / "synthetic.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return out
