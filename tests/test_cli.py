"""The `mammolens` command end to end on tiny synthetic data, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mammolens.bundle import load_model_bundle
from mammolens.cli import main

TINY = {
    "name": "tiny",
    "data": {"source": "synthetic", "task": "benign-malignant",
             "synthetic": {"n_per_class": 12, "size": 64, "seed": 1}, "split": {"val": 0.25, "test": 0.25}},
    "image_size": 32,
    "model": {"name": "scratch-cnn", "options": {"depth": 2, "width": 4}},
    "train": {"epochs": 2, "batch_size": 8, "patience": 0, "progress": False},
    "workers": 1,
}


@pytest.fixture()
def tiny_config(tmp_path: Path) -> Path:
    cfg = dict(TINY, cache_dir=str(tmp_path / "cache"))
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_writes_a_bundle_that_reproduces_its_scores(tiny_config: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", str(tiny_config), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"]["train"] + summary["samples"]["val"] + summary["samples"]["test"] == 24
    assert set(summary["metrics"]) == {"val", "test"}
    bundle = load_model_bundle(out / "bundle")
    assert bundle.classes == ["benign", "malignant"]
    assert bundle.metrics == summary["metrics"]
    assert bundle.provenance["manifest_hash"] and bundle.provenance["split_file_hash"]
    assert (out / "training" / "learning_curves.png").stat().st_size > 0
    # The recorded test AUC is what the bundle gives on the cached test arrays.
    from sklearn.metrics import roc_auc_score

    from mammolens.data.manifest import Manifest
    from mammolens.data.splits import load_split
    from mammolens.engine.config import load_config
    from mammolens.preprocess import PreprocessCache, default_config

    manifest = Manifest.load(out / "manifest.csv")
    split = load_split(out / "split.json", manifest)
    cache = PreprocessCache(Path(load_config(tiny_config).cache_dir) / "preprocessed", default_config(size=32))
    ids = split.parts["test"]
    y = (manifest.df.set_index("sample_id").loc[ids, "pathology"] == "malignant").to_numpy().astype(int)
    proba = bundle.predict_proba(np.stack([cache.load(s) for s in ids]))[:, 1]
    assert roc_auc_score(y, proba) == pytest.approx(summary["metrics"]["test"]["auc"])
    # A second run into the same directory is refused unless asked to resume or replace it.
    assert main(["train", str(tiny_config), "--out", str(out)]) == 2
    assert "already" in capsys.readouterr().err


def test_split_groups_patients_and_a_leaky_split_file_is_refused(tiny_config: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "split.json"
    args = ["data", "split", "synthetic", "--out", str(out), "--task", "normal-abnormal"]
    assert main(args) == 0  # built-in synthetic source, cached under $MAMMOLENS_CACHE
    split = json.loads(out.read_text())
    from mammolens.engine.config import ExperimentConfig
    from mammolens.engine.sources import load_experiment_source

    manifest, _ = load_experiment_source(ExperimentConfig())
    group = dict(zip(manifest.df["sample_id"], manifest.df["group"]))
    groups = {part: {group[s] for s in ids} for part, ids in split["parts"].items()}
    assert set(groups) == {"train", "val", "test"}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"]) and not (groups["val"] & groups["test"])
    # Move one image of a two-view patient into another part: that split leaks the patient.
    pair = next(g for g in groups["test"] if sum(1 for s in split["parts"]["test"] if group[s] == g) == 2)
    moved = next(s for s in split["parts"]["test"] if group[s] == pair)
    split["parts"]["test"].remove(moved)
    split["parts"]["train"].append(moved)
    leaky = tmp_path / "leaky.json"
    leaky.write_text(json.dumps(split))
    capsys.readouterr()
    code = main(["train", str(tiny_config), "--out", str(tmp_path / "run"), "--set", "data.task=normal-abnormal",
                 "--set", "data.synthetic.n_per_class=60", "--set", "data.synthetic.size=256",
                 "--set", "data.synthetic.seed=0", "--set", f"data.split.file={leaky}"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"group {pair!r} spans split parts" in err and "leaks a patient" in err
    assert not (tmp_path / "run").exists()


def test_a_refused_run_leaves_the_old_run_byte_identical(tiny_config: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", str(tiny_config), "--out", str(out), "--set", "train.epochs=1"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["train", str(tiny_config), "--out", str(out), "--set", "data.split.seed=5"]) == 2
    err = capsys.readouterr().err
    assert "already holds the output of `mammolens train`" in err and "--resume" in err and "--fresh" in err and "--out" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # Resuming with another split seed would train on what the run held out: refused, naming it.
    assert main(["train", str(tiny_config), "--out", str(out), "--resume", "--set", "data.split.seed=7"]) == 2
    assert "data.split.seed is 7 now but 0 in the run" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_run_and_bundle_files_honour_the_umask(tiny_config: Path, tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        assert main(["train", str(tiny_config), "--out", str(tmp_path / "run"), "--set", "train.epochs=1"]) == 0
    finally:
        os.umask(old)
    for path in [tmp_path / "run", *(tmp_path / "run").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044, (path, oct(mode))  # group and others can read a deployed bundle
        if path.is_dir():
            assert mode & 0o011 == 0o011, (path, oct(mode))


@pytest.mark.parametrize("argv, expected", [
    (["models"], "hybrid-lite"),
    (["train", "demo", "--set", "train.bogus=1"], "unknown config key 'train.bogus'"),
    (["train", "demo", "--set", "model.name=nope"], "unknown model 'nope'"),
])
def test_listing_models_and_config_typos_need_no_torch(argv, expected) -> None:
    """`mammolens models` and config checks answer before torch is imported (it costs seconds and ~1 GB)."""
    code = ("import sys, contextlib, io; from mammolens.cli import main; buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf): rc = main(sys.argv[1:])\n"
            "print(rc, 'torch' in sys.modules, buf.getvalue())")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    rc, torch_loaded, output = proc.stdout.split(" ", 2)
    assert torch_loaded == "False", output
    assert expected in output and rc == ("0" if argv == ["models"] else "2")


def test_inspect_lists_every_unreadable_file_and_preview_writes_what_out_says(tmp_path: Path, capsys) -> None:
    from mammolens.data.synthetic import generate

    source = generate(tmp_path / "synth", n_per_class=4, size=64, seed=3)
    broken = sorted((source / "images").glob("*.png"))[:2]
    for path in broken:
        path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert main(["data", "inspect", str(source)]) == 0
    out = capsys.readouterr().out
    assert "unreadable: 2" in out and all(p.name in out for p in broken)
    film = tmp_path / "film.png"
    good = generate(tmp_path / "good", n_per_class=2, size=64, seed=4)
    assert main(["data", "preview", str(good), "--original", "--n", "3", "--out", str(film)]) == 0
    assert f"wrote {film}" in capsys.readouterr().out
    assert film.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.glob("film*")) == ["film.png"]


def test_inspect_and_preview_synthetic(tmp_path: Path, capsys) -> None:
    cfg = ["-o", "dummy=1"]
    assert main(["data", "inspect", "synthetic", *cfg]) == 2  # unknown adapter option
    assert "dummy" in capsys.readouterr().err
    assert main(["data", "inspect", "synthetic", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pathology"] == {"benign": 60, "malignant": 60, "normal": 60}
    assert report["groups"] == 90
    sheet = tmp_path / "sheet.png"
    assert main(["data", "preview", "synthetic", "--out", str(sheet), "--n", "4", "--size", "64",
                 "--workers", "1", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.name=nope", "unknown model 'nope'"),
        ("train.bogus=1", "unknown config key 'train.bogus'"),
        ("data.task=mias-7class", "task mias-7class needs"),
        ("data.split.folds=20", "cannot make 20 folds"),
    ],
)
def test_bad_configs_fail_in_one_line(tiny_config: Path, tmp_path: Path, capsys, override: str, expected: str) -> None:
    code = main(["train", str(tiny_config), "--out", str(tmp_path / "run"), "--set", override])
    err = capsys.readouterr().err.strip().replace("\r", "\n")  # progress bars may precede the error
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith("mammolens: error:")]
    assert len(errors) == 1 and expected in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "bundle").exists()


def test_console_script_reports_a_missing_source_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mammolens.cli", "data", "inspect", str(tmp_path / "absent")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"mammolens: error: {tmp_path / 'absent'}: dataset source not found"


def test_inspect_real_mias_prints_the_documented_counts(shared_data: str, capsys) -> None:
    assert main(["data", "inspect", f"{shared_data}/mias"]) == 0
    out = capsys.readouterr().out
    assert "samples  258 " in out
    assert "129 split groups" in out
    assert "pathology    normal 166, benign 50, malignant 42" in out
    assert "NORM 166, CALC 20, CIRC 17, SPIC 17, ARCH 16, MISC 12, ASYM 10" in out
    for ref in ("mdb059", "mdb216", "mdb233", "mdb245"):
        assert ref in out  # the finding rows without coordinates are named


def test_inspect_real_cbis_csvs_without_images(shared_data: str, capsys) -> None:
    assert main(["data", "inspect", f"{shared_data}/cbis-ddsm"]) == 0
    out = capsys.readouterr().out
    assert "file mass_case_description_train_set.csv: 1318 rows, 691 patients, BENIGN 577, BENIGN_WITHOUT_CALLBACK 104, MALIGNANT 637" in out
    assert "file mass_case_description_test_set.csv: 378 rows, 201 patients, BENIGN 194, BENIGN_WITHOUT_CALLBACK 37, MALIGNANT 147" in out
    assert "file calc_case_description_train_set.csv: 1546 rows, 602 patients, BENIGN 528, BENIGN_WITHOUT_CALLBACK 474, MALIGNANT 544" in out
    assert "file calc_case_description_test_set.csv: 326 rows, 151 patients, BENIGN 130, BENIGN_WITHOUT_CALLBACK 67, MALIGNANT 129" in out
    assert "missing image files: 3103" in out


SHIPPED = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", [str(p) for p in SHIPPED], ids=[p.stem for p in SHIPPED])
def test_shipped_configs_find_their_data_and_make_the_documented_samples(path: str, shared_data: str) -> None:
    """Relative sources resolve against the config file, wherever the command runs; lesion
    configs have one sample per located finding and never keep whole films among crops."""
    from mammolens.engine.config import load_config
    from mammolens.engine.sources import task_samples

    cfg = load_config(path)
    assert Path(cfg.data.source).resolve() == (Path(shared_data) / "mias").resolve()
    manifest, labels, task = task_samples(cfg, progress=False)
    steps = cfg.preprocess.get("steps", [])
    if task.unit == "lesion":
        assert np.bincount(labels).tolist() == [52, 41]
        assert all(s.get("on_missing", "error") == "error" for s in steps if s["name"] == "crop_roi")
        # multiscale_crop has no whole-film fallback: a sample without its circle is an error
        assert any(s["name"] in ("crop_roi", "multiscale_crop") for s in steps)
    elif cfg.data.holdout:  # women set aside before any choice (the density configs): 26 of 129, both films each
        assert len(manifest) == 258 - 52 and manifest.df["group"].nunique() == 129 - 26
    else:
        assert len(manifest) == 258


def test_builtin_demo_config_is_valid() -> None:
    from mammolens.engine.config import load_config

    cfg = load_config("demo")
    assert cfg.model.name == "hybrid" and cfg.roi_crop


def test_kfold_run_trains_on_the_other_folds(tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "fold1"
    assert main(["train", str(tiny_config), "--out", str(out), "--set", "data.split.folds=3",
                 "--set", "data.split.fold=1", "--set", "train.epochs=1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    split = json.loads((out / "split.json").read_text())
    assert summary["samples"] == {"train": 24 - len(split["parts"]["fold1"]), "val": len(split["parts"]["fold1"])}
    assert set(summary["metrics"]) == {"val"}
