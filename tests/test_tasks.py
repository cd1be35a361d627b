
import numpy as np
import pytest
from realdata import shared_folder

from mammolens.data.manifest import MIAS_CLASSES, Manifest
from mammolens.data.tasks import TASKS, derive_task, task_counts
from mammolens.utils.errors import ConfigError, DataError

# (pathology, abnormality, lesion_type) of a small MIAS-like source
ROWS = [
    ("normal", "NORM", "none"),
    ("benign", "CIRC", "mass"),
    ("malignant", "CALC", "calc"),
    ("malignant", "SPIC", "mass"),
    ("benign", "CALC", "calc"),
    ("normal", "NORM", "none"),
    ("", "", ""),  # unlabelled: excluded everywhere
]


def manifest(rows=ROWS, name="toy"):
    return Manifest.from_records(
        [
            {"sample_id": f"s{i}", "source": name, "path": f"/x/{i}.png", "group": f"g{i}",
             "pathology": p, "abnormality": a, "lesion_type": t}
            for i, (p, a, t) in enumerate(rows)
        ],
        name=name,
    )


def test_registry_holds_the_tasks():
    assert TASKS.names() == sorted(["benign-malignant", "normal-abnormal", "normal-benign-malignant", "mias-7class",
                                    "mass-calc", "mias-tissue", "density", "dense"])
    assert TASKS.get("mias-7class").classes == MIAS_CLASSES
    with pytest.raises(ConfigError, match="known: benign-malignant"):
        TASKS.get("birads")


def test_labels_and_exclusions():
    m = manifest(ROWS + [(p, a, t) for p, a, t in ROWS if a in ("NORM",)] + [("malignant", c, "mass") for c in ("MISC", "ARCH", "ASYM")])
    sub, y = derive_task(m, "benign-malignant")
    assert sub.df["sample_id"].tolist() == ["s1", "s2", "s3", "s4", "s9", "s10", "s11"]
    assert y.tolist() == [0, 1, 1, 0, 1, 1, 1] and y.dtype == np.int64
    _, y = derive_task(m, "normal-abnormal")
    assert y.tolist() == [0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1]
    _, y = derive_task(m, "normal-benign-malignant")
    assert y.tolist() == [0, 1, 2, 2, 1, 0, 0, 0, 2, 2, 2]
    sub, y = derive_task(m, "mias-7class")
    assert [MIAS_CLASSES[i] for i in y] == sub.df["abnormality"].tolist()
    assert sorted(set(y.tolist())) == list(range(7))
    _, y = derive_task(m, "mass-calc")
    assert y.tolist() == [0, 1, 0, 1, 0, 0, 0]


def test_missing_class_names_task_column_and_what_is_there():
    cbis = manifest([("benign", "", "mass"), ("malignant", "", "calc")], name="cbis-ddsm")
    with pytest.raises(DataError, match=r"task normal-abnormal needs normal samples; cbis-ddsm has none \(column pathology: benign 1, malignant 1\)"):
        derive_task(cbis, "normal-abnormal")
    with pytest.raises(DataError, match=r"mias-7class needs NORM, CALC, CIRC, .* \(column abnormality: \(empty\) 2\)"):
        derive_task(cbis, "mias-7class")
    only_benign = manifest([("benign", "CIRC", "mass")] * 3)
    with pytest.raises(DataError, match="needs malignant samples"):
        derive_task(only_benign, "benign-malignant", allow_missing_classes=True)


def test_allow_missing_classes_keeps_two_of_three():
    m = manifest([("normal", "NORM", "none"), ("malignant", "SPIC", "mass")])
    with pytest.raises(DataError, match="needs benign samples"):
        derive_task(m, "normal-benign-malignant")
    _, y = derive_task(m, "normal-benign-malignant", allow_missing_classes=True)
    assert y.tolist() == [0, 2]


def test_task_counts_lists_only_supported_tasks():
    counts = task_counts(manifest())
    assert counts == {
        "benign-malignant": {"benign": 2, "malignant": 2},
        "normal-abnormal": {"normal": 2, "abnormal": 4},
        "normal-benign-malignant": {"normal": 2, "benign": 2, "malignant": 2},
        "mass-calc": {"mass": 2, "calc": 2},
    }


def density_manifest(densities, tissues=None, name="toy"):
    import json

    return Manifest.from_records(
        [{"sample_id": f"s{i}", "source": name, "path": f"/x/{i}.png", "group": f"g{i}", "density": d,
          "meta": json.dumps({"tissue": t} if t else {})}
         for i, (d, t) in enumerate(zip(densities, tissues or [""] * len(densities)))],
        name=name,
    )


def test_density_labels_of_rows():
    density, dense = TASKS.get("density"), TASKS.get("dense")
    rows = [{"density": v} for v in ("A", "B", "C", "D", "", "a")] + [{}]  # the manifest stores A-D
    assert [density.label_of(r) for r in rows] == [0, 1, 2, 3, None, None, None]
    assert [dense.label_of(r) for r in rows] == [0, 0, 1, 1, None, None, None]
    assert TASKS.get("density").ordinal and TASKS.get("mias-tissue").ordinal and not TASKS.get("dense").ordinal


def test_density_tasks_from_the_density_column():
    m = density_manifest(["a", "B", "C", "d", "", ""])  # the manifest upper-cases the grades
    sub, y = derive_task(m, "density")
    assert sub.df["sample_id"].tolist() == ["s0", "s1", "s2", "s3"] and y.tolist() == [0, 1, 2, 3]
    _, y = derive_task(m, "dense")
    assert y.tolist() == [0, 0, 1, 1]
    with pytest.raises(DataError, match=r"task density needs C, D samples; toy has none \(column density: A 2, B 1, \(empty\) 1\)"):
        derive_task(density_manifest(["A", "A", "B", ""]), "density")


def test_density_task_on_a_manifest_without_grades_names_the_column():
    # MIAS grades tissue, not BI-RADS: one line naming the column and what it holds
    with pytest.raises(DataError, match=r"task dense needs non-dense, dense samples; toy has none \(column density: \(empty\) 7\)"):
        derive_task(manifest(), "dense")


def test_mias_tissue_reads_the_meta_tissue():
    m = density_manifest([""] * 4, ["fatty", "dense-glandular", "fatty-glandular", ""])
    sub, y = derive_task(m, "mias-tissue")
    assert sub.df["sample_id"].tolist() == ["s0", "s1", "s2"] and y.tolist() == [0, 2, 1]
    assert TASKS.get("mias-tissue").classes == ("fatty", "fatty-glandular", "dense-glandular")
    with pytest.raises(DataError, match=r"mias-tissue needs fatty, fatty-glandular, dense-glandular samples; "
                                        r"toy has none \(column meta.tissue: \(empty\) 7\)"):
        derive_task(manifest(), "mias-tissue")
    assert task_counts(m) == {"mias-tissue": {"fatty": 1, "fatty-glandular": 1, "dense-glandular": 1}}


def test_real_mias_task_counts(shared_data):
    from mammolens.data.adapters import mias

    counts = task_counts(mias.load(shared_folder("mias")).manifest)
    assert counts["normal-benign-malignant"] == {"normal": 166, "benign": 50, "malignant": 42}
    assert counts["normal-abnormal"] == {"normal": 166, "abnormal": 92}
    assert counts["mias-7class"] == {"NORM": 166, "CALC": 20, "CIRC": 17, "SPIC": 17, "MISC": 12, "ARCH": 16, "ASYM": 10}
    # lesion tasks: one sample per finding with coordinates (97 findings, 4 without: 1 CIRC, 3 CALC)
    assert counts["benign-malignant"] == {"benign": 52, "malignant": 41}
    assert counts["mass-calc"] == {"mass": 73, "calc": 20}
    assert counts["mias-tissue"] == {"fatty": 84, "fatty-glandular": 88, "dense-glandular": 86}  # the README's count
    assert "density" not in counts and "dense" not in counts  # MIAS grades tissue, not BI-RADS


def test_cbis_lesions_without_a_mask_file_are_left_out_of_lesion_tasks():
    import json

    from mammolens.data.manifest import Manifest

    rows = [{"sample_id": f"cbis-{i}", "source": "cbis-ddsm", "path": f"/films/{i // 2}.dcm", "group": f"P_{i // 2}",
             "pathology": "benign" if i % 2 else "malignant", "lesion_type": "mass",
             "mask_path": f"/masks/{i}.dcm" if i < 4 else "", "meta": json.dumps({"full_film": True})}
            for i in range(6)]
    sub, y = derive_task(Manifest.from_records(rows, name="cbis-ddsm"), "benign-malignant")
    assert sub.df["sample_id"].tolist() == ["cbis-0", "cbis-1", "cbis-2", "cbis-3"]
    assert "cbis-4 (malignant, no ROI mask file)" in sub.notes[0]
    unlocated = Manifest.from_records([dict(r, mask_path="") for r in rows], name="cbis-ddsm")
    with pytest.raises(DataError, match="no lesion of task benign-malignant has a location"):
        derive_task(unlocated, "benign-malignant")
    _, y = derive_task(unlocated, "benign-malignant", keep_unlocated=True)
    assert len(y) == 6
