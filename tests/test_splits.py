import json

import numpy as np
import pandas as pd
import pytest

from mammolens.data.manifest import Manifest
from mammolens.data.splits import (
    Split,
    check_no_leakage,
    load_split,
    make_holdout,
    make_kfold,
    save_split,
)
from mammolens.utils.errors import ConfigError, DataError


def _manifest(n_patients=(30, 18, 12), views=2, mixed=2):
    """Patients with `views` images each; the first `mixed` benign patients also have a normal film."""
    records, labels = [], []
    for cls, count in zip(("normal", "benign", "malignant"), n_patients):
        for p in range(count):
            for v in range(views):
                label = "normal" if cls == "benign" and p < mixed and v == 0 else cls
                records.append(
                    {"sample_id": f"{cls}-{p}-{v}", "source": "arrays", "path": f"/x/{cls}-{p}-{v}.png",
                     "group": f"{cls}-p{p}", "pathology": label}
                )
                labels.append(label)
    return Manifest.from_records(records), labels


def _part_of(split):
    return {s: part for part, ids in split.parts.items() for s in ids}


def _assert_grouped_and_complete(manifest, split):
    part_of = _part_of(split)
    assert sorted(part_of) == sorted(manifest.df["sample_id"])  # every sample exactly once
    assert sum(map(len, split.parts.values())) == len(manifest)
    parts_per_group = manifest.df.assign(part=manifest.df["sample_id"].map(part_of)).groupby("group")["part"].nunique()
    assert (parts_per_group == 1).all()


def _class_share(manifest, ids, cls):
    return (manifest.df.set_index("sample_id").loc[ids, "pathology"] == cls).mean()


def test_holdout_is_grouped_stratified_and_near_the_fractions():
    manifest, labels = _manifest()
    split = make_holdout(manifest, labels, val=0.15, test=0.15, seed=1, task="pathology")
    assert split.kind == "holdout" and split.task == "pathology" and list(split.parts) == ["train", "val", "test"]
    assert split.manifest_hash == manifest.content_hash()
    _assert_grouped_and_complete(manifest, split)
    for part in ("val", "test"):
        assert abs(len(split.parts[part]) / len(manifest) - 0.15) < 0.05
        for cls in ("normal", "benign", "malignant"):
            assert abs(_class_share(manifest, split.parts[part], cls) - np.mean(np.array(labels) == cls)) < 0.1


def test_holdout_fractions_are_met_closely_on_many_groups():
    manifest, labels = _manifest(n_patients=(200, 120, 80), views=1, mixed=0)
    split = make_holdout(manifest, labels, val=0.1, test=0.2, seed=0)
    assert len(split.parts["test"]) == 80 and len(split.parts["val"]) == 40  # 0.2 = 1/5; 0.1 of 0.8 = 1/8
    split = make_holdout(manifest, labels, val=0.0, test=0.15, seed=0)
    assert split.parts["val"] == [] and len(split.parts["test"]) == 60  # 3 of 20 folds


def test_kfold_is_grouped_stratified_and_folds_are_complements():
    manifest, labels = _manifest()
    split = make_kfold(manifest, labels, k=4, seed=2)
    assert split.kind == "kfold" and list(split.parts) == ["fold0", "fold1", "fold2", "fold3"]
    _assert_grouped_and_complete(manifest, split)
    for i in range(4):
        train, val = split.fold(i)
        assert val == split.parts[f"fold{i}"] and not set(train) & set(val)
        assert len(train) + len(val) == len(manifest)
        assert abs(_class_share(manifest, val, "malignant") - 24 / 120) < 0.1
    with pytest.raises(ConfigError, match="folds 0..3"):
        split.fold(4)
    with pytest.raises(ConfigError, match="needs a kfold split"):
        make_holdout(manifest, labels).fold(0)


def test_same_seed_same_split_whatever_the_row_order():
    manifest, labels = _manifest()
    a = make_kfold(manifest, labels, k=5, seed=7)
    assert make_kfold(manifest, labels, k=5, seed=7) == a
    assert make_kfold(manifest, labels, k=5, seed=8) != a
    order = np.random.default_rng(0).permutation(len(manifest))
    shuffled = Manifest(manifest.df.iloc[order].reset_index(drop=True))
    assert make_kfold(shuffled, [labels[i] for i in order], k=5, seed=7) == a
    h = make_holdout(manifest, labels, seed=3)
    assert make_holdout(shuffled, [labels[i] for i in order], seed=3) == h


def test_indices_point_at_the_part_samples():
    manifest, labels = _manifest()
    split = make_holdout(manifest, labels, seed=0)
    idx = split.indices(manifest, "test")
    assert sorted(manifest.df["sample_id"].iloc[idx]) == sorted(split.parts["test"])
    assert (np.diff(idx) > 0).all()
    with pytest.raises(ConfigError, match="unknown split part 'fold0'"):
        split.indices(manifest, "fold0")


def test_leaky_splits_are_refused():
    manifest, _ = _manifest(n_patients=(2, 2, 2), mixed=0)
    ids = manifest.df["sample_id"].tolist()
    leaky = Split({"train": ids[1:], "test": ids[:1]}, seed=0, manifest_hash=manifest.content_hash(), kind="holdout")
    message = r"group 'normal-p0' spans split parts 'train' and 'test' \(samples 'normal-0-1' and 'normal-0-0'\)"
    with pytest.raises(DataError, match=message):
        check_no_leakage(manifest, leaky)
    twice = Split(parts={"train": ids, "test": ids[:1]}, seed=0, manifest_hash="", kind="holdout")
    with pytest.raises(DataError, match=r"sample 'normal-0-0' is in both split parts 'train' and 'test'"):
        check_no_leakage(manifest, twice)
    stranger = Split(parts={"train": ids + ["ghost"]}, seed=0, manifest_hash="", kind="holdout")
    with pytest.raises(DataError, match="1 sample\\(s\\) not in the manifest, e.g. 'ghost'"):
        check_no_leakage(manifest, stranger)


def test_save_load_round_trip_and_refusals(tmp_path):
    manifest, labels = _manifest()
    split = make_kfold(manifest, labels, k=3, seed=4, task="pathology")
    path = save_split(split, tmp_path / "splits" / "k3.json")
    assert json.loads(path.read_text())["format"] == "mammolens-split"
    assert load_split(path) == split
    assert load_split(path, manifest) == split

    stale = manifest.df.copy()
    stale.loc[0, "pathology"] = "malignant"
    with pytest.raises(DataError, match=r"k3.json: split was made for manifest \w+, but this manifest is \w+"):
        load_split(path, Manifest(stale))

    data = json.loads(path.read_text())
    data["parts"]["fold0"].append(data["parts"]["fold1"][0])
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="k3.json: sample .* is in both split parts"):
        load_split(path)

    regrouped = manifest.df.copy()
    regrouped.loc[regrouped["sample_id"] == split.parts["fold1"][0], "group"] = manifest.df.loc[
        manifest.df["sample_id"] == split.parts["fold0"][0], "group"
    ].iat[0]
    leaky = Split(split.parts, 4, Manifest(regrouped).content_hash(), "kfold")
    save_split(leaky, path)
    with pytest.raises(DataError, match="k3.json: group .* spans split parts"):
        load_split(path, Manifest(regrouped))

    for text, message in (("{", "cannot read split"), ("[]", "not a mammolens split"),
                          ('{"format": "mammolens-split", "version": 1, "parts": [], "seed": 0, '
                           '"manifest_hash": "", "kind": "kfold", "task": ""}', "field 'parts'")):
        path.write_text(text)
        with pytest.raises(DataError, match=message):
            load_split(path)
    with pytest.raises(DataError, match="split file not found"):
        load_split(tmp_path / "nope.json")


def test_too_small_to_split():
    manifest, labels = _manifest(n_patients=(10, 10, 3), mixed=0)
    message = r"^cannot make 5 folds: class 'malignant' has 3 patient groups \(need at least 5\)$"
    with pytest.raises(DataError, match=message):
        make_kfold(manifest, labels, k=5)
    assert len(make_kfold(manifest, labels, k=3).parts) == 3
    manifest, labels = _manifest(n_patients=(10, 10, 2), mixed=0)
    with pytest.raises(DataError, match="cannot make a train/val/test split: class 'malignant' has 2 patient groups"):
        make_holdout(manifest, labels)
    split = make_holdout(manifest, labels, val=0.0, test=0.2)  # two parts need only two groups per class
    _assert_grouped_and_complete(manifest, split)


def test_bad_inputs():
    manifest, labels = _manifest()
    with pytest.raises(DataError, match="119 labels for a manifest of 120 samples"):
        make_kfold(manifest, labels[:-1])
    missing = list(labels)
    missing[5] = None
    with pytest.raises(DataError, match="sample 'normal-2-1' has no label"):
        make_holdout(manifest, pd.Series(missing))
    with pytest.raises(ConfigError, match="val \\+ test must be below 1"):
        make_holdout(manifest, labels, val=0.5, test=0.5)
    with pytest.raises(ConfigError, match="test fraction"):
        make_holdout(manifest, labels, test=-0.1)
    with pytest.raises(ConfigError, match="k must be at least 2"):
        make_kfold(manifest, labels, k=1)
