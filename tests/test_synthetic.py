import csv
import json

import cv2
import numpy as np
import pytest

from mammolens.data import synthetic
from mammolens.data.adapters.base import ADAPTERS, load_source
from mammolens.data.adapters.synthetic import detect, load
from mammolens.utils.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("syn") / "data", n_per_class=4, size=96, seed=3)


def _rows(root):
    with open(root / "synthetic.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_layout_and_csv(dataset):
    rows = _rows(dataset)
    assert len(rows) == 12
    assert list(rows[0]) == list(synthetic.CSV_COLUMNS)
    assert sorted(p.name for p in (dataset / "images").iterdir()) == sorted(r["file"][len("images/") :] for r in rows)
    by_patient = {}
    for r in rows:
        by_patient.setdefault(r["patient"], []).append(r)
    assert len(by_patient) == 6
    for views in by_patient.values():  # one breast, two views, one finding
        assert sorted(v["view"] for v in views) == ["CC", "MLO"]
        assert len({(v["laterality"], v["pathology"], v["lesion_type"]) for v in views}) == 1
    assert {r["pathology"] for r in rows} == {"normal", "benign", "malignant"}
    for r in rows:
        has_roi = r["roi_x"] != ""
        assert has_roi == (r["pathology"] != "normal")
        assert (r["lesion_type"] == "none") == (r["pathology"] == "normal")


def test_images_are_16_bit_breasts_against_the_chest_wall(dataset):
    for r in _rows(dataset):
        img = cv2.imread(str(dataset / r["file"]), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint16 and img.shape == (96, 96)
        chest, nipple_side = (img[:, :3], img[:, -3:]) if r["laterality"] == "L" else (img[:, -3:], img[:, :3])
        assert (chest[40:56] > 0).all()  # tissue reaches the chest wall mid-height
        assert (nipple_side[40:56] == 0).all()  # background beyond the nipple
        assert img.max() > 20000 and np.median(img[img > 0]) < 40000


def test_same_seed_is_byte_identical_and_another_seed_differs(tmp_path):
    a = synthetic.generate(tmp_path / "a", n_per_class=2, size=64, seed=5)
    b = synthetic.generate(tmp_path / "b", n_per_class=2, size=64, seed=5)
    c = synthetic.generate(tmp_path / "c", n_per_class=2, size=64, seed=6)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if (c / f).exists())


@pytest.mark.parametrize("pathology", ["benign", "malignant"])
def test_masses_are_brighter_than_their_surroundings_at_the_roi(pathology):
    for seed in range(10):
        img, rois = synthetic.generate_array(np.random.default_rng(seed), 128, pathology, "mass")
        assert img.dtype == np.float32 and img.min() >= 0 and img.max() <= 1
        (x, y, r), = rois
        assert 0 <= x < 128 and 0 <= y < 128 and r > 2
        yy, xx = np.mgrid[:128, :128]
        d = np.hypot(xx - x, yy - y)
        ring = img[(d > 1.5 * r) & (d < 2.5 * r) & (img > 0)]
        assert img[d <= 0.6 * r].mean() > np.median(ring), seed


@pytest.mark.parametrize("pathology", ["benign", "malignant"])
def test_calcifications_are_bright_dots_inside_the_roi(pathology):
    for seed in range(10):
        img, ((x, y, r),) = synthetic.generate_array(np.random.default_rng(seed), 128, pathology, "calc")
        yy, xx = np.mgrid[:128, :128]
        d = np.hypot(xx - x, yy - y)
        ring = img[(d > 1.5 * r) & (d < 2.5 * r) & (img > 0)]
        assert img[d <= r].max() - np.median(ring) > 0.1, seed


def test_generate_array_options_and_errors():
    rng = np.random.default_rng(0)
    img, rois = synthetic.generate_array(rng, 64, "normal", view="MLO", laterality="R", label=False)
    assert rois == [] and img.shape == (64, 64)
    left, _ = synthetic.generate_array(np.random.default_rng(1), 64, "normal", view="CC", laterality="L", label=False)
    right, _ = synthetic.generate_array(np.random.default_rng(1), 64, "normal", view="CC", laterality="R", label=False)
    np.testing.assert_array_equal(left[:, ::-1], right)
    with pytest.raises(ConfigError, match="lesion_type 'calc' does not fit pathology 'normal'"):
        synthetic.generate_array(np.random.default_rng(0), 64, "normal", "calc")
    with pytest.raises(ConfigError, match="pathology 'cancer'"):
        synthetic.generate_array(np.random.default_rng(0), 64, "cancer")
    with pytest.raises(ConfigError, match="at least 64"):
        synthetic.generate_array(np.random.default_rng(0), 32, "benign")


def test_generate_validates_options(tmp_path):
    with pytest.raises(ConfigError, match="'cancer'"):
        synthetic.generate(tmp_path / "x", classes=("normal", "cancer"))
    with pytest.raises(ConfigError, match="calc_fraction"):
        synthetic.generate(tmp_path / "x", calc_fraction=1.5)
    with pytest.raises(ConfigError, match="n_per_class"):
        synthetic.generate(tmp_path / "x", n_per_class=0)
    assert not (tmp_path / "x").exists()


def test_calc_fraction_and_class_subset(tmp_path):
    rows = _rows(synthetic.generate(tmp_path / "d", n_per_class=6, size=64, classes=("malignant",), calc_fraction=1.0))
    assert len(rows) == 6 and {r["lesion_type"] for r in rows} == {"calc"}
    rows = _rows(synthetic.generate(tmp_path / "d", n_per_class=3, size=64, classes=("benign",), calc_fraction=0.0))
    assert len(rows) == 3 and {r["lesion_type"] for r in rows} == {"mass"}  # odd count: last patient has one view


def test_regenerating_replaces_a_synthetic_folder_but_never_user_files(tmp_path):
    out = synthetic.generate(tmp_path / "d", n_per_class=4, size=64)
    synthetic.generate(out, n_per_class=2, size=64)
    assert len(list((out / "images").iterdir())) == 6  # no stale images from the first run
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary folders left behind
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="refusing to overwrite"):
        synthetic.generate(tmp_path / "mine", n_per_class=1, size=64)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_a_crash_leaves_nothing_half_written(tmp_path, monkeypatch):
    calls = []

    def failing_encode(img):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return cv2.imencode(".png", np.zeros((2, 2), np.uint16))[1].tobytes()

    monkeypatch.setattr(synthetic, "_encode_png16", failing_encode)
    with pytest.raises(RuntimeError, match="disk full"):
        synthetic.generate(tmp_path / "d", n_per_class=2, size=64)
    assert list(tmp_path.iterdir()) == []


def test_adapter_builds_the_manifest(dataset):
    assert "synthetic" in ADAPTERS.names()
    assert detect(dataset) and detect(dataset / "synthetic.csv") and not detect(dataset / "images")
    result = load(dataset)
    df = result.manifest.df
    assert len(df) == 12 and result.missing_files == []
    assert (df["source"] == "synthetic").all() and (df["frame"] == -1).all()
    assert (df["group"] == df["patient_id"]).all() and df.groupby("group").size().eq(2).all()
    assert set(df["abnormality"]) <= {"NORM", "CIRC", "SPIC", "CALC"}
    assert (df.loc[df["pathology"] == "normal", "abnormality"] == "NORM").all()
    for i, row in enumerate(_rows(dataset)):
        assert df["path"].iat[i] == str(dataset / row["file"])
        roi = [] if row["roi_x"] == "" else [tuple(float(row[k]) for k in ("roi_x", "roi_y", "roi_r"))]
        assert result.manifest.rois(i) == roi
        assert json.loads(df["meta"].iat[i]) == {}
    assert "12 synthetic images of 6 patients" in result.notes[0]


def test_adapter_missing_images_and_bad_rows(tmp_path):
    root = synthetic.generate(tmp_path / "d", n_per_class=2, size=64)
    first = _rows(root)[0]["file"]
    (root / first).unlink()
    with pytest.raises(DataError, match="not found") as err:
        load(root)
    assert first.split("/")[-1] in str(err.value)
    result = load(root, require_images=False)
    assert result.missing_files == [str(root / first)] and len(result.manifest) == 6
    with pytest.raises(ConfigError, match="unknown option"):
        load_source(root, "synthetic", colour=True)
    text = (root / "synthetic.csv").read_text().replace(",normal,none,", ",normal,calc,", 1)
    (root / "synthetic.csv").write_text(text)
    with pytest.raises(DataError, match=r"synthetic.csv:2: lesion_type 'calc' does not fit"):
        load(root, require_images=False)
    (root / "synthetic.csv").write_text("file,patient\nx.png,p\n")
    with pytest.raises(DataError, match="lacks column"):
        load(root)
