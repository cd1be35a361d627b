import json

import cv2
import numpy as np
import pytest

from mammolens.data import dedup
from mammolens.data.manifest import Manifest
from mammolens.data.synthetic import generate_array
from mammolens.utils.errors import ConfigError, DataError

SIZE = 128


def _image(seed):
    pathology = ("normal", "benign", "malignant")[seed % 3]
    return generate_array(np.random.default_rng([11, seed]), SIZE, pathology)[0]


def _orientations(img):
    out = []
    for k in range(4):
        r = np.rot90(img, k)
        out += [r, r[:, ::-1]]
    return [np.ascontiguousarray(o) for o in out]


def _crop(img, top, bottom, left, right):
    h, w = img.shape
    return cv2.resize(img[top : h - bottom, left : w - right], (w, h), interpolation=cv2.INTER_AREA)


def _copies(img):
    """What pre-augmented sets ship: flips/rotations, photometric changes, a slight crop, a centred zoom."""
    return {
        **{f"orient{i}": o for i, o in enumerate(_orientations(img))},
        "brighter": np.clip(img * 1.05 + 0.02, 0, 1),
        "darker_rot90": np.rot90(np.clip(img * 0.9 - 0.02, 0, 1)).copy(),
        "gamma": img**0.9,
        "noise": np.clip(img + np.random.default_rng(0).normal(0, 0.01, img.shape), 0, 1).astype(np.float32),
        "crop1pct_flip": _crop(img, 1, 0, 0, 1)[:, ::-1].copy(),
        "zoom6pct": _crop(img, 4, 4, 4, 4),  # 6% of 128 px: caught by the default 5% zoom variant
        "zoom10pct": _crop(img, 6, 7, 6, 7),
    }


def _manifest(images, groups):
    records = [
        {"sample_id": name, "source": "arrays", "path": f"mem://{name}", "group": groups[name]} for name in images
    ]
    return Manifest.from_records(records), (lambda path, frame: images[path[len("mem://") :]])


def test_all_eight_orientations_hash_to_distance_zero():
    img = _image(0)
    hashes = np.stack([dedup.image_hash(o) for o in _orientations(img)] + [dedup.image_hash(_image(1))])
    d = dedup.distance_matrix(hashes)
    assert (d[:8, :8] == 0).all()
    assert (d[8, :8] > dedup.MAX_DISTANCE).all()
    assert (d == d.T).all() and hashes.shape == (9, 1 + len(dedup.ZOOMS), 4)


def test_augmented_copies_land_with_their_original_and_nothing_else():
    images, groups = {}, {}
    for base in range(3):
        img = _image(base)
        images[f"img{base}"] = img
        for name, copy in _copies(img).items():
            images[f"img{base}-{name}"] = copy
    for i, name in enumerate(images):
        groups[name] = f"g{i}"
    manifest, loader = _manifest(images, groups)
    hashes = dedup.hash_images(manifest, loader=loader, workers=2, progress=False)
    clusters = dedup.find_duplicates(hashes)
    names = list(images)
    assert sorted(sorted(names[i] for i in c) for c in clusters) == sorted(
        sorted(n for n in names if n.startswith(f"img{b}")) for b in range(3)
    )


def test_zoomed_copies_need_zoom_variants():
    img = _image(4)
    zoomed_copy = _crop(img, 4, 4, 4, 4)
    plain = dedup.distance_matrix(np.stack([dedup.image_hash(img, zooms=()), dedup.image_hash(zoomed_copy, zooms=())]))
    zoomed = dedup.distance_matrix(
        np.stack([dedup.image_hash(img, zooms=(0.06,)), dedup.image_hash(zoomed_copy, zooms=(0.06,))])
    )
    assert zoomed[0, 1] <= dedup.MAX_DISTANCE < plain[0, 1]


def test_distinct_synthetic_mammograms_are_never_merged():
    """False-merge rate on 100 distinct images, with a margin above MAX_DISTANCE."""
    hashes = np.stack([dedup.image_hash(_image(100 + i)) for i in range(100)])
    d = dedup.distance_matrix(hashes)
    off_diagonal = d[np.triu_indices(100, 1)]
    assert off_diagonal.min() >= dedup.MAX_DISTANCE + 8, off_diagonal.min()
    assert dedup.find_duplicates(hashes) == []


def test_merging_joins_patient_groups_transitively():
    a, b, c, e = (_image(s) for s in (20, 21, 22, 23))
    images = {"p1-cc": a, "p1-mlo": b, "p2-cc": a[::-1].copy(), "p2-mlo": c, "p3-cc": np.rot90(c).copy(), "p4-cc": e}
    groups = {"p1-cc": "P1", "p1-mlo": "P1", "p2-cc": "P2", "p2-mlo": "P2", "p3-cc": "P3", "p4-cc": "P4"}
    manifest, loader = _manifest(images, groups)
    merged, report = dedup.merge_duplicate_groups(manifest, loader=loader, progress=False)
    assert merged.df["group"].tolist() == ["dup:P1"] * 5 + ["P4"]
    assert report.n_clusters == 2 and report.n_in_clusters == 4 and report.n_cross_group == 2
    assert (report.n_groups_before, report.n_groups_after) == (4, 2)
    assert report.clusters == [["p1-cc", "p2-cc"], ["p2-mlo", "p3-cc"]]
    assert "2 near-duplicate clusters (4 of 6 samples)" in report.summary()
    assert [json.loads(m).get("group_before_dedup") for m in merged.df["meta"]] == ["P1", "P1", "P2", "P2", "P3", None]
    hashes = dedup.hash_images(manifest, loader=loader, progress=False)
    again, report2 = dedup.merge_duplicate_groups(merged, hashes=hashes)
    assert again.df["group"].tolist() == merged.df["group"].tolist()  # merging twice changes nothing
    assert report2.n_cross_group == 0


@pytest.mark.parametrize("variants", [1, 2])
def test_tiles_cover_every_pair_beyond_one_tile(variants):
    """Planted near-copies among random hashes are found across tile boundaries, and only they.

    With zoom variants the match may be between one image's full hash and the other's variant.
    """
    rng = np.random.default_rng(variants)
    n = 2500 if variants == 1 else 2100
    hashes = rng.integers(0, 2**63, size=(n, variants, 4), dtype=np.uint64)
    planted = [(3, 2050), (1500, 1023), (1024, 2047)]
    for k, (src, dst) in enumerate(planted):
        bits = np.unpackbits(hashes[src, 0].view(np.uint8))
        bits[rng.choice(256, 10, replace=False)] ^= 1  # 10 bits away from the original
        hashes[dst, k % variants] = np.packbits(bits).view(np.uint64)
    assert dedup.find_duplicates(hashes) == sorted(sorted(p) for p in planted)


def test_errors_name_the_problem():
    manifest, _ = _manifest({"a": None}, {"a": "g"})
    with pytest.raises(DataError, match="mem://a: expected a 2-D image"):
        dedup.hash_images(manifest, loader=lambda p, f: np.zeros((4, 4, 3)), progress=False)
    with pytest.raises(DataError, match="NaN"):
        dedup.hash_images(manifest, loader=lambda p, f: np.full((8, 8), np.nan), progress=False)
    with pytest.raises(ConfigError, match="hash_size"):
        dedup.hash_images(manifest, loader=lambda p, f: np.zeros((8, 8)), hash_size=12, progress=False)
    with pytest.raises(ConfigError, match="zooms"):
        dedup.image_hash(np.zeros((8, 8)), zooms=(0.7,))
    with pytest.raises(DataError, match="2 hashes for a manifest of 1"):
        dedup.merge_duplicate_groups(manifest, hashes=np.zeros((2, 1, 4), np.uint64))
    with pytest.raises(ConfigError, match="unused when hashes are given"):
        dedup.merge_duplicate_groups(manifest, hashes=np.zeros((1, 1, 4), np.uint64), workers=2)
    with pytest.raises(ConfigError, match="uint64"):
        dedup.find_duplicates(np.zeros((3, 4), np.int64))


def test_default_loader_reads_image_files(tmp_path):
    img = _image(30)
    for name, pixels in (("a", img), ("b", img[:, ::-1])):
        cv2.imwrite(str(tmp_path / f"{name}.png"), np.round(pixels * 65535).astype(np.uint16))
    manifest = Manifest.from_records(
        [{"sample_id": n, "source": "folders", "path": str(tmp_path / f"{n}.png"), "group": n} for n in "ab"]
    )
    assert dedup.find_duplicates(dedup.hash_images(manifest, progress=False)) == [[0, 1]]


def test_orientation_trick_equals_hashing_all_eight_orientations_by_brute_force():
    """The flip/transposition algebra of _distance_tiles against plain hashing of every one of the
    8 orientations of every image and a plain Hamming minimum (sizes that resize exactly)."""
    rng = np.random.default_rng(7)
    images = [cv2.GaussianBlur(rng.random((128, 192)).astype(np.float32), (0, 0), 3) for _ in range(6)]
    images.append(np.rot90(images[0]).copy())  # one true duplicate, rotated
    hashes = np.stack([dedup.image_hash(img, zooms=()) for img in images])
    fast = dedup.distance_matrix(hashes)
    bits = [np.unpackbits(dedup.image_hash(img, zooms=())[0].view(np.uint8)) for img in images]
    for i, img_i in enumerate(images):
        for j, img_j in enumerate(images):
            variants = [np.rot90(img_j, k) for k in range(4)] + [np.rot90(img_j[:, ::-1], k) for k in range(4)]
            brute = min(
                int((bits[i] != np.unpackbits(dedup.image_hash(np.ascontiguousarray(o), zooms=())[0].view(np.uint8))).sum())
                for o in variants
            )
            assert fast[i, j] == brute, (i, j)
    assert fast[0, 6] == 0 and fast[0, 1] > dedup.MAX_DISTANCE
