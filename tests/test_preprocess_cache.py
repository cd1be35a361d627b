"""Preprocessing cache: build/load, reuse, invalidation, corruption, parallel workers, worker errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mammolens.data.manifest import Manifest
from mammolens.preprocess import Pipeline, PreprocessCache, Sample
from mammolens.utils.errors import DataError, ImageReadError

CONFIG = {
    "steps": [
        {"name": "orient"},
        {"name": "crop_breast"},
        {"name": "contrast_stretch"},
        {"name": "clahe", "tile_grid": 4},
        {"name": "resize", "size": 32},
    ]
}


def npy_loader(path: str, frame: int | None = None) -> np.ndarray:
    """Module-level, so spawned workers can unpickle it."""
    array = np.load(path)
    return array if frame is None else array[frame]


def strict_loader(path: str, frame: int | None = None) -> np.ndarray:
    """Like npy_loader, but a file named bad*.npy is unreadable, as read_image would say."""
    if Path(path).name.startswith("bad"):
        raise ImageReadError("not a valid image (truncated)", path=path)
    return npy_loader(path, frame)


def crashing_loader(path: str, frame: int | None = None) -> np.ndarray:
    if Path(path).name.startswith("bad"):
        os._exit(3)  # a worker killed outright, as by the OOM killer
    return npy_loader(path, frame)


def buggy_loader(path: str, frame: int | None = None) -> np.ndarray:
    if Path(path).name.startswith("bad"):
        raise ValueError("unexpected\nmulti-line\nfailure")
    return npy_loader(path, frame)


def write_film(path: Path, seed: int, wall: str = "left") -> tuple[float, float, float]:
    """A small synthetic film with a bright lesion; returns the lesion's ROI."""
    rng = np.random.default_rng(seed)
    h, w = 90, 70
    rows, cols = np.mgrid[:h, :w]
    cx = 0 if wall == "left" else w - 1
    breast = (cols - cx) ** 2 + (rows - 45) ** 2 <= 40**2
    pixels = np.where(breast, 0.3 + 0.2 * rng.random((h, w)), 0.0).astype(np.float32)
    lx = 18.0 + seed % 5 if wall == "left" else w - 19.0 - seed % 5
    lesion = (cols - lx) ** 2 + (rows - 45) ** 2 <= 5**2
    pixels[lesion] = 1.0
    np.save(path, pixels)
    return (lx, 45.0, 5.0)


def make_manifest(tmp_path: Path, n: int = 4, overrides: dict[int, dict] | None = None) -> Manifest:
    overrides = overrides or {}
    records = []
    for i in range(n):
        path = tmp_path / f"img{i}.npy"
        roi = write_film(path, i, "left" if i % 2 else "right")
        records.append(
            {"sample_id": f"s{i}", "source": "arrays", "path": str(path), "group": f"g{i // 2}",
             "rois": json.dumps([roi]), "pathology": "benign", **overrides.get(i, {})}
        )
    return Manifest.from_records(records)


def test_build_then_load_matches_the_pipeline(tmp_path):
    manifest = make_manifest(tmp_path)
    cache = PreprocessCache(tmp_path / "cache", CONFIG, loader=npy_loader)
    report = cache.build(manifest, workers=1, progress=False)
    assert (report.total, report.computed, report.reused) == (4, 4, 0)
    pipeline = Pipeline(CONFIG)
    for i in range(4):
        expected = pipeline(Sample(np.load(tmp_path / f"img{i}.npy"), rois=tuple(manifest.rois(i))))
        array = cache.load(f"s{i}")
        assert array.dtype == np.float32 and array.shape == (32, 32)
        assert np.abs(array - expected.pixels).max() <= 1 / 65535
        (roi,) = cache.load_rois(f"s{i}")
        assert roi == pytest.approx(expected.rois[0], abs=1e-3)
    assert "s0" in cache and "nope" not in cache and len(cache) == 4
    with pytest.raises(DataError, match="'nope' is not in the preprocessing cache"):
        cache.load("nope")
    files = sorted(p.name for p in (cache.dir / "arrays").iterdir())
    assert len(files) == 4 and all(f.endswith(".npy") and not f.startswith(".") for f in files)
    assert np.load(cache.dir / "arrays" / files[0]).dtype == np.uint16  # half the disk of float32

    again = PreprocessCache(tmp_path / "cache", CONFIG, loader=npy_loader).build(manifest, progress=False)
    assert (again.computed, again.reused, again.rebuilt_stale, again.rebuilt_corrupt) == (0, 4, 0, 0)


def test_cache_hits_do_not_reread_sources(tmp_path, monkeypatch):
    manifest = make_manifest(tmp_path)
    PreprocessCache(tmp_path / "cache", CONFIG, loader=npy_loader).build(manifest, workers=1, progress=False)

    def no_hashing(*args, **kwargs):
        raise AssertionError("a source file was hashed on a cache hit")

    monkeypatch.setattr("mammolens.preprocess.cache.hashlib.file_digest", no_hashing)
    report = PreprocessCache(tmp_path / "cache", CONFIG, loader=npy_loader).build(manifest, workers=1, progress=False)
    assert report.reused == 4


def test_changed_source_is_rebuilt_and_a_touched_one_is_not(tmp_path):
    manifest = make_manifest(tmp_path)
    cache = PreprocessCache(tmp_path / "cache", CONFIG, loader=npy_loader)
    cache.build(manifest, workers=1, progress=False)
    before = cache.load("s1")

    img1 = tmp_path / "img1.npy"
    changed = np.load(img1)
    changed[30:36, 10:16] = 1.0  # a second bright spot: same size, new content, new mtime
    np.save(img1, changed)
    with pytest.raises(DataError, match="changed after it was cached"):
        cache.load("s1")
    os.utime(tmp_path / "img2.npy", ns=(1, 1))  # new mtime, same bytes
    report = cache.build(manifest, workers=1, progress=False)
    assert (report.rebuilt_stale, report.reused, report.computed) == (1, 3, 0)
    assert not np.array_equal(cache.load("s1"), before)
    assert len(list((cache.dir / "arrays").iterdir())) == 4  # the stale array was removed

    moved = manifest.df.copy()
    moved.loc[0, "rois"] = json.dumps([[20.0, 40.0, 6.0]])
    assert cache.build(Manifest(moved), workers=1, progress=False).rebuilt_stale == 1  # a new ROI is a new input


def test_config_change_gives_a_different_key(tmp_path):
    manifest = make_manifest(tmp_path, n=2)
    a = PreprocessCache(tmp_path / "cache", CONFIG, loader=npy_loader)
    other = {"steps": [*CONFIG["steps"][:-1], {"name": "resize", "size": 24}]}
    b = PreprocessCache(tmp_path / "cache", other, loader=npy_loader)
    assert a.dir != b.dir
    a.build(manifest, workers=1, progress=False)
    assert "s0" not in b
    assert b.build(manifest, workers=1, progress=False).computed == 2
    assert b.load("s0").shape == (24, 24) and a.load("s0").shape == (32, 32)
    key_a = json.loads(a.index_path.read_text())["entries"]["s0"]["key"]
    key_b = json.loads(b.index_path.read_text())["entries"]["s0"]["key"]
    assert key_a != key_b


def test_damaged_arrays_are_detected_and_rebuilt(tmp_path):
    manifest = make_manifest(tmp_path, n=3)
    cache = PreprocessCache(tmp_path / "cache", CONFIG, loader=npy_loader)
    cache.build(manifest, workers=1, progress=False)
    good = {sid: cache.load(sid) for sid in ("s0", "s1", "s2")}
    index = json.loads(cache.index_path.read_text())["entries"]

    truncated = cache.dir / index["s0"]["file"]
    truncated.write_bytes(truncated.read_bytes()[:-100])
    reshaped = cache.dir / index["s1"]["file"]
    np.save(reshaped, np.zeros((16, 64), np.uint16))  # a valid .npy of the wrong shape
    (cache.dir / index["s2"]["file"]).unlink()
    for sid in ("s0", "s1"):
        with pytest.raises(DataError, match="damaged"):
            cache.load(sid)

    report = PreprocessCache(tmp_path / "cache", CONFIG, loader=npy_loader).build(manifest, workers=1, progress=False)
    assert (report.rebuilt_corrupt, report.reused) == (3, 0)
    for sid, array in good.items():
        assert np.array_equal(cache.load(sid), array)


def test_unreadable_index_means_recompute(tmp_path):
    manifest = make_manifest(tmp_path, n=2)
    cache = PreprocessCache(tmp_path / "cache", CONFIG, loader=npy_loader)
    cache.build(manifest, workers=1, progress=False)
    cache.index_path.write_text("{not json")
    again = PreprocessCache(tmp_path / "cache", CONFIG, loader=npy_loader)
    assert len(again) == 0 and again.build(manifest, workers=1, progress=False).computed == 2


def test_two_workers_give_the_same_arrays_as_one(tmp_path):
    manifest = make_manifest(tmp_path, n=6)
    serial = PreprocessCache(tmp_path / "one", CONFIG, loader=npy_loader)
    parallel = PreprocessCache(tmp_path / "two", CONFIG, loader=npy_loader)
    serial.build(manifest, workers=1, progress=False)
    report = parallel.build(manifest, workers=2, progress=False)
    assert report.workers == 2 and report.computed == 6
    for i in range(6):
        assert np.array_equal(serial.load(f"s{i}"), parallel.load(f"s{i}"))
        assert serial.load_rois(f"s{i}") == parallel.load_rois(f"s{i}")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_file_is_one_error_line_naming_it(tmp_path, workers):
    manifest = make_manifest(tmp_path, n=5)
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"garbage")
    df = manifest.df.copy()
    df.loc[2, "path"] = str(bad)
    cache = PreprocessCache(tmp_path / "cache", CONFIG, loader=strict_loader)
    with pytest.raises(ImageReadError) as info:
        cache.build(Manifest(df), workers=workers, progress=False)
    message = str(info.value)
    assert "\n" not in message and str(bad) in message and "truncated" in message
    arrays = list((cache.dir / "arrays").iterdir())
    assert not [p for p in arrays if p.name.startswith(".")]  # nothing half-written
    saved = json.loads(cache.index_path.read_text())["entries"]
    assert "s2" not in saved and len(saved) == len(arrays) >= 1  # finished work is kept


def test_a_dead_worker_is_an_error_not_a_hang(tmp_path):
    manifest = make_manifest(tmp_path, n=3)
    df = manifest.df.copy()
    df.loc[1, "path"] = str(tmp_path / "bad.npy")
    np.save(tmp_path / "bad.npy", np.zeros((4, 4), np.float32))
    cache = PreprocessCache(tmp_path / "cache", CONFIG, loader=crashing_loader)
    with pytest.raises(DataError, match=r"worker process died .* while reading one of: .*bad\.npy"):
        cache.build(Manifest(df), workers=2, progress=False)
    assert not list((cache.dir / "arrays").glob(".*"))  # nothing half-written


def test_an_unexpected_failure_is_also_one_line(tmp_path):
    manifest = make_manifest(tmp_path, n=2)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 4), np.float32))
    df = manifest.df.copy()
    df.loc[1, "path"] = str(bad)
    cache = PreprocessCache(tmp_path / "cache", CONFIG, loader=buggy_loader)
    with pytest.raises(DataError, match=r"bad.npy: sample 's1': preprocessing failed \(ValueError: unexpected multi-line"):
        cache.build(Manifest(df), workers=1, progress=False)


def test_missing_source_file_is_named(tmp_path):
    manifest = make_manifest(tmp_path, n=2)
    (tmp_path / "img1.npy").unlink()
    with pytest.raises(DataError, match="img1.npy: image file not found"):
        PreprocessCache(tmp_path / "cache", CONFIG, loader=npy_loader).build(manifest, progress=False)


def test_crop_roi_without_roi_is_reported(tmp_path):
    manifest = make_manifest(tmp_path, n=3, overrides={1: {"rois": "[]", "pathology": "normal"}})
    roi_config = {"steps": [{"name": "crop_roi", "on_missing": "full", "min_size": 24}, {"name": "resize", "size": 16}]}
    cache = PreprocessCache(tmp_path / "cache", roi_config, loader=npy_loader)
    report = cache.build(manifest, workers=1, progress=False)
    assert report.roi_missing == ["s1"] and "1 flagged roi_missing" in report.summary()
    assert cache.flags("s1") == ["roi_missing"] and cache.flags("s0") == []
    strict = {"steps": [{"name": "crop_roi"}, {"name": "resize", "size": 16}]}
    with pytest.raises(DataError, match=r"img1.npy: sample 's1': crop_roi: sample has no ROI"):
        PreprocessCache(tmp_path / "strict", strict, loader=npy_loader).build(manifest, workers=1, progress=False)


def test_mask_rows_take_their_rois_from_the_mask(tmp_path):
    mask = np.zeros((90, 70), np.float32)
    mask[40:50, 30:40] = 1.0
    np.save(tmp_path / "mask.npy", mask)
    manifest = make_manifest(tmp_path, n=2, overrides={0: {"mask_path": str(tmp_path / "mask.npy"), "rois": "[]"}})
    cache = PreprocessCache(tmp_path / "cache", {"steps": [{"name": "resize", "size": 45, "keep_aspect": False}]},
                            loader=npy_loader)
    cache.build(manifest, workers=1, progress=False)
    (x, y, r), = cache.load_rois("s0")
    assert x == pytest.approx(((34.5 + 0.5) * 45 / 70) - 0.5, abs=0.3)
    assert y == pytest.approx(((44.5 + 0.5) * 0.5) - 0.5, abs=0.3)
    assert r == pytest.approx(np.hypot(4.5, 4.5) * 45 / 70, abs=0.05)  # encloses the square's pixel centres
    entry = json.loads(cache.index_path.read_text())["entries"]["s0"]
    assert entry["roi_source"] == "mask" and entry["mask"]["sha256"]
    np.save(tmp_path / "mask.npy", np.roll(mask, 10, axis=1))
    assert cache.build(manifest, workers=1, progress=False).rebuilt_stale == 1  # a changed mask is stale


def test_frames_of_a_stacked_array_are_separate_samples(tmp_path):
    stack = np.stack([np.full((20, 20), 0.2, np.float32), np.full((20, 20), 0.8, np.float32)])
    np.save(tmp_path / "stack.npy", stack)
    manifest = Manifest.from_records(
        {"sample_id": f"f{i}", "source": "arrays", "path": str(tmp_path / "stack.npy"), "frame": i, "group": "g"}
        for i in range(2)
    )
    cache = PreprocessCache(tmp_path / "cache", {"steps": [{"name": "resize", "size": 10}]}, loader=npy_loader)
    cache.build(manifest, workers=1, progress=False)
    assert cache.load("f0").mean() == pytest.approx(0.2, abs=1e-4)
    assert cache.load("f1").mean() == pytest.approx(0.8, abs=1e-4)



def test_content_key_follows_the_source_files(tmp_path):
    """The feature fast path keys its cache on this: a changed image must change it."""
    from mammolens.data.manifest import Manifest
    from mammolens.preprocess import PreprocessCache, default_config

    rng = np.random.default_rng(0)
    rows = []
    for i in range(2):
        path = tmp_path / f"img{i}.npy"
        np.save(path, rng.random((48, 40), dtype=np.float32))
        rows.append({"sample_id": f"s{i}", "source": "arrays", "path": str(path), "group": f"g{i}"})
    manifest = Manifest.from_records(rows)
    cache = PreprocessCache(tmp_path / "cache", default_config(size=16))
    cache.build(manifest, workers=1, progress=False)
    before = cache.content_key(["s0", "s1"])
    assert cache.content_key(["s0", "s1"]) == before
    assert cache.content_key(["s1", "s0"]) != before  # order matters: features are stored in row order
    np.save(tmp_path / "img1.npy", rng.random((48, 40), dtype=np.float32))
    cache.build(manifest, workers=1, progress=False)
    assert cache.content_key(["s0", "s1"]) != before


def scaled_loader(path: str, frame: int | None = None, *, gain: float = 1.0) -> np.ndarray:
    return np.clip(npy_loader(path, frame) * gain, 0.0, 1.0)


def test_loaders_with_other_arguments_or_code_never_share_arrays(tmp_path):
    """Two functools.partial loaders of one function differ only in their arguments: each must
    get its own arrays (the old key named only the function, so the second read the first's)."""
    import functools

    from mammolens.preprocess.cache import loader_identity

    manifest = make_manifest(tmp_path, n=2)
    dim, bright = functools.partial(scaled_loader, gain=0.5), functools.partial(scaled_loader, gain=1.0)
    assert loader_identity(dim) != loader_identity(bright)
    assert loader_identity(dim) == loader_identity(functools.partial(scaled_loader, gain=0.5))
    first = PreprocessCache(tmp_path / "cache", CONFIG, loader=dim)
    first.build(manifest, workers=1, progress=False)
    second = PreprocessCache(tmp_path / "cache", CONFIG, loader=bright)
    report = second.build(manifest, workers=1, progress=False)
    assert report.reused == 0 and report.rebuilt_stale == 2
    expected = Pipeline(CONFIG)(Sample(pixels=bright(str(tmp_path / "img0.npy")), rois=())).pixels
    np.testing.assert_allclose(second.load("s0"), expected, atol=1 / 65535)
