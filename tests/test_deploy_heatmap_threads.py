"""A heatmap is built from its own film only, however many other requests run through the same Predictor."""

from __future__ import annotations

import threading

import numpy as np

from deploy_fixtures import film, make_bundle
from mammolens.deploy.predictor import Predictor


def test_film_a_heatmap_never_holds_film_b_while_others_score(tmp_path):
    predictor = Predictor.load(make_bundle(tmp_path / "bundle"))
    a, b = film(1), film(7)[::-1].copy()  # film B: another woman's film, flipped so its evidence lies elsewhere
    alone = predictor.explain(a)
    assert not np.allclose(alone, predictor.explain(b), atol=1e-3)  # the two maps can be told apart
    stop = threading.Event()
    errors: list[BaseException] = []

    def score_b() -> None:
        try:
            while not stop.is_set():
                predictor.predict(b)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    others = [threading.Thread(target=score_b) for _ in range(3)]
    for t in others:
        t.start()
    try:
        maps = [predictor.explain(a) for _ in range(60)]
    finally:
        stop.set()
        for t in others:
            t.join()
    assert not errors
    differ = [i for i, m in enumerate(maps) if not np.allclose(m, alone, atol=1e-5)]
    assert not differ, f"{len(differ)} of {len(maps)} heatmaps of film A differ from its single-threaded map"
