"""An archive-sized run: a VinDr-Mammo-layout archive of synthetic four-view exams at full-field size,
then ``data inspect``, the preprocessing cache and ``predict`` (local and Ray) measured on it.

``generate`` writes the archive with the VinDr replica writer the adapter tests use
(``mammolens.data.replicas.write_vindr``: ``images/<study_id>/<image_id>.dicom`` and both annotation
CSVs), the images cycling through uncompressed, RLE Lossless and JPEG 2000 lossless.

``run`` measures, each step as its own process so wall time includes start-up and the peak memory is
that step's alone (the summed RSS of its process tree, sampled every 0.1 s: Ray's raylet and actors,
cache workers):

- ``mammolens data inspect`` of the archive: time and peak memory;
- decode alone (``read_image`` of every film, ``--workers`` processes): the bound;
- the preprocessing cache build at a quarter, half and all of the films (fresh caches, same workers):
  films/s against decode alone, and peak memory, which should not grow with the number of films;
- ``mammolens predict`` of every film: local, ``--engine ray --actors 1`` and ``--actors 2``, start-up
  included, and whether the three CSVs agree.

The bundle is an untrained ``mobilenetv2_100`` at 512 px behind the default pipeline: only speed is
measured here, and untrained weights cost exactly what trained ones do.

    python benchmarks/archive_bench.py generate /tmp/vindr-archive --exams 100
    python benchmarks/archive_bench.py run /tmp/vindr-archive --out bench-archive.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

COMPRESSIONS = ("none", "rle", "j2k")
FULL_FIELD = (3518, 2800)  # VinDr-Mammo's most common film size (rows, columns)


# ---------------------------------------------------------------------------------- generate
def generate(root: Path, exams: int, size: tuple[int, int], seed: int) -> dict[str, Any]:
    from mammolens.data.replicas import write_vindr

    start = time.perf_counter()
    truth = write_vindr(root, exams, size=size, seed=seed, compression=COMPRESSIONS)
    files = [Path(image["file"]) for image in truth.images]
    info = {"exams": exams, "films": len(files), "size": list(size), "seed": seed,
            "compressions": {c: sum(1 for k in range(len(files)) if COMPRESSIONS[k % 3] == c) for c in COMPRESSIONS},
            "bytes": sum(f.stat().st_size for f in files), "seconds": round(time.perf_counter() - start, 1)}
    (root / "archive.json").write_text(json.dumps(info, indent=2))
    return info


# ------------------------------------------------------------------------------ measurement
def _tree(root: int) -> tuple[int, dict[int, int]]:
    """Summed resident memory (bytes) of ``root`` and all its descendants, and each one's CPU time so far
    (clock ticks, user + system), from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
            with open(f"/proc/{entry}/statm") as fh:
                pages = int(fh.read().split()[1])
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE")
        ticks[int(entry)] = int(fields[11]) + int(fields[12])  # utime + stime
    total, todo, cpu = 0, [root], {}
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        cpu[pid] = ticks.get(pid, 0)
        todo += children.get(pid, [])
    return total, cpu


def measured(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command``; wall seconds, peak summed RSS of its process tree, the CPU seconds its processes
    used (sampled: a lower bound, the last 0.1 s of each process is missed), exit code and output."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    peak, cpu = [0], {}

    def sample() -> None:
        while proc.poll() is None:
            rss, ticks = _tree(proc.pid)
            peak[0] = max(peak[0], rss)
            for pid, t in ticks.items():
                cpu[pid] = max(cpu.get(pid, 0), t)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    result = {"command": " ".join(command), "seconds": round(seconds, 2), "peak_mb": round(peak[0] / 2**20, 1),
              "cpu_s": round(sum(cpu.values()) / os.sysconf("SC_CLK_TCK"), 1),
              "rc": proc.returncode, "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
              "output": output}
    if proc.returncode != 0:
        print(output[-3000:], file=sys.stderr)
        raise SystemExit(f"failed ({proc.returncode}): {result['command']}")
    return result


def _last_json(output: str) -> dict[str, Any]:
    return json.loads(output.strip().splitlines()[-1])


# ------------------------------------------------- steps run as their own process (python this.py _step ...)
def _archive_manifest(root: Path, limit: int | None):  # noqa: ANN202 - a Manifest
    from mammolens.data.adapters.base import load_source

    manifest = load_source(root).manifest
    return manifest if limit is None else manifest.subset(list(range(min(limit, len(manifest)))))


def _decode(path: str) -> int:
    from mammolens.io import read_image

    return int(read_image(path).pixels.size)


def step_decode(root: Path, limit: int | None, workers: int) -> dict[str, Any]:
    import concurrent.futures as cf
    import multiprocessing

    paths = _archive_manifest(root, limit).df["path"].tolist()
    start = time.perf_counter()
    if workers == 1:
        pixels = sum(map(_decode, paths))
    else:
        with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            pixels = sum(pool.map(_decode, paths))
    seconds = time.perf_counter() - start
    return {"films": len(paths), "seconds": seconds, "films_s": len(paths) / seconds, "megapixels": pixels / 1e6}


def step_cache(root: Path, limit: int | None, workers: int, cache: Path, size: int) -> dict[str, Any]:
    from mammolens.preprocess import PreprocessCache, default_config

    manifest = _archive_manifest(root, limit)
    report = PreprocessCache(cache, default_config(size)).build(manifest, workers=workers, progress=False)
    return {"films": len(manifest), "seconds": report.seconds, "films_s": len(manifest) / report.seconds,
            "summary": report.summary()}


def make_bundle(out: Path, size: int) -> Path:
    from mammolens.models import create_model
    from mammolens.preprocess.pipeline import default_steps
    from mammolens.bundle import save_bundle

    model = create_model("mobilenetv2_100", 2).eval()
    return save_bundle(out, model, classes=["normal", "abnormal"], task="normal-abnormal",
                       preprocess={"steps": default_steps(size)}, normalisation={"mean": 0.5, "std": 0.25},
                       threshold=0.5, temperature=1.0, metrics={}, provenance={"note": "untrained: speed only"},
                       config={"model": {"name": "mobilenetv2_100"}})


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {row["file"]: row for row in csv.DictReader(fh)}


def _agree(a: Path, b: Path) -> dict[str, Any]:
    """Same files, and the largest probability difference between two predict CSVs."""
    ra, rb = _rows(a), _rows(b)
    columns = [c for c in next(iter(ra.values())) if c.startswith("p_")]
    diff = max(abs(float(ra[f][c]) - float(rb[f][c])) for f in ra if f in rb for c in columns)
    return {"same_files": set(ra) == set(rb), "errors": sum(1 for r in rb.values() if r.get("error")),
            "max_abs_dprob": diff}


# --------------------------------------------------------------------------------------- run
def run(root: Path, workers: int, size: int, parts: list[str], tmp: Path) -> dict[str, Any]:
    me = [sys.executable, str(Path(__file__).resolve())]
    cli = [sys.executable, "-m", "mammolens.cli"]
    info = json.loads((root / "archive.json").read_text())
    films = info["films"]
    out: dict[str, Any] = {"archive": info, "workers": workers, "size": size, "cpu_count": os.cpu_count(),
                           "load_average_start": os.getloadavg()}
    if "inspect" in parts:
        r = measured([*cli, "data", "inspect", str(root), "--json"])
        report = json.loads(r["output"])
        out["inspect"] = {k: r[k] for k in ("command", "seconds", "peak_mb", "cpu_s", "load_before", "load_after")}
        out["inspect"].update(films_s=films / r["seconds"], samples=report["samples"],
                              image_files=report["image_files"], unreadable=len(report["unreadable_files"]),
                              exams=report.get("exams"), view=report["view"], laterality=report["laterality"])
    if "cache" in parts:
        r = measured([*me, "_decode", str(root), "--workers", str(workers)])
        decode = {**_last_json(r["output"]), "peak_mb": r["peak_mb"], "wall_s": r["seconds"], "cpu_s": r["cpu_s"]}
        builds = []
        for n in sorted({max(1, films // 4), max(1, films // 2), films}):
            r = measured([*me, "_cache", str(root), "--limit", str(n), "--workers", str(workers),
                          "--cache", str(tmp / f"cache-{n}"), "--size", str(size)])
            builds.append({**_last_json(r["output"]), "peak_mb": r["peak_mb"], "wall_s": r["seconds"],
                           "cpu_s": r["cpu_s"], "load_before": r["load_before"]})
        out["cache"] = {"decode": decode, "builds": builds,
                        "build_vs_decode": builds[-1]["films_s"] / decode["films_s"],
                        "peak_mb_largest_vs_smallest": builds[-1]["peak_mb"] / builds[0]["peak_mb"]}
    if "predict" in parts:
        bundle = make_bundle(tmp / "bundle", size)
        runs = {}
        for name, extra in (("local", []), ("ray-1", ["--engine", "ray", "--actors", "1"]),
                            ("ray-2", ["--engine", "ray", "--actors", "2"])):
            csv_path = tmp / f"predict-{name}.csv"
            r = measured([*cli, "predict", str(bundle), str(root / "images"), "--out", str(csv_path),
                          "--no-progress", "--fresh", *extra], env={"OMP_NUM_THREADS": "1"})
            runs[name] = {k: r[k] for k in ("command", "seconds", "peak_mb", "cpu_s", "load_before", "load_after")}
            runs[name]["films_s"] = films / r["seconds"]
            runs[name]["films_per_cpu_s"] = films / r["cpu_s"]
            runs[name]["says"] = r["output"].strip().splitlines()[-1]
        for name in ("ray-1", "ray-2"):
            runs[name]["agreement_with_local"] = _agree(tmp / "predict-local.csv", tmp / f"predict-{name}.csv")
        out["predict"] = {"runs": runs, "ray2_vs_ray1": runs["ray-1"]["seconds"] / runs["ray-2"]["seconds"],
                          "ray2_vs_local": runs["local"]["seconds"] / runs["ray-2"]["seconds"]}
    out["load_average_end"] = os.getloadavg()
    return out


def print_table(results: dict[str, Any]) -> None:
    a = results["archive"]
    print(f"archive: {a['exams']} exams, {a['films']} films of {a['size'][0]}x{a['size'][1]} "
          f"({', '.join(f'{k} {v}' for k, v in a['compressions'].items())}), {a['bytes'] / 2**30:.2f} GiB; "
          f"{results['cpu_count']} CPUs, load {results['load_average_start'][0]:.1f} at the start")
    if "inspect" in results:
        r = results["inspect"]
        print(f"data inspect: {r['seconds']:.1f} s ({r['films_s']:.0f} films/s), peak {r['peak_mb']:.0f} MB")
    if "cache" in results:
        c = results["cache"]
        print(f"decode alone ({results['workers']} workers): {c['decode']['films_s']:.2f} films/s, "
              f"peak {c['decode']['peak_mb']:.0f} MB")
        for b in c["builds"]:
            print(f"cache build {b['films']:>5} films: {b['films_s']:.2f} films/s "
                  f"({b['films_s'] / c['decode']['films_s']:.2f} x decode alone), peak {b['peak_mb']:.0f} MB")
    if "predict" in results:
        p = results["predict"]
        for name, r in p["runs"].items():
            agree = r.get("agreement_with_local")
            tail = f"; vs local: max |dp| {agree['max_abs_dprob']:.2g}, same files {agree['same_files']}" if agree else ""
            print(f"predict {name:<6} {r['seconds']:7.1f} s ({r['films_s']:.2f} films/s), {r['cpu_s']:.0f} CPU s "
                  f"({r['films_per_cpu_s']:.2f} films per CPU s), peak {r['peak_mb']:.0f} MB, load {r['load_before']:.1f}{tail}")
        print(f"ray 2 actors vs 1: {p['ray2_vs_ray1']:.2f}x; ray 2 actors vs local: {p['ray2_vs_local']:.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write the archive")
    g.add_argument("root", type=Path)
    g.add_argument("--exams", type=int, default=100)
    g.add_argument("--size", default=f"{FULL_FIELD[0]}x{FULL_FIELD[1]}", help="rows x columns")
    g.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run", help="measure on the archive")
    r.add_argument("root", type=Path)
    r.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    r.add_argument("--size", type=int, default=512, help="the pipeline's output side")
    r.add_argument("--parts", default="inspect,cache,predict")
    r.add_argument("--out", type=Path)
    r.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: a temporary one)")
    for name in ("_decode", "_cache"):
        s = sub.add_parser(name)
        s.add_argument("root", type=Path)
        s.add_argument("--limit", type=int, default=None)
        s.add_argument("--workers", type=int, default=1)
        s.add_argument("--cache", type=Path)
        s.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)
    if args.cmd == "generate":
        rows, cols = (int(v) for v in args.size.lower().split("x"))
        print(json.dumps(generate(args.root, args.exams, (rows, cols), args.seed)))
    elif args.cmd == "_decode":
        print(json.dumps(step_decode(args.root, args.limit, args.workers)))
    elif args.cmd == "_cache":
        print(json.dumps(step_cache(args.root, args.limit, args.workers, args.cache, args.size)))
    else:
        with tempfile.TemporaryDirectory(prefix="archive-bench-", dir=args.tmp) as tmp:
            results = run(args.root, max(1, args.workers), args.size, args.parts.split(","), Path(tmp))
        print_table(results)
        if args.out:
            from mammolens.utils.atomic import write_json

            write_json(args.out, results)
            print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
