"""`--engine ray` gives the same rows as the single-process engine (a local Ray of 2 CPUs).

Ray is installed by `make setup` (the `ray` extra); without it this test skips outside CI and
fails in CI (tests/realdata.py), so a broken install cannot pass as green.
"""

from __future__ import annotations

import csv

import pytest

from deploy_fixtures import film, make_bundle, write_png
from mammolens.cli import main
from mammolens.deploy.batch import list_images, predict_files
from mammolens.deploy.predictor import Predictor
from realdata import import_or_absent

# Starting Ray and two actors that import torch takes tens of seconds on 2 busy cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_ray_rows_equal_single_process_rows(tmp_path, capsys):
    import_or_absent("ray")
    bundle = make_bundle(tmp_path / "bundle")
    root = tmp_path / "films"
    root.mkdir()
    for i in range(7):
        write_png(root / f"f{i}.png", film(i))
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)  # truncated: an error row
    files = list_images([root])
    local = predict_files(Predictor.load(bundle, batch_size=3), files, tmp_path / "local.csv", progress=False)
    assert (local.scored, local.failed) == (7, 1)

    ray_csv = tmp_path / "ray.csv"
    args = ["predict", str(bundle), str(root), "--out", str(ray_csv), "--engine", "ray", "--batch-size", "3"]
    assert main(args) == 0  # starts a local Ray (2 CPUs, 2 actors) and shuts it down
    assert "8 images: 7 scored, 1 failed, 0 already done" in capsys.readouterr().out
    ray_rows, local_rows = _rows(ray_csv), _rows(tmp_path / "local.csv")
    assert ray_rows == local_rows  # same files in the same order, same probabilities, decisions and errors
    errors = {r["file"].rsplit("/", 1)[1]: r["error"] for r in ray_rows}
    assert "bad.png" in errors.pop("bad.png") and set(errors.values()) == {""}
    assert list((tmp_path / "ray.csv.shards").glob("*.parquet"))  # the results went through Parquet shards

    good = [str(f) for f in files if f.name != "bad.png"]  # (a failed file would be tried again)
    assert main([*args[:2], *good, *args[3:]]) == 0  # all done: skipped, and Ray is not started at all
    assert "7 images: 0 scored, 0 failed, 7 already done" in capsys.readouterr().out
    assert _rows(ray_csv) == [r for r in local_rows if not r["error"]]
