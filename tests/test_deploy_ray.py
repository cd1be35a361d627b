"""`--engine ray` gives the same rows as the single-process engine (a local Ray of 2 CPUs), the int8
guard band included, and a Ray run sent SIGKILL mid-run resumes from the shards its actors wrote.

Ray is installed by `make setup` (the `ray` extra); without it this test skips outside CI and
fails in CI (tests/realdata.py), so a broken install cannot pass as green.
"""

from __future__ import annotations

import collections
import csv

import pytest

from deploy_fixtures import film, make_bundle, source, write_png  # noqa: F401 - source is a fixture
from kill_helpers import kill_when, start_predict
from mammolens.cli import main
from mammolens.deploy.batch import list_images, predict_files, read_rois, read_rows, shards_dir
from mammolens.deploy.predictor import Predictor
from realdata import import_or_absent

# Starting Ray and two actors that import torch takes tens of seconds on 2 busy cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray (2 CPUs) for the module, started the way `--engine ray` starts it: the commands
    below find it initialised and use it, so Ray starts once, not once per command."""
    import_or_absent("ray")
    from mammolens.deploy.ray_engine import ray_session

    with ray_session(num_cpus=2) as ray:
        yield ray


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_ray_rows_equal_single_process_rows(tmp_path, source, capsys):
    import numpy as np

    from mammolens.deploy.export import export_onnx

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
    assert main(args) == 0  # 2 actors, each loading the model once
    assert "8 images: 7 scored, 1 failed, 0 already done" in capsys.readouterr().out
    ray_rows, local_rows = _rows(ray_csv), _rows(tmp_path / "local.csv")
    assert ray_rows == local_rows  # same files in the same order, same probabilities, decisions and errors
    errors = {r["file"].rsplit("/", 1)[1]: r["error"] for r in ray_rows}
    assert "bad.png" in errors.pop("bad.png") and set(errors.values()) == {""}
    assert not shards_dir(ray_csv).exists()  # the shards, merged into the CSV, are gone

    good = [str(f) for f in files if f.name != "bad.png"]  # (a failed file would be tried again)
    assert main([*args[:2], *good, *args[3:], "--resume"]) == 0  # all done: skipped, no actor started
    assert "7 images: 0 scored, 0 failed, 7 already done" in capsys.readouterr().out
    assert _rows(ray_csv) == [r for r in local_rows if not r["error"]]
    assert {r["engine"] for r in local_rows} == {"torch", ""}  # the error row has none

    # the int8 guard band: every actor loads the int8 file and its fp32 twin, as the local engine does
    export = export_onnx(bundle, tmp_path / "onnx" / "model.int8.onnx", int8=True, calibration=source,
                         calibration_samples=8, fp32_fallback=True, exporter="torchscript")  # fmt: skip
    int8, plain = export.path, Predictor.load(export.path, backend="onnxruntime")
    distance = [abs(plain.predict(f).probabilities["malignant"] - plain.spec.threshold) for f in good]
    factor = float(np.median(distance)) / export.guard_max_abs_dprob  # half the films inside the band
    guarded = Predictor.load(int8, backend="onnxruntime", guard_band=factor, batch_size=3)
    predict_files(guarded, files, tmp_path / "local-guard.csv", progress=False)
    args = ["predict", str(int8), str(root), "--out", str(tmp_path / "ray-guard.csv"), "--engine", "ray",
            "--batch-size", "3", "--backend", "onnxruntime", "--guard-band", repr(factor)]  # fmt: skip
    assert main(args) == 0
    assert "8 images: 7 scored, 1 failed, 0 already done" in capsys.readouterr().out
    guard_rows = _rows(tmp_path / "ray-guard.csv")
    assert guard_rows == _rows(tmp_path / "local-guard.csv")
    assert {r["engine"] for r in guard_rows} == {"onnxruntime-int8", "onnxruntime-fp32", ""}  # in and out of the band


def test_ray_scores_lesions_from_a_rois_csv_like_the_local_engine(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "lesion", roi=True)
    a, b = write_png(tmp_path / "a.png", film(0)), write_png(tmp_path / "b.png", film(1))
    rois = tmp_path / "rois.csv"
    rois.write_text(f"file,x,y,r\n{a},20,40,8\n{a},60,70,8\n{b},30,30,6\n{b},500,10,8\n")
    files, lesions = read_rois(rois)
    local = predict_files(Predictor.load(bundle, batch_size=3), files, tmp_path / "local.csv", rois=lesions,
                          progress=False)  # fmt: skip
    assert (local.scored, local.failed) == (3, 1)
    args = ["predict", str(bundle), "--rois", str(rois), "--out", str(tmp_path / "ray.csv"), "--engine", "ray",
            "--batch-size", "3"]  # fmt: skip
    assert main(args) == 0
    assert "4 lesions: 3 scored, 1 failed, 0 already done" in capsys.readouterr().out
    assert _rows(tmp_path / "ray.csv") == _rows(tmp_path / "local.csv")  # one row per lesion, x, y, r included


def test_ray_actors_write_the_heatmaps_the_local_engine_writes(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    bundle = make_bundle(tmp_path / "bundle")
    root = tmp_path / "films"
    root.mkdir()
    for i in range(4):
        write_png(root / f"f{i}.png", film(i))
    files = list_images([root])
    predict_files(Predictor.load(bundle, batch_size=2), files, tmp_path / "local.csv", heatmaps=tmp_path / "local",
                  progress=False)  # fmt: skip
    args = ["predict", str(bundle), str(root), "--out", str(tmp_path / "ray.csv"), "--engine", "ray",
            "--batch-size", "2", "--heatmaps", str(tmp_path / "ray")]  # fmt: skip
    assert main(args) == 0
    assert "4 images: 4 scored, 0 failed" in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "local").iterdir())
    assert len(names) == 4 and sorted(p.name for p in (tmp_path / "ray").iterdir()) == names  # no temporary files left
    for name in names:
        local, ray = (np.asarray(Image.open(tmp_path / d / name), dtype=np.int16) for d in ("local", "ray"))
        assert np.abs(local - ray).max() <= 1
    assert _rows(tmp_path / "ray.csv") == _rows(tmp_path / "local.csv")


def test_a_ray_run_killed_mid_run_resumes_from_its_shards(tmp_path):
    """The driver of `predict --engine ray` (a child process, its own local Ray) is sent SIGKILL, with its
    Ray, once the first shard is written; the resumed run scores only what no shard holds."""
    from mammolens.deploy.ray_engine import predict_ray

    bundle = make_bundle(tmp_path / "bundle")
    root = tmp_path / "films"
    root.mkdir()
    for i in range(12):
        write_png(root / f"f{i}.png", film(i))
    files = list_images([root])
    predict_files(Predictor.load(bundle, batch_size=2), files, tmp_path / "local.csv", progress=False)
    expected = _rows(tmp_path / "local.csv")

    out = tmp_path / "ray.csv"
    shards = shards_dir(out)
    args = [str(bundle), str(root), "--out", str(out), "--engine", "ray", "--batch-size", "2", "--no-progress"]
    kill_when(start_predict(args, tmp_path / "site", 1.0), lambda: any(shards.glob("*.csv")), timeout=400)
    assert not out.exists()
    kept = {}
    for shard in shards.glob("*.csv"):  # whole shards only: every one reads, with whole batches
        rows = read_rows(shard, list(expected[0]))
        assert len(rows) == 2 and all(r in expected for r in rows.values())
        kept.update(rows)
    assert 2 <= len(kept) < 12
    report = predict_ray(bundle, files, out, batch_size=2)  # this module's Ray
    assert (report.skipped, report.scored, report.failed) == (len(kept), 12 - len(kept), 0)
    rows = _rows(out)
    assert collections.Counter(r["file"] for r in rows) == collections.Counter(str(f) for f in files)  # each once
    assert rows == expected and not shards.exists()
