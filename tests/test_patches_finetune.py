"""Fine-tuning the patch encoder: it learns (weights move, training loss falls on a toy task), it is
judged on validation films' patches only, a feature cache of the frozen encoder is never served for
the tuned one, a shifted negative never touches a finding, and bad options are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_patches_train import _config

from mammolens.cli import main
from mammolens.models import create_model
from mammolens.patches.config import PatchFinetune
from mammolens.patches.finetune import PatchPixels, finetune_encoder, safe_shift, trainable
from mammolens.patches.geometry import touches_circle

FINETUNE = {"epochs": 2, "lr": 0.01, "batch_size": 8, "shift": 2}


def _tiny(**training) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("patch-classifier", 2, backbone="tiny", patch_size=16, stride=8, aggregate="max",
                        training=training)


def _toy(n: int, seed: int) -> PatchPixels:
    """One 24 px film of faint noise per patch; a positive's patch holds a bright square."""
    rng = np.random.default_rng(seed)
    images, positions, labels = {}, [], []
    for f in range(n):
        image = rng.uniform(0.2, 0.4, (24, 24)).astype(np.float32)
        top, left = (int(v) for v in rng.integers(2, 7, 2))
        if f % 2:
            image[top + 5:top + 11, left + 5:left + 11] = 1.0
        images[f] = image
        positions.append((top, left))
        labels.append(f % 2)
    return PatchPixels(np.arange(n), np.array(positions), np.array(labels), np.full(n, 2), images, 16)


def test_finetuning_moves_the_encoder_and_lowers_the_training_loss() -> None:
    model = _tiny()
    with torch.no_grad():  # a head that knows nothing yet: epoch 0 scores validation at chance
        model.patch_head.weight.zero_()
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    cfg = PatchFinetune(epochs=12, lr=0.02, batch_size=16, shift=2)
    report = finetune_encoder(model, _toy(48, 0), _toy(16, 1), cfg, progress=False)
    losses = [row["train_loss"] for row in report["history"][1:]]
    assert losses[-1] < 0.8 * losses[0]
    assert report["best_epoch"] > 0
    assert report["history"][report["best_epoch"]]["val_patch_auc"] > report["history"][0]["val_patch_auc"]
    moved = [k for k, v in model.encoder.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in moved)
    assert all(p.requires_grad for p in model.parameters())  # left as found


def test_unfreezing_the_last_stage_trains_only_it_and_the_head() -> None:
    model = _tiny()
    params = trainable(model, PatchFinetune(unfreeze="last_1"))
    assert not any(p.requires_grad for p in model.encoder.block1.parameters())
    assert all(p.requires_grad for p in [*model.encoder.block2.parameters(), *model.patch_head.parameters()])
    assert {id(p) for p in params} == {id(p) for p in [*model.encoder.block2.parameters(), *model.patch_head.parameters()]}


def test_a_negative_never_shifts_onto_a_finding() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        circles = [tuple(rng.uniform(0, 60, 2)) + (float(rng.uniform(1, 8)),) for _ in range(2)]
        top, left = (int(v) for v in rng.integers(0, 50, 2))
        if any(touches_circle(top, left, 16, c) for c in circles):
            continue
        s = safe_shift(top, left, 16, circles, 6)
        assert 0 <= s <= 6
        for dy in range(-s, s + 1):
            for dx in range(-s, s + 1):
                assert not any(touches_circle(top + dy, left + dx, 16, c) for c in circles)


def test_a_stale_feature_cache_is_not_served_after_the_encoder_changes(tmp_path: Path) -> None:
    from mammolens.patches.features import PatchFeatureStore

    model = _tiny().eval()
    store = PatchFeatureStore(tmp_path, model)
    film = np.random.default_rng(0).uniform(0.1, 1.0, (32, 32)).astype(np.float32)
    frozen, _ = store.grid("film0", film)
    np.testing.assert_array_equal(store.grid("film0", film)[0], frozen)  # the same weights: served from the cache
    optimiser = torch.optim.SGD(model.encoder.parameters(), lr=0.5)
    model.encoder(torch.rand(4, 1, 16, 16)).pow(2).sum().backward()
    optimiser.step()
    tuned, valid = store.grid("film0", film)
    with torch.inference_mode():
        fresh = model.encode(model.cut(torch.from_numpy(film)[None, None])[0][torch.from_numpy(valid)]).numpy()
    assert not np.allclose(tuned, frozen)
    np.testing.assert_allclose(tuned, fresh, rtol=1e-5, atol=1e-6)
    assert len(list((tmp_path / "patches").iterdir())) == 2  # one folder per encoder state
    memory = PatchFeatureStore(None, model)
    np.testing.assert_allclose(memory.grid("film0", film)[0], fresh, rtol=1e-5, atol=1e-6)
    assert len(list((tmp_path / "patches").iterdir())) == 2  # in memory: nothing written


@pytest.fixture(scope="module")
def tuned_cv(tmp_path_factory) -> tuple[Path, list]:
    import mammolens.engine.patch_trainer as trainer

    tmp = tmp_path_factory.mktemp("patches-ft")
    seen = []
    real = trainer.finetune_encoder

    def spy(model, train, val, cfg, **kw):  # noqa: ANN001, ANN202
        seen.append((train.films.copy(), val.films.copy()))
        return real(model, train, val, cfg, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer, "finetune_encoder", spy)
        path = _config(tmp, **{"model.options.training.finetune": FINETUNE})
        assert main(["cv", str(path), "--folds", "2", "--out", str(tmp / "cv"), "--n-boot", "20"]) == 0
    return tmp / "cv", seen


def test_validation_patches_come_from_validation_films_only(tuned_cv) -> None:
    from mammolens.engine.crossval import fold_parts
    from mammolens.engine.config import load_config
    from mammolens.engine.sources import task_samples

    cv_dir, seen = tuned_cv
    cfg = load_config(cv_dir.parent / "tiny.yaml")
    manifest, labels, task = task_samples(cfg, progress=False)
    groups = manifest.df["group"].to_numpy()
    folds = fold_parts(manifest, labels, folds=2, seed=0, inner_val=0.2, task=task.name)
    assert len(seen) == len(folds) == 2
    for (train_films, val_films), parts in zip(seen, folds):
        assert set(val_films.tolist()) <= set(parts["val"].tolist()) and len(val_films)
        assert set(train_films.tolist()) <= set(parts["train"].tolist())
        assert not set(groups[val_films]) & (set(groups[parts["train"]]) | set(groups[parts["test"]]))


def test_a_tuned_fold_bundle_reproduces_its_out_of_fold_scores(tuned_cv) -> None:
    from mammolens.bundle.model import load_model_bundle
    from mammolens.engine.config import preprocess_config
    from mammolens.engine.config import load_config
    from mammolens.evaluate.predictions import proba_of, read_predictions
    from mammolens.preprocess import PreprocessCache

    cv_dir, _ = tuned_cv
    fold = cv_dir / "repeat0" / "fold0"
    report = json.loads((fold / "training" / "finetune.json").read_text())
    assert len(report["history"]) == FINETUNE["epochs"] + 1 and report["train_patches_per_s"] > 0
    selection = json.loads((fold / "training" / "selection.json").read_text())
    assert len(selection["table"]) == 9  # C in {0.1, 1} and the tuned head, x 3 aggregates
    assert any(row["C"] is None for row in selection["table"])
    cfg = load_config(cv_dir.parent / "tiny.yaml")
    # no fold's tuned features went to the shared cache: only the frozen encoder's folder is there
    assert len(list((Path(cfg.cache_dir) / "features" / "patches").iterdir())) == 1
    bundle = load_model_bundle(fold / "bundle")
    df, classes = read_predictions(fold / "oof.csv")
    cache = PreprocessCache(Path(cfg.cache_dir) / "preprocessed", preprocess_config(cfg))
    films = np.stack([cache.load(s) for s in df["sample_id"]])
    np.testing.assert_allclose(bundle.predict_proba(films), proba_of(df, classes), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("change", "message"), [
    ({"epochs": -1}, "model.options.training.finetune.epochs: must be an integer >= 0, got -1"),
    ({"unfreeze": "most"}, "model.options.training.finetune.unfreeze: 'most' is not 'all' or 'last_<k>' (e.g. last_2)"),
    ({"unfreeze": "last_3"}, "model.options.training.finetune.unfreeze: last_3 but the encoder has 2 stages"),
    ({"batch": 4}, "unknown config key 'model.options.training.finetune.batch'"),
])
def test_bad_finetune_options_are_one_line_before_any_work(tmp_path: Path, capsys, change, message) -> None:
    path = _config(tmp_path, **{"model.options.training.finetune": {**FINETUNE, **change}})
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert message in err.strip().splitlines()[-1]
    assert not (tmp_path / "cache" / "preprocessed").exists()
