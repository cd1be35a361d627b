"""Patch sampling: negatives never touch a finding, positives sit on their finding with its own label,
and only the training part's films give patches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mammolens.data.tasks import TASKS
from mammolens.patches.geometry import grid_positions, tissue_fraction, touches_circle
from mammolens.patches.sampling import (
    FilmFindings,
    PatchTraining,
    film_findings,
    normal_index,
    sample_film,
)
from mammolens.utils.errors import ConfigError


def _film(size: int = 96) -> np.ndarray:
    film = np.zeros((size, size), np.float32)
    film[:, : size * 3 // 4] = 0.5  # breast on the left, background on the right
    return film


def _square_hits_circle_brute(top: int, left: int, p: int, circle) -> bool:
    cx, cy, r = circle
    ys, xs = np.mgrid[top:top + p, left:left + p]
    return bool((((xs - cx) ** 2 + (ys - cy) ** 2) <= r * r).any())


def test_touches_circle_agrees_with_pixels() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        circle = (float(rng.integers(0, 64)), float(rng.integers(0, 64)), float(rng.integers(1, 12)))
        top, left = (int(v) for v in rng.integers(0, 48, 2))
        assert touches_circle(top, left, 16, circle) == _square_hits_circle_brute(top, left, 16, circle)


@pytest.mark.parametrize("seed", range(8))
def test_normal_patches_never_overlap_a_finding(seed: int) -> None:
    rng = np.random.default_rng(seed)
    circles = [(float(rng.uniform(5, 70)), float(rng.uniform(5, 90)), float(rng.uniform(3, 15))) for _ in range(3)]
    findings = FilmFindings(circles, [1, 2, 1], complete=True)
    cfg = PatchTraining(positives_per_finding=3, negatives_per_film=20, seed=seed, tries=400)
    film = _film()
    pos, labels = sample_film(film, findings, f"film{seed}", 16, 0, cfg, min_tissue=0.5)
    negatives = pos[labels == 0]
    assert len(negatives) > 0
    for top, left in negatives:
        assert not any(_square_hits_circle_brute(top, left, 16, c) for c in circles)
    assert (tissue_fraction(film, negatives, 16) >= 0.5).all()
    positives, pos_labels = pos[labels != 0], labels[labels != 0]
    assert pos_labels.tolist() == [1] * 3 + [2] * 3 + [1] * 3  # each finding's own label, in order
    for (top, left), (cx, cy, _) in zip(positives, np.repeat(circles, 3, axis=0)):
        # the jittered patch still holds the finding's centre
        assert top <= cy < top + 16 and left <= cx < left + 16


def test_a_film_with_an_unlocated_finding_gives_no_normal_patch() -> None:
    findings = FilmFindings([(30.0, 30.0, 5.0)], [1], complete=False)
    pos, labels = sample_film(_film(), findings, "f", 16, 0, PatchTraining(), min_tissue=0.3)
    assert len(pos) == 4 and (labels == 1).all()


def test_sampling_is_deterministic_per_film() -> None:
    findings = FilmFindings([(30.0, 30.0, 5.0)], [1], complete=True)
    a = sample_film(_film(), findings, "mdb001", 16, 0, PatchTraining(seed=3), 0.3)
    b = sample_film(_film(), findings, "mdb001", 16, 0, PatchTraining(seed=3), 0.3)
    c = sample_film(_film(), findings, "mdb002", 16, 0, PatchTraining(seed=3), 0.3)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], c[0])


def test_finding_labels_come_from_each_finding() -> None:
    """mdb144 holds a benign and a malignant finding: its patches get each finding's severity (3-class)
    or class (7-class), not the film's label for both."""
    task = TASKS.get("normal-benign-malignant")
    meta = {"findings": [{"class": "MISC", "severity": "benign", "roi": [10, 10, 5]},
                         {"class": "CIRC", "severity": None, "roi": None},  # not a finding: no severity
                         {"class": "SPIC", "severity": "malignant", "roi": [40, 40, 6]}]}
    row = {"sample_id": "mias-mdb144", "pathology": "malignant", "abnormality": "SPIC", "lesion_type": "mass",
           "meta": json.dumps(meta)}
    found = film_findings(row, [(5.0, 5.0, 2.5), (20.0, 20.0, 3.0)], task.label_of, 2, 0)
    assert found.labels == [1, 2] and found.complete
    seven = TASKS.get("mias-7class")
    found7 = film_findings(row, [(5.0, 5.0, 2.5), (20.0, 20.0, 3.0)], seven.label_of, 3, normal_index(seven.classes))
    assert [seven.classes[i] for i in found7.labels] == ["MISC", "SPIC"]
    unlocated = {"findings": [{"class": "CALC", "severity": "malignant", "roi": None}]}
    assert not film_findings({**row, "meta": json.dumps(unlocated)}, [], task.label_of, 2, 0).complete


def test_bad_settings_are_one_line() -> None:
    with pytest.raises(ConfigError, match=r"model.options.training.jitter"):
        PatchTraining(jitter=0.9)
    with pytest.raises(ConfigError, match=r"stride: must be an integer >= 1"):
        grid_positions((64, 64), 16, 0)
    with pytest.raises(ConfigError, match="needs a film task with a normal class"):
        normal_index(("benign", "malignant"))


def test_grid_covers_the_film_to_its_edges() -> None:
    pos, shape = grid_positions((50, 40), 16, 12)
    assert shape == (4, 3)
    assert pos[:, 0].max() == 50 - 16 and pos[:, 1].max() == 40 - 16
