import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import mammolens
from mammolens.bundle.model import FORMAT_VERSION, load_model_bundle, save_bundle
from mammolens.train import ArrayDataModule, TrainConfig, fit
from mammolens.train.losses import probabilities
from mammolens.train.normalisation import normalise
from mammolens.train.tiny import TinyCNN
from mammolens.utils.configuration import from_dict
from mammolens.utils.errors import ConfigError, DataError

PREPROCESS = {"size": [32, 32], "clahe": True}
CONFIG = {"model": {"name": "tiny-cnn"}, "train": {"epochs": 1}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    rng = np.random.default_rng(0)
    arrays = {f"s{i}": rng.random((32, 32), dtype=np.float32) for i in range(16)}
    labels = np.arange(16) % 2
    cfg = from_dict(TrainConfig, {"epochs": 1, "batch_size": 4, "accelerator": "cpu", "progress": False}, "train")
    dm = ArrayDataModule.from_config(
        arrays.__getitem__, list(arrays), labels, {"train": range(12), "val": range(12, 16)}, cfg,
        normalisation={"mean": 0.5, "std": 0.25},
    )  # fmt: skip
    torch.manual_seed(0)
    result = fit(TinyCNN(dropout=0.2), dm, cfg, tmp_path_factory.mktemp("run"))
    return result, np.stack(list(arrays.values()))


def _save(path, result, **kw):
    args = {
        "classes": ["benign", "malignant"],
        "task": "benign-malignant",
        "preprocess": PREPROCESS,
        "normalisation": result.normalisation,
        "threshold": 0.35,
        "temperature": 1.7,
        "metrics": {"val_auc": np.float32(0.75), "val_loss": float("nan")},
        "provenance": {"manifest_sha256": "ab" * 32, "split_sha256": "cd" * 32},
        "config": CONFIG,
    } | kw
    return save_bundle(path, result.model, **args)


def test_round_trip_predicts_bit_identically(trained, tmp_path):
    result, images = trained
    path = _save(tmp_path / "bundle", result)
    assert sorted(p.name for p in path.iterdir()) == ["bundle.json", "config.yaml", "model.safetensors"]
    bundle = load_model_bundle(path, model_factory=TinyCNN)

    with torch.no_grad():
        x = normalise(torch.from_numpy(images)[:, None], {"mean": 0.5, "std": 0.25})
        nchw = probabilities(result.model.eval()(x) / 1.7)
        # The bundle predicts in NHWC (faster on CPU): the same weights in that layout are bit-identical.
        nhwc = result.model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        expected = probabilities(nhwc / 1.7)
    got = torch.from_numpy(bundle.predict_proba(images))
    assert torch.equal(got, expected)
    torch.testing.assert_close(got, nchw, rtol=1e-5, atol=1e-6)
    assert got.shape == (16, 2)
    assert not torch.equal(got, probabilities(result.model(x)))  # the temperature is applied
    assert not bundle.model.training
    assert bundle.classes == ["benign", "malignant"] and bundle.task == "benign-malignant"
    assert bundle.threshold == 0.35 and bundle.temperature == 1.7
    assert bundle.preprocess == PREPROCESS and bundle.config == CONFIG
    assert bundle.normalisation == {"mean": 0.5, "std": 0.25}


def test_bundle_json_records_provenance(trained, tmp_path):
    result, _ = trained
    path = _save(tmp_path / "bundle", result)
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["model"] == {"name": "tiny-cnn", "num_classes": 2, "width": 4, "dropout": 0.2}
    assert meta["metrics"] == {"val_auc": 0.75, "val_loss": None}  # strict JSON: NaN becomes null
    prov = meta["provenance"]
    assert prov["manifest_sha256"] == "ab" * 32 and prov["split_sha256"] == "cd" * 32
    assert prov["packages"]["torch"] and torch.__version__.startswith(prov["packages"]["torch"].split("+")[0])
    assert set(prov["packages"]) >= {"mammolens", "torch", "timm", "lightning", "numpy"}
    assert isinstance(prov["git_dirty"], bool)
    in_checkout = (Path(mammolens.__file__).resolve().parents[2] / ".git").exists()
    assert re.fullmatch("[0-9a-f]{40}", prov["git_commit"]) if in_checkout else prov["git_commit"] == ""
    assert prov["created_at"].endswith("+00:00")
    assert yaml.safe_load((path / "config.yaml").read_text()) == CONFIG


def test_saving_again_replaces_the_bundle_and_a_failed_save_leaves_nothing(trained, tmp_path):
    result, _ = trained
    path = _save(tmp_path / "bundle", result)
    _save(path, result, threshold=0.9)
    assert load_model_bundle(path, model_factory=TinyCNN).threshold == 0.9
    with pytest.raises(ConfigError, match=r"config.when: a object cannot be saved"):
        _save(path, result, threshold=0.1, config={"when": object()})
    assert load_model_bundle(path, model_factory=TinyCNN).threshold == 0.9  # the old bundle is intact
    with pytest.raises(ConfigError):
        _save(tmp_path / "fresh", result, config={"when": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no half bundle, no temp dir


def test_refuses_to_replace_a_directory_that_is_not_a_bundle(trained, tmp_path):
    result, _ = trained
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="not a bundle; refusing to replace it"):
        _save(tmp_path / "notes", result)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda p: (p / "model.safetensors").unlink(), DataError, "model.safetensors: missing from the bundle"),
        (lambda p: (p / "bundle.json").unlink(), DataError, "bundle.json: missing from the bundle"),
        (lambda p: (p / "config.yaml").write_text("a: [1,"), DataError, "config.yaml: corrupt: not valid YAML"),
        (lambda p: (p / "bundle.json").write_text("{"), DataError, "bundle.json: corrupt: not valid JSON"),
        (
            lambda p: _edit_json(p, format_version=FORMAT_VERSION + 1),
            ConfigError,
            f"bundle format version {FORMAT_VERSION + 1} is not supported",
        ),
        (lambda p: _edit_json(p, classes=None, drop="classes"), DataError, "corrupt: missing key 'classes'"),
        (lambda p: _flip_last_byte(p / "model.safetensors"), DataError, "checksum does not match"),
    ],
)
def test_damaged_bundles_fail_with_one_line(trained, tmp_path, damage, error, message):
    result, _ = trained
    path = _save(tmp_path / "bundle", result)
    damage(path)
    with pytest.raises(error) as info:
        load_model_bundle(path, model_factory=TinyCNN)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_dir_and_mismatched_model(trained, tmp_path):
    with pytest.raises(ConfigError, match="bundle not found"):
        load_model_bundle(tmp_path / "nowhere", model_factory=TinyCNN)
    result, images = trained
    path = _save(tmp_path / "bundle", result)
    with pytest.raises(DataError, match="does not fit model 'tiny-cnn'"):
        load_model_bundle(path, model_factory=lambda **config: TinyCNN(**(config | {"width": 8})))
    bundle = load_model_bundle(path, model_factory=TinyCNN)
    with pytest.raises(DataError, match=r"\(N, H, W\)"):
        bundle.predict_proba(images[0])


def _edit_json(path, drop=None, **changes):
    meta = json.loads((path / "bundle.json").read_text())
    meta.update(changes)
    if drop:
        del meta[drop]
    (path / "bundle.json").write_text(json.dumps(meta))


def _flip_last_byte(file):
    data = bytearray(file.read_bytes())
    data[-1] ^= 0xFF
    file.write_bytes(bytes(data))
