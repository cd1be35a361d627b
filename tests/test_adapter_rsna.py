"""RSNA Screening Mammography 2023 adapter on a replica: JPEG 2000 files, cancer labels, bad input."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from mammolens.cli import main
from mammolens.data import replicas
from mammolens.data.adapters.base import detect_kind, load_source
from mammolens.data.splits import check_no_leakage, make_kfold
from mammolens.data.units import lesion_rows
from mammolens.utils.errors import DataError
from mammolens.io import read_image


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return replicas.write_rsna(tmp_path_factory.mktemp("rsna"), n_patients=6)


def _edit(root, change) -> None:
    path = root / "train.csv"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    change(rows)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_detected_and_every_image_read(replica):
    assert detect_kind(replica.root) == "rsna" and detect_kind(replica.root / "train.csv") == "rsna"
    df = load_source(replica.root).manifest.df.set_index("path")
    assert len(df) == len(replica.images) == 24
    for truth in replica.images:
        row = df.loc[truth["file"]]
        assert (row["patient_id"], row["exam_id"], row["group"]) == (truth["patient"],) * 3
        assert (row["laterality"], row["view"], row["density"], row["birads"]) == (
            truth["laterality"], truth["view"], truth["density"], truth["birads"])
        assert json.loads(row["meta"])["cancer"] == truth["cancer"]
        assert row["pathology"] == ("malignant" if truth["cancer"] else "normal" if truth["birads"] in ("1", "") else "")


def test_jpeg2000_and_monochrome1_files_decode(replica):
    import pydicom

    seen = set()
    for truth in replica.images[:4]:
        ds = pydicom.dcmread(truth["file"], stop_before_pixels=True)
        seen.add((ds.file_meta.TransferSyntaxUID.name, ds.PhotometricInterpretation))
        assert read_image(truth["file"]).pixels.shape == (96, 80)
    assert ("JPEG 2000 Image Compression (Lossless Only)", "MONOCHROME2") in seen
    one = next(t for t in replica.images if t["patient"] != replica.images[0]["patient"])
    assert read_image(one["file"]).meta.inverted  # MONOCHROME1: shown inverted, as the reader does


def test_cancer_is_at_breast_level_and_left_out_of_lesion_tasks(replica):
    result = load_source(replica.root)
    m = result.manifest
    cancer = m.df[m.df["pathology"] == "malignant"]
    assert set(zip(cancer["exam_id"], cancer["laterality"])) == {(replica.images[4]["patient"], "L")}
    assert len(cancer) == 2  # both views of that breast
    assert "cancer: 2 images, 1 of 12 breasts" in result.notes
    units = lesion_rows(m)  # no ROI: a whole-film finding stays out of lesion tasks
    assert [s.split()[0] for s in units.left_out] == cancer["sample_id"].tolist()
    assert not set(cancer["sample_id"]) & set(units.manifest.df["sample_id"])


def test_patient_grouped_folds(replica):
    m = load_source(replica.root).manifest
    split = make_kfold(m, [0] * len(m), k=3, seed=0)
    check_no_leakage(m, split)
    for members in split.parts.values():
        assert len(set(m.df.set_index("sample_id").loc[members, "patient_id"])) * 4 == len(members)


def test_data_inspect(replica, capsys):
    assert main(["data", "inspect", str(replica.root)]) == 0
    out = capsys.readouterr().out
    assert "samples  24 (image files: 24, missing: 0, unreadable: 0)" in out
    assert "6 patients, 6 exams (images per exam: 4: 6)" in out
    assert "pathology    normal 10, malignant 2" in out and "birads       1 8, 2 8, 0 4" in out
    assert "density      A 8, B 4, D 4" in out


@pytest.mark.parametrize(("change", "message"), [
    (lambda rows: rows[3].update(cancer="2"), r"train.csv: line 5: cancer '2' is not 0 or 1"),
    (lambda rows: rows[0].update(density="X"), r"line 2: density 'X' is not a BI-RADS density"),
    (lambda rows: rows[1].update(view="XCC"), r"line 3: view 'XCC' is not one of CC, MLO"),
    (lambda rows: rows[2].update(laterality="B"), r"line 4: laterality 'B' is not L or R"),
    (lambda rows: rows[0].update(patient_id="p-1"), r"line 2: patient_id 'p-1' and image_id '\d+' must be integers"),
    (lambda rows: rows[0].update(age="old"), r"line 2: age 'old' is not a number"),
])
def test_bad_rows_are_one_line_errors(replica, tmp_path, change, message):
    root = shutil.copytree(replica.root, tmp_path / "rsna")
    _edit(root, change)
    with pytest.raises(DataError, match=message) as info:
        load_source(root)
    assert "\n" not in str(info.value)


def test_missing_image_and_missing_folder(replica, tmp_path):
    root = shutil.copytree(replica.root, tmp_path / "rsna")
    gone = replica.images[5]["file"].replace(str(replica.root), str(root))
    (root / gone).unlink()
    with pytest.raises(DataError, match=f"{gone}: image file not found"):
        load_source(root)
    assert load_source(root, require_images=False).missing_files == [gone]
    shutil.rmtree(root / "train_images")
    with pytest.raises(DataError, match="not a rsna source: .*no train_images/ folder"):
        detect_kind(root)
