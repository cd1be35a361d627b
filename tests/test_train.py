import csv

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from mammolens.train import ArrayDataModule, TrainConfig, fit
from mammolens.train.tiny import TinyCNN
from mammolens.utils.configuration import from_dict
from mammolens.utils.errors import ConfigError, DataError


def _data(n=24, size=32, classes=2, seed=0):
    """Class c has a bright square of side 4 + 4c in the centre; noise elsewhere."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    arrays = {}
    for i, c in enumerate(labels):
        image = rng.random((size, size), dtype=np.float32) * 0.3
        if c:
            half = 2 + 2 * int(c)
            image[size // 2 - half : size // 2 + half, size // 2 - half : size // 2 + half] += 0.6
        arrays[f"s{i:02d}"] = np.clip(image, 0, 1)
    return arrays, list(arrays), labels


PARTS = {"train": range(16), "val": range(16, 24)}


def _cfg(**kw):
    base = {"epochs": 3, "batch_size": 4, "lr": 0.01, "accelerator": "cpu", "progress": False, "patience": 0}
    return from_dict(TrainConfig, base | kw, "train")


def _dm(cfg, classes=2, **kw):
    arrays, ids, labels = _data(classes=classes)
    return ArrayDataModule.from_config(arrays.__getitem__, ids, labels, PARTS, cfg, **kw)


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return TinyCNN(**kw)


class _Snapshots(Callback):
    def __init__(self):
        self.states, self.lrs = [], []

    def on_train_epoch_end(self, trainer, pl_module):
        self.states.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


class _Interrupt(Exception):
    pass


class _InterruptAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise _Interrupt


def test_fit_trains_writes_the_run_and_restores_the_best_epoch(tmp_path):
    cfg = _cfg(scheduler="cosine")
    result = fit(_model(), _dm(cfg), cfg, tmp_path)

    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.history[0]["lr"] == pytest.approx(0.01)
    assert result.history[1]["lr"] < result.history[0]["lr"]
    for row in result.history:
        assert set(row) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr"}
        assert np.isfinite([row["train_loss"], row["val_loss"]]).all()
    val_losses = [row["val_loss"] for row in result.history]
    assert result.best_epoch == int(np.argmin(val_losses)) + 1
    assert result.history[result.best_epoch - 1]["val_auc"] > 0.9  # the classes are easy to tell apart
    assert not result.stopped_early
    assert result.normalisation == {"mean": 0.449, "std": 0.226}

    best = torch.load(result.best_checkpoint, weights_only=True)["state_dict"]
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, best[f"model.{name}"]), name
    assert not result.model.training
    assert all(p.requires_grad for p in result.model.parameters())

    with open(tmp_path / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(val_losses)
    assert (tmp_path / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "logs").glob("*/metrics.csv"))
    assert list((tmp_path / "tensorboard").glob("*/events.out.tfevents.*"))


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    cfg = _cfg(epochs=4, scheduler="cosine", optimizer="adamw", weight_decay=0.01, deterministic=True)
    whole = fit(_model(dropout=0.3), _dm(cfg), cfg, tmp_path / "whole")

    with pytest.raises(_Interrupt):
        fit(_model(dropout=0.3), _dm(cfg), cfg, tmp_path / "cut", callbacks=[_InterruptAt(2)])
    with open(tmp_path / "cut" / "history.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(_model(dropout=0.3), _dm(cfg), cfg, tmp_path / "cut")
    # a fresh model: only the checkpoint (weights, optimiser, schedule, RNG, history) carries the state
    resumed = fit(_model(seed=99, dropout=0.3), _dm(cfg), cfg, tmp_path / "cut", resume=True)

    assert [row["epoch"] for row in resumed.history] == [1, 2, 3, 4]
    assert resumed.history == whole.history  # bit for bit: same batches, dropout masks, optimiser steps
    last_whole = torch.load(tmp_path / "whole/checkpoints/last.ckpt", weights_only=True)
    last_cut = torch.load(tmp_path / "cut/checkpoints/last.ckpt", weights_only=True)
    assert last_cut["global_step"] == last_whole["global_step"] == 16
    for name, tensor in last_whole["state_dict"].items():
        assert torch.equal(tensor, last_cut["state_dict"][name]), name


def test_resume_without_a_checkpoint_is_a_one_line_error(tmp_path):
    cfg = _cfg()
    with pytest.raises(ConfigError, match="nothing to resume"):
        fit(_model(), _dm(cfg), cfg, tmp_path, resume=True)


def test_early_stopping_stops_and_keeps_the_best_epoch(tmp_path):
    # frozen BatchNorm and an lr that moves nothing: the val loss never improves after epoch 1
    cfg = _cfg(epochs=6, patience=2, optimizer="sgd", lr=1e-30, transfer="frozen")
    result = fit(_model(), _dm(cfg), cfg, tmp_path)
    assert len(result.history) == 3 and result.stopped_early
    assert result.best_epoch == 1 and result.best_checkpoint.name == "best.ckpt"
    # last.ckpt follows every epoch, improved or not, so a resume never repeats epochs
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    assert torch.load(result.best_checkpoint, weights_only=True)["epoch"] == 0


def _changed(before, after, prefix):
    keys = [k for k in before if k.startswith(prefix)]
    assert keys
    return {k: not torch.equal(before[k], after[k]) for k in keys}


def test_frozen_trains_only_the_head_and_keeps_batchnorm_statistics(tmp_path):
    cfg = _cfg(epochs=2, transfer="frozen")
    model = _model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    snaps = _Snapshots()
    fit(model, _dm(cfg), cfg, tmp_path, callbacks=[snaps])
    final = snaps.states[-1]
    assert not any(_changed(initial, final, "block").values())  # weights and running_mean/var
    assert all(_changed(initial, final, "head.1").values())


def test_finetune_last_n_trains_the_head_then_the_last_blocks_at_a_lower_lr(tmp_path):
    cfg = _cfg(epochs=3, transfer="finetune-last-N", unfreeze_last_n=1, head_epochs=1, finetune_lr_scale=0.5)
    model = _model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    snaps = _Snapshots()
    fit(model, _dm(cfg), cfg, tmp_path, callbacks=[snaps])
    head_only, finetuned = snaps.states[0], snaps.states[-1]
    assert not any(_changed(initial, head_only, "block").values())
    assert all(_changed(initial, head_only, "head.1").values())
    assert not any(_changed(initial, finetuned, "block1").values())
    assert all(v for k, v in _changed(head_only, finetuned, "block2").items() if "num_batches" not in k)
    assert snaps.lrs[-1] == [pytest.approx(0.01), pytest.approx(0.005)]


def test_full_mode_trains_every_block(tmp_path):
    cfg = _cfg(epochs=1)
    model = _model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, _dm(cfg), cfg, tmp_path)
    assert all(_changed(initial, model.state_dict(), "block1.0").values())


def _val_proba(result, dm):
    from mammolens.train.losses import probabilities

    with torch.no_grad():
        return torch.cat([probabilities(result.model(x)) for x, _ in dm.eval_dataloader("val")]).numpy()


def test_bce_with_one_logit_and_focal_multiclass_with_balanced_weights(tmp_path):
    """The logged val AUC is scikit-learn's on the model's own validation outputs (1 epoch: the
    best epoch is the last, so the returned model is the one that was scored)."""
    from sklearn.metrics import roc_auc_score

    cfg = _cfg(epochs=1, loss="bce", class_weights=[1.0, 2.0])
    dm = _dm(cfg)
    result = fit(_model(num_classes=1), dm, cfg, tmp_path / "bce")
    y = dm.part_labels("val")
    assert result.history[-1]["val_auc"] == pytest.approx(roc_auc_score(y, _val_proba(result, dm)[:, 1]))

    cfg = _cfg(epochs=1, loss="focal", class_weights="balanced", optimizer="sgd", scheduler="step", lr_step_size=1)
    dm = _dm(cfg, classes=3)
    result = fit(_model(num_classes=3), dm, cfg, tmp_path / "focal")
    expected = roc_auc_score(dm.part_labels("val"), _val_proba(result, dm), multi_class="ovr", labels=[0, 1, 2])
    assert result.history[-1]["val_auc"] == pytest.approx(expected)
    cfg = _cfg(epochs=2, loss="focal", class_weights="balanced", optimizer="sgd", scheduler="step", lr_step_size=1)
    result = fit(_model(num_classes=3), _dm(cfg, classes=3), cfg, tmp_path / "focal2")
    assert result.history[1]["lr"] == pytest.approx(0.001)


def test_a_model_with_the_wrong_number_of_outputs_is_refused(tmp_path):
    cfg = _cfg(loss="ce")
    with pytest.raises(ConfigError, match=r"needs \(B, 2\): create the model with num_classes=2"):
        fit(_model(num_classes=1), _dm(cfg), cfg, tmp_path)
    with pytest.raises(ConfigError, match=r"class_weights has 3 values but the task has 2 classes"):
        fit(_model(), _dm(_cfg(class_weights=[1, 1, 1])), _cfg(class_weights=[1, 1, 1]), tmp_path)


def test_config_and_datamodule_must_agree(tmp_path):
    cfg = _cfg()
    arrays, ids, labels = _data()
    dm = ArrayDataModule(arrays.__getitem__, ids, labels, PARTS, batch_size=8)
    with pytest.raises(ConfigError, match="train.batch_size is 4 but the datamodule was built with 8"):
        fit(_model(), dm, cfg, tmp_path)
    with pytest.raises(ConfigError, match="train: .*strategy"):
        fit(_model(), _dm(_cfg(strategy="warp-drive")), _cfg(strategy="warp-drive"), tmp_path)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"parts": {"train": [0, 1, 2], "val": [2, 3]}}, DataError, "'s02' is in both 'train' and 'val' (leakage)"),
        ({"parts": {"train": [0, 1], "tune": [2]}}, DataError, "unknown part 'tune'"),
        ({"parts": {"train": [0, 99]}}, DataError, "row 99 is outside 0..23"),
        ({"labels": np.arange(24) * 0.5}, DataError, "expected integer class indices"),
        ({"labels": np.arange(24) % 3, "num_classes": 2}, DataError, "has label 2, not in 0..1"),
        ({"batch_size": 32, "drop_last": True}, ConfigError, "batch_size 32 exceeds the 16 training samples"),
        ({"image": np.zeros((1, 3, 32, 32), np.float32)}, DataError, "expected an (H, W) or (C, H, W) image"),
        ({"image": np.full((32, 32), 255.0, np.float32)}, DataError, "within [0, 1]"),
        ({"image": np.zeros((16, 16), np.float32)}, DataError, "preprocess all images to one size"),
    ],
)
def test_bad_data_is_a_one_line_error(change, error, message):
    arrays, ids, labels = _data()
    if "image" in change:
        arrays["s00"] = arrays["s05"] = change.pop("image")
        if arrays["s00"].shape == (16, 16):
            arrays["s00"] = np.zeros((32, 32), np.float32)
    kw = {"parts": PARTS, "labels": labels, "batch_size": 4} | change
    with pytest.raises(error) as info:
        dm = ArrayDataModule(arrays.__getitem__, ids, kw.pop("labels"), kw.pop("parts"), **kw)
        for _ in dm.train_dataloader():
            pass
    assert message in str(info.value) and "\n" not in str(info.value)


def test_training_needs_a_validation_part(tmp_path):
    cfg = _cfg()
    arrays, ids, labels = _data()
    dm = ArrayDataModule.from_config(arrays.__getitem__, ids, labels, {"train": range(16)}, cfg)
    with pytest.raises(DataError, match="needs a non-empty 'val' part"):
        fit(_model(), dm, cfg, tmp_path)
