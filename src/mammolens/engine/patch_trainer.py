"""The patch classifier's trainer (``train_on_parts`` picks it for a ``patch-classifier`` config).

1. Preprocess the films (the config's pipeline, e.g. orient, crop_breast, ..., resize 512).
2. Sample training patches from the training part's films only (``sampling.py``) and compute their
   frozen-encoder features (cached per film, ``features.py``). With ``training.finetune``: train
   the encoder and patch head on them (``finetune.py``; the epoch chosen on the validation part's
   films' patches), then take every feature again from the fine-tuned encoder (kept in memory).
3. For each regularisation strength C: a standardised, class-balanced logistic regression on the
   patch features, folded into the model's patch head; every film's score map from its cached
   sliding-window features; a stage-2 linear model on the training films' OUT-OF-FOLD map summaries
   (``stage2_inputs``: each film's map from a patch head refitted without its woman's patches, since
   a head's maps of its own training films are more confident than any new film's).
4. Choose (C, aggregation) on the inner validation part's films only (AUC for two classes, macro F1
   otherwise), then temperature and threshold on the same part, as every mammolens model does.
5. Score the held-out parts through the model's own map -> aggregation code and save the Bundle,
   whose model slides the patch classifier over any preprocessed film.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mammolens.bundle import Bundle, save_bundle
from mammolens.data.manifest import Manifest
from mammolens.data.tasks import Task
from mammolens.engine.config import (
    ExperimentConfig,
    preprocess_config,
    train_config,
)
from mammolens.engine.trainers import (
    TRAINERS,
    TrainedParts,
    choose_bundle_aggregator,
    choose_operating_point,
    part_metrics,
    record_operating_point,
)
from mammolens.evaluate.metrics import macro_f1, roc_auc
from mammolens.models import create_model
from mammolens.patches.features import PatchFeatureStore
from mammolens.patches.finetune import PatchPixels, finetune_encoder, safe_shift
from mammolens.patches.geometry import grid_positions, touches_circle
from mammolens.patches.model import PatchFilmModel
from mammolens.patches.sampling import film_findings, normal_index, sample_film
from mammolens.preprocess import Pipeline, PreprocessCache
from mammolens.train import FitResult
from mammolens.utils import atomic
from mammolens.utils.configuration import to_dict
from mammolens.utils.errors import ConfigError, DataError

IDENTITY = {"mean": 0.0, "std": 1.0}  # the model reads [0, 1] pixels: tissue is what is > 0
STAGE2_FOLDS = 3  # patient-grouped folds of the training films whose out-of-fold maps stage 2 is fitted on
_ABSENT = -30.0  # bias of a class no training patch had: its probability stays ~0


def patch_model(cfg: ExperimentConfig, task: Task) -> PatchFilmModel:
    """The configured model (options checked, weights loaded) before anything heavy runs."""
    normal = normal_index(task.classes)
    options = dict(cfg.model.options)
    if options.setdefault("normal_class", normal) != normal:
        raise ConfigError(f"model.options.normal_class: {options['normal_class']} is not the index of "
                          f"{task.classes[normal]!r} ({normal}) in task {task.name}")
    torch.manual_seed(train_config(cfg).seed)  # initial weights (the tiny encoder's) are part of what a seed reproduces
    return create_model("patch-classifier", len(task.classes), pretrained=cfg.model.pretrained, in_chans=1, **options)


@dataclass
class PatchSet:
    """Training patches: encoder features, labels, and the manifest row of the film each came from."""

    features: np.ndarray
    labels: np.ndarray
    films: np.ndarray
    positions: np.ndarray
    normal: int

    def counts(self) -> dict[str, int]:
        return {"positive": int((self.labels != self.normal).sum()), "negative": int((self.labels == self.normal).sum()),
                "films": len(np.unique(self.films))}


def training_patches(model: PatchFilmModel, store: PatchFeatureStore, cache: PreprocessCache, manifest: Manifest,
                     labels: np.ndarray, task: Task, rows: np.ndarray, *, progress: bool = True) -> PatchSet:
    """The patches of films ``rows`` (the training part: no other film gives one), with features."""
    records = manifest.df.to_dict("records")
    sample_ids = manifest.df["sample_id"].tolist()
    keys = cache.sample_keys(sample_ids)
    xs, ys, films, where = [], [], [], []
    for i in tqdm(rows, desc="training patches", unit="film", disable=not progress):
        film = cache.load(sample_ids[i])
        found = film_findings(records[i], cache.load_rois(sample_ids[i]), task.label_of, int(labels[i]), model.normal_class)
        pos, lab = sample_film(film, found, sample_ids[i], model.patch_size, model.normal_class, model.training_cfg,
                               model.min_tissue)
        if len(pos):
            xs.append(store.at(keys[i], film, pos))
            ys.append(lab)
            films.append(np.full(len(lab), i))
            where.append(pos)
    if not xs:
        raise DataError("the training part gave no patches (no breast tissue above min_tissue, no located findings)")
    return PatchSet(np.concatenate(xs), np.concatenate(ys), np.concatenate(films), np.concatenate(where),
                    model.normal_class)


@TRAINERS.register("patch-classifier")
def train_patch_parts(cfg: ExperimentConfig, manifest: Manifest, labels: np.ndarray, task: Task,
                      parts: dict[str, np.ndarray], out_dir: Path, *, resume: bool = False, progress: bool = True,
                      provenance: dict[str, Any] | None = None):

    t0 = time.perf_counter()
    if task.unit != "film":
        raise ConfigError(f"model.name: patch-classifier scores whole films; task {task.name} is a {task.unit} task")
    model = patch_model(cfg, task).eval()
    pre_cfg = preprocess_config(cfg)
    cache = PreprocessCache(Path(cfg.cache_dir) / "preprocessed", pre_cfg)
    build = cache.build(manifest, workers=cfg.workers, progress=progress)
    sample_ids = manifest.df["sample_id"].tolist()
    keys = cache.sample_keys(sample_ids)
    shape = cache.load(sample_ids[parts["train"][0]]).shape
    if model.patch_size > min(shape):
        raise ConfigError(f"model.options.patch_size: {model.patch_size} is larger than the preprocessed film "
                          f"({shape[1]}x{shape[0]}); use a smaller patch or a larger resize")
    store = PatchFeatureStore(Path(cfg.cache_dir) / "features", model)
    tcfg = model.training_cfg
    # Training patches: the training part's films only.
    patches = training_patches(model, store, cache, manifest, labels, task, parts["train"], progress=progress)
    x_train, y_train, counts = patches.features, patches.labels, patches.counts()
    if len(np.unique(y_train)) < 2:
        raise DataError(f"the training part gave patches of one class only ({counts}); "
                        "it needs findings with coordinates and normal tissue")
    tuned: dict[str, Any] | None = None
    if tcfg.finetune is not None:
        tuned = _finetune(model, store, cache, manifest, labels, task, parts, patches, progress=progress)
        atomic.write_json(out_dir / "training" / "finetune.json", tuned)
        store = PatchFeatureStore(None, model)  # this fold's own encoder: its features stay in memory
        patches = training_patches(model, store, cache, manifest, labels, task, parts["train"], progress=progress)
        x_train, y_train = patches.features, patches.labels
    tuned_head = {k: v.detach().clone() for k, v in model.patch_head.state_dict().items()} if tuned else None

    # Every film's sliding-window features (train for stage 2, val to choose, held-out parts to score).
    grids: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    wanted = np.unique(np.concatenate([idx for idx in parts.values() if len(idx)]))
    for i in tqdm(wanted, desc="sliding windows", unit="film", disable=not progress):
        grids[int(i)] = store.grid(keys[i], cache.load(sample_ids[i]))
    grid_shape = tuple(len(s) for s in model.grid(*shape))

    def summaries(idx: np.ndarray) -> torch.Tensor:
        feats = torch.from_numpy(np.concatenate([grids[int(i)][0] for i in idx]))
        valid = torch.from_numpy(np.stack([grids[int(i)][1] for i in idx]))
        with torch.inference_mode():
            return model.summarise(model.map_from_features(feats, valid, grid_shape))

    def film_proba(idx: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.softmax(model.forward_head(summaries(idx)).double(), dim=1).numpy()

    aggregates = ["max", "topk", "stage2"] if model.aggregate == "auto" else [model.aggregate]
    groups = manifest.df["group"].astype(str).to_numpy()
    if "stage2" in aggregates and len(np.unique(groups[parts["train"]])) < 2:
        if model.aggregate == "stage2":
            raise DataError("model.options.aggregate stage2 is fitted on out-of-fold maps: the training part needs "
                            "films of at least 2 women")  # fmt: skip
        aggregates.remove("stage2")
    y_val = labels[parts["val"]]
    table, best = [], None
    hard = _hard_negative_pool(model, cache, manifest, labels, task, parts["train"], grids, shape) \
        if tcfg.hard_negatives_per_film else None
    for c in [*tcfg.c_values, *([None] if tuned else [])]:  # None: the head fine-tuning trained
        if c is None:
            model.patch_head.load_state_dict(tuned_head)
        else:
            _fit_linear(model.patch_head, x_train, y_train, len(task.classes), c)
        if hard is not None and c is not None:
            extra = _hardest(model, list(hard.values()), tcfg.hard_negatives_per_film)
            _fit_linear(model.patch_head, np.concatenate([x_train, extra]),
                        np.concatenate([y_train, np.full(len(extra), model.normal_class)]), len(task.classes), c)
        if "stage2" in aggregates:
            oof = stage2_inputs(model, patches, parts["train"], groups, summaries, len(task.classes),
                                c if c is not None else tuned["probe_C"], hard, tcfg.hard_negatives_per_film)
            _fit_linear(model.stage2, oof, labels[parts["train"]], len(task.classes), 1.0)
        for agg in aggregates:
            model.aggregate = agg
            proba = film_proba(parts["val"])
            row = {"C": None if c is None else float(c), "aggregate": agg, "val_auc": roc_auc(y_val, proba), "val_macro_f1": macro_f1(y_val, proba)}
            table.append(row)
            score = _score(row, len(task.classes))
            if best is None or score > best[0]:
                best = (score, row, _state(model))
    _, chosen, state = best
    model.load_state_dict(state)
    model.aggregate = chosen["aggregate"]
    model.config["aggregate"] = chosen["aggregate"]

    bundle = Bundle(
        path=out_dir / "bundle", model=model, classes=list(task.classes), task=task.name, preprocess=to_dict(pre_cfg),
        normalisation=dict(IDENTITY), threshold=0.5, temperature=1.0, metrics={}, config=to_dict(cfg),
        provenance={**(provenance or {}), "preprocess_hash": Pipeline(pre_cfg).config_hash(),
                    "pretrained_from": dict(model.pretrained_from), "patches": counts,
                    "chosen": {"C": chosen["C"], "aggregate": chosen["aggregate"]},
                    **({"finetune_epoch": tuned["best_epoch"]} if tuned else {})},
    )
    proba_val = film_proba(parts["val"])
    bundle.temperature, bundle.threshold = choose_operating_point(cfg.operating_point, y_val, proba_val)
    probas = {}
    for part, idx in parts.items():
        if part != "train" and len(idx):
            with torch.inference_mode():
                logits = model.forward_head(summaries(idx)).double() / bundle.temperature
            probas[part] = torch.softmax(logits, dim=1).numpy()
    groups = manifest.df["group"].to_numpy()
    bundle.metrics = {part: part_metrics(bundle, labels[parts[part]], proba, groups[parts[part]])
                      for part, proba in probas.items()}  # fmt: skip
    record_operating_point(bundle, cfg.operating_point, y_val, proba_val, groups[parts["val"]], cfg.data.split.seed)
    bundle.aggregator = choose_bundle_aggregator(cfg, manifest, labels, task, parts["val"], probas.get("val"))
    save_bundle(bundle.path, model, classes=bundle.classes, task=bundle.task, preprocess=bundle.preprocess,
                normalisation=bundle.normalisation, threshold=bundle.threshold, temperature=bundle.temperature,
                metrics=bundle.metrics, provenance=bundle.provenance, config=bundle.config,
                aggregator=bundle.aggregator)
    history = [{"epoch": k + 1, **row} for k, row in enumerate(table)]
    atomic.write_json(out_dir / "training" / "selection.json",
                      {"table": table, "chosen": chosen, "patches": counts, "seconds": round(time.perf_counter() - t0, 1),
                       "stage2": f"fitted on out-of-fold maps of the training films ({STAGE2_FOLDS} patient-grouped folds)",
                       **({"finetune_epoch": tuned["best_epoch"]} if tuned else {})})
    fit = FitResult(model=model, best_checkpoint=bundle.path / "model.safetensors", best_epoch=table.index(chosen) + 1,
                    history=history, stopped_early=False, normalisation=dict(IDENTITY), out_dir=out_dir / "training")
    return TrainedParts(bundle=bundle, fit=fit, build=build, metrics=bundle.metrics, probas=probas)


def stage2_inputs(model: PatchFilmModel, patches: PatchSet, rows: np.ndarray, groups: np.ndarray,
                  summaries: Any, n_classes: int, c: float, hard: dict[int, np.ndarray] | None,
                  hard_per_film: int) -> np.ndarray:
    """The training films' map summaries (``rows`` order), each from a patch head fitted (at ``c``, with
    the same hard negatives) on the patches of the other women's films only: what stage 2 learns from
    is what it will see on a new film. The model's own patch head is left as it was."""
    from sklearn.model_selection import GroupKFold

    kept = {k: v.detach().clone() for k, v in model.patch_head.state_dict().items()}
    out = np.zeros((len(rows), 2 * n_classes))
    folds = GroupKFold(n_splits=min(STAGE2_FOLDS, len(np.unique(groups[rows]))))
    try:
        for _, held in folds.split(rows, groups=groups[rows]):
            away = rows[held]
            keep = ~np.isin(patches.films, away)
            if len(np.unique(patches.labels[keep])) < 2:
                raise DataError("stage 2's out-of-fold maps: a fold's other films gave patches of one class only; "
                                "use more training films or aggregate max/topk")  # fmt: skip
            x, y = patches.features[keep], patches.labels[keep]
            _fit_linear(model.patch_head, x, y, n_classes, c)
            pool = [f for film, f in (hard or {}).items() if film not in set(away.tolist())]
            if pool:
                extra = _hardest(model, pool, hard_per_film)
                _fit_linear(model.patch_head, np.concatenate([x, extra]),
                            np.concatenate([y, np.full(len(extra), model.normal_class)]), n_classes, c)
            out[held] = summaries(away).numpy()
    finally:
        model.patch_head.load_state_dict(kept)
    return out


def _finetune(model: PatchFilmModel, store: PatchFeatureStore, cache: PreprocessCache, manifest: Manifest,
              labels: np.ndarray, task: Task, parts: dict[str, np.ndarray], patches: PatchSet, *,
              progress: bool) -> dict[str, Any]:
    """Fine-tune the encoder on the training part's patches, judged on the patches of the validation
    part's films (sampled alike). The head starts as the linear probe on the frozen features whose C
    (of ``c_values``) scores the validation patches best, so epoch 0 is the frozen model."""
    from mammolens.evaluate.metrics import roc_auc

    cfg = model.training_cfg.finetune
    val = training_patches(model, store, cache, manifest, labels, task, parts["val"], progress=progress)
    y_val = (val.labels != model.normal_class).astype(int)
    best = None
    for c in model.training_cfg.c_values:
        _fit_linear(model.patch_head, patches.features, patches.labels, len(task.classes), c)
        with torch.inference_mode():
            normal = torch.softmax(model.patch_head(torch.from_numpy(val.features)), 1)[:, model.normal_class].numpy()
        auc = roc_auc(y_val, np.c_[normal, 1 - normal])
        if best is None or (auc if auc is not None else -1.0) > best[0]:
            best = (auc if auc is not None else -1.0, c, {k: v.clone() for k, v in model.patch_head.state_dict().items()})
    model.patch_head.load_state_dict(best[2])
    report = finetune_encoder(model, _pixels(model, patches, cache, manifest, labels, task, cfg.shift),
                              _pixels(model, val, cache, manifest, labels, task, 0), cfg, progress=progress)
    return {"probe_C": best[1], "val_films": sorted({int(i) for i in val.films}), **report}


def _pixels(model: PatchFilmModel, patches: PatchSet, cache: PreprocessCache, manifest: Manifest,
            labels: np.ndarray, task: Task, shift: int) -> PatchPixels:
    """The patches as positions on their films (loaded once), each with the shift it may take: a
    positive the full ``shift``, a negative only as far as keeps it clear of its film's findings."""
    records = manifest.df.to_dict("records")
    sample_ids = manifest.df["sample_id"].tolist()
    films = {int(i): cache.load(sample_ids[i]) for i in np.unique(patches.films)}
    circles = {i: film_findings(records[i], cache.load_rois(sample_ids[i]), task.label_of, int(labels[i]),
                                model.normal_class).circles for i in films}
    slack = np.array([shift if label != model.normal_class else
                      safe_shift(int(top), int(left), model.patch_size, circles[int(film)], shift)
                      for film, (top, left), label in zip(patches.films, patches.positions, patches.labels)], dtype=np.int64)
    return PatchPixels(patches.films, patches.positions, patches.labels, slack, films, model.patch_size)


def _hard_negative_pool(model: PatchFilmModel, cache: PreprocessCache, manifest: Manifest, labels: np.ndarray,
                        task: Task, rows: np.ndarray, grids: dict[int, tuple[np.ndarray, np.ndarray]],
                        shape: tuple[int, int]) -> dict[int, np.ndarray]:
    """Per training film (by manifest row), the features of its breast windows that touch no finding
    (only films whose findings are all located: elsewhere "no finding" cannot be checked)."""
    records = manifest.df.to_dict("records")
    sample_ids = manifest.df["sample_id"].tolist()
    positions, _ = grid_positions(shape, model.patch_size, model.stride)
    pool: dict[int, np.ndarray] = {}
    for i in rows:
        found = film_findings(records[i], cache.load_rois(sample_ids[i]), task.label_of, int(labels[i]), model.normal_class)
        if not found.complete:
            continue
        features, valid = grids[int(i)]
        clear = np.array([not any(touches_circle(y, x, model.patch_size, c) for c in found.circles)
                          for y, x in positions[valid]], dtype=bool)
        if clear.any():
            pool[int(i)] = features[clear]
    return pool


def _hardest(model: PatchFilmModel, pool: list[np.ndarray], per_film: int) -> np.ndarray:
    """Each film's ``per_film`` windows that the current patch head finds least normal."""
    picked = []
    with torch.inference_mode():
        for features in pool:
            normal = torch.softmax(model.patch_head(torch.from_numpy(features)), 1)[:, model.normal_class].numpy()
            picked.append(features[np.argsort(normal)[:per_film]])
    return np.concatenate(picked)


def _score(row: dict[str, Any], n_classes: int) -> tuple[float, float]:
    """What validation maximises: AUC for two classes, macro F1 (then AUC) for more."""
    auc = row["val_auc"] if row["val_auc"] is not None else -1.0
    f1 = row["val_macro_f1"] if row["val_macro_f1"] is not None else -1.0
    return (auc, f1) if n_classes == 2 else (f1, auc)


def _state(model: PatchFilmModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _fit_linear(layer: torch.nn.Linear, x: np.ndarray, y: np.ndarray, n_classes: int, c: float) -> None:
    """A standardised, class-balanced logistic regression, written into ``layer`` as softmax logits;
    a class no training patch had keeps a bias of ``_ABSENT`` (its probability stays ~0)."""
    from sklearn.linear_model import LogisticRegression

    from mammolens.train.linear_head import fold_standardisation, softmax_logits, standardisation

    mean, scale = standardisation(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes at small C: the validation choice judges the result
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit((x - mean) / scale, y)
    coef, intercept = fold_standardisation(*softmax_logits(lr.coef_, lr.intercept_), mean, scale)
    weight = np.zeros((n_classes, x.shape[1]))
    bias = np.full(n_classes, _ABSENT)
    weight[lr.classes_], bias[lr.classes_] = coef, intercept
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(bias))
