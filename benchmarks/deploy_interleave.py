"""Is our fp32 export slower than the naive one, and if so, is it the export or the network?
ORT latency of three files (batch 1 unless --batch), timed in rotating order each round so load swings hit all alike:

- ours: `export_onnx` of a bundle of the mammolens model (normalisation, temperature and softmax in the graph);
- same: that same mammolens model -> torch.onnx.export with its defaults (what a naive user of mammolens gets);
- anchor: the issue's naive export, timm.create_model(in_chans=1) -> torch.onnx.export (for the hybrids, which
  timm lacks, the mammolens model, so same == anchor there).

ours vs same measures the export; same vs anchor measures the network (the default ``conv`` input adapter
is a 3x3 1->3 convolution before a 3-channel stem, where timm's ``in_chans=1`` stem sums the RGB filters).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/deploy_interleave.py --rounds 30 --out interleave.json
    OMP_NUM_THREADS=1 python benchmarks/deploy_interleave.py --models mobilenetv2_100 --rounds 10 --profile 200
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
from deploy_bench import MODELS, SIZE, export_with_defaults, naive_fp32, ort_session  # noqa: E402


def op_profile(path: Path, feed: dict, threads: int, runs: int, tmp: Path) -> dict[str, float]:
    """Mean µs per run spent in each ONNX op type (onnxruntime's profiler), largest first."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling = threads, True
    options.profile_file_prefix = str(tmp / path.stem)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, feed)
    totals: dict[str, float] = {}
    for event in json.loads(Path(session.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + event["dur"]
    return {op: round(us / runs, 1) for op, us in sorted(totals.items(), key=lambda t: -t[1])}


def paired(a: np.ndarray, b: np.ndarray) -> dict[str, float | int]:
    return {"median_ratio": round(float(np.median(a / b)), 3), "rounds_faster": int((a < b).sum())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--adapter", default=None, help="the mammolens model's input_adapter option (default: its own)")
    ap.add_argument("--out", type=Path, default=None, help="JSON lines, appended after each model")
    ap.add_argument("--profile", type=int, default=0, help="also profile ours and anchor over this many runs (op types)")
    args = ap.parse_args()

    import onnx

    from mammolens.bundle.model import save_bundle
    from mammolens.deploy.export import export_onnx
    from mammolens.models import create_model
    from mammolens.preprocess.pipeline import default_steps

    options = {} if args.adapter is None else {"input_adapter": args.adapter}
    x = np.random.default_rng(0).random((args.batch, 1, SIZE, SIZE), dtype=np.float32)
    for name in args.models:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            torch.manual_seed(0)
            model = create_model(name, 2, **options).eval()
            bundle = save_bundle(tmp / name, model, classes=["normal", "abnormal"], task="normal-abnormal",
                                 preprocess={"steps": default_steps(SIZE)}, normalisation=None,
                                 metrics={}, provenance={}, config={})  # fmt: skip
            paths = {"ours": export_onnx(bundle, tmp / "ours.onnx", check_images=2).path,
                     "same": export_with_defaults(model, tmp / "same.onnx"), "anchor": naive_fp32(name, tmp)}  # fmt: skip
            sessions = {k: ort_session(p, args.threads) for k, p in paths.items()}
            feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
            for k in sessions:
                sessions[k].run(None, feeds[k])  # warm up
            keys = list(sessions)
            times: dict[str, list[float]] = {k: [] for k in keys}
            for i in range(args.rounds):
                for k in keys[i % 3:] + keys[: i % 3]:
                    t = time.perf_counter()
                    sessions[k].run(None, feeds[k])
                    times[k].append(time.perf_counter() - t)
            ms = {k: np.array(v) * 1000 for k, v in times.items()}
            row = {
                "model": name, **options, "rounds": args.rounds, "threads": args.threads, "batch": args.batch,
                "load_average": round(os.getloadavg()[0], 1),
                **{f"{k}_median_ms": round(float(np.median(v)), 1) for k, v in ms.items()},
                **{f"{k}_best_ms": round(float(v.min()), 1) for k, v in ms.items()},
                "ours_vs_same": paired(ms["ours"], ms["same"]), "same_vs_anchor": paired(ms["same"], ms["anchor"]),
                "ours_vs_anchor": paired(ms["ours"], ms["anchor"]),
                "graph_nodes": {k: len(onnx.load(str(p)).graph.node) for k, p in paths.items()},
            }  # fmt: skip
            if args.profile:
                row["profile_us"] = {k: op_profile(paths[k], feeds[k], args.threads, args.profile, tmp)
                                     for k in ("ours", "anchor")}  # fmt: skip
            print(json.dumps(row), flush=True)
            if args.out is not None:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
