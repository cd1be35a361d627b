"""Which samples and women a bundle learned from, recorded in the bundle without naming them.

A bundle's provenance keeps, for the parts it was fitted on (``train``; ``val``, which picked its
epoch, temperature and threshold), the sorted fingerprints of their sample ids and patient groups:
the first 16 hex digits of each one's SHA-256. That says whether another dataset holds a film or
a woman the bundle saw, without a bundle that travels listing a hospital's or a dataset's ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

FITTED_ON = "fitted_on"  # the provenance key of the parts it learned from
FITTED_PARTS = ("train", "val")  # parts whose samples the bundle learned from or was tuned on
HELD_OUT = "held_out"  # the provenance key of its test part: what nothing may be tuned on, int8 ranges included


def fingerprints(values: Iterable[Any]) -> list[str]:
    """Sorted, de-duplicated fingerprints of ``values`` (as strings)."""
    return sorted({hashlib.sha256(str(v).encode("utf-8")).hexdigest()[:16] for v in values})


def fitted_on_record(manifest: Any, parts: Mapping[str, np.ndarray],
                     names: tuple[str, ...] = FITTED_PARTS) -> dict[str, dict[str, list[str]]]:
    """``{part: {"samples": [...], "groups": [...]}}`` for the parts ``names`` of ``parts`` (row indices)."""
    df = manifest.df
    out = {}
    for part in names:
        rows = np.asarray(parts.get(part, []), dtype=np.int64)
        out[part] = {"samples": fingerprints(df["sample_id"].to_numpy()[rows]),
                     "groups": fingerprints(df["group"].to_numpy()[rows])}  # fmt: skip
    return out


def overlap(record: Mapping[str, Any], sample_ids: Iterable[Any], groups: Iterable[Any]) -> tuple[set[str], set[str]]:
    """(sample ids, groups) among the given ones that a ``fitted_on_record`` holds."""
    seen_samples = {f for part in record.values() for f in part.get("samples", [])}
    seen_groups = {f for part in record.values() for f in part.get("groups", [])}
    samples = {str(s) for s in sample_ids if fingerprints([s])[0] in seen_samples}
    women = {str(g) for g in groups if fingerprints([g])[0] in seen_groups}
    return samples, women
