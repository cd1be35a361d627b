"""INbreast adapter on a replica: the .xls with its footer, OsiriX polygons, patient keys, bad input."""

from __future__ import annotations

import json
import plistlib
import shutil

import pytest
import xlrd
import xlwt

from mammolens.cli import main
from mammolens.data import replicas
from mammolens.data.adapters.base import detect_kind, load_source
from mammolens.data.splits import check_no_leakage, make_holdout
from mammolens.utils.errors import DataError
from mammolens.preprocess.sample import default_loader, sample_from_row


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return replicas.write_inbreast(tmp_path_factory.mktemp("inbreast"), n_patients=4)


def _copy(replica, tmp_path):
    return shutil.copytree(replica.root, tmp_path / "inbreast")


def _edit_xls(root, change) -> None:
    """Rewrite INbreast.xls cell by cell after ``change(rows)`` (a list of lists, header first)."""
    sheet = xlrd.open_workbook(str(root / "INbreast.xls")).sheet_by_index(0)
    rows = [sheet.row_values(r) for r in range(sheet.nrows)]
    change(rows)
    book = xlwt.Workbook()
    out = book.add_sheet("Sheet1")
    for r, values in enumerate(rows):
        for c, value in enumerate(values):
            out.write(r, c, value)
    book.save(str(root / "INbreast.xls"))


def test_detected_footer_dropped_and_every_image_read(replica):
    assert detect_kind(replica.root) == "inbreast"
    df = load_source(replica.root).manifest.df.set_index("path")
    assert len(df) == len(replica.images) == 16  # the empty and the totals row are not images
    for truth in replica.images:
        row = df.loc[truth["file"]]
        assert (row["patient_id"], row["group"], row["exam_id"]) == (truth["patient"], truth["patient"], truth["exam"])
        assert (row["laterality"], row["view"], row["density"], row["birads"]) == (
            truth["laterality"], truth["view"], truth["density"], truth["birads"])
    assert "4c" in set(df["birads"])


def test_osirix_rois_become_a_polygon_and_a_point_circle(replica):
    m = load_source(replica.root).manifest
    row = next(r for r in m.df.to_dict("records") if r["rois"] != "[]")
    truth = next(t for t in replica.images if t["rois"])
    shapes = m.shapes(int(m.df.index[m.df["sample_id"] == row["sample_id"]][0]))
    assert [s.kind for s in shapes] == ["polygon", "circle"]
    assert list(shapes[0].points) == truth["rois"][0][1]
    assert shapes[1].circle() == (60.0, 40.0, 3.0)
    assert json.loads(row["meta"])["marks"] == ["Mass", "Calcification"]
    assert row["lesion_type"] == "" and row["pathology"] == ""  # mass and micros; nothing biopsied
    sample, _ = sample_from_row(row, default_loader)
    assert sample.mask[40, 30] and not sample.mask[5, 5] and sample.mask[40, 60]  # inside polygon, outside, the point


def test_patients_keyed_by_the_file_name_hash(replica):
    m = load_source(replica.root).manifest
    assert m.df["patient_id"].nunique() == 4 and (m.df.groupby("patient_id").size() == 4).all()
    check_no_leakage(m, make_holdout(m, [0] * len(m), val=0.25, test=0.25, seed=0))


def test_data_inspect(replica, capsys):
    assert main(["data", "inspect", str(replica.root)]) == 0
    out = capsys.readouterr().out
    assert "samples  16 (image files: 16, missing: 0, unreadable: 0)" in out
    assert "4 patients, 4 exams (images per exam: 4: 4)" in out
    assert "density      A 4, B 4, C 4, D 4" in out and "birads       2 8, 1 6, 4c 2" in out


@pytest.mark.parametrize(("change", "message"), [
    (lambda rows: rows[3].__setitem__(6, 7.0), r"INbreast.xls: row 4: ACR '7' is not a BI-RADS density"),
    (lambda rows: rows[2].__setitem__(7, "4d"), r"INbreast.xls: row 3: Bi-Rads '4d' is not a BI-RADS category"),
    (lambda rows: rows[1].__setitem__(2, "L"), r"row 2: the table says L CC but the file name says R CC"),
    (lambda rows: rows[5].__setitem__(5, "n/a"), r"row 6: File Name 'n/a' is not a number"),
    (lambda rows: rows[4].__setitem__(5, 99.0), r"row 5: File Name 99: no AllDICOMs/99_\*_MG_\*_ANON.dcm"),
])
def test_bad_table_rows(replica, tmp_path, change, message):
    root = _copy(replica, tmp_path)
    _edit_xls(root, change)
    with pytest.raises(DataError, match=message) as info:
        load_source(root)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda roi: roi.__setitem__("Point_px", ["(1.0; 2.0)"]), r"ROI 1 \(Mass\): Point_px '\(1.0; 2.0\)' is not '\(x, y\)'"),
    (lambda roi: roi.__setitem__("NumberOfPoints", 9), r"ROI 1 \(Mass\): NumberOfPoints is 9 but Point_px has 4"),
])
def test_bad_xml_names_file_and_roi(replica, tmp_path, edit, message):
    root = _copy(replica, tmp_path)
    xml = next((root / "AllXML").glob("*.xml"))
    doc = plistlib.loads(xml.read_bytes())
    edit(doc["Images"][0]["ROIs"][0])
    xml.write_bytes(plistlib.dumps(doc))
    with pytest.raises(DataError, match=f"{xml.name}: {message}"):
        load_source(root)
    xml.write_text("<plist><dict><key>Images</oops>")
    with pytest.raises(DataError, match=f"{xml.name}: not an OsiriX ROI plist"):
        load_source(root)


def test_missing_image_listed_and_near_miss(replica, tmp_path):
    root = _copy(replica, tmp_path)
    gone = next((root / "AllDICOMs").glob("*_L_CC_ANON.dcm"))
    gone.unlink()
    with pytest.raises(DataError, match=f"File Name {gone.name.split('_')[0]}: no AllDICOMs"):
        load_source(root)
    assert len(load_source(root, require_images=False).missing_files) == 1
    (root / "INbreast.xls").unlink()
    with pytest.raises(DataError, match="not a inbreast source: .*not INbreast.xls"):
        detect_kind(root)
