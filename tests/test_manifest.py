"""The shared contracts: Manifest validation and persistence, config loading, registries, atomic writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from mammolens.data.manifest import Manifest
from mammolens.utils import atomic
from mammolens.utils.configuration import apply_overrides, from_dict, load_yaml
from mammolens.utils.errors import ConfigError, DataError
from mammolens.utils.registry import Registry


def _rows(n: int = 3, root: str = "/data") -> list[dict]:
    return [
        dict(sample_id=f"s{i}", source="x", path=f"{root}/s{i}.png", group=f"g{i // 2}",
             pathology=("benign", "malignant", "normal")[i % 3], rois="[[1, 2, 3]]" if i == 0 else "[]")
        for i in range(n)
    ]


def test_defaults_and_roi_parsing() -> None:
    m = Manifest.from_records(_rows())
    assert m.df["frame"].tolist() == [-1, -1, -1]
    assert m.df["laterality"].tolist() == ["", "", ""]
    assert m.rois(0) == [(1.0, 2.0, 3.0)] and m.rois(1) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.__setitem__(1, {**r[1], "sample_id": "s0"}), "duplicate sample_id 's0'"),
        (lambda r: r.__setitem__(0, {**r[0], "pathology": "cancer"}), "pathology='cancer'"),
        (lambda r: r.__setitem__(2, {**r[2], "group": ""}), "row 2 has an empty 'group'"),
    ],
)
def test_invalid_rows_are_one_line_errors(change, message: str) -> None:
    rows = _rows()
    change(rows)
    with pytest.raises(DataError, match=message):
        Manifest.from_records(rows)


def test_missing_required_column() -> None:
    import pandas as pd

    with pytest.raises(DataError, match="lacks required column"):
        Manifest(pd.DataFrame({"sample_id": ["a"], "path": ["/a"]}))


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_save_load_round_trip(tmp_path, suffix: str) -> None:
    m = Manifest.from_records(_rows())
    path = m.save(tmp_path / f"m{suffix}")
    back = Manifest.load(path)
    assert back.df.equals(m.df)
    assert back.content_hash() == m.content_hash()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_content_hash_ignores_row_order_and_file_location_but_not_labels() -> None:
    m = Manifest.from_records(_rows())
    assert Manifest.from_records(_rows()[::-1]).content_hash() == m.content_hash()
    assert Manifest.from_records(_rows(root="/moved")).content_hash() == m.content_hash()
    relabelled = _rows()
    relabelled[0]["pathology"] = "malignant"
    assert Manifest.from_records(relabelled).content_hash() != m.content_hash()


def test_unreadable_manifest(tmp_path) -> None:
    with pytest.raises(DataError, match="manifest file not found"):
        Manifest.load(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="end in .parquet or .csv"):
        Manifest.from_records(_rows()).save(tmp_path / "m.txt")


@dataclass
class Inner:
    size: int = 3
    mode: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str = "x"
    lr: float = 0.1
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    path: str | None = None


def test_from_dict_builds_nested_dataclasses_and_names_bad_keys() -> None:
    cfg = from_dict(Outer, {"lr": 1, "inner": {"size": 5, "mode": "b"}, "tags": ["t"]})
    assert cfg == Outer(lr=1.0, inner=Inner(5, "b"), tags=["t"])
    with pytest.raises(ConfigError, match="unknown config key 'inner.sise'"):
        from_dict(Outer, {"inner": {"sise": 5}})
    with pytest.raises(ConfigError, match="inner.size: expected int"):
        from_dict(Outer, {"inner": {"size": "big"}})
    with pytest.raises(ConfigError, match="inner.mode: 'c' is not one of"):
        from_dict(Outer, {"inner": {"mode": "c"}})
    with pytest.raises(ConfigError, match="tags: expected a list"):
        from_dict(Outer, {"tags": "t"})


def test_overrides_and_yaml_errors(tmp_path) -> None:
    data = apply_overrides({"inner": {"size": 1}}, ["inner.size=7", "lr=0.5", "path=null"])
    assert from_dict(Outer, data) == Outer(lr=0.5, inner=Inner(7))
    with pytest.raises(ConfigError, match="must look like key=value"):
        apply_overrides({}, ["novalue"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_yaml(bad)


def test_registry_lists_known_names() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("b", 2)
    reg.add("a", 1)
    assert reg.get("a") == 1 and reg.names() == ["a", "b"] and "b" in reg
    with pytest.raises(ConfigError, match="unknown widget 'c'; known: a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("a", 3)


def test_atomic_write_leaves_nothing_on_failure(tmp_path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_open(target) as fh:
        fh.write("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
