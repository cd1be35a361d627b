"""CMMD adapter on an NBIA-layout replica: views from ViewCodeSequence, Windows paths, bad input."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from openpyxl import load_workbook

from mammolens.cli import main
from mammolens.data import replicas
from mammolens.data.adapters.base import detect_kind, load_source
from mammolens.data.splits import check_no_leakage, make_holdout
from mammolens.utils.errors import DataError
from mammolens.io import read_meta


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return replicas.write_cmmd(tmp_path_factory.mktemp("cmmd"), n_patients=4, compression=("none", "j2k"))


def _copy(replica, tmp_path):
    return shutil.copytree(replica.root, tmp_path / "cmmd")


def test_detected_and_every_image_read(replica):
    assert detect_kind(replica.root) == "cmmd"
    df = load_source(replica.root).manifest.df.set_index("path")
    assert len(df) == len(replica.images) == 16
    for truth in replica.images:
        row = df.loc[truth["file"]]
        assert (row["patient_id"], row["group"], row["exam_id"]) == (truth["patient"], truth["patient"], truth["exam"])
        assert (row["laterality"], row["view"], row["pathology"]) == (truth["laterality"], truth["view"], truth["pathology"])
    assert set(df["density"]) == set(df["birads"]) == {""}  # CMMD grades neither


def test_view_comes_from_the_sct_code_when_viewposition_is_empty(replica):
    import pydicom

    late = replica.images[-1]["file"]
    ds = pydicom.dcmread(late, stop_before_pixels=True)
    assert ds.ViewPosition == "" and "CodeMeaning" not in ds.ViewCodeSequence[0]  # only the code says it
    assert read_meta(late).view == replica.images[-1]["view"] == "MLO"


def test_labels_per_breast_and_unlabelled_breasts(replica):
    result = load_source(replica.root)
    df = result.manifest.df
    both = df[df["patient_id"] == "D1-0001"]
    assert dict(zip(both["laterality"], both["pathology"])) == {"L": "malignant", "R": "benign"}
    assert json.loads(both["meta"].iat[0])["abnormality"] == "calcification" and set(both["lesion_type"]) == {"calc"}
    assert (df["pathology"] == "").sum() == 6  # the other breast of D1-0002..D1-0004
    assert "6 image(s) show a breast CMMD_clinicaldata_revision.xlsx does not label (pathology '')" in result.notes
    assert set(df.loc[df["patient_id"] == "D1-0003", "lesion_type"]) == {""}  # abnormality 'both', and unlabelled


def test_forward_slash_locations_and_grouped_split(tmp_path):
    truth = replicas.write_cmmd(tmp_path / "fwd", n_patients=4, backslashes=False)
    assert "./CMMD/D1-0001/" in (truth.root / "metadata.csv").read_text()
    m = load_source(truth.root).manifest
    assert len(m) == 16
    check_no_leakage(m, make_holdout(m, [0] * len(m), val=0.25, test=0.25, seed=0))


def test_data_inspect(replica, capsys):
    assert main(["data", "inspect", str(replica.root)]) == 0
    out = capsys.readouterr().out
    assert "samples  16 (image files: 16, missing: 0, unreadable: 0)" in out
    assert "4 patients, 4 exams (images per exam: 4: 4)" in out
    assert "view         CC 8, MLO 8" in out and "laterality   L 8, R 8" in out
    assert "pathology    malignant 6, benign 4" in out


def _edit_clinical(root, row: int, column: str, value) -> None:
    path = root / "CMMD_clinicaldata_revision.xlsx"
    book = load_workbook(path)
    sheet = book.active
    header = [c.value for c in sheet[1]]
    sheet.cell(row=row, column=header.index(column) + 1, value=value)
    book.save(path)


@pytest.mark.parametrize(("row", "column", "value", "message"), [
    (3, "classification", "Malign", r"CMMD_clinicaldata_revision.xlsx: row 3: classification 'Malign' is not Benign or Malignant"),
    (2, "LeftRight", "B", r"row 2: needs an ID1 and LeftRight L or R, got 'D1-0001', 'B'"),
    (4, "abnormality", "lump", r"row 4: abnormality 'lump' is not one of calcification, mass, both"),
    (3, "LeftRight", "L", r"row 3: breast D1-0001 L is listed twice"),
])
def test_bad_clinical_rows(replica, tmp_path, row, column, value, message):
    root = _copy(replica, tmp_path)
    _edit_clinical(root, row, column, value)
    with pytest.raises(DataError, match=message) as info:
        load_source(root)
    assert "\n" not in str(info.value)


def test_missing_laterality_names_the_file(replica, tmp_path):
    import pydicom

    root = _copy(replica, tmp_path)
    path = next((root / "CMMD").rglob("1-2.dcm"))
    ds = pydicom.dcmread(path)
    del ds.ImageLaterality
    ds.save_as(path)
    with pytest.raises(DataError, match=f"{path}: ImageLaterality is empty or not L/R"):
        load_source(root)


def test_bad_or_missing_locations(replica, tmp_path):
    root = _copy(replica, tmp_path)
    meta = root / "metadata.csv"
    with open(meta, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows[1]["File Location"] = "..\\elsewhere"
    with open(meta, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match=r"metadata.csv: line 3: File Location '..\\\\elsewhere' is not a folder inside"):
        load_source(root)
    rows[1]["File Location"] = ".\\CMMD\\D1-0002\\gone"
    with open(meta, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataError, match=r"line 3: File Location .*: no .dcm files in"):
        load_source(root)
    result = load_source(root, require_images=False)
    assert len(result.manifest) == 12 and len(result.missing_files) == 1
    meta.unlink()
    with pytest.raises(DataError, match="not a cmmd source: .*not NBIA's metadata.csv"):
        detect_kind(root)
