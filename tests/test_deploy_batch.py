"""`mammolens predict`: walks folders, one row per image, survives a corrupt file, resumes, writes atomically.

The hard kills (a child process sent SIGKILL) are in test_deploy_batch_kill.py."""

from __future__ import annotations

import csv
import re

import pytest
from deploy_fixtures import film, make_bundle, source, write_dicom, write_png  # noqa: F401 - source is a fixture

from mammolens.cli import main
from mammolens.deploy import batch
from mammolens.deploy.batch import list_images, predict_files, read_rois
from mammolens.deploy.journal import Journal, journal_path
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
        assert row["threshold"] == "0.400000"  # as many decimals as the probabilities, not %g
    assert not journal_path(out).exists()


def test_rerun_skips_what_is_done_unless_forced(bundle_dir, images, tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    predictor = Predictor.load(bundle_dir)
    files = list_images([images])
    first = predict_files(predictor, files, out, progress=False)
    assert (first.scored, first.failed, first.skipped) == (6, 1, 0)
    again = predict_files(predictor, files, out, progress=False)
    assert again.skipped == 6 and again.failed == 1  # the broken file is tried again, the rest skipped
    forced = predict_files(predictor, files, out, fresh=True, progress=False)
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
    with Journal(journal_path(out), batch.columns(predictor.spec.classes)) as journal:
        assert len(journal.rows()) == 4  # the journal holds what was finished
    monkeypatch.setattr(batch, "_score", real)
    resumed = predict_files(predictor, files, out, progress=False)
    assert resumed.skipped == 4 and resumed.scored + resumed.failed == 3
    assert [r["file"] for r in _rows(out)] == [str(f) for f in files]


def test_csvs_written_before_the_engine_column_resume(bundle_dir, images, tmp_path):
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
    out.unlink()
    old(tmp_path / "r.csv.partial", rows[:2])  # an interrupted old run's CSV journal
    resumed = predict_files(predictor, files, out, progress=False)
    assert (resumed.skipped, resumed.scored, resumed.failed) == (2, 4, 1)
    assert [r["engine"] for r in _rows(out)] == ["", "", "torch", "torch", "torch", "torch", ""]


def test_an_older_csv_journal_resumes_without_its_torn_or_merged_rows(bundle_dir, images, tmp_path):
    """The CSV journal of older versions (``<out>.partial``, perhaps from before the engine column) resumes:
    its whole rows for this run's files are kept; the bogus row that a torn line merged into (a half
    file name followed by the next row) and a torn last line are not."""
    out, legacy = tmp_path / "r.csv", tmp_path / "r.csv.partial"
    predictor = Predictor.load(bundle_dir)
    files = list_images([images])
    predict_files(predictor, files, tmp_path / "ref.csv", progress=False)
    ref = _rows(tmp_path / "ref.csv")
    lines = (tmp_path / "ref.csv").read_text().splitlines(keepends=True)
    # rows 0, 1 whole; row 2 torn inside its file name, row 3 appended after it; row 4 torn at the end
    legacy.write_text("".join([*lines[:3], lines[3][:12], *lines[4:5], lines[5][:40]]))
    assert list(_rows(legacy)[2].values())[1:] == list(ref[3].values())[1:]  # valid-looking, with a bogus file name
    report = predict_files(predictor, files, out, progress=False)
    assert (report.skipped, report.scored, report.failed) == (2, 4, 1)  # rows 2, 3 and 4 scored again
    assert _rows(out) == ref and not legacy.exists()
    legacy.write_text("")  # killed before its first flush: no rows, no refusal
    out.unlink()
    assert predict_files(predictor, files, out, progress=False).skipped == 0 and _rows(out) == ref


def test_a_journal_killed_before_its_first_commit_or_foreign_is_handled(bundle_dir, images, tmp_path, capsys):
    out = tmp_path / "r.csv"
    predictor = Predictor.load(bundle_dir)
    files = list_images([images])
    journal_path(out).write_bytes(b"")  # created, killed before SQLite wrote a page
    assert predict_files(predictor, files, out, progress=False).scored == 6
    journal_path(out).write_bytes(b"\x00" * 4096)  # not SQLite
    args = ["predict", str(bundle_dir), str(images), "--out", str(out), "--no-progress", "--resume"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "r.csv.journal.sqlite: is not a journal this version can read" in err and err.count("\n") == 1
    journal_path(out).unlink()
    with Journal(journal_path(out), ["file", "x", "y", "r", "p_benign"]):
        pass  # a journal of a lesion run
    assert main(args) == 2
    assert "was written for other columns (file, x, y, r, p_benign); pass --fresh" in capsys.readouterr().err
    assert main([*args[:-1], "--fresh"]) == 0 and not journal_path(out).exists()


def test_the_local_engine_resumes_from_ray_shards_and_force_drops_them(bundle_dir, images, tmp_path):
    from mammolens.deploy.ray_engine import write_shard  # no Ray needed to write one

    out, shards = tmp_path / "r.csv", batch.shards_dir(tmp_path / "r.csv")
    predictor = Predictor.load(bundle_dir)
    files = list_images([images])
    predict_files(predictor, files, tmp_path / "ref.csv", progress=False)
    ref = _rows(tmp_path / "ref.csv")
    write_shard(shards, list(ref[0]), ref[:2])
    write_shard(shards, list(ref[0]), ref[2:3])  # an interrupted Ray run's two batches
    report = predict_files(predictor, files, out, progress=False)
    assert (report.skipped, report.scored, report.failed) == (3, 3, 1)
    assert _rows(out) == ref and not shards.exists()
    write_shard(shards, list(ref[0]), ref[:2])
    assert predict_files(predictor, files, out, fresh=True, progress=False).skipped == 0 and not shards.exists()


def test_other_models_results_are_refused(bundle_dir, images, tmp_path):
    out = tmp_path / "r.csv"
    files = list_images([images])
    predict_files(Predictor.load(bundle_dir), files, out, progress=False)
    other = make_bundle(tmp_path / "other", seed=1)
    with pytest.raises(ConfigError, match="holds results of model scratch-cnn-.* pass --fresh"):
        predict_files(Predictor.load(other), files, out, progress=False)


def test_the_file_column_is_the_path_given_not_the_symlink_target(bundle_dir, tmp_path):
    real = tmp_path / "store" / "2026-12-07"
    real.mkdir(parents=True)
    write_png(real / "a.png", film(0))
    (tmp_path / "today").symlink_to(real, target_is_directory=True)
    (tmp_path / "b.png").symlink_to(real / "a.png")  # the same file again, by a link: scored once
    files = list_images([tmp_path / "today", tmp_path / "b.png"])
    assert files == [tmp_path / "today" / "a.png"]
    out = tmp_path / "r.csv"
    predict_files(Predictor.load(bundle_dir), files, out, progress=False)
    assert [r["file"] for r in _rows(out)] == [str(tmp_path / "today" / "a.png")]


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


def test_the_backend_follows_the_model_file_and_the_file_found_is_named(tmp_path, source, capsys):
    from mammolens.deploy.export import export_onnx

    bundle = make_bundle(tmp_path / "bundle")
    int8 = export_onnx(bundle, None, int8=True, calibration=source, calibration_samples=4, exporter="torchscript").path
    assert int8 == bundle / "model.int8.onnx"  # the bundle holds only the int8 file
    png = write_png(tmp_path / "f.png", film(0))
    by_file, by_folder = tmp_path / "file.csv", tmp_path / "folder.csv"
    assert main(["predict", str(int8), str(png), "--out", str(by_file), "--no-progress"]) == 0  # no --backend
    assert f"model {int8} (onnxruntime-int8)" in capsys.readouterr().out
    assert main(["predict", str(bundle), str(png), "--out", str(by_folder), "--backend", "onnxruntime",
                 "--no-progress"]) == 0  # fmt: skip
    assert f"model {int8} (onnxruntime-int8)" in capsys.readouterr().out
    assert _rows(by_file) == _rows(by_folder) and _rows(by_file)[0]["engine"] == "onnxruntime-int8"
    assert main(["predict", str(bundle), str(png), "--out", str(tmp_path / "t.csv"), "--no-progress"]) == 0
    assert f"model {bundle} (torch)" in capsys.readouterr().out  # a folder: torch unless told
    refusals = [
        ([str(int8), "--backend", "torch"], ("model.int8.onnx: is an ONNX export: the torch backend runs a bundle "
                                             "folder; use backend onnxruntime")),
        ([str(tmp_path), "--backend", "onnxruntime"], "no ONNX model here (looked for model.onnx and model.int8.onnx)"),
    ]  # fmt: skip
    for args, message in refusals:
        assert main(["predict", *args, str(png), "--out", str(tmp_path / "no.csv"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "no.csv").exists()


def test_a_journal_another_run_is_writing_is_one_line(bundle_dir, images, tmp_path, monkeypatch, capsys):
    import sqlite3

    out = tmp_path / "r.csv"
    with Journal(journal_path(out), batch.columns(["benign", "malignant"])):
        pass
    monkeypatch.setattr(Journal, "busy_seconds", 0.2)
    other = sqlite3.connect(journal_path(out), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another predict, mid-commit
    try:
        assert main(["predict", str(bundle_dir), str(images), "--out", str(out), "--no-progress", "--resume"]) == 2
    finally:
        other.close()
    err = capsys.readouterr().err
    assert "r.csv.journal.sqlite: cannot be written: another run is writing it" in err and err.count("\n") == 1
