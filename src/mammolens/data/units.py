"""Lesions or films: the unit a task classifies.

A film-level source row (MIAS) lists its findings in ``meta["findings"]``; a lesion task needs
one sample per finding, each with its own ROI and severity, never one crop covering all of a
film's circles under one label. ``lesion_rows`` expands such rows; rows without a findings list
(a CBIS-DDSM abnormality, a class-folder image, a synthetic lesion) already are one sample each.

A finding without coordinates (MIAS mdb059, and the spread calcifications of mdb216/233/245), or a
CBIS-DDSM lesion on a full film whose ROI mask file is absent, is left out of lesion tasks by default: entered as a whole film among lesion crops, the kind of
input alone would predict its label (three of those four are malignant).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mammolens.data.manifest import Manifest

@dataclass
class Units:
    """The samples of a task at its unit, and what was left out on the way (for reports)."""

    manifest: Manifest
    left_out: list[str] = field(default_factory=list)  # "mias-mdb059-f1 (CIRC benign, no coordinates)"


def lesion_rows(manifest: Manifest, *, keep_unlocated: bool = False) -> Units:
    """One row per finding. ``keep_unlocated`` keeps findings without coordinates (ROI-less).

    A finding is ``{"class", "severity" (benign/malignant, None for a normal row), "lesion_type",
    "roi" ([x, y, r] in the film's top-left pixels, or None)}``; the lesion row inherits the
    film's path, group, view and laterality.
    """
    records: list[dict[str, Any]] = []
    left_out: list[str] = []
    for row in manifest.df.to_dict("records"):
        meta = json.loads(row["meta"])
        findings = meta.get("findings")
        if not findings:
            unlocated = meta.get("full_film") and row["rois"] == "[]" and not row["mask_path"]
            if unlocated and not keep_unlocated:  # a CBIS-DDSM lesion whose ROI mask file is absent
                left_out.append(f"{row['sample_id']} ({row['pathology']}, no ROI mask file)")
            else:
                records.append(row)
            continue
        for k, finding in enumerate(findings, start=1):
            if finding.get("severity") is None:  # a NORM row: no lesion
                continue
            sample_id = f"{row['sample_id']}-f{k}"
            roi = finding.get("roi")
            if roi is None and not keep_unlocated:
                left_out.append(f"{sample_id} ({finding['class']} {finding['severity']}, no coordinates)")
                continue
            extra = {key: value for key, value in meta.items() if key != "findings"}
            records.append({
                **row,
                "sample_id": sample_id,
                "pathology": finding["severity"],
                "abnormality": finding["class"],
                "lesion_type": finding.get("lesion_type", ""),
                "rois": json.dumps([] if roi is None else [roi]),
                "meta": json.dumps({**extra, "film": row["sample_id"], "finding": k, **finding}),
            })
    out = Manifest.from_records(records, name=manifest.name) if records else manifest.subset([])
    return Units(out, left_out)
