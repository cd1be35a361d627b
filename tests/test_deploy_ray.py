"""`--engine ray` gives the same rows as the single-process engine (local Ray, 2 CPUs)."""

from __future__ import annotations

import csv

import pytest

from deploy_fixtures import film, make_bundle, write_png
from mammolens.deploy.batch import list_images, predict_files
from mammolens.deploy.predictor import Predictor

pytestmark = pytest.mark.slow


def test_ray_rows_equal_single_process_rows(tmp_path):
    pytest.importorskip("ray")
    from mammolens.deploy.ray_engine import predict_ray

    bundle = make_bundle(tmp_path / "bundle")
    root = tmp_path / "films"
    root.mkdir()
    for i in range(9):
        write_png(root / f"f{i}.png", film(i))
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    files = list_images([root])
    local = predict_files(Predictor.load(bundle, batch_size=4), files, tmp_path / "local.csv", progress=False)
    ray_report = predict_ray(bundle, files, tmp_path / "ray.csv", batch_size=4, num_cpus=2)
    assert (ray_report.scored, ray_report.failed) == (local.scored, local.failed) == (9, 1)
    read = lambda p: list(csv.DictReader(open(p, newline="")))  # noqa: E731
    assert read(tmp_path / "ray.csv") == read(tmp_path / "local.csv")
    assert list((tmp_path / "ray.csv.shards").glob("*.parquet"))  # results went through Parquet shards
    again = predict_ray(bundle, files, tmp_path / "ray.csv", batch_size=4, num_cpus=2)
    assert again.skipped == 9  # done rows are not scored again (Ray is not even started)
