"""`mammolens predict` survives `kill -9`: a child process is sent SIGKILL at the moment its journal
appears, again mid-run, and again after its last batch but before its CSV, then resumed: every file
exactly once, rows equal to an uninterrupted run."""

from __future__ import annotations

import collections
import csv

import pytest

from deploy_fixtures import film, make_bundle, write_png
from kill_helpers import journal_rows, kill_when, start_predict
from mammolens.deploy.batch import list_images, predict_files
from mammolens.deploy.journal import Journal, journal_path
from mammolens.deploy.predictor import Predictor

# two child processes that import torch: seconds each on 2 busy cores
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_run_killed_when_its_journal_appears_and_mid_run_resumes_to_the_uninterrupted_rows(tmp_path):
    bundle = make_bundle(tmp_path / "bundle")
    root = tmp_path / "films"
    root.mkdir()
    for i in range(8):
        write_png(root / f"f{i}.png", film(i))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)  # an error row: retried on resume
    files = list_images([root])
    predictor = Predictor.load(bundle, batch_size=2)
    predict_files(predictor, files, tmp_path / "uninterrupted.csv", progress=False)
    expected = _rows(tmp_path / "uninterrupted.csv")

    out = tmp_path / "r.csv"
    journal = journal_path(out)
    args = [str(bundle), str(root), "--out", str(out), "--batch-size", "2", "--no-progress"]
    # 1. the moment the journal file appears: nothing committed yet
    kill_when(start_predict(args, tmp_path / "site", 1.0), journal.exists)
    assert not out.exists() and journal_rows(journal) == 0
    # 2. resumed in a child, killed half-way through its third batch (5 batches of 2, 2, 2, 2, 1 films)
    kill_when(start_predict([*args, "--resume"], tmp_path / "site", 1.0), lambda: journal_rows(journal) >= 4, after=0.5)
    assert not out.exists()
    with Journal(journal, list(expected[0])) as kept:
        committed = kept.rows()
    assert len(committed) in (4, 6, 8)  # whole batches only
    assert all(r == expected[[e["file"] for e in expected].index(r["file"])] for r in committed.values())
    # 3. resumed in a child, killed after its last batch, before the final CSV
    kill_when(start_predict([*args, "--resume"], tmp_path / "site", 1.0, seconds_before_finish=30),
              lambda: journal_rows(journal) == 9, after=0.5)  # fmt: skip
    assert not out.exists()
    # 4. resumed to the end: only the broken film is tried again
    report = predict_files(predictor, files, out, progress=False)
    assert (report.skipped, report.scored, report.failed) == (8, 0, 1)
    rows = _rows(out)
    assert collections.Counter(r["file"] for r in rows) == collections.Counter(str(f) for f in files)  # each once
    assert rows == expected
    assert not journal.exists() and not journal.with_name(journal.name + "-journal").exists()
