"""VinDr-Mammo adapter on a replica written on the fly: layout, boxes, official split, bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from mammolens.cli import main
from mammolens.data import replicas
from mammolens.data.adapters.base import detect_kind, load_source
from mammolens.data.adapters.vindr import CALC
from mammolens.data.splits import check_no_leakage, make_holdout, make_official
from mammolens.utils.errors import DataError
from mammolens.io import read_image
from mammolens.preprocess.sample import default_loader, sample_from_row


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return replicas.write_vindr(tmp_path_factory.mktemp("vindr"), n_exams=4, compression=("none", "rle", "j2k"))


def _rewrite(path, change) -> None:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    change(rows)
    fields = list(rows[0])
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def _copy(replica, tmp_path):
    import shutil

    return shutil.copytree(replica.root, tmp_path / "vindr")


def test_detected_without_being_told_and_every_image_read(replica):
    assert detect_kind(replica.root) == "vindr"
    assert detect_kind(replica.root / "breast-level_annotations.csv") == "vindr"
    df = load_source(replica.root).manifest.df.set_index("path")
    assert len(df) == len(replica.images) == 16
    for truth in replica.images:
        row = df.loc[truth["file"]]
        assert (row["patient_id"], row["exam_id"], row["group"]) == (truth["patient"],) * 3
        assert (row["laterality"], row["view"], row["density"], row["birads"]) == (
            truth["laterality"], truth["view"], truth["density"], truth["birads"])
        assert json.loads(row["meta"])["official_split"] == truth["split"]
        assert [tuple(b["box"]) for b in json.loads(row["rois"])] == [tuple(map(float, b)) for b in truth["boxes"]]
    assert set(df.loc[df["birads"] == "1", "pathology"]) == {"normal"}
    assert set(df.loc[df["birads"] != "1", "pathology"]) == {""}  # nothing biopsied: no pathology claimed


def test_mixed_compressions_decode_to_the_written_pixels(replica):
    import pydicom

    syntaxes = set()
    for truth in replica.images[:3]:
        syntaxes.add(pydicom.dcmread(truth["file"], stop_before_pixels=True).file_meta.TransferSyntaxUID.name)
        image = read_image(truth["file"])
        assert image.pixels.shape == (96, 80) and image.meta.laterality == truth["laterality"]
    assert syntaxes == {"Explicit VR Little Endian", "RLE Lossless", "JPEG 2000 Image Compression (Lossless Only)"}


def test_boxes_become_box_rois_with_the_exact_area(replica):
    m = load_source(replica.root).manifest
    rows = m.df.to_dict("records")
    row = next(r for r in rows if [m["categories"] for m in json.loads(r["meta"])["marks"]] == [[CALC, "Mass"]])
    marks = json.loads(row["meta"])["marks"]
    assert marks[0]["categories"] == ["Suspicious Calcification", "Mass"] and marks[0]["birads"] == "3"
    assert row["lesion_type"] == ""  # a mass and a calcification: neither alone
    sample, _ = sample_from_row(row, default_loader)
    assert len(sample.rois) == 1 and sample.mask is not None
    assert sample.mask[10:25, 10:21].all() and sample.mask.sum() == 15 * 11  # corners inclusive
    x, y, r = sample.rois[0]
    assert (x, y) == pytest.approx((15, 17)) and r == pytest.approx(np.hypot(5, 7), rel=0.02)
    assert [r["view"] for r in rows if r["lesion_type"] == "calc"] == ["CC"]  # the same box, calcification only
    mass = next(r for r in rows if r["lesion_type"] == "mass")
    assert json.loads(mass["meta"])["marks"][0] == {"categories": ["Mass"], "birads": "4"}


def test_official_split_is_honoured_and_patients_stay_together(replica):
    m = load_source(replica.root).manifest
    labels = np.zeros(len(m), int)  # four studies are too few to stratify
    split = make_official(m, labels, val=0.25, seed=0)
    official = {r["sample_id"]: json.loads(r["meta"])["official_split"] for r in m.df.to_dict("records")}
    assert {official[s] for s in split.parts["test"]} == {"test"}
    assert {official[s] for s in split.parts["train"] + split.parts["val"]} == {"training"}
    assert split.parts["val"] and split.parts["train"]
    check_no_leakage(m, split)
    made = make_holdout(m, labels, val=0.25, test=0.25, seed=1)  # a made split groups by study too
    check_no_leakage(m, made)


def test_data_inspect_counts_every_image(replica, capsys):
    assert main(["data", "inspect", str(replica.root)]) == 0
    out = capsys.readouterr().out
    assert "samples  16 (image files: 16, missing: 0, unreadable: 0)" in out
    assert "4 patients, 4 exams (images per exam: 4: 4)" in out
    assert "density      A 4, B 4, C 4, D 4" in out and "laterality   L 8, R 8" in out and "view         CC 8, MLO 8" in out
    assert "birads       1 6, 2 4, 4 4, 3 2" in out and "lesion_type  none 10, mass 4, calc 1" in out


@pytest.mark.parametrize(("csv_name", "change", "message"), [
    ("finding_annotations.csv", lambda rows: rows[0].update(finding_categories="[Mass"),
     r"finding_annotations.csv: line 2: finding_categories '\[Mass' is not a list"),
    ("finding_annotations.csv", lambda rows: rows[0].update(xmax="500"),
     r"finding_annotations.csv: line 2: box \(10, 10, 500, 24\) is not inside the 80x96 image"),
    ("finding_annotations.csv", lambda rows: rows[0].update(xmin="ten"),
     r"line 2: xmin, ymin, xmax, ymax must be numbers"),
    ("breast-level_annotations.csv", lambda rows: rows[1].update(breast_density="DENSITY E"),
     r"breast-level_annotations.csv: line 3: breast_density 'DENSITY E' is not a BI-RADS density"),
    ("breast-level_annotations.csv", lambda rows: rows[2].update(breast_birads="BI-RADS 7"),
     r"line 4: breast_birads 'BI-RADS 7' is not a BI-RADS category"),
    ("breast-level_annotations.csv", lambda rows: rows[0].update(split="validation"),
     r"line 2: split 'validation' is not one of training, test"),
    ("breast-level_annotations.csv", lambda rows: rows.append(dict(rows[0])), r"line 18: image_id '\w+' is listed twice"),
])
def test_bad_input_is_one_line_naming_file_and_field(replica, tmp_path, csv_name, change, message):
    root = _copy(replica, tmp_path)
    _rewrite(root / csv_name, change)
    with pytest.raises(DataError, match=message) as info:
        load_source(root)
    assert "\n" not in str(info.value)


def test_missing_image_named_or_listed(replica, tmp_path):
    root = _copy(replica, tmp_path)
    gone = next((root / "images").rglob("*.dicom"))
    gone.unlink()
    with pytest.raises(DataError, match=f"{gone}: image file not found"):
        load_source(root)
    result = load_source(root, require_images=False)
    assert result.missing_files == [str(gone)] and len(result.manifest) == 16


def test_missing_column_and_near_miss(replica, tmp_path):
    root = _copy(replica, tmp_path)
    _rewrite(root / "breast-level_annotations.csv", lambda rows: [r.pop("breast_density") for r in rows])
    with pytest.raises(DataError, match="lacks column\\(s\\) 'breast_density'"):
        load_source(root)
    (root / "breast-level_annotations.csv").unlink()
    with pytest.raises(DataError, match="not a vindr source: .* not breast-level_annotations.csv"):
        detect_kind(root)


def test_official_split_refused_without_one(replica):
    m = load_source(replica.root).manifest
    stripped = m.subset(list(range(len(m))))
    stripped.df["meta"] = "{}"
    with pytest.raises(DataError, match="has no official split"):
        make_official(stripped, np.zeros(len(m), int))


def test_replica_command_writes_a_tree_the_adapter_reads(tmp_path):
    assert replicas.main(["vindr", str(tmp_path / "r"), "--n", "1", "--size", "64", "48", "--compression", "rle"]) == 0
    m = load_source(tmp_path / "r").manifest
    assert len(m) == 4 and read_image(m.df["path"].iat[0]).pixels.shape == (64, 48)


def test_data_split_official_from_the_command_line(replica, tmp_path, capsys):
    out = tmp_path / "split.json"
    assert main(["data", "split", str(replica.root), "--out", str(out), "--task", "mass-calc", "--official",
                 "--val", "0"]) == 0
    parts = json.loads(out.read_text())["parts"]
    official = {t["file"]: t["split"] for t in replica.images}
    m = load_source(replica.root).manifest.df.set_index("sample_id")
    assert {official[m.loc[s, "path"]] for s in parts["test"]} == {"test"}
    assert {official[m.loc[s, "path"]] for s in parts["train"]} == {"training"}
    assert main(["data", "split", str(replica.root), "--out", str(tmp_path / "x.json"), "--task", "mass-calc",
                 "--official", "--folds", "3"]) != 0
    assert "official (the source's train/test split) and folds do not go together" in capsys.readouterr().err


def test_inspect_of_a_bad_table_is_one_line_and_a_failing_exit(replica, tmp_path, capsys):
    root = _copy(replica, tmp_path)
    _rewrite(root / "finding_annotations.csv", lambda rows: rows[2].update(finding_birads="BI-RADS six"))
    assert main(["data", "inspect", str(root)]) != 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "finding_annotations.csv: line 4: finding_birads 'BI-RADS six'" in err
