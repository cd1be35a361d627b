"""Batches from plain arrays: ``load(sample_id)`` gives a preprocessed (H, W) float32 image in [0, 1]
(or (C, H, W) channels, e.g. a film and its partner).

The caller (manifest, splits, preprocessing cache) decides what the samples are; this module only
checks them, shuffles, augments (train only) and normalises. Shuffling and augmentation are seeded
per epoch, so the batch order and augmented pixels depend on (seed, epoch) alone: the same with 0 or
8 workers, on 1 or 8 GPUs (each rank takes its own shard), before and after a resume.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mammolens.train.augment import augment, sample_generator
from mammolens.train.config import AugmentConfig, TrainConfig
from mammolens.train.normalisation import check_normalisation, normalise
from mammolens.utils.errors import ConfigError, DataError

PARTS = ("train", "val", "test")
Loader = Callable[[str], np.ndarray]


class EpochSampler(DistributedSampler):
    """torch's seeded, epoch-aware, rank-sharded shuffle, yielding (position, epoch) for per-epoch augmentation."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        return ((i, epoch) for i in super().__iter__())


def _split_key(key: int | tuple[int, int]) -> tuple[int, int]:
    return key if isinstance(key, tuple) else (key, 0)


class SampleReader:
    """``load`` plus the checks every image passes; small and picklable, so DataLoader workers get only this."""

    def __init__(self, load: Loader, sample_ids: list[str]) -> None:
        self.load = load
        self.sample_ids = sample_ids
        self.image_shape: tuple[int, ...] | None = None

    def __call__(self, row: int) -> np.ndarray:
        """The checked image of sample ``row``: (H, W) or (C, H, W) float32 in [0, 1], one shape for all samples."""
        sample_id = self.sample_ids[row]
        image = np.asarray(self.load(sample_id))
        if image.ndim not in (2, 3):
            raise DataError(
                f"sample {sample_id!r}: load() returned shape {image.shape}; expected an (H, W) or (C, H, W) image"
            )
        if self.image_shape is not None and image.shape != self.image_shape:
            raise DataError(
                f"sample {sample_id!r}: image is {image.shape}, the others {self.image_shape}; "
                "preprocess all images to one size"
            )
        image = np.array(image, dtype=np.float32)  # a private, writable copy: never aliases the caller's cache
        if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
            raise DataError(
                f"sample {sample_id!r}: pixels must be finite and within [0, 1] (preprocessed), "
                f"got min {np.nanmin(image):.4g}, max {np.nanmax(image):.4g}"
            )
        return image


class ImageDataset(Dataset):
    def __init__(
        self,
        reader: SampleReader,
        rows: np.ndarray,
        labels: np.ndarray,
        normalisation: dict[str, float],
        augment_cfg: AugmentConfig | None,
        seed: int,
    ) -> None:
        self.reader = reader
        self.rows = rows
        self.labels = labels
        self.normalisation = normalisation
        self.augment_cfg = augment_cfg
        self.seed = seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        position, epoch = _split_key(key)
        row = int(self.rows[position])
        image = torch.from_numpy(self.reader(row))
        image = image[None] if image.ndim == 2 else image  # (C, H, W): a 2-D image is one channel
        if self.augment_cfg is not None:
            image = augment(image, self.augment_cfg, sample_generator(self.seed, epoch, row))
        return normalise(image, self.normalisation), torch.tensor(self.labels[row])


class FeatureDataset(Dataset):
    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        position, _ = _split_key(key)
        return self.features[position], self.labels[position]


class ArrayDataModule(L.LightningDataModule):
    """Train/val/test loaders over ``sample_ids`` with integer ``labels`` and ``parts`` (part -> row indices).

    ``normalisation`` (default ImageNet gray, see ``normalisation.py``) must be saved in the bundle.
    ``data_key`` is the caller's hash of the image content (e.g. the preprocessing cache key), or
    ``sample_keys`` one such hash per sample (``PreprocessCache.sample_keys``); the feature fast
    path caches on disk only when one is given, per sample with ``sample_keys``, so the folds of a
    cross-validation share every sample's features. With ``num_workers > 0`` or a spawning
    strategy, ``load`` must be picklable (a module-level function or an object, not a lambda).
    """

    def __init__(
        self,
        load: Loader,
        sample_ids: Sequence[str],
        labels: np.ndarray,
        parts: Mapping[str, Sequence[int]],
        batch_size: int,
        augment: AugmentConfig | None = None,
        num_workers: int = 0,
        seed: int = 0,
        *,
        num_classes: int | None = None,
        normalisation: dict[str, float] | None = None,
        drop_last: bool = False,
        data_key: str | None = None,
        sample_keys: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.reader = SampleReader(load, [str(s) for s in sample_ids])
        self.sample_ids = self.reader.sample_ids
        self.labels = self._check_labels(labels, num_classes)
        self.num_classes = int(num_classes) if num_classes is not None else max(2, int(self.labels.max()) + 1)
        self.parts = self._check_parts(parts)
        if batch_size < 1:
            raise ConfigError(f"train.batch_size: must be >= 1, got {batch_size}")
        if drop_last and batch_size > len(self.parts["train"]):
            raise ConfigError(
                f"train.batch_size {batch_size} exceeds the {len(self.parts['train'])} training samples "
                "with drop_last: no batch would be trained"
            )
        self.batch_size = batch_size
        self.augment = augment
        self.num_workers = num_workers
        self.seed = seed
        self.drop_last = drop_last
        self.normalisation = check_normalisation(normalisation)
        self.data_key = data_key
        if sample_keys is not None and len(sample_keys) != len(self.sample_ids):
            raise DataError(f"sample_keys: {len(sample_keys)} keys for {len(self.sample_ids)} samples")
        self.sample_keys = None if sample_keys is None else [str(k) for k in sample_keys]
        self.features: dict[str, np.ndarray] | None = None
        self.reader.image_shape = self.reader(int(self.parts["train"][0])).shape

    @classmethod
    def from_config(
        cls,
        load: Loader,
        sample_ids: Sequence[str],
        labels: np.ndarray,
        parts: Mapping[str, Sequence[int]],
        cfg: TrainConfig,
        **kwargs: object,
    ) -> ArrayDataModule:
        """A datamodule whose batch size, augmentation, workers, seed and drop_last come from ``cfg``."""
        return cls(
            load, sample_ids, labels, parts, cfg.batch_size, cfg.augment, cfg.num_workers, cfg.seed,
            drop_last=cfg.drop_last, **kwargs,  # type: ignore[arg-type]
        )

    def _check_labels(self, labels: np.ndarray, num_classes: int | None) -> np.ndarray:
        labels = np.asarray(labels)
        if labels.shape != (len(self.sample_ids),):
            raise DataError(
                f"labels: expected {len(self.sample_ids)} labels (one per sample id), got shape {labels.shape}"
            )
        if labels.size == 0:
            raise DataError("no samples: sample_ids is empty")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"labels: expected integer class indices, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes if num_classes is not None else labels < 0))
        if bad.size:
            allowed = f"0..{num_classes - 1}" if num_classes is not None else "0 and up"
            raise DataError(f"labels: sample {self.sample_ids[bad[0]]!r} has label {labels[bad[0]]}, not in {allowed}")
        return labels

    def _check_parts(self, parts: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
        unknown = sorted(set(parts) - set(PARTS))
        if unknown:
            raise DataError(f"parts: unknown part {unknown[0]!r}; known: {', '.join(PARTS)}")
        if len(parts.get("train", ())) == 0:
            raise DataError("parts: the 'train' part is missing or empty")
        checked: dict[str, np.ndarray] = {}
        seen: dict[int, str] = {}
        for name, rows in parts.items():
            rows = np.asarray(rows, dtype=np.int64).reshape(-1)
            out = rows[(rows < 0) | (rows >= len(self.sample_ids))]
            if out.size:
                raise DataError(f"parts.{name}: row {out[0]} is outside 0..{len(self.sample_ids) - 1}")
            for row in rows.tolist():
                if row in seen:
                    raise DataError(
                        f"parts: sample {self.sample_ids[row]!r} is in both {seen[row]!r} and {name!r} (leakage)"
                        if seen[row] != name
                        else f"parts.{name}: sample {self.sample_ids[row]!r} is listed twice"
                    )
                seen[row] = name
            checked[name] = rows
        return checked

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.reader.image_shape

    @property
    def in_chans(self) -> int:
        """Channels of the model input: C of (C, H, W) arrays, 1 for 2-D images."""
        return 1 if len(self.image_shape) == 2 else int(self.image_shape[0])

    def part_labels(self, part: str) -> np.ndarray:
        return self.labels[self.rows(part)]

    def rows(self, part: str) -> np.ndarray:
        if part not in self.parts:
            raise DataError(f"parts: no {part!r} part; have {', '.join(self.parts)}")
        return self.parts[part]

    def with_features(self, features: Mapping[str, np.ndarray]) -> ArrayDataModule:
        """The same parts, order and batches, but each item is a cached feature vector instead of an image."""
        for part, array in features.items():
            if array.ndim != 2 or len(array) != len(self.rows(part)):
                raise DataError(f"features.{part}: expected ({len(self.rows(part))}, D), got {array.shape}")
        view = copy.copy(self)
        view.features = dict(features)
        return view

    def dataset(self, part: str, *, train: bool = False) -> Dataset:
        rows = self.rows(part)
        if self.features is not None:
            return FeatureDataset(self.features[part], self.labels[rows])
        return ImageDataset(
            self.reader, rows, self.labels, self.normalisation, self.augment if train else None, self.seed
        )

    def _loader(self, dataset: Dataset, sampler: EpochSampler | None, drop_last: bool = False) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            drop_last=drop_last,
            num_workers=self.num_workers,
            # A private generator: loading never draws from (and so never shifts) the global RNG.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train", train=True)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = EpochSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        if trainer is not None:
            sampler.set_epoch(trainer.current_epoch)  # a resumed run starts at its epoch's order
        if self.drop_last and self.batch_size > len(sampler):
            raise ConfigError(
                f"train.batch_size {self.batch_size} exceeds the {len(sampler)} training samples per device "
                "with drop_last: no batch would be trained"
            )
        return self._loader(dataset, sampler, drop_last=self.drop_last)

    def eval_dataloader(self, part: str) -> DataLoader:
        """Un-augmented batches of ``part`` in row order (every rank sees the whole part)."""
        return self._loader(self.dataset(part), None)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")
