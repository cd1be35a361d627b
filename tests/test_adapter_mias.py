import json
import os

import numpy as np
import pytest
from realdata import shared_folder

from mammolens.data.adapters import mias
from mammolens.data.adapters.base import ADAPTERS, detect_kind, load_source
from mammolens.utils.errors import ConfigError, DataError, MammolensError

# Mirrors the real Info.txt: prose header, ===== separators, notes with numbered lines, trailing
# spaces, NORM rows without severity, several rows for one image, benign + malignant on one image,
# a mass row without coordinates and a *NOTE 3* calcification row.
INFO = """\
              MAMMOGRAPHIC IMAGE ANALYSIS SOCIETY
                  MiniMammographic Database

Thank you for downloading the MIAS MiniMammographic Database.
19 January 1995
=================================================================

3rd column: Class of abnormality present:
                CALC - Calcification
NOTES
=====
1) The list is arranged in pairs of films, where each pair
2) The size of ALL the images is 1024 pixels x 1024 pixels.
=================================================================

mdb001 G CIRC B 10 20 5
mdb002 G NORM 
mdb003 D CALC B 5 5 2 
mdb003 D SPIC M 30 40 6
mdb004 F CIRC B
mdb005 D CALC M *NOTE 3* 
mdb006 D NORM 

=================================================================
"""

SIZES = {"mdb001": (48, 64), "mdb002": (64, 64), "mdb003": (64, 64), "mdb004": (64, 64), "mdb005": (64, 64), "mdb006": (64, 64)}


def write_pgm(path, height, width):
    pixels = (np.arange(height * width) % 256).astype(np.uint8)
    path.write_bytes(f"P5\n{width} {height}\n255\n".encode() + pixels.tobytes())


@pytest.fixture
def mias_dir(tmp_path):
    (tmp_path / "Info.txt").write_text(INFO)
    for ref, (h, w) in SIZES.items():
        write_pgm(tmp_path / f"{ref}.pgm", h, w)
    return tmp_path


def by_id(result):
    df = result.manifest.df
    return {row.sample_id: row for row in df.itertuples()}


def test_one_row_per_image_with_image_level_labels(mias_dir):
    rows = by_id(mias.load(mias_dir))
    assert sorted(rows) == [f"mias-mdb00{i}" for i in range(1, 7)]
    got = {k[5:]: (r.pathology, r.abnormality, r.lesion_type) for k, r in rows.items()}
    assert got == {
        "mdb001": ("benign", "CIRC", "mass"),
        "mdb002": ("normal", "NORM", "none"),
        "mdb003": ("malignant", "SPIC", "mass"),  # most severe finding wins; CALC B kept in meta
        "mdb004": ("benign", "CIRC", "mass"),
        "mdb005": ("malignant", "CALC", "calc"),
        "mdb006": ("normal", "NORM", "none"),
    }
    findings = json.loads(rows["mias-mdb003"].meta)["findings"]
    assert [(f["class"], f["severity"]) for f in findings] == [("CALC", "benign"), ("SPIC", "malignant")]
    assert json.loads(rows["mias-mdb003"].meta)["tissue"] == "dense-glandular"


def test_pairs_are_groups_and_even_films_are_right(mias_dir):
    rows = by_id(mias.load(mias_dir))
    assert [rows[f"mias-mdb00{i}"].group for i in range(1, 7)] == [
        "mias-pair-001", "mias-pair-001", "mias-pair-002", "mias-pair-002", "mias-pair-003", "mias-pair-003"
    ]
    assert all(r.patient_id == r.group for r in rows.values())
    # the films' mirror-written markers (read R on even films), not Info.txt note 1
    assert [rows[f"mias-mdb00{i}"].laterality for i in range(1, 7)] == ["L", "R"] * 3
    assert all(json.loads(r.meta)["stored_mirrored"] for r in rows.values())
    assert {r.view for r in rows.values()} == {"MLO"}


def test_rois_flip_bottom_left_origin_with_the_real_image_height(mias_dir):
    rows = by_id(mias.load(mias_dir))
    assert json.loads(rows["mias-mdb001"].rois) == [[10, 48 - 1 - 20, 5]]  # image is 48 rows tall
    assert json.loads(rows["mias-mdb003"].rois) == [[5, 58, 2], [30, 23, 6]]
    assert json.loads(rows["mias-mdb004"].rois) == []
    assert json.loads(rows["mias-mdb005"].rois) == []
    assert json.loads(rows["mias-mdb005"].meta)["findings"][0]["remark"] == "*NOTE 3*"


def test_notes_list_rows_without_coordinates_and_unlisted_images(mias_dir):
    write_pgm(mias_dir / "mdb007.pgm", 8, 8)
    result = mias.load(mias_dir)
    text = "\n".join(result.notes)
    assert "2 finding row(s) without coordinates" in text
    assert "mdb004 CIRC B" in text and "mdb005 CALC M" in text
    assert "no Info.txt row" in text and "mdb007.pgm" in text
    assert len(result.manifest) == 6


def test_png_films_and_info_path_and_detect(mias_dir):
    from PIL import Image

    os.remove(mias_dir / "mdb002.pgm")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(mias_dir / "mdb002.png")
    result = mias.load(mias_dir / "Info.txt")
    assert by_id(result)["mias-mdb002"].path == str(mias_dir / "mdb002.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(mias_dir / "mdb001.png")
    assert by_id(mias.load(mias_dir))["mias-mdb001"].path == str(mias_dir / "mdb001.pgm")
    assert any("the .pgm was used, not mdb001.png" in n for n in mias.load(mias_dir).notes)
    assert mias.detect(mias_dir) and mias.detect(mias_dir / "Info.txt")
    assert not mias.detect(mias_dir / "mdb001.pgm")
    assert ADAPTERS.get("mias").load is mias.load
    assert detect_kind(mias_dir) == "mias"


def test_missing_image_is_an_error_or_listed(mias_dir):
    os.remove(mias_dir / "mdb004.pgm")
    with pytest.raises(DataError, match="mdb004"):
        mias.load(mias_dir)
    result = mias.load(mias_dir, require_images=False)
    assert result.missing_files == [str(mias_dir / "mdb004.pgm")]
    assert "mias-mdb004" in by_id(result)
    assert any("1 image file(s) listed in Info.txt are missing" in n for n in result.notes)


def test_unreadable_image_names_the_file(mias_dir):
    (mias_dir / "mdb006.pgm").write_bytes(b"P5\nnot a header")
    with pytest.raises(MammolensError, match="mdb006.pgm"):
        mias.load(mias_dir)


def test_content_hash_follows_labels_and_rois_but_not_the_folder(mias_dir, tmp_path_factory):
    first = mias.load(mias_dir).manifest.content_hash()
    moved = tmp_path_factory.mktemp("moved")
    for p in mias_dir.iterdir():
        (moved / p.name).write_bytes(p.read_bytes())
    assert mias.load(moved).manifest.content_hash() == first  # a moved dataset keeps its splits
    info = moved / "Info.txt"
    info.write_text(info.read_text().replace("mdb001 G CIRC B 10 20 5", "mdb001 G CIRC M 10 20 5"))
    assert mias.load(moved).manifest.content_hash() != first  # a relabelled finding does not
    info.write_text(info.read_text().replace("mdb001 G CIRC M 10 20 5", "mdb001 G CIRC B 11 20 5"))
    assert mias.load(moved).manifest.content_hash() != first  # nor a moved circle


def test_lesion_task_has_one_sample_per_located_finding(mias_dir):
    from mammolens.data.tasks import derive_task

    manifest, labels = derive_task(mias.load(mias_dir).manifest, "benign-malignant")
    df = manifest.df
    # mdb003 has a benign CALC and a malignant SPIC: two samples, each with its own circle and label
    assert df["sample_id"].tolist() == ["mias-mdb001-f1", "mias-mdb003-f1", "mias-mdb003-f2"]
    assert labels.tolist() == [0, 0, 1]
    assert [json.loads(r) for r in df["rois"]] == [[[10, 27, 5]], [[5, 58, 2]], [[30, 23, 6]]]
    assert df["abnormality"].tolist() == ["CIRC", "CALC", "SPIC"] and df["group"].nunique() == 2
    # mdb004 (no coordinates) and mdb005 (*NOTE 3*) are left out, and said to be
    assert "mias-mdb004-f1" in manifest.notes[0] and "mias-mdb005-f1" in manifest.notes[0]
    kept, _ = derive_task(mias.load(mias_dir).manifest, "benign-malignant", keep_unlocated=True)
    assert len(kept) == 5 and not kept.notes


def test_unreadable_images_are_listed_not_fatal_when_images_are_optional(mias_dir):
    (mias_dir / "mdb006.pgm").write_bytes(b"P5\nnot a header")
    (mias_dir / "mdb002.pgm").write_bytes(b"")
    result = mias.load(mias_dir, require_images=False)
    assert len(result.manifest) == 6
    assert len(result.bad_files) == 2 and all(n in " ".join(result.bad_files) for n in ("mdb006", "mdb002"))


@pytest.mark.parametrize(
    "row, message",
    [
        ("mdb001 G CIRC 10 20 5", "lacks a severity"),
        ("mdb001 X CIRC B 10 20 5", "not 'REFNUM TISSUE"),
        ("mdb001 G BLOB B 10 20 5", "not 'REFNUM TISSUE"),
        ("mdb001 G CIRC B 10 20", "expected 'X Y RADIUS'"),
        ("mdb001 G CIRC B 10 60 5", "outside the 64x48 image"),
        ("mdb001 G NORM\nmdb001 G CIRC B 10 20 5", "both as NORM and as CIRC"),
    ],
)
def test_malformed_rows_are_one_line_errors(tmp_path, row, message):
    (tmp_path / "Info.txt").write_text(f"header\n=====\n{row}\n")
    write_pgm(tmp_path / "mdb001.pgm", 48, 64)
    with pytest.raises(DataError, match=message) as err:
        mias.load(tmp_path)
    assert "\n" not in str(err.value) and "mdb001" in str(err.value)


def test_folder_without_info_and_unknown_option(tmp_path, mias_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no Info.txt"):
        mias.load(tmp_path / "empty")
    with pytest.raises(ConfigError, match="resize"):
        load_source(mias_dir, "mias", resize=512)


def test_real_mini_mias_counts(shared_data):
    folder = shared_folder("mias")
    result = mias.load(folder)
    df = result.manifest.df
    assert len(df) == 258
    assert df["group"].nunique() == 129
    assert df["pathology"].value_counts().to_dict() == {"normal": 166, "benign": 50, "malignant": 42}
    assert df["abnormality"].value_counts().to_dict() == {
        "NORM": 166, "CALC": 20, "CIRC": 17, "SPIC": 17, "ARCH": 16, "MISC": 12, "ASYM": 10
    }
    assert sum(len(result.manifest.meta(i)["findings"]) for i in range(len(df))) == 263
    assert all(sorted(sides) == ["L", "R"] for _, sides in df.groupby("group")["laterality"])
    no_coords = next(n for n in result.notes if "without coordinates" in n)
    assert no_coords.startswith("4 finding row(s)")
    assert all(ref in no_coords for ref in ("mdb059", "mdb216", "mdb233", "mdb245"))
    assert all(0 <= x < 1024 and 0 <= y < 1024 for i in range(len(df)) for x, y, _ in result.manifest.rois(i))


def test_real_mias_laterality_and_mirrored_storage_match_the_chest_wall(shared_data):
    """The adapter's laterality (even = R, from the mirror-written markers) and the mirrored
    storage predict the chest-wall side: a mirrored right breast has its chest wall on the image's
    LEFT. Every film whose breast is clearly on one side (the breast mask's halves differ by more
    than 10 %) must agree; films that fill the frame say nothing either way."""
    from mammolens.io import read_image
    from mammolens.preprocess import Pipeline, Sample, breast_mask

    folder = shared_folder("mias")
    df = mias.load(folder).manifest.df
    orient = Pipeline({"steps": [{"name": "orient"}]})
    clear = 0
    for path, side in zip(df["path"], df["laterality"]):
        pixels = read_image(path).pixels
        mask, _ = breast_mask(pixels)
        half = mask.shape[1] // 2
        left, right = int(mask[:, :half].sum()), int(mask[:, -half:].sum())
        if abs(left - right) <= 0.1 * (left + right):
            continue
        clear += 1
        assert (left > right) == (side == "R"), path
        # content-based orientation puts the chest wall on the left whatever the header says
        out = orient(Sample(pixels=pixels, laterality="L" if side == "R" else "R")).pixels
        out_mask, _ = breast_mask(out)
        assert out_mask[:, :half].sum() > out_mask[:, -half:].sum(), path
    assert clear >= 0.95 * len(df)  # the check above is not vacuous
