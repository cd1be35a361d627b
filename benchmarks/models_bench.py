"""Model throughput on this machine's CPU, against the FLOP/s bound measured in the same run.

Per model, at ``--size`` px and batch ``--batch``:

- forward images/s (eval, ``torch.inference_mode``) and training-step images/s (forward +
  backward + SGD step), best and median of ``--repeats`` after one warm-up;
- forward GFLOPs per image, counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per
  multiply-add; convolutions and matmuls only, so BatchNorm, ReLU and concatenations are free in
  this count but not in time);
- achieved forward FLOP/s as a fraction of the bound: the best of several large float32 matmuls
  (``--matmul`` x ``--matmul``), the most this CPU does with PyTorch's kernels. The bound is
  measured right before and right after each model and the higher one is used, so a machine
  shared with other jobs loads the bound and the model alike (the run's best bound is kept too).

    python benchmarks/models_bench.py --out bench-models.json
    python benchmarks/models_bench.py --models hybrid --channels-last
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mammolens.models import create_model
from mammolens.utils.atomic import write_json

DEFAULT_MODELS = [
    "hybrid", "hybrid-lite", "densenet121", "resnet50", "mobilenetv2_100",
    "tf_efficientnet_lite0", "scratch-cnn", "attention",
]  # fmt: skip
OPTIONAL_MODELS = ["vgg16", "inception_v3"]

# (result key, column title, alignment and width, format) of the printed table.
COLUMNS = [
    ("model", "model", "<22", ""),
    ("params_m", "params M", ">10", ".1f"),
    ("gflops_per_image", "GFLOP/img", ">10", ".2f"),
    ("forward_images_per_s", "fwd img/s", ">10", ".1f"),
    ("forward_images_per_s_median", "(median)", ">9", ".1f"),
    ("train_images_per_s", "train img/s", ">12", ".1f"),
    ("train_images_per_s_median", "(median)", ">9", ".1f"),
    ("forward_gflops_per_s", "fwd GFLOP/s", ">12", ".1f"),
    ("bound_gflops_per_s", "bound GFLOP/s", ">14", ".1f"),
    ("forward_fraction_of_bound", "of bound", ">9", ".0%"),
]


def timings(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds per call, sorted; the best is the figure least disturbed by other jobs on the machine."""
    fn()  # warm-up: oneDNN picks and caches its kernels on the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def matmul_flops(n: int, repeats: int) -> float:
    """FLOP/s of an n x n float32 matmul, best of ``repeats``."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / timings(lambda: torch.mm(a, b), repeats)[0]


def forward_flops(model: nn.Module, x: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return float(counter.get_total_flops())


def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    bound_before = matmul_flops(args.matmul, repeats=5)
    torch.manual_seed(0)
    model = create_model(name, num_classes=2)
    x = torch.rand(args.batch, 1, args.size, args.size)
    y = torch.randint(0, 2, (args.batch,))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())

    model.eval()
    flops = forward_flops(model, x)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    t_fwd = timings(forward, args.repeats)

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    t_train = [float("nan")] if args.forward_only else timings(train_step, args.repeats)
    bound = max(bound_before, matmul_flops(args.matmul, repeats=5))
    return {
        "model": name,
        "params_m": params / 1e6,
        "gflops_per_image": flops / args.batch / 1e9,
        "forward_images_per_s": args.batch / t_fwd[0],
        "forward_images_per_s_median": args.batch / statistics.median(t_fwd),
        "train_images_per_s": args.batch / t_train[0],
        "train_images_per_s_median": args.batch / statistics.median(t_train),
        "forward_gflops_per_s": flops / t_fwd[0] / 1e9,
        "bound_gflops_per_s": bound / 1e9,
        "forward_fraction_of_bound": flops / t_fwd[0] / bound,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="registered model names")
    parser.add_argument("--optional", action="store_true", help=f"also {', '.join(OPTIONAL_MODELS)}")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul", type=int, default=2048, help="side of the bound's square matmul")
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (default: usable cores)"
    )
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format for model and input")
    parser.add_argument("--forward-only", action="store_true", help="skip the training-step timing")
    parser.add_argument("--out", help="write the results here as JSON")
    args = parser.parse_args()
    names = args.models + (OPTIONAL_MODELS if args.optional else [])

    torch.set_num_threads(args.threads)
    env = {
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "channels_last": args.channels_last,
        "forward_only": args.forward_only,
        "batch": args.batch,
        "size": args.size,
        "repeats": args.repeats,
        "load_average_start": os.getloadavg(),
    }
    print(f"{env['cpu']}, {env['threads']} threads; bound: {args.matmul}x{args.matmul} float32 matmul")
    print("".join(f"{title:{width}}" for _, title, width, _ in COLUMNS))
    rows = []
    for name in names:
        row = bench_model(name, args)
        rows.append(row)
        print("".join(f"{row[key]:{width}{fmt}}" for key, _, width, fmt in COLUMNS), flush=True)
    env["load_average_end"] = os.getloadavg()
    env["best_bound_gflops_per_s"] = max(row["bound_gflops_per_s"] for row in rows)
    load = " ".join(f"{v:.1f}" for v in env["load_average_end"])
    print(f"best bound in this run: {env['best_bound_gflops_per_s']:.1f} GFLOP/s; load average at the end {load}")
    if args.out:
        write_json(args.out, {"environment": env, "results": rows})


if __name__ == "__main__":
    main()
