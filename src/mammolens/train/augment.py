"""Train-time augmentation whose randomness comes from (seed, epoch, sample), never from global state.

So a run is reproducible whatever the number of DataLoader workers or GPUs, and a resumed run
sees the same augmented images as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from mammolens.train.config import AugmentConfig


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator private to one sample in one epoch."""
    state = np.random.SeedSequence([seed % 2**64, epoch, index]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def augment(image: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Randomly rotate, zoom and flip a (1, H, W) image in [0, 1], drawing only from ``generator``."""
    u = torch.rand(5, generator=generator).tolist()  # always five draws: the stream does not depend on cfg
    if u[0] >= cfg.p:
        return image
    angle = (2.0 * u[1] - 1.0) * cfg.rotation
    lo, hi = cfg.zoom
    scale = lo + (hi - lo) * u[2]
    if angle != 0.0 or scale != 1.0:
        image = TF.affine(
            image,
            angle=angle,
            translate=[0.0, 0.0],
            scale=scale,
            shear=[0.0, 0.0],
            interpolation=TF.InterpolationMode.BILINEAR,
            fill=0.0,
        )
    if cfg.hflip and u[3] < 0.5:
        image = TF.horizontal_flip(image)
    if cfg.vflip and u[4] < 0.5:
        image = TF.vertical_flip(image)
    return image
