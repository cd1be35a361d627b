"""Do the fp32 and static-int8 ONNX exports of a bundle decide alike on real films?

Exports BUNDLE twice (int8 calibrated on the train part of SPLIT), then scores every film of SOURCE
with torch, ORT fp32 and ORT int8 and prints decision agreement and max |delta probability|.

    OMP_NUM_THREADS=2 python benchmarks/deploy_int8_agreement.py /tmp/na/bundle ../shared/data/mias --split /tmp/na/split.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("source")
    ap.add_argument("--split", help="split file of SOURCE: calibrate on its train part")
    ap.add_argument("--calibration-samples", type=int, default=64)
    args = ap.parse_args()

    from mammolens.deploy.export import calibration_images, export_onnx
    from mammolens.deploy.predictor import Predictor

    torch_p = Predictor.load(args.bundle, threads=2)
    t0 = time.perf_counter()
    films = calibration_images(torch_p.spec, args.source, 10**9)  # every film, preprocessed once
    prep_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(args.bundle, Path(tmp) / "fp32.onnx")
        int8 = export_onnx(args.bundle, Path(tmp) / "int8.onnx", int8=True, calibration=args.source,
                           calibration_split=args.split, calibration_samples=args.calibration_samples)
        probs = {"torch": torch_p.predict_arrays(films)}
        for name, path in (("fp32", fp32.path), ("int8", int8.path)):
            probs[name] = Predictor.load(path, backend="onnxruntime", threads=2).predict_arrays(films)
    spec = torch_p.spec
    decisions = {k: [spec.decide(p)[1] for p in v] for k, v in probs.items()}
    out = {
        "films": len(films), "preprocess_s": round(prep_s, 1),
        "calibration_images": int8.calibration_images, "calibration": "train part of split" if args.split else "source",
        "fp32_vs_torch_max_abs_dprob": float(np.abs(probs["fp32"] - probs["torch"]).max()),
        "int8_vs_fp32_max_abs_dprob": float(np.abs(probs["int8"] - probs["fp32"]).max()),
        "int8_vs_fp32_mean_abs_dprob": float(np.abs(probs["int8"] - probs["fp32"]).mean()),
        "int8_vs_fp32_same_decision": int(sum(a == b for a, b in zip(decisions["int8"], decisions["fp32"]))),
        "fp32_vs_torch_same_decision": int(sum(a == b for a, b in zip(decisions["fp32"], decisions["torch"]))),
        "threshold": spec.threshold, "sizes_bytes": {"fp32": fp32.size_bytes, "int8": int8.size_bytes},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
