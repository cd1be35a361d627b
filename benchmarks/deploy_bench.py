"""Edge inference speed per model at 224 px: torch eager (channels-last), ORT fp32, ORT static int8,
beside a naive export measured in the same run, and the matmul FLOP bound measured in the same run.

Ours: `mammolens export` (torch.export, opset 18, the input adapter folded into the stem; int8 =
quant_pre_process with merged symbolic dims, per-channel static QDQ calibrated on preprocessed images,
the default float layers and probability tail).
Naive: timm.create_model (mammolens' model for the hybrids, which timm lacks) -> torch.onnx.export with
its defaults -> onnxruntime; int8 = quantize_static straight on that file (no pre-processing),
calibrated on the same number of random images. Latency is batch 1 (median and best of --repeats),
throughput batch 16. Results are appended to --out after each model, so a cut-short run keeps its rows.

    OMP_NUM_THREADS=2 python benchmarks/deploy_bench.py --out bench-deploy.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models_bench import forward_flops, matmul_flops, timings  # noqa: E402

from mammolens.utils.atomic import write_json  # noqa: E402

MODELS = ["mobilenetv2_100", "tf_efficientnet_lite0", "resnet50", "densenet121", "hybrid", "hybrid-lite"]
SIZE = 224


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_ort(path: Path, threads: int, repeats: int) -> dict[str, float]:
    session = ort_session(path, threads)
    name = session.get_inputs()[0].name
    x1, x16 = np.random.rand(1, 1, SIZE, SIZE).astype(np.float32), np.random.rand(16, 1, SIZE, SIZE).astype(np.float32)
    t1 = timings(lambda: session.run(None, {name: x1}), repeats)
    t16 = timings(lambda: session.run(None, {name: x16}), max(2, repeats // 4))
    return {"b1_ms": 1000 * t1[len(t1) // 2], "b1_best_ms": 1000 * t1[0], "b16_img_s": 16 / t16[len(t16) // 2]}


def time_torch(model: torch.nn.Module, repeats: int) -> dict[str, float]:
    model = model.eval().to(memory_format=torch.channels_last)
    x1 = torch.rand(1, 1, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    x16 = torch.rand(16, 1, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        t1 = timings(lambda: model(x1), repeats)
        t16 = timings(lambda: model(x16), max(2, repeats // 4))
    return {"b1_ms": 1000 * t1[len(t1) // 2], "b1_best_ms": 1000 * t1[0], "b16_img_s": 16 / t16[len(t16) // 2]}


def naive_fp32(name: str, tmp: Path) -> Path:
    """timm (mammolens' model for the hybrids) -> torch.onnx.export with its defaults."""
    import timm

    from mammolens.models import create_model

    model = (create_model(name, 2) if name.startswith("hybrid") else
             timm.create_model(name, num_classes=2, in_chans=1, pretrained=False)).eval()  # fmt: skip
    return export_with_defaults(model, tmp / f"naive-{name}.onnx")


def export_with_defaults(model: torch.nn.Module, path: Path) -> Path:
    """``model`` -> ``torch.onnx.export`` with its defaults (a dynamic batch axis, nothing else asked)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 1, SIZE, SIZE),), str(path), input_names=["image"],
                          dynamic_axes={"image": {0: "batch"}})  # fmt: skip
    return path


def naive_export(name: str, tmp: Path) -> tuple[Path, Path | None, str]:
    """naive_fp32 -> quantize_static as it comes; returns (fp32, int8 or None, note)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    fp32 = naive_fp32(name, tmp)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": np.random.rand(1, 1, SIZE, SIZE).astype(np.float32)} for _ in range(16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    int8 = tmp / f"naive-{name}.int8.onnx"
    try:
        quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ)
        ort_session(int8, 1)
        return fp32, int8, ""
    except Exception as exc:  # noqa: BLE001 - a failing naive path is a result to report
        return fp32, None, f"naive int8 failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def file_size(path: Path) -> int:
    data = Path(str(path) + ".data")  # the dynamo exporter may write weights beside the graph
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def bench(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from mammolens.bundle.model import save_bundle
    from mammolens.deploy.export import export_onnx
    from mammolens.models import create_model
    from mammolens.preprocess.pipeline import default_steps

    torch.manual_seed(0)
    model = create_model(name, 2).eval()
    bundle = save_bundle(tmp / name, model, classes=["normal", "abnormal"], task="normal-abnormal",
                         preprocess={"steps": default_steps(SIZE)}, normalisation=None, metrics={}, provenance={},
                         config={})  # fmt: skip
    row: dict[str, Any] = {"model": name, "load_average": os.getloadavg()[0]}
    bound_before = matmul_flops(args.matmul, 5)
    row["gflops_per_image"] = forward_flops(model, torch.rand(1, 1, SIZE, SIZE)) / 1e9
    row["torch"] = time_torch(model, args.repeats)
    t = time.perf_counter()
    fp32 = export_onnx(bundle, tmp / f"{name}.onnx", check_images=4)
    int8 = export_onnx(bundle, tmp / f"{name}.int8.onnx", int8=True, calibration=args.calibration,
                       calibration_samples=16, check_images=16)  # fmt: skip
    row["export_s"] = round(time.perf_counter() - t, 1)
    row["fp32_max_abs_dprob"], row["int8_max_abs_dprob"] = fp32.max_abs_diff, int8.max_abs_diff
    row["int8_decision_agreement"] = int8.decision_agreement
    row["ours_fp32"] = time_ort(fp32.path, args.threads, args.repeats) | {"bytes": fp32.size_bytes}
    row["ours_int8"] = time_ort(int8.path, args.threads, args.repeats) | {"bytes": int8.size_bytes}
    t = time.perf_counter()
    try:
        nfp32, nint8, note = naive_export(name, tmp)
        row["naive_export_s"] = round(time.perf_counter() - t, 1)
        row["naive_fp32"] = time_ort(nfp32, args.threads, args.repeats) | {"bytes": file_size(nfp32)}
        row["naive_int8"] = (time_ort(nint8, args.threads, args.repeats) | {"bytes": file_size(nint8)}) if nint8 else None
        row["naive_note"] = note
    except Exception as exc:  # noqa: BLE001
        row["naive_note"] = f"naive export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        traceback.print_exc()
    bound = max(bound_before, matmul_flops(args.matmul, 5))
    row["bound_gflops_per_s"] = bound / 1e9
    row["bound_b1_ms"] = 1000 * row["gflops_per_image"] * 1e9 / bound
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)  # 2 threads on 2 shared cores spin: 25x slower here
    ap.add_argument("--matmul", type=int, default=1024)
    ap.add_argument("--calibration", default="synthetic", help="dataset source to calibrate int8 on")
    ap.add_argument("--out", default="bench-deploy.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="deploy-bench-") as tmp:
        for name in args.models:
            rows.append(bench(name, args, Path(tmp)))
            write_json(args.out, {"size": SIZE, "threads": args.threads, "rows": rows})
            print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
