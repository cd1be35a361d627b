"""``evaluate`` and ``explain-eval`` on a bundle's own training data: a loud warning (terminal, metrics,
report), a refusal with ``--strict``; bundles record what they were fitted on without naming it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mammolens.cli import main
from mammolens.data.adapters.base import load_source
from mammolens.data.fingerprints import FITTED_ON, fitted_on_record
from mammolens.data.synthetic import generate
from mammolens.cli.evaluate import label_source
from mammolens.models import create_model
from mammolens.bundle import save_bundle


@pytest.fixture(scope="module")
def seen(tmp_path_factory):
    """A synthetic source and a bundle that records 6 of its samples (train 4, val 2) as its own."""
    root = tmp_path_factory.mktemp("seen")
    source = generate(root / "syn", n_per_class=4, size=64, seed=0, progress=False)
    manifest, _ = label_source(load_source(str(source)).manifest, "benign-malignant")
    torch.manual_seed(0)
    model = create_model("scratch-cnn", 2, depth=1, width=4, hidden=8)
    bundle = save_bundle(root / "bundle", model, classes=["benign", "malignant"], task="benign-malignant",
                         preprocess={"steps": [{"name": "resize", "size": 32}]}, normalisation={"mean": 0.5, "std": 0.25},
                         temperature=1.3, metrics={}, config={},
                         provenance={FITTED_ON: fitted_on_record(manifest, {"train": np.arange(4), "val": np.arange(4, 6)})})
    return source, bundle, manifest


def test_the_record_names_no_sample(seen):
    source, bundle, manifest = seen
    text = (Path(bundle) / "bundle.json").read_text()
    assert not any(sid in text for sid in manifest.df["sample_id"])
    assert len(json.loads(text)["provenance"][FITTED_ON]["train"]["samples"]) == 4


def test_evaluate_warns_loudly_and_refuses_with_strict(seen, tmp_path, capsys):
    source, bundle, manifest = seen
    women = manifest.df["group"].iloc[:6].nunique()
    out = tmp_path / "ev"
    assert main(["evaluate", str(bundle), str(source), "--out", str(out), "--cache-dir", str(tmp_path / "c"),
                 "--n-boot", "0"]) == 0
    err = capsys.readouterr().err
    line = f"6 of {len(manifest)} samples and {women} of {manifest.df['group'].nunique()} women here were in the training"
    assert "WARNING" in err and line in err
    assert any(line in w for w in json.loads((out / "metrics.json").read_text())["warnings"])
    assert "WARNING: " + line in (out / "report.html").read_text()
    strict = tmp_path / "strict"
    assert main(["evaluate", str(bundle), str(source), "--out", str(strict), "--cache-dir", str(tmp_path / "c"),
                 "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line in err[0] and "--strict refuses" in err[0]
    assert not strict.exists()


def test_explain_eval_warns_and_refuses_with_strict(seen, tmp_path, capsys):
    source, bundle, _ = seen
    args = ["explain-eval", str(bundle), str(source), "--method", "gradcam", "--limit", "3"]
    assert main([*args, "--out", str(tmp_path / "e")]) == 0
    assert "were in the training or validation data of the bundle" in capsys.readouterr().err
    assert "WARNING" in (tmp_path / "e" / "localisation.html").read_text()
    assert main([*args, "--out", str(tmp_path / "s"), "--strict"]) == 2
    assert "--strict refuses" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
