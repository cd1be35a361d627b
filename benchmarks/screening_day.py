"""A screening day through the DICOM node, measured against a real Orthanc.

Writes (once, cached in --out) a day of synthetic four-view exams at full-field size (12 bits in
16, a mix of uncompressed, RLE and JPEG 2000), starts a local Orthanc, starts the node
(``mammolens pacs``) on a bundle of a real architecture (random weights: timing only),
pushes the day in (half the exams by C-STORE, half by STOW-RS), optionally SIGKILLs and restarts
the node during the day, and reports: studies/hour, per-study latency from "stable" to "SR stored"
(median, p95) and the node's split into fetch / decode / preprocess / model / heatmap / write,
the node's peak memory per quarter of the day, lost and duplicated results, and the bound measured
in the same run: decoding a view alone, and the Predictor alone (decode + preprocess + model) on
the same files.

    OMP_NUM_THREADS=2 nice -n 10 python benchmarks/screening_day.py --exams 6 --no-heatmaps \\
        --out /tmp/sday --json docs/results/pacs_day_sr_only.json
    OMP_NUM_THREADS=2 nice -n 10 python benchmarks/screening_day.py --exams 6 --kills 2 \\
        --out /tmp/sday --json docs/results/pacs_day_heatmaps_kills.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import pydicom
import requests
import yaml

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

from mammolens.pacs.client import Pacs
from mammolens.pacs.local_orthanc import LocalOrthanc
from mammolens.pacs.synthetic import write_day


def p95(values: list[float]) -> float:
    return float(np.percentile(values, 95)) if values else float("nan")


def make_day(out: Path, exams: int, shape: tuple[int, int]) -> list[Path]:
    day = out / f"day-{exams}-{shape[0]}x{shape[1]}"
    done = day / "complete"
    if not done.is_file():
        t = time.perf_counter()
        write_day(day, exams, shape=shape)
        done.write_text("")
        print(f"wrote {exams} exams in {time.perf_counter() - t:.0f} s", flush=True)
    return sorted(day.glob("exam*/*.dcm"))


def make_bundle(out: Path, model_name: str, size: int) -> Path:
    import torch

    from mammolens.bundle import save_bundle
    from mammolens.models import create_model
    from mammolens.preprocess.pipeline import default_steps

    path = out / f"bundle-{model_name}-{size}"
    if not path.is_dir():
        torch.manual_seed(0)
        model = create_model(model_name, 2).eval()
        save_bundle(path, model, classes=["normal", "abnormal"], task="normal-abnormal",
                    preprocess={"steps": default_steps(size)}, normalisation=None, metrics={}, provenance={},
                    config={"model": {"name": model_name}}, threshold=0.5)  # fmt: skip
    return path


def bound(bundle: Path, files: list[Path], heatmaps: bool) -> dict[str, float]:
    """Per view, mean seconds (wall, and this process's CPU: ``_cpu``), interleaved file by file:
    decoding alone, the Predictor alone (decode + preprocess + model), and a heatmap."""
    from mammolens.deploy.predictor import Predictor
    from mammolens.io import read_image

    predictor = Predictor.load(bundle)
    predictor.predict(files[0])  # warm-up
    spent: dict[str, list[float]] = {}

    def timed(name: str, fn: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        spent.setdefault(f"{name}_s", []).append(time.perf_counter() - wall)
        spent.setdefault(f"{name}_cpu_s", []).append(time.process_time() - cpu)
        return out

    for path in files:
        encoding = {"Explicit VR Little Endian": "raw", "RLE Lossless": "rle"}.get(
            pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.name, "j2k")
        image = timed("decode_alone", lambda path=path: read_image(path))
        timed("predictor_alone", lambda path=path: predictor.predict(path))
        for name in ("decode_alone", "predictor_alone"):  # the same figures by encoding
            for unit in ("_s", "_cpu_s"):
                spent.setdefault(f"{encoding}_{name}{unit}", []).append(spent[f"{name}{unit}"][-1])
        if heatmaps:
            timed("heatmap_alone", lambda image=image: predictor.explain(predictor.read(image),
                                                                       laterality=image.meta.laterality))
    out = {k: float(np.mean(v)) for k, v in spent.items()}
    for encoding in ("raw", "rle", "j2k"):
        if f"{encoding}_decode_alone_cpu_s" in out:
            out[f"{encoding}_ratio_predictor_to_decode_cpu"] = (out[f"{encoding}_predictor_alone_cpu_s"]
                                                                / out[f"{encoding}_decode_alone_cpu_s"])  # fmt: skip
    return out


def c_store(pacs: LocalOrthanc, paths: list[Path]) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import (
        DigitalMammographyXRayImageStorageForPresentation as MG,
    )

    ae = AE(ae_title="MAMMO1")
    for syntax in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"):
        ae.add_requested_context(MG, syntax)
    assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet)
    if not assoc.is_established:
        raise RuntimeError("C-STORE association refused")
    for path in paths:
        status = assoc.send_c_store(pydicom.dcmread(path))
        if not status or status.Status != 0:
            raise RuntimeError(f"C-STORE failed: {status}")
    assoc.release()


class Memory(threading.Thread):
    """The node process's resident memory every 0.5 s (VmRSS), across restarts."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pid: int | None = None
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.pid:
                try:
                    text = Path(f"/proc/{self.pid}/status").read_text()
                    self.samples.append((time.time(), int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) * 1024))
                except (FileNotFoundError, AttributeError, ProcessLookupError):
                    pass
            time.sleep(0.5)


def start_node(config: Path, log: Path, memory: Memory) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    node = subprocess.Popen([sys.executable, "-m", "mammolens", "pacs", str(config), "--log-file", str(log)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    memory.pid = node.pid
    return node


def studies(state: Path) -> list[dict[str, Any]]:
    if not state.is_file():
        return []
    with sqlite3.connect(state) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM studies")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--exams", type=int, default=8)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=3328)
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--no-heatmaps", action="store_true", help="the SR only (no parametric maps, no overlays)")
    ap.add_argument("--kills", type=int, default=0, help="SIGKILL and restart the node this many times during the day")
    ap.add_argument("--bound-views", type=int, default=9, help="views timed alone (spread over the day's encodings)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/screening_day"))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=3600)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    heatmaps = not args.no_heatmaps
    files = make_day(args.out, args.exams, (args.rows, args.cols))
    bundle = make_bundle(args.out, args.model, args.size)
    run = args.out / f"run-{time.strftime('%H%M%S')}"
    run.mkdir()
    row: dict[str, Any] = {"exams": args.exams, "views": len(files), "shape": [args.rows, args.cols],
                           "model": args.model, "size": args.size, "heatmaps": heatmaps, "kills": args.kills,
                           "load_average_start": os.getloadavg()[0], "cpus": os.cpu_count()}  # fmt: skip
    encodings: dict[str, int] = {}
    for path in files:
        name = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.name
        encodings[name] = encodings.get(name, 0) + 1
    row["encodings"] = encodings
    sample = files[:: max(1, len(files) // args.bound_views)][: args.bound_views]
    row["bound"] = bound(bundle, sample, heatmaps)
    print("bound", row["bound"], flush=True)

    with LocalOrthanc(run / "pacs", stable_age=2) as pacs:
        config = run / "node.yaml"
        config.write_text(yaml.safe_dump({
            "pacs": {"url": pacs.url, "username": pacs.auth[0], "password": pacs.auth[1], "timeout_s": 300},
            "bundles": [{"name": "abnormality", "path": str(bundle), "heatmap": heatmaps}],
            "state": str(run / "node.sqlite"), "poll_s": 0.5, "start": "beginning"}))  # fmt: skip
        log = run / "node.log"
        memory = Memory()
        memory.start()
        node = start_node(config, log, memory)
        client = Pacs(pacs.url, pacs.url + "/dicom-web", pacs.auth, 300)
        exams = sorted({p.parent for p in files})
        t0 = time.time()
        for i, folder in enumerate(exams):  # the day's exams arrive one after another
            paths = sorted(folder.glob("*.dcm"))
            if i % 2:
                client.store([pydicom.dcmread(p) for p in paths])
            else:
                c_store(pacs, paths)
        row["push_s"] = time.time() - t0
        kills_at = [round(args.exams * (k + 1) / (args.kills + 1)) for k in range(args.kills)]
        deadline = time.time() + args.timeout
        while time.time() < deadline:
            rows = studies(run / "node.sqlite")
            finished = [r for r in rows if r["status"] in ("done", "failed", "ignored")]
            if kills_at and len(finished) >= kills_at[0]:
                kills_at.pop(0)
                node.send_signal(signal.SIGKILL)
                node.wait()
                node = start_node(config, log, memory)
            if len(finished) >= args.exams:
                break
            time.sleep(0.5)
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=60)
        memory.stop.set()
        rows = studies(run / "node.sqlite")
        # lost / duplicated: count the results in every study
        sr_class, pm_class = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.30"
        per_study = []
        for study in rows:
            found = requests.post(f"{pacs.url}/tools/lookup", data=study["uid"], auth=pacs.auth, timeout=60).json()
            ident = next(f["ID"] for f in found if f["Type"] == "Study")
            tags = requests.get(f"{pacs.url}/studies/{ident}/instances?expand", auth=pacs.auth, timeout=60).json()
            classes = [requests.get(f"{pacs.url}/instances/{t['ID']}/content/0008-0016", auth=pacs.auth,
                                    timeout=60).text.strip("\x00 ") for t in tags]  # fmt: skip
            per_study.append((classes.count(sr_class), classes.count(pm_class)))
    done = [r for r in rows if r["status"] == "done"]
    row["studies_done"], row["studies_failed"] = len(done), len([r for r in rows if r["status"] == "failed"])
    row["lost"] = args.exams - sum(1 for sr, _ in per_study if sr >= 1)
    row["duplicated_sr"] = sum(1 for sr, _ in per_study if sr > 1)
    row["maps_per_study"] = sorted({pm for _, pm in per_study})
    row["node_starts"] = log.read_text().count("node started")
    timings = [json.loads(r["timings"]) for r in done if r["n_views"]]
    views = [r["n_views"] for r in done if r["n_views"]]
    latency = [r["finished_at"] - r["stable_at"] for r in done]
    span = max(r["finished_at"] for r in done) - min(r["stable_at"] for r in done)
    row["studies_per_hour"] = 3600 * len(done) / span
    row["latency_s"] = {"median": median(latency), "p95": p95(latency)}
    row["service_s"] = {"median": median(t["total"] for t in timings), "p95": p95([t["total"] for t in timings])}
    stages = ("fetch", "decode", "preprocess", "model", "heatmap", "write")
    row["per_view_s"] = {s: sum(t[s] for t in timings) / sum(views) for s in stages}
    row["per_view_cpu_s"] = {s: sum(t.get(f"{s}_cpu", float("nan")) for t in timings) / sum(views) for s in stages}
    processing = ("decode", "preprocess", "model", "heatmap", "write")  # the "a view's processing"
    for unit, key, bound_key in (("wall", "per_view_s", "decode_alone_s"), ("cpu", "per_view_cpu_s", "decode_alone_cpu_s")):
        node_view = sum(row[key][s] for s in processing)
        row[f"per_view_processing_{unit}_s"] = node_view
        row[f"ratio_processing_to_node_decode_{unit}"] = node_view / row[key]["decode"]
        row[f"ratio_processing_to_decode_alone_{unit}"] = node_view / row["bound"][bound_key]
    for unit in ("", "_cpu"):
        row[f"ratio_predictor_alone_to_decode_alone{unit}"] = (row["bound"][f"predictor_alone{unit}_s"]
                                                              / row["bound"][f"decode_alone{unit}_s"])  # fmt: skip
    quarter = np.array_split(np.array([m for _, m in memory.samples]), 4)
    row["peak_rss_mb_per_quarter"] = [round(float(q.max()) / 2**20) if len(q) else None for q in quarter]
    row["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(row, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()
