"""Is our fp32 export slower than the naive one, or was that noise? Batch-1 ORT latency of both,
timed in alternating runs (ours, naive, naive, ours, ...) so load swings hit both alike.

deploy_bench.py timed each model's paths one after the other while the load average swung 4-13;
densenet121 and hybrid came out slower than naive in fp32. Here both files are built exactly as
there (ours: `export_onnx`, torch.export; naive: timm/mammolens model -> torch.onnx.export defaults).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/deploy_interleave.py --models densenet121 hybrid --rounds 30
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy_bench import SIZE, naive_fp32, ort_session  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["densenet121", "hybrid"])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import onnx

    from mammolens.deploy.export import export_onnx
    from mammolens.models import create_model
    from mammolens.preprocess.pipeline import default_steps
    from mammolens.train.bundle import save_bundle

    x = np.random.default_rng(0).random((1, 1, SIZE, SIZE), dtype=np.float32)
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            torch.manual_seed(0)
            bundle = save_bundle(tmp / name, create_model(name, 2).eval(), classes=["normal", "abnormal"],
                                 task="normal-abnormal", preprocess={"steps": default_steps(SIZE)}, normalisation=None,
                                 metrics={}, provenance={}, config={})  # fmt: skip
            t0 = time.perf_counter()
            paths = {"ours": export_onnx(bundle, tmp / "ours.onnx", check_images=2).path, "naive": naive_fp32(name, tmp)}
            export_s = time.perf_counter() - t0
            sessions = {k: ort_session(p, args.threads) for k, p in paths.items()}
            feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
            for k in sessions:
                sessions[k].run(None, feeds[k])  # warm up
            times: dict[str, list[float]] = {"ours": [], "naive": []}
            for i in range(args.rounds):
                for k in ("ours", "naive") if i % 2 == 0 else ("naive", "ours"):
                    t = time.perf_counter()
                    sessions[k].run(None, feeds[k])
                    times[k].append(time.perf_counter() - t)
            ours, naive = np.array(times["ours"]) * 1000, np.array(times["naive"]) * 1000
            nodes = {k: len(onnx.load(str(p)).graph.node) for k, p in paths.items()}
            print(json.dumps({
                "model": name, "rounds": args.rounds, "threads": args.threads, "export_s": round(export_s, 1),
                "load_average": round(os.getloadavg()[0], 1), "ours_median_ms": round(float(np.median(ours)), 1),
                "naive_median_ms": round(float(np.median(naive)), 1), "ours_best_ms": round(float(ours.min()), 1),
                "naive_best_ms": round(float(naive.min()), 1),
                "median_paired_ratio_ours_over_naive": round(float(np.median(ours / naive)), 3),
                "rounds_ours_faster": int((ours < naive).sum()), "graph_nodes": nodes,
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
