import json

import numpy as np
import pytest

from mammolens.data.adapters import arrays
from mammolens.data.adapters.base import ADAPTERS, detect_kind, load_source
from mammolens.utils.errors import ConfigError, DataError


@pytest.fixture
def npy_dir(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((5, 8, 6), np.float32))
    np.save(tmp_path / "labels.npy", np.array([0, 1, 2, 3, 4]))
    return tmp_path


def test_default_five_class_encoding(npy_dir):
    result = arrays.load(npy_dir)
    df = result.manifest.df
    assert df["pathology"].tolist() == ["normal", "benign", "malignant", "benign", "malignant"]
    assert df["lesion_type"].tolist() == ["none", "mass", "mass", "calc", "calc"]
    assert df["frame"].tolist() == [0, 1, 2, 3, 4]
    assert set(df["path"]) == {str((npy_dir / "images.npy").resolve())}
    assert df["sample_id"].is_unique and df["group"].tolist() == df["sample_id"].tolist()
    assert json.loads(df["meta"].iat[3]) == {"label": 3, "label_name": "calc-benign"}
    assert any("each sample is its own group" in n for n in result.notes)
    assert ADAPTERS.get("arrays").load is arrays.load and arrays.detect(npy_dir)
    assert detect_kind(npy_dir) == "arrays"


def test_groups_and_images_file_path(npy_dir):
    np.save(npy_dir / "groups.npy", np.array(["p1", "p1", "p2", "p3", "p3"]))
    df = arrays.load(npy_dir / "images.npy").manifest.df
    assert df["group"].tolist() == ["p1", "p1", "p2", "p3", "p3"] == df["patient_id"].tolist()
    assert arrays.detect(npy_dir / "images.npy") and not arrays.detect(npy_dir / "labels.npy")


def test_label_names_remap_and_other_file_names(tmp_path):
    np.save(tmp_path / "x_train.npy", np.zeros((3, 4, 4), np.uint8))
    np.save(tmp_path / "y_train.npy", np.array([1.0, 0.0, 1.0]))  # integer labels saved as floats
    df = arrays.load(tmp_path / "x_train.npy", labels="y_train.npy", label_names={"0": "benign", 1: "malignant"}).manifest.df
    assert df["pathology"].tolist() == ["malignant", "benign", "malignant"]
    assert df["lesion_type"].tolist() == ["", "", ""]
    df = arrays.load(tmp_path / "x_train.npy", labels="y_train.npy", label_names=["normal", "malignant"]).manifest.df
    assert df["pathology"].tolist() == ["malignant", "normal", "malignant"]


def test_unmapped_label_names_file_and_value(npy_dir):
    np.save(npy_dir / "labels.npy", np.array([0, 1, 7, 3, 4]))
    with pytest.raises(DataError, match=r"labels\.npy: label value 7 is not in label_names"):
        arrays.load(npy_dir)


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([0, 1, 2]), "5 images but 3 labels"),
        (np.array([0.5, 1, 2, 3, 4]), "labels must be integers"),
        (np.zeros((5, 1), np.int64), "one integer per sample"),
    ],
)
def test_bad_labels(npy_dir, labels, message):
    np.save(npy_dir / "labels.npy", labels)
    with pytest.raises(DataError, match=message):
        arrays.load(npy_dir)


def test_bad_images_and_groups(npy_dir):
    np.save(npy_dir / "groups.npy", np.array(["p1", "p2"]))
    with pytest.raises(DataError, match="groups.npy: groups must be one id per sample"):
        arrays.load(npy_dir)
    np.save(npy_dir / "groups.npy", np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="without unpickling"):
        arrays.load(npy_dir)
    (npy_dir / "groups.npy").unlink()
    np.save(npy_dir / "images.npy", np.zeros((5, 8, 6, 3), np.uint8))
    with pytest.raises(DataError, match=r"\(N, H, W\)"):
        arrays.load(npy_dir)


def test_missing_images_error_or_listed(npy_dir):
    (npy_dir / "images.npy").unlink()
    with pytest.raises(DataError, match="images.npy: images file not found"):
        arrays.load(npy_dir)
    result = arrays.load(npy_dir, require_images=False)
    assert result.missing_files == [str((npy_dir / "images.npy").resolve())] and len(result.manifest) == 5
    (npy_dir / "labels.npy").unlink()
    with pytest.raises(DataError, match="labels file not found"):
        arrays.load(npy_dir, require_images=False)


def test_bad_options(npy_dir):
    with pytest.raises(ConfigError, match="unknown option.*shuffle.*known: label_names"):
        load_source(npy_dir, "arrays", shuffle=True)
    with pytest.raises(ConfigError, match="'cancer' is not one of"):
        arrays.load(npy_dir, label_names={0: "cancer"})
    with pytest.raises(ConfigError, match="key 'a' is not an integer"):
        arrays.load(npy_dir, label_names={"a": "normal"})
