"""Which static-int8 recipe keeps a bundle's fp32 decisions on real films?

Exports BUNDLE to fp32 ONNX once, scores every film of SOURCE with torch and ORT fp32, then for each
quantisation recipe (calibration method, activation type, layers kept in float, calibration films
from the train part of SPLIT) quantises that same fp32 file, scores the films with ORT int8 and
prints one row: decisions equal to fp32, max and mean |delta probability|, batch-1 latency.
Every variant is kept in the output, the ones that did not help included.

    OMP_NUM_THREADS=2 nice -n 10 python benchmarks/deploy_int8_agreement.py /tmp/na/bundle \
        ../shared/data/mias --split /tmp/na/split.json --out int8-agreement.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from mammolens.deploy.export import CALIBRATION_SAMPLES, DEFAULT_RECIPE, QuantRecipe

# (name, recipe, calibration films: an int, or "train" for every film of the split's train part)
VARIANTS: list[tuple[str, QuantRecipe, int | str]] = [
    ("previous default: minmax, u8, reduce_range", QuantRecipe(), 64),
    ("minmax, u8, full range", QuantRecipe(reduce_range=False), 64),
    ("minmax, s8 symmetric activations", QuantRecipe(activations="s8"), 64),
    ("float head", QuantRecipe(float_layers=("head",)), 64),
    ("float stem+depthwise+head", QuantRecipe(float_layers=("stem", "depthwise", "head")), 64),
    ("float depthwise", QuantRecipe(float_layers=("depthwise",)), 64),
    ("float stem", QuantRecipe(float_layers=("stem",)), 64),
    ("float stem+depthwise+head, every train film (the default)", QuantRecipe(float_layers=("stem", "depthwise", "head")), "train"),
    ("percentile 99.999", QuantRecipe(calibrate="percentile"), 64),
    ("entropy", QuantRecipe(calibrate="entropy"), 64),
    ("minmax, every train film", QuantRecipe(), "train"),
]


def latency_ms(path: Path, image: np.ndarray, runs: int = 15) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(image[None, None], dtype=np.float32)
    session.run(None, {"image": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {"image": x})
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("source")
    ap.add_argument("--split", required=True, help="split file of SOURCE: calibrate on its train part")
    ap.add_argument("--only", type=int, nargs="*", help="indices of VARIANTS to run (default: all)")
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args()

    from mammolens.deploy.export import calibration_images, export_onnx, quantize_onnx
    from mammolens.deploy.predictor import Predictor

    torch_p = Predictor.load(args.bundle, threads=2)
    spec = torch_p.spec
    t0 = time.perf_counter()
    films = calibration_images(spec, args.source, 10**9)  # every film, preprocessed once
    calib = {64: calibration_images(spec, args.source, 64, split=args.split),
             "train": calibration_images(spec, args.source, 10**9, split=args.split)}  # fmt: skip
    prep_s = time.perf_counter() - t0
    positive = lambda p: p[:, 1]  # noqa: E731 - binary task: the threshold applies to the last class
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(args.bundle, Path(tmp) / "fp32.onnx")
        p_torch = torch_p.predict_arrays(films)
        p_fp32 = Predictor.load(fp32.path, backend="onnxruntime", threads=2).predict_arrays(films)
        d_fp32 = positive(p_fp32) >= spec.threshold
        head = {"films": len(films), "threshold": spec.threshold, "preprocess_s": round(prep_s, 1),
                "calibration_films": {str(k): len(v) for k, v in calib.items()},
                "fp32_vs_torch_max_abs_dprob": float(np.abs(p_fp32 - p_torch).max()),
                "fp32_vs_torch_same_decision": int(((positive(p_torch) >= spec.threshold) == d_fp32).sum()),
                "fp32_ms": round(latency_ms(fp32.path, films[0]), 1),
                "fp32_positive_range": [float(positive(p_fp32).min()), float(positive(p_fp32).max())]}  # fmt: skip
        print(json.dumps(head), flush=True)
        for i, (name, recipe, n_calib) in enumerate(VARIANTS):
            if args.only and i not in args.only:
                continue
            out = Path(tmp) / f"int8-{i}.onnx"
            t0 = time.perf_counter()
            quantize_onnx(fp32.path, out, calib[n_calib], recipe)
            quant_s = time.perf_counter() - t0
            p_int8 = Predictor.load(out, backend="onnxruntime", threads=2).predict_arrays(films)
            diff = np.abs(p_int8 - p_fp32)[:, 1]
            margin = np.abs(positive(p_fp32) - spec.threshold)
            row = {"variant": i, "name": name, "recipe": recipe.describe(), "calibration_films": len(calib[n_calib]),
                   "same_decision": int(((positive(p_int8) >= spec.threshold) == d_fp32).sum()),
                   "max_abs_dprob": round(float(diff.max()), 4), "mean_abs_dprob": round(float(diff.mean()), 4),
                   "films_within_max_dprob_of_threshold": int((margin <= diff.max()).sum()),
                   "int8_ms": round(latency_ms(out, films[0]), 1), "quantise_s": round(quant_s, 1),
                   "bytes": out.stat().st_size,
                   "default": recipe == DEFAULT_RECIPE and len(calib[n_calib]) == min(CALIBRATION_SAMPLES, len(calib["train"]))}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.out:
        Path(args.out).write_text(json.dumps({"head": head, "rows": rows}, indent=2) + "\n")
    print("\n| variant | calibration films | same decision | max abs dp | mean abs dp | films within max dp of threshold | int8 ms (fp32 "
          f"{head['fp32_ms']}) |\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['name']} | {r['calibration_films']} | {r['same_decision']} / {len(films)} | {r['max_abs_dprob']} | "
              f"{r['mean_abs_dprob']} | {r['films_within_max_dprob_of_threshold']} | {r['int8_ms']} |")  # fmt: skip


if __name__ == "__main__":
    main()
