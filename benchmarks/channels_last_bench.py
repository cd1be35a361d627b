"""NHWC (channels-last) against the default NCHW layout, timed interleaved in one run.

On a machine that other jobs share, two layouts timed one after the other see different loads;
alternating them call by call gives both the same load, so their ratio is the figure to trust.
Per model, at ``--size`` px and batch ``--batch``: the median seconds of a frozen forward
(``forward_features`` under ``torch.inference_mode``: the feature fast path) and of a training step
(forward, backward, SGD step) in each layout, their ratio, and the NHWC forward's FLOP/s as a
fraction of the best float32 matmul measured in the same run.

    OMP_NUM_THREADS=1 python benchmarks/channels_last_bench.py --out bench-channels-last.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from models_bench import cpu_name, matmul_flops  # noqa: E402 - benchmarks/ is the script's folder
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mammolens.models import create_model
from mammolens.utils.atomic import write_json

LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


def interleaved(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each entry, the entries alternating so each sees the same load."""
    for fn in calls.values():
        fn()  # warm-up: oneDNN picks its kernels on the first call of each layout
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for key, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def bench(name: str, size: int, batch: int, repeats: int) -> dict[str, float | str]:
    torch.manual_seed(0)
    models = {k: create_model(name, num_classes=2).to(memory_format=fmt) for k, fmt in LAYOUTS.items()}
    x = torch.rand(batch, 1, size, size)
    y = torch.randint(0, 2, (batch,))
    inputs = {k: x.contiguous(memory_format=fmt) for k, fmt in LAYOUTS.items()}
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for k, m in models.items()}

    def forward(k: str) -> Callable[[], object]:
        def run() -> None:
            models[k].eval()
            with torch.inference_mode():
                models[k].forward_features(inputs[k])
        return run

    def train_step(k: str) -> Callable[[], object]:
        def run() -> None:
            models[k].train()
            optimizers[k].zero_grad(set_to_none=True)
            nn.functional.cross_entropy(models[k](inputs[k]), y).backward()
            optimizers[k].step()
        return run

    fwd = interleaved({k: forward(k) for k in LAYOUTS}, repeats)
    step = interleaved({k: train_step(k) for k in LAYOUTS}, repeats)
    bound = matmul_flops(1024, repeats=5)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        models["nhwc"].eval().forward_features(inputs["nhwc"])
    flops = float(counter.get_total_flops())
    return {
        "model": name,
        "forward_ms_nchw": 1e3 * fwd["nchw"] / batch,
        "forward_ms_nhwc": 1e3 * fwd["nhwc"] / batch,
        "forward_speedup": fwd["nchw"] / fwd["nhwc"],
        "train_ms_nchw": 1e3 * step["nchw"] / batch,
        "train_ms_nhwc": 1e3 * step["nhwc"] / batch,
        "train_speedup": step["nchw"] / step["nhwc"],
        "nhwc_forward_fraction_of_matmul_bound": flops / fwd["nhwc"] / bound,
        "matmul_gflops_per_s": bound / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mobilenetv2_100", "tf_efficientnet_lite0", "densenet121", "hybrid-lite"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args()
    rows = []
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, {args.size} px, batch {args.batch}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'model':<22}{'fwd ms/img NCHW':>17}{'NHWC':>8}{'x':>6}{'train ms/img NCHW':>19}{'NHWC':>8}{'x':>6}{'of bound':>10}")
    for name in args.models:
        r = bench(name, args.size, args.batch, args.repeats)
        rows.append(r)
        print(f"{name:<22}{r['forward_ms_nchw']:>17.1f}{r['forward_ms_nhwc']:>8.1f}{r['forward_speedup']:>6.2f}"
              f"{r['train_ms_nchw']:>19.1f}{r['train_ms_nhwc']:>8.1f}{r['train_speedup']:>6.2f}"
              f"{r['nhwc_forward_fraction_of_matmul_bound']:>10.0%}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.out:
        write_json(args.out, {"cpu": cpu_name(), "threads": torch.get_num_threads(), "size": args.size,
                              "batch": args.batch, "rows": rows})


if __name__ == "__main__":
    main()
