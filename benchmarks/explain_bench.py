"""What one explanation costs, as a ratio to a no-grad forward of the same model at the same size.

Per model (batch 1, ``--size`` px, untrained weights: cost does not depend on them), timed in
interleaved rounds so that a machine shared with other jobs loads every variant alike:

- ``forward``: ``model(x)`` under ``torch.inference_mode`` (the bound);
- ``gradcam``: mammolens' Grad-CAM (``CAM_METHODS['gradcam']``): parameters frozen for the call,
  the graph starting at the target layer(s), so the backward runs through the head only; for a
  hybrid this is the fused map (both backbones' maps + branch weights);
- ``explain``: ``explain_preprocessed`` end to end (Grad-CAM + probabilities from the same
  forward + the map warped back onto a ``--original`` px film);
- ``library``: pytorch-grad-cam's GradCAM called the plain way, with every parameter requiring
  grad (the backward then runs through the whole network), for comparison.

Ratios are medians over rounds of (variant time / forward time) measured back to back, in wall
time and in this process's CPU time (on a machine shared with other jobs the CPU-time ratio is the
steadier one; both are reported).

    OMP_NUM_THREADS=2 python benchmarks/explain_bench.py --out bench-explain.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_grad_cam import GradCAM

from mammolens.bundle.model import Bundle
from mammolens.explain.api import explain_preprocessed
from mammolens.explain.geometry import InputGeometry
from mammolens.explain.methods import CAM_METHODS, CamRequest, ClassTarget
from mammolens.models import create_model
from mammolens.utils.atomic import write_json


def _seconds(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU time (all threads of this process) is what other jobs on
    a shared machine disturb least."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(name: str, size: int, original: int, rounds: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = create_model(name, 2).eval()
    layers = dict(model.cam_target_layers())
    pixels = np.random.default_rng(0).uniform(0, 1, (size, size)).astype(np.float32)
    x = torch.from_numpy(pixels)[None, None]
    bundle = Bundle(
        path=Path("bench"), model=model, classes=["benign", "malignant"], task="benign-malignant",
        preprocess={"steps": [{"name": "resize", "size": size}]}, normalisation={"mean": 0.0, "std": 1.0},
        threshold=0.5, temperature=1.0, metrics={}, provenance={}, config={},
    )  # fmt: skip
    scale = size / original
    geometry = InputGeometry(scale, 0.5 * scale - 0.5, scale, 0.5 * scale - 0.5, (original, original), (size, size))
    request = CamRequest(model, x, layers, 1, False, 0.0)
    library = GradCAM(model, list(layers.values()))

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    variants = {
        "gradcam": lambda: CAM_METHODS.get("gradcam")(request),
        "explain": lambda: explain_preprocessed(bundle, pixels, geometry, method="gradcam"),
        "library": lambda: library(x, targets=[ClassTarget(1, False)]),
    }
    for fn in (forward, *variants.values()):  # warm-up: oneDNN picks its kernels on the first call
        fn()
    ratios: dict[str, list[float]] = {f"{k}_{clock}": [] for k in variants for clock in ("wall", "cpu")}
    times: dict[str, list[float]] = {k: [] for k in ("forward", *variants)}
    for _ in range(rounds):
        for key, fn in variants.items():
            base_wall, base_cpu = _seconds(forward)
            took_wall, took_cpu = _seconds(fn)
            times["forward"].append(base_wall)
            times[key].append(took_wall)
            ratios[f"{key}_wall"].append(took_wall / base_wall)
            ratios[f"{key}_cpu"].append(took_cpu / base_cpu)
    library.activations_and_grads.release()
    result: dict[str, Any] = {"model": name, "size": size, "original": original, "rounds": rounds}
    for key, values in times.items():
        result[f"{key}_wall_ms_median"] = 1000 * statistics.median(values)
    for key, values in ratios.items():
        result[f"{key}_ratio_median"] = statistics.median(values)
        result[f"{key}_ratio_min"] = min(values)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "hybrid", "hybrid-lite"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--original", type=int, default=1024, help="side of the film the map is warped onto")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    rows = [bench(m, args.size, args.original, args.rounds) for m in args.models]
    print(f"{'model':<14}{'fwd ms':>9}{'gradcam ms':>12}   ratio to forward, median (wall | CPU time)")
    print(f"{'':<35}{'gradcam':>16}{'explain':>16}{'library':>16}")
    for r in rows:
        cells = "".join(
            f"{r[f'{k}_wall_ratio_median']:>9.2f} |{r[f'{k}_cpu_ratio_median']:>5.2f}" for k in ("gradcam", "explain", "library")
        )
        print(f"{r['model']:<14}{r['forward_wall_ms_median']:>9.1f}{r['gradcam_wall_ms_median']:>12.1f}{cells}")
    if args.out:
        write_json(args.out, {"threads": torch.get_num_threads(), "results": rows})


if __name__ == "__main__":
    main()
