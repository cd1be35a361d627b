import numpy as np
import pytest
import torch

from mammolens.train.augment import augment, sample_generator
from mammolens.train.config import AugmentConfig
from mammolens.train.datamodule import ArrayDataModule, EpochSampler
from mammolens.train.normalisation import IMAGENET_GRAY


def _square(size=32, side=8):
    image = torch.zeros(1, size, size)
    lo = (size - side) // 2
    image[:, lo : lo + side, lo : lo + side] = 1.0
    return image


def _corner(size=32):
    image = torch.zeros(1, size, size)
    image[:, 2:8, 3:6] = 1.0  # off-centre and asymmetric: every flip/rotation moves it
    return image


def test_same_seed_epoch_sample_gives_the_same_image_and_others_differ():
    cfg = AugmentConfig(rotation=180, hflip=True, vflip=True, zoom=(0.8, 1.2))
    image = _corner()
    a = augment(image, cfg, sample_generator(3, 1, 7))
    assert torch.equal(a, augment(image, cfg, sample_generator(3, 1, 7)))
    others = [augment(image, cfg, sample_generator(*key)) for key in [(4, 1, 7), (3, 2, 7), (3, 1, 8)]]
    assert all(not torch.allclose(a, o) for o in others)


def test_p_zero_and_default_config_leave_the_image_alone():
    image = _corner()
    assert torch.equal(augment(image, AugmentConfig(rotation=90, hflip=True, p=0.0), sample_generator(0, 0, 0)), image)
    assert torch.equal(augment(image, AugmentConfig(), sample_generator(0, 0, 0)), image)


def test_flips_are_exact_and_happen_about_half_the_time():
    image = _corner()
    outcomes = [augment(image, AugmentConfig(hflip=True), sample_generator(0, 0, i)) for i in range(200)]
    flipped = sum(torch.equal(o, image.flip(-1)) for o in outcomes)
    kept = sum(torch.equal(o, image) for o in outcomes)
    assert flipped + kept == 200
    assert 70 < flipped < 130
    v = [augment(image, AugmentConfig(vflip=True), sample_generator(0, 0, i)) for i in range(50)]
    assert all(torch.equal(o, image) or torch.equal(o, image.flip(-2)) for o in v)


def test_zoom_scales_the_content_about_the_centre():
    image = _square(side=8)
    zoomed = augment(image, AugmentConfig(zoom=(2.0, 2.0)), sample_generator(0, 0, 0))
    # an 8x8 square becomes 16x16: four times the mass, still centred
    assert zoomed.sum().item() == pytest.approx(4 * image.sum().item(), rel=0.1)
    rows = zoomed[0].sum(1).nonzero()
    assert rows.min().item() >= 7 and rows.max().item() <= 24


def test_rotation_turns_the_content_and_keeps_a_centred_disc():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disc = (((yy - 15.5) ** 2 + (xx - 15.5) ** 2) < 36).float()[None]
    cfg = AugmentConfig(rotation=180)
    for i in range(5):
        out = augment(disc, cfg, sample_generator(1, 0, i))
        assert out.sum().item() == pytest.approx(disc.sum().item(), rel=0.05)
    bar = torch.zeros(1, 32, 32)
    bar[:, 15:17, 4:28] = 1.0  # horizontal bar
    turned = [augment(bar, cfg, sample_generator(1, 0, i)) for i in range(20)]
    # the bar leaves its rows in most draws: rotation really happens, with varying angles
    moved = [float(o[:, :13].sum() + o[:, 19:].sum()) for o in turned]
    assert sum(m > 5 for m in moved) >= 12
    assert len({round(m, 3) for m in moved}) > 10


def _images(n=12, size=16):
    rng = np.random.default_rng(0)
    arrays = {f"s{i}": rng.random((size, size), dtype=np.float32) for i in range(n)}
    return arrays, list(arrays), np.array([i % 2 for i in range(n)])


def _epoch_batches(dm, epoch):
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_datamodule_augments_train_only_deterministically_whatever_the_workers():
    arrays, ids, labels = _images()
    parts = {"train": range(8), "val": range(8, 12)}
    cfg = AugmentConfig(rotation=30, hflip=True, zoom=(0.9, 1.1))
    dm0, dm2 = (ArrayDataModule(arrays.__getitem__, ids, labels, parts, 4, cfg, w, seed=5) for w in (0, 2))
    first = _epoch_batches(dm0, 0)
    for (xa, ya), (xb, yb) in zip(first, _epoch_batches(dm2, 0), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, _epoch_batches(dm0, 1), strict=True))
    # validation images are the normalised originals, in row order
    xv, yv = next(iter(dm0.val_dataloader()))
    originals = torch.from_numpy(np.stack([arrays[f"s{i}"] for i in range(8, 12)]))[:, None]
    expected = (originals - IMAGENET_GRAY["mean"]) / IMAGENET_GRAY["std"]
    torch.testing.assert_close(xv, expected)
    assert yv.tolist() == labels[8:12].tolist()


def test_epoch_sampler_shards_each_epoch_disjointly_and_completely():
    data = list(range(10))
    for epoch in (0, 1):
        shards = []
        for rank in (0, 1):
            sampler = EpochSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=3)
            sampler.set_epoch(epoch)
            items = list(sampler)
            assert all(e == epoch for _, e in items)
            shards.append([i for i, _ in items])
        assert len(shards[0]) == len(shards[1]) == 5
        assert sorted(shards[0] + shards[1]) == data
    orders = []
    for epoch in (0, 1):
        sampler = EpochSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)
        sampler.set_epoch(epoch)
        orders.append([i for i, _ in sampler])
    assert orders[0] != orders[1]
