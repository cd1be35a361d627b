import json

import numpy as np
import pytest
from PIL import Image

from mammolens.data.adapters import folders
from mammolens.data.adapters.base import ADAPTERS, detect_kind, load_source
from mammolens.utils.errors import ConfigError, DataError


def img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 6), 128, np.uint8)).save(path)
    return path


@pytest.fixture
def mendeley(tmp_path):
    top = tmp_path / "Dataset of Mammography"
    for rel in ("Benign Masses/INbreast/a.png", "Benign Masses/MIAS Dataset/c.png",
                "Malignant Masses/DDSM/d (1).jpg", "Malignant Masses/e.png"):
        img(top / rel)
    (top / "Malignant Masses" / "._e.png").write_bytes(b"\x00\x05")  # macOS resource fork
    (top / "readme.txt").write_text("about")
    return tmp_path


@pytest.fixture
def mini_ddsm(tmp_path):
    for rel in ("Benign/0001/B_0001_1.LEFT_CC.jpg", "Benign/0001/B_0001_1.LEFT_MLO.jpg",
                "Benign/0001/B_0001_1.LEFT_CC_Mask.jpg", "Cancer/0029/C_0029_1.RIGHT_MLO.jpg",
                "Cancer/0029/C_0029_1.RIGHT_MLO_Mask.jpg", "Cancer/0001/C_0001_1.LEFT_CC.jpg",
                "Normal/0005/A_0005_1.RIGHT_CC.png"):
        img(tmp_path / rel)
    (tmp_path / "Normal" / "0005" / "A_0005.ics").write_text("ics")
    return tmp_path


def rows(result):
    return {r.sample_id.removeprefix("folders-"): r for r in result.manifest.df.itertuples()}


def test_mendeley_layout_nested_with_sub_sources(mendeley):
    result = folders.load(mendeley)
    got = rows(result)
    top = "Dataset of Mammography/"
    assert sorted(got) == [top + p for p in ("Benign Masses/INbreast/a.png", "Benign Masses/MIAS Dataset/c.png",
                                             "Malignant Masses/DDSM/d (1).jpg", "Malignant Masses/e.png")]
    ordered = [got[k] for k in sorted(got)]
    assert [r.pathology for r in ordered] == ["benign", "benign", "malignant", "malignant"]
    assert {r.lesion_type for r in ordered} == {"mass"}
    assert [json.loads(r.meta)["sub_source"] for r in ordered] == ["INbreast", "MIAS", "DDSM", ""]
    assert all(r.group == r.sample_id for r in got.values())  # flat files: one group each
    assert got[top + "Malignant Masses/e.png"].path == str(mendeley / top / "Malignant Masses/e.png")
    notes = "\n".join(result.notes)
    assert "4 image(s) sit directly in label folders" in notes and "dedup" in notes
    assert "ignored 2 non-image or hidden file(s)" in notes


def test_mini_ddsm_case_folders_are_groups_and_masks_are_skipped(mini_ddsm):
    result = folders.load(mini_ddsm)
    got = rows(result)
    assert sorted(got) == ["Benign/0001/B_0001_1.LEFT_CC.jpg", "Benign/0001/B_0001_1.LEFT_MLO.jpg",
                           "Cancer/0001/C_0001_1.LEFT_CC.jpg", "Cancer/0029/C_0029_1.RIGHT_MLO.jpg",
                           "Normal/0005/A_0005_1.RIGHT_CC.png"]
    summary = {k: (r.pathology, r.lesion_type, r.group, r.laterality, r.view) for k, r in got.items()}
    assert summary["Benign/0001/B_0001_1.LEFT_MLO.jpg"] == ("benign", "", "Benign/0001", "L", "MLO")
    assert summary["Cancer/0001/C_0001_1.LEFT_CC.jpg"] == ("malignant", "", "Cancer/0001", "L", "CC")
    assert summary["Cancer/0029/C_0029_1.RIGHT_MLO.jpg"] == ("malignant", "", "Cancer/0029", "R", "MLO")
    assert summary["Normal/0005/A_0005_1.RIGHT_CC.png"] == ("normal", "none", "Normal/0005", "R", "CC")
    assert result.manifest.df["group"].nunique() == 4
    notes = "\n".join(result.notes)
    assert "skipped 2 annotation image(s)" in notes and "ignored 1 non-image" in notes
    assert "directly in label folders" not in notes
    assert "2 in 'Benign' (benign), 2 in 'Cancer' (malignant), 1 in 'Normal' (normal)" in notes


def test_unmapped_folder_is_an_error_naming_it_and_the_known_names(mini_ddsm):
    img(mini_ddsm / "Suspicious" / "0002" / "S_0002_1.LEFT_CC.jpg")
    with pytest.raises(DataError, match=r"under 'Suspicious'; known label folders: benign, benign masses, cancer"):
        folders.load(mini_ddsm)
    mapping = {"Benign": "benign", "CANCER": "malignant", "normal": "normal", "suspicious": "benign"}
    df = folders.load(mini_ddsm, label_map=mapping).manifest.df
    assert len(df) == 6 and (df["pathology"] == "benign").sum() == 3


def test_image_outside_label_folders_and_empty_folder(tmp_path, mini_ddsm):
    img(mini_ddsm / "stray.png")
    with pytest.raises(DataError, match="outside any label folder, e.g. under 'stray.png'"):
        folders.load(mini_ddsm)
    (tmp_path / "empty" / "Benign").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        folders.load(tmp_path / "empty")


def test_bad_options(mini_ddsm):
    with pytest.raises(ConfigError, match="'Benign' -> 'cancer'"):
        folders.load(mini_ddsm, label_map={"Benign": "cancer"})
    with pytest.raises(ConfigError, match="unknown option.*recursive"):
        load_source(mini_ddsm, "folders", recursive=True)


@pytest.mark.parametrize(
    "stem, expected",
    [
        ("C_0029_1.LEFT_CC", ("L", "CC")),
        ("c_0029_1.right_mlo", ("R", "MLO")),
        ("20586908_6c613a14b80a8591_MG_R_CC_ANON", ("R", "CC")),
        ("RMLO_0003", ("R", "MLO")),
        ("mdb001", ("", "")),
        ("L_scan_2", ("", "")),  # a lone L is not a side unless a view follows
        ("LEFT_RIGHT_CC", ("", "CC")),  # contradicting sides -> unknown
    ],
)
def test_side_and_view_from_file_names(stem, expected):
    assert folders.side_and_view(stem) == expected


def test_detect_and_registry(mendeley, mini_ddsm, tmp_path):
    assert folders.detect(mendeley) and folders.detect(mini_ddsm)
    (tmp_path / "other" / "x").mkdir(parents=True)
    assert not folders.detect(tmp_path / "other")
    assert ADAPTERS.get("folders").load is folders.load
    assert detect_kind(mendeley) == detect_kind(mini_ddsm) == "folders"
