"""The experiment config: dataclasses loaded from YAML, checked before anything heavy is imported.

``load_config`` validates every section (model name, preprocessing steps, train keys) without
importing torch, so a typo in a config is reported in a fraction of a second. Paths written in a
config file resolve against that file's folder; paths given on the command line (``--set``)
against the working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammolens.utils.configuration import apply_overrides, from_dict, load_yaml
from mammolens.utils.errors import ConfigError

BUILTIN_CONFIGS = Path(__file__).parent.parent / "configs"

# Settings that choose where or how fast a run executes, not what it computes: a resumed run
# may change them.
RUNTIME_KEYS = frozenset({
    "cache_dir", "workers", "train.devices", "train.accelerator", "train.strategy", "train.num_nodes",
    "train.num_workers", "train.progress", "train.log_every_n_steps",
})


@dataclass
class SyntheticConfig:
    n_per_class: int = 60
    size: int = 256
    seed: int = 0
    calc_fraction: float = 0.3  # abnormal patients with a calcification cluster instead of a mass


@dataclass
class SplitConfig:
    val: float = 0.2
    test: float = 0.2
    folds: int = 0  # 0: hold-out train/val/test; k >= 2: k-fold, this run trains on fold `fold`
    fold: int = 0
    seed: int = 0
    file: str | None = None  # reuse a saved split (checked against the manifest)
    official: bool = False  # the source's own train/test split (VinDr-Mammo, CBIS-DDSM); val from its training part


@dataclass
class PairsConfig:
    """Each film with the same woman's other film as a second input channel (``data/pairs.py``)."""

    enabled: bool = False
    fallback: bool = True  # a film without a partner is paired with itself; off: an error naming the film


@dataclass
class DataConfig:
    source: str = "synthetic"  # a path, or "synthetic" for the built-in generator
    kind: str | None = None  # adapter name; detected from the path when omitted
    options: dict[str, Any] = field(default_factory=dict)  # adapter options (label_map, images_root...)
    task: str = "benign-malignant"
    # Lesion tasks leave out findings without coordinates: kept, they would enter as whole films
    # among lesion crops and the kind of input would predict the label (needs crop_roi on_missing: full).
    keep_unlocated_lesions: bool = False
    dedup: bool = False  # merge near-duplicate images into one split group
    # A saved split (``mammolens data split --val 0 --test F``) whose 'test' part is set aside before
    # anything else: train and cv never see those patients; ``evaluate --split`` scores them once.
    holdout: str | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)


@dataclass
class ModelConfig:
    name: str = "hybrid"
    # None, "imagenet", a weights file, or per backbone of a fusion model {name: imagenet | file | null}
    # (null: that backbone starts random, said explicitly)
    pretrained: str | dict[str, str | None] | None = None
    options: dict[str, Any] = field(default_factory=dict)  # create_model kwargs: hidden, dropout, backbones...


@dataclass
class OperatingPointConfig:
    """How the bundle's temperature and decision threshold are chosen: on validation data only."""

    temperature: bool = True  # fit temperature scaling on the validation part (else T = 1)
    threshold: str = "fbeta"  # fbeta: maximise F-beta; sensitivity: reach target_sensitivity at best specificity
    beta: float = 2.0  # F2 weighs a missed cancer as four false alarms
    target_sensitivity: float | None = None

    def __post_init__(self) -> None:
        if self.threshold not in ("fbeta", "sensitivity"):
            raise ConfigError(f"operating_point.threshold: {self.threshold!r} is not 'fbeta' or 'sensitivity'")
        if self.threshold == "sensitivity" and not (self.target_sensitivity and 0 < self.target_sensitivity <= 1):
            raise ConfigError("operating_point.target_sensitivity: the 'sensitivity' method needs a value in (0, 1]")
        if self.beta <= 0:
            raise ConfigError(f"operating_point.beta: must be > 0, got {self.beta}")


@dataclass
class ExamsConfig:
    """Exams as a unit (``evaluate.exams``): the level ``cv`` and ``evaluate`` also report, and how a
    bundle combines films into breasts and exams. A ``fitted`` combination and the breast/exam
    threshold are chosen on the validation part only, and stored in the bundle."""

    level: str = "film"  # film | breast | exam
    aggregate: str = "max"  # max | mean | fitted

    def __post_init__(self) -> None:
        if self.level not in ("film", "breast", "exam"):
            raise ConfigError(f"exams.level: {self.level!r} is not film, breast or exam")
        if self.aggregate not in ("max", "mean", "fitted"):
            raise ConfigError(f"exams.aggregate: unknown aggregator {self.aggregate!r}; known: fitted, max, mean")


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: dict[str, Any] = field(default_factory=dict)  # PreprocessConfig fields; {} = default pipeline
    image_size: int = 224  # used by the default pipeline when `preprocess` is empty
    roi_crop: bool = False  # default pipeline crops around the lesion annotation
    model: ModelConfig = field(default_factory=ModelConfig)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields
    operating_point: OperatingPointConfig = field(default_factory=OperatingPointConfig)
    exams: ExamsConfig = field(default_factory=ExamsConfig)
    cache_dir: str = field(default_factory=lambda: os.environ.get("MAMMOLENS_CACHE", ".cache/mammolens"))
    workers: int | None = None  # preprocessing worker processes (default: one per core)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """An experiment config from YAML (a path, or the name of a built-in config) plus overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        file = resolve_config_path(path)
        data = load_yaml(file)
        _resolve_paths(data, file.parent)
    apply_overrides(data, overrides or [])
    cfg = from_dict(ExperimentConfig, data)
    from mammolens.models import list_models  # names only: no torch

    if cfg.model.name not in list_models():
        raise ConfigError(f"model.name: unknown model {cfg.model.name!r}; known: {', '.join(list_models())}")
    preprocess_config(cfg)
    train_config(cfg)
    return cfg


def resolve_config_path(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        return p
    builtin = BUILTIN_CONFIGS / f"{path}.yaml"
    if builtin.exists():
        return builtin
    known = ", ".join(sorted(q.stem for q in BUILTIN_CONFIGS.glob("*.yaml")))
    raise ConfigError(f"config file not found (built-in configs: {known})", path=path)


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Relative paths in a config file's data section and pretrained file are relative to the file."""

    def rel(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).is_absolute():
            return str((base / value).resolve())
        return value

    section = data.get("data")
    if isinstance(section, dict):
        if section.get("source") not in (None, "synthetic"):
            section["source"] = rel(section["source"])
        split = section.get("split")
        if isinstance(split, dict) and split.get("file"):
            split["file"] = rel(split["file"])
        if section.get("holdout"):
            section["holdout"] = rel(section["holdout"])
        options = section.get("options")
        if isinstance(options, dict):
            for key in ("images_root", "dicom_dir"):
                if key in options:
                    options[key] = rel(options[key])
    model = data.get("model")
    if isinstance(model, dict) and model.get("pretrained") not in (None, "imagenet") and isinstance(model["pretrained"], str):
        model["pretrained"] = rel(model["pretrained"])
    if isinstance(model, dict) and isinstance(model.get("pretrained"), dict):
        model["pretrained"] = {k: v if v in (None, "imagenet") else rel(v) for k, v in model["pretrained"].items()}


def preprocess_config(cfg: ExperimentConfig):  # noqa: ANN201 - PreprocessConfig
    from mammolens.preprocess.pipeline import PreprocessConfig, default_config

    if not cfg.preprocess:
        return default_config(size=cfg.image_size, roi=cfg.roi_crop)
    return from_dict(PreprocessConfig, cfg.preprocess, "preprocess")


def train_config(cfg: ExperimentConfig):  # noqa: ANN201 - TrainConfig
    from mammolens.train.config import TrainConfig

    return from_dict(TrainConfig, cfg.train, "train")


def first_difference(old: Any, new: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """(dotted key, old value, new value) of the first difference between two config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            dotted = f"{where}.{key}" if where else str(key)
            if dotted in RUNTIME_KEYS:
                continue
            found = first_difference(old.get(key), new.get(key), dotted)
            if found:
                return found
        return None
    return None if old == new else (where, old, new)
