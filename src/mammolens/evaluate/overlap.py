"""Is this dataset the bundle's own training data? Said loudly before any figure is read as a test.

``evaluate`` and ``explain-eval`` score whatever source they are given; a bundle (or every member
of an ensemble) records the samples and patient groups it was fitted on (``data.fingerprints``),
so scoring them again is caught here: a warning on the terminal and in the report, or a refusal
with ``--strict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mammolens.data.fingerprints import FITTED_ON, overlap
from mammolens.utils.errors import ConfigError


def training_overlap(bundle: Any, sample_ids: Sequence[Any], groups: Sequence[Any]) -> list[str]:
    """Warning lines (none when the data is new to every model in ``bundle``)."""
    from mammolens.evaluate.predict import leaf_bundles

    leaves = leaf_bundles(bundle)
    unknown = sum(FITTED_ON not in (leaf.provenance or {}) for leaf in leaves)
    lines = []
    if unknown:
        which = "the bundle does" if len(leaves) == 1 else f"{unknown} of its {len(leaves)} members do"
        lines.append(f"{which} not record the samples it was fitted on (made before mammolens recorded them): "
                     "whether this data includes its training films is unknown")  # fmt: skip
    hits = [overlap(leaf.provenance[FITTED_ON], sample_ids, groups) for leaf in leaves if FITTED_ON in (leaf.provenance or {})]
    samples = set().union(*(s for s, _ in hits)) if hits else set()
    women = set().union(*(g for _, g in hits)) if hits else set()
    if samples or women:
        members = sum(bool(s or g) for s, g in hits)
        by = "the bundle" if len(leaves) == 1 else f"{members} of its {len(leaves)} members"
        lines.append(f"{len(samples)} of {len(sample_ids)} samples and {len(women)} of {len(set(map(str, groups)))} "
                     f"women here were in the training or validation data of {by}: figures on them are in-sample, "
                     "not a test")  # fmt: skip
    return lines


def refuse_if_strict(lines: Sequence[str], strict: bool) -> None:
    """``--strict``: the first warning becomes the one-line error."""
    if strict and lines:
        raise ConfigError(f"{lines[0]} (--strict refuses; score data the bundle never saw)")
