"""Training patches of one film: positives centred (with jitter) on its findings, labelled with the
finding's own class; negatives of breast tissue from normal films and from abnormal films away from
every finding (never touching a finding's circle).

Each film draws from its own generator (seed, sample id), so a film gives the same patches whichever
part or fold it is in, and their features are computed once.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mammolens.patches.config import PatchFinetune
from mammolens.patches.geometry import tissue_fraction, touches_circle
from mammolens.utils.errors import ConfigError

NORMAL_NAMES = ("normal", "NORM")


@dataclass
class PatchTraining:
    """``model.options.training``: which patches a training film gives, and the regularisation
    strengths (inverse, sklearn's C) the patch classifier tries on the inner validation part."""

    positives_per_finding: int = 4
    negatives_per_film: int = 4
    jitter: float = 0.25  # a positive's centre moves up to this fraction of patch_size from the finding's
    seed: int = 0
    tries: int = 200  # random draws per film before giving up on more negatives
    c_values: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0])
    # After a first fit, each training film's highest-scoring windows that touch no finding (normal
    # films, and abnormal films whose findings are all located) join the negatives, and the classifier
    # is fitted again: the false alarms that a film's max would pick are what it must learn to reject.
    hard_negatives_per_film: int = 0
    # Fine-tune the encoder and patch head on these patches first (``finetune.py``); absent: frozen.
    finetune: PatchFinetune | None = None

    def __post_init__(self) -> None:
        for name in ("positives_per_finding", "negatives_per_film", "tries", "hard_negatives_per_film"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"model.options.training.{name}: must be an integer >= 0, got {value!r}")
        if not 0.0 <= self.jitter <= 0.5:
            raise ConfigError(f"model.options.training.jitter: must lie in [0, 0.5] (of patch_size), got {self.jitter}")
        if not self.c_values or any(not (isinstance(c, (int, float)) and c > 0) for c in self.c_values):
            raise ConfigError(f"model.options.training.c_values: need a list of positive numbers, got {self.c_values!r}")


@dataclass
class FilmFindings:
    """A film's findings in preprocessed pixels: located circles with their labels, and whether every
    finding is located (only then can tissue away from them be called normal)."""

    circles: list[tuple[float, float, float]]
    labels: list[int]
    complete: bool


def normal_index(classes: Sequence[str]) -> int:
    """The class a patch of normal tissue takes (``normal`` or MIAS' ``NORM``)."""
    for i, c in enumerate(classes):
        if c in NORMAL_NAMES:
            return i
    raise ConfigError(f"a patch-classifier needs a film task with a normal class ({' or '.join(NORMAL_NAMES)}); "
                      f"this task has {', '.join(classes)}")


def film_findings(row: Mapping[str, Any], rois: Sequence[Sequence[float]], label_of, film_label: int,
                  normal: int) -> FilmFindings:
    """Pair the film's preprocessed ROI circles with their findings' labels.

    ``rois`` are in the order of the row's ``rois`` column: a MIAS row lists its located findings in
    ``meta["findings"]`` in that order, each labelled by the task's ``label_of`` on the finding (its
    own severity / class). A row without a findings list (a synthetic film) gives each circle the
    film's label.
    """
    meta = json.loads(row.get("meta") or "{}")
    findings = meta.get("findings")
    circles = [tuple(float(v) for v in r) for r in rois]
    if not findings:
        abnormal = film_label != normal
        return FilmFindings(circles if abnormal else [], [film_label] * len(circles) if abnormal else [],
                            complete=(not abnormal) or bool(circles))
    real = [f for f in findings if f.get("severity") is not None]
    located = [f for f in real if f.get("roi") is not None]
    if len(located) != len(circles):
        raise ConfigError(f"sample {row.get('sample_id')!r}: {len(circles)} ROI circles for {len(located)} located findings")
    labels = []
    for f in located:
        y = label_of({**row, "pathology": f["severity"], "abnormality": f["class"], "lesion_type": f.get("lesion_type", "")})
        labels.append(film_label if y is None else int(y))
    return FilmFindings(circles, labels, complete=len(located) == len(real))


def sample_film(film: np.ndarray, findings: FilmFindings, sample_id: str, patch_size: int, normal: int,
                cfg: PatchTraining, min_tissue: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) top-left (row, col) positions and (N,) labels of this film's training patches."""
    height, width = film.shape
    p = patch_size
    rng = np.random.default_rng([cfg.seed, zlib.crc32(sample_id.encode())])
    positions, labels = [], []
    for (cx, cy, _), label in zip(findings.circles, findings.labels):
        for _ in range(cfg.positives_per_finding):
            dx, dy = rng.uniform(-cfg.jitter, cfg.jitter, size=2) * p
            top = int(np.clip(round(cy + dy - p / 2), 0, height - p))
            left = int(np.clip(round(cx + dx - p / 2), 0, width - p))
            positions.append((top, left))
            labels.append(label)
    if findings.complete and cfg.negatives_per_film:
        drawn = np.stack([rng.integers(0, height - p + 1, cfg.tries), rng.integers(0, width - p + 1, cfg.tries)], 1)
        fraction = tissue_fraction(film, drawn, p)
        taken = 0
        for (top, left), share in zip(drawn.tolist(), fraction):
            if taken == cfg.negatives_per_film:
                break
            if share < min_tissue or any(touches_circle(top, left, p, c) for c in findings.circles):
                continue
            positions.append((top, left))
            labels.append(normal)
            taken += 1
    return np.array(positions, dtype=np.int64).reshape(-1, 2), np.array(labels, dtype=np.int64)
