"""`mammolens predict`: walks folders, one row per image, survives a corrupt file, resumes, writes atomically."""

from __future__ import annotations

import csv
import re

import pytest
from deploy_fixtures import film, make_bundle, write_dicom, write_png

from mammolens.cli import main
from mammolens.deploy import batch
from mammolens.deploy.batch import list_images, predict_files, read_rois
from mammolens.deploy.predictor import Predictor
from mammolens.utils.errors import ConfigError


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
    assert list(rows[0]) == ["file", "p_benign", "p_malignant", "label", "decision", "threshold", "engine", "model_id",
                             "error"]  # fmt: skip
    broken = rows[-1]
    assert "broken.png" in broken["error"] and "\n" not in broken["error"]
    assert broken["p_malignant"] == broken["engine"] == ""
    predictor = Predictor.load(bundle_dir)
    for row in rows[:-1]:
        assert row["error"] == "" and row["engine"] == "torch"
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


def _interrupt_after(monkeypatch, units):
    """Batch scoring raises KeyboardInterrupt once ``units`` units are scored; returns the real ``_score``."""
    real, scored = batch._score, []

    def interrupted(pred, chunk, header, heatmaps):
        if len(scored) >= units:
            raise KeyboardInterrupt
        scored.extend(chunk)
        return real(pred, chunk, header, heatmaps)

    monkeypatch.setattr(batch, "_score", interrupted)
    return real


def test_an_interrupted_run_resumes(bundle_dir, images, tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    predictor = Predictor.load(bundle_dir, batch_size=2)
    files = list_images([images])
    real = _interrupt_after(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        predict_files(predictor, files, out, progress=False)
    assert not out.exists()  # the final CSV appears only complete
    assert len(_rows(tmp_path / "r.csv.partial")) == 4  # the journal holds what was finished
    monkeypatch.setattr(batch, "_score", real)
    resumed = predict_files(predictor, files, out, progress=False)
    assert resumed.skipped == 4 and resumed.scored + resumed.failed == 3
    assert [r["file"] for r in _rows(out)] == [str(f) for f in files]


def test_csvs_written_before_the_engine_column_resume(bundle_dir, images, tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    predictor = Predictor.load(bundle_dir, batch_size=2)
    files = list_images([images])
    predict_files(predictor, files, out, progress=False)
    rows = _rows(out)

    def old(path, kept):  # the CSV as the version before the engine column wrote it
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=[c for c in rows[0] if c != "engine"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(kept)

    old(out, rows[:3])
    report = predict_files(predictor, files, out, progress=False)
    assert (report.skipped, report.scored, report.failed) == (3, 3, 1)
    again = _rows(out)
    assert [r["engine"] for r in again] == ["", "", "", "torch", "torch", "torch", ""]  # old rows: not recorded
    assert [{k: v for k, v in r.items() if k != "engine"} for r in again] == [
        {k: v for k, v in r.items() if k != "engine"} for r in rows]  # fmt: skip
    # an interrupted old run's journal: rewritten in the new columns before rows are appended to it
    journal = tmp_path / "r.csv.partial"
    out.unlink()
    old(journal, rows[:2])
    real = _interrupt_after(monkeypatch, 2)  # one batch of 2
    with pytest.raises(KeyboardInterrupt):
        predict_files(predictor, files, out, progress=False)
    assert [r["engine"] for r in _rows(journal)] == ["", "", "torch", "torch"]  # every line whole, none dropped
    monkeypatch.setattr(batch, "_score", real)
    resumed = predict_files(predictor, files, out, progress=False)
    assert (resumed.skipped, resumed.scored, resumed.failed) == (4, 2, 1)


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


def _write(path, text):
    path.write_text(text)
    return path


def _write_rois(path, lines):
    path.write_text("file,x,y,r\n" + "".join(f"{line}\n" for line in lines))
    return path


def test_lesion_bundle_scores_one_row_per_lesion_from_a_rois_csv(tmp_path, capsys):
    lesion = make_bundle(tmp_path / "lesion", roi=True)
    (tmp_path / "films").mkdir()
    a, b = write_png(tmp_path / "films" / "a.png", film(0)), write_png(tmp_path / "films" / "b.png", film(1))
    # relative names are read from the CSV's folder; the third lesion of a.png lies outside the film
    rois = _write_rois(tmp_path / "rois.csv", ["films/a.png,20,40,8", "films/a.png,60,70,8", f"{b},30,30,6",
                                               "films/a.png,500,10,8"])  # fmt: skip
    out = tmp_path / "lesions.csv"
    assert main(["predict", str(lesion), "--rois", str(rois), "--out", str(out), "--no-progress"]) == 0
    assert "4 lesions: 3 scored, 1 failed" in capsys.readouterr().out
    rows = _rows(out)
    assert list(rows[0])[:4] == ["file", "x", "y", "r"]
    assert [(r["file"], r["x"], r["y"], r["r"]) for r in rows] == [
        (str(a), "20", "40", "8"), (str(a), "60", "70", "8"), (str(b), "30", "30", "6"), (str(a), "500", "10", "8")]
    predictor = Predictor.load(lesion)
    for row in rows[:3]:
        expected = predictor.predict(row["file"], roi=(float(row["x"]), float(row["y"]), float(row["r"])))
        assert float(row["p_malignant"]) == pytest.approx(expected.probabilities["malignant"], abs=1e-6)
        assert row["decision"] == expected.decision and row["error"] == ""
    assert rows[0]["p_malignant"] != rows[1]["p_malignant"]  # two lesions of one film: two crops, two scores
    assert "outside the 96x96 image" in rows[3]["error"]
    files, lesions = read_rois(rois)
    report = predict_files(predictor, files, out, rois=lesions, progress=False)  # a re-run skips scored lesions
    assert (report.total, report.skipped, report.failed) == (4, 3, 1)


def test_rois_are_checked(bundle_dir, tmp_path, capsys):
    lesion = make_bundle(tmp_path / "lesion", roi=True)
    write_png(tmp_path / "a.png", film(0))
    out = str(tmp_path / "o.csv")
    cases = [
        ([str(lesion), str(tmp_path / "a.png")], "scores lesion crops and needs each lesion's ROI: give --rois"),
        ([str(lesion), "--rois", str(_write_rois(tmp_path / "bad.csv", ["a.png,1,2,zero"]))],
         r"bad.csv: line 2: x, y, r must be numbers"),
        ([str(lesion), "--rois", str(_write_rois(tmp_path / "neg.csv", ["a.png,1,2,-3"]))], "line 2: needs a file"),
        ([str(lesion), "--rois", str(tmp_path / "a.png")], "a.png: is not a UTF-8 CSV"),
        ([str(lesion), "--rois", str(_write(tmp_path / "cols.csv", "file,x,y\na.png,1,2\n"))], "missing column.s. r;"),
        ([str(lesion), "--rois", str(tmp_path / "none.csv")], "ROI file not found"),
        ([str(bundle_dir), "--rois", str(_write_rois(tmp_path / "ok.csv", ["a.png,10,10,5"]))], "scores whole films"),
        ([str(lesion), str(tmp_path / "a.png"), "--rois", str(tmp_path / "ok.csv")], "give no INPUT with it"),
        ([str(lesion)], "give image files or folders"),
    ]
    for args, message in cases:
        assert main(["predict", *args, "--out", out, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "o.csv").exists()
