"""`mammolens predict`: walks folders, one row per image, survives a corrupt file, resumes, writes atomically."""

from __future__ import annotations

import csv

import pytest

from deploy_fixtures import film, make_bundle, write_dicom, write_png
from mammolens.cli import main
from mammolens.deploy import batch
from mammolens.deploy.batch import list_images, predict_files
from mammolens.deploy.predictor import Predictor
from mammolens.errors import ConfigError


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("b") / "bundle")


@pytest.fixture()
def images(tmp_path):
    root = tmp_path / "films"
    (root / "sub").mkdir(parents=True)
    for i in range(5):
        write_png(root / f"f{i}.png", film(i))
    write_dicom(root / "sub" / "1.2.840.99", film(9))  # a PACS export named by UID, no extension
    (root / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # truncated
    (root / "notes.txt").write_text("not an image")
    return root


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_walks_folders_and_a_corrupt_file_is_a_row_not_a_crash(bundle_dir, images, tmp_path, capsys):
    out = tmp_path / "results.csv"
    assert main(["predict", str(bundle_dir), str(images), "--out", str(out), "--no-progress"]) == 0
    assert "7 images: 6 scored, 1 failed" in capsys.readouterr().out
    rows = _rows(out)
    assert [r["file"].rsplit("/", 1)[1] for r in rows] == ["f0.png", "f1.png", "f2.png", "f3.png", "f4.png",
                                                           "1.2.840.99", "broken.png"]  # fmt: skip
    assert list(rows[0]) == ["file", "p_benign", "p_malignant", "label", "decision", "threshold", "model_id", "error"]
    broken = rows[-1]
    assert "broken.png" in broken["error"] and broken["p_malignant"] == "" and "\n" not in broken["error"]
    predictor = Predictor.load(bundle_dir)
    for row in rows[:-1]:
        assert row["error"] == ""
        assert float(row["p_malignant"]) == pytest.approx(predictor.predict(row["file"]).probabilities["malignant"],
                                                          abs=1e-6)  # fmt: skip
        assert row["decision"] == ("malignant" if float(row["p_malignant"]) >= 0.4 else "benign")
    assert not (tmp_path / "results.csv.partial").exists()


def test_rerun_skips_what_is_done_unless_forced(bundle_dir, images, tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    predictor = Predictor.load(bundle_dir)
    files = list_images([images])
    first = predict_files(predictor, files, out, progress=False)
    assert (first.scored, first.failed, first.skipped) == (6, 1, 0)
    again = predict_files(predictor, files, out, progress=False)
    assert again.skipped == 6 and again.failed == 1  # the broken file is tried again, the rest skipped
    forced = predict_files(predictor, files, out, force=True, progress=False)
    assert forced.skipped == 0 and forced.scored == 6
    assert len(_rows(out)) == 7


def test_an_interrupted_run_resumes(bundle_dir, images, tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    predictor = Predictor.load(bundle_dir, batch_size=2)
    files = list_images([images])
    scored = []
    real = batch._score

    def interrupted(pred, chunk, header, heatmaps):
        if len(scored) >= 4:
            raise KeyboardInterrupt
        scored.extend(chunk)
        return real(pred, chunk, header, heatmaps)

    monkeypatch.setattr(batch, "_score", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict_files(predictor, files, out, progress=False)
    assert not out.exists()  # the final CSV appears only complete
    assert len(_rows(tmp_path / "r.csv.partial")) == 4  # the journal holds what was finished
    monkeypatch.setattr(batch, "_score", real)
    resumed = predict_files(predictor, files, out, progress=False)
    assert resumed.skipped == 4 and resumed.scored + resumed.failed == 3
    assert [r["file"] for r in _rows(out)] == [str(f) for f in files]


def test_a_torn_journal_line_is_dropped_and_other_models_results_are_refused(bundle_dir, images, tmp_path):
    out = tmp_path / "r.csv"
    predictor = Predictor.load(bundle_dir)
    files = list_images([images])
    predict_files(predictor, files[:2], out, progress=False)
    journal = tmp_path / "r.csv.partial"
    journal.write_text(out.read_text() + f"{files[2]},0.5")  # a crash mid-line
    report = predict_files(predictor, files, out, progress=False)
    assert report.skipped == 2 and len(_rows(out)) == 7
    other = make_bundle(tmp_path / "other", seed=1)
    with pytest.raises(ConfigError, match="holds results of model scratch-cnn-.* pass --force"):
        predict_files(Predictor.load(other), files, out, progress=False)


def test_inputs_and_lesion_models_are_checked(bundle_dir, tmp_path, capsys):
    assert main(["predict", str(bundle_dir), str(tmp_path / "nowhere"), "--out", str(tmp_path / "o.csv")]) == 2
    assert "input not found" in capsys.readouterr().err
    write_png(tmp_path / "a.png", film(0))
    lesion = make_bundle(tmp_path / "lesion", roi=True)
    assert main(["predict", str(lesion), str(tmp_path / "a.png"), "--out", str(tmp_path / "o.csv")]) == 2
    assert "needs each lesion's ROI" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
