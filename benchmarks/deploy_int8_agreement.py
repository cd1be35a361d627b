"""Which static-int8 recipe keeps a bundle's fp32 decisions on real films?

Exports BUNDLE to fp32 ONNX once, scores every film of SOURCE with torch and ORT fp32, then for each
quantisation recipe (calibration method, activation type, layers kept in float, calibration films
from the train part of SPLIT, a sensitivity search) quantises that same fp32 file, scores the films
with ORT int8 and prints one row: decisions equal to fp32 on all films and on the films outside the
train part (the calibration films are in-sample for the search), max and mean |delta probability|,
batch-1 latency. With ``--guard-band F...`` each variant also gets a row per safety factor: the
Predictor re-scoring in fp32 the films within F x the calibration max |delta p| of the threshold
(fallbacks, agreement, mean per-film latency at batch 1, 1 thread). A search variant with ``derive``
budgets also gets the rows of those smaller budgets: the search's ranking and steps are deterministic,
so a budget-k search keeps the best of the first k steps of the larger one (quantised again from
those nodes, not searched again). Every variant is kept in the output, the ones that did not help included.

    OMP_NUM_THREADS=2 nice -n 10 python benchmarks/deploy_int8_agreement.py /tmp/na/bundle \
        ../shared/data/mias --split /tmp/na/split.json --out int8-agreement.json \
        [--only 7 11] [--guard-band 1 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mammolens.deploy.export import CALIBRATION_SAMPLES, DEFAULT_RECIPE, QuantRecipe

SEARCH = dataclasses.replace(DEFAULT_RECIPE, float_budget=16)  # target 0: every step of the budget is measured
DERIVE = {11: (8,)}  # variant -> smaller budgets derived from its search
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
    ("the default + sensitivity search, budget 16 groups", SEARCH, "train"),
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


def per_film(predictor: Any, films: np.ndarray) -> tuple[np.ndarray, list[str], float]:
    """Probabilities, engines and the mean wall time per film, scoring one film at a time."""
    probs, engines, t0 = [], [], time.perf_counter()
    for film in films:
        p, e = predictor.score_arrays(film[None])
        probs.append(p[0])
        engines += e
    return np.array(probs), engines, 1000 * (time.perf_counter() - t0) / len(films)


def agreement(p: np.ndarray, p_fp32: np.ndarray, threshold: float, held_out: np.ndarray) -> dict[str, Any]:
    same = (p[:, 1] >= threshold) == (p_fp32[:, 1] >= threshold)
    diff = np.abs(p - p_fp32)[:, 1]
    return {"same_decision": int(same.sum()), "same_decision_held_out": int(same[held_out].sum()),
            "max_abs_dprob": round(float(diff.max()), 5), "mean_abs_dprob": round(float(diff.mean()), 5),
            "max_abs_dprob_held_out": round(float(diff[held_out].max()), 5)}  # fmt: skip


def derived_recipe(search: dict[str, Any], budget: int) -> QuantRecipe:
    """What a budget-``budget`` search would keep: the best (smallest max |dp|) prefix of the first steps."""
    steps = search["steps"][:budget]
    errors = [search["start_max_abs_dprob"]] + [s["max_abs_dprob"] for s in steps]
    best = int(np.argmin(errors))
    return dataclasses.replace(DEFAULT_RECIPE, float_nodes=tuple(n for s in steps[:best] for n in s["nodes"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("source")
    ap.add_argument("--split", required=True, help="split file of SOURCE: calibrate on its train part")
    ap.add_argument("--only", type=int, nargs="*", help="indices of VARIANTS to run (default: all)")
    ap.add_argument("--guard-band", type=float, nargs="*", default=[], help="safety factors to measure the guard band at")
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args()

    from mammolens.data.splits import load_split
    from mammolens.deploy.export import OPSET, calibration_rows, export_onnx, preprocess_rows, quantize_onnx, stamp
    from mammolens.deploy.predictor import Predictor

    torch_p = Predictor.load(args.bundle, threads=2)
    spec = torch_p.spec
    t0 = time.perf_counter()
    rows_all = calibration_rows(spec, args.source, 10**9)
    films = preprocess_rows(spec, rows_all)  # every film, preprocessed once
    train = set(load_split(args.split).parts["train"])
    held_out = np.array([r["sample_id"] not in train for r in rows_all])
    calib = {64: preprocess_rows(spec, calibration_rows(spec, args.source, 64, split=args.split)),
             "train": preprocess_rows(spec, calibration_rows(spec, args.source, 10**9, split=args.split))}  # fmt: skip
    prep_s = time.perf_counter() - t0
    positive = lambda p: p[:, 1]  # noqa: E731 - binary task: the threshold applies to the last class
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(args.bundle, Path(tmp) / "fp32.onnx")
        p_torch = torch_p.predict_arrays(films)
        fp32_p = Predictor.load(fp32.path, backend="onnxruntime", threads=1, batch_size=1)
        p_fp32, _, fp32_film_ms = per_film(fp32_p, films)
        d_fp32 = positive(p_fp32) >= spec.threshold
        margin = np.abs(positive(p_fp32) - spec.threshold)
        head = {"films": len(films), "held_out_films": int(held_out.sum()), "threshold": spec.threshold,
                "preprocess_s": round(prep_s, 1), "calibration_films": {str(k): len(v) for k, v in calib.items()},
                "fp32_vs_torch_max_abs_dprob": float(np.abs(p_fp32 - p_torch).max()),
                "fp32_vs_torch_same_decision": int(((positive(p_torch) >= spec.threshold) == d_fp32).sum()),
                "fp32_ms": round(latency_ms(fp32.path, films[0]), 1), "fp32_film_ms": round(fp32_film_ms, 1),
                "fp32_positive_range": [float(positive(p_fp32).min()), float(positive(p_fp32).max())]}  # fmt: skip
        print(json.dumps(head), flush=True)

        def measure(i: Any, name: str, recipe: QuantRecipe, n_calib: int | str) -> dict[str, Any]:
            out = Path(tmp) / f"int8-{str(i).replace('/', '-')}.onnx"
            t0 = time.perf_counter()
            result = quantize_onnx(fp32.path, out, calib[n_calib], recipe)
            quant_s = time.perf_counter() - t0
            stamp(out, spec, "int8", OPSET, result.metadata | {"fp32_fallback": fp32.path.name})
            p_int8, _, film_ms = per_film(Predictor.load(out, backend="onnxruntime", threads=1, batch_size=1), films)
            diff = np.abs(p_int8 - p_fp32)[:, 1]
            cal_err = result.calibration_max_abs_dprob
            row = {"variant": i, "name": name, "recipe": recipe.describe(), "calibration_films": len(calib[n_calib]),
                   **agreement(p_int8, p_fp32, spec.threshold, held_out),
                   "calibration_max_abs_dprob": round(cal_err, 5),
                   "held_out_films_above_calibration_error": int((diff[held_out] > cal_err).sum()),
                   "films_within_max_dprob_of_threshold": int((margin <= diff.max()).sum()),
                   "int8_ms": round(latency_ms(out, films[0]), 1), "int8_film_ms": round(film_ms, 1),
                   "quantise_s": round(quant_s, 1), "bytes": out.stat().st_size,
                   "float_nodes": len(result.metadata["float_nodes"]), "search": result.metadata.get("search"),
                   "default": recipe == DEFAULT_RECIPE and len(calib[n_calib]) == min(CALIBRATION_SAMPLES, len(calib["train"]))}  # fmt: skip
            print(json.dumps({k: v for k, v in row.items() if k != "search"}), flush=True)
            rows.append(row)
            for factor in args.guard_band:
                guarded = Predictor.load(out, backend="onnxruntime", threads=1, batch_size=1, guard_band=factor)
                p_g, engines, g_ms = per_film(guarded, films)
                fell = np.array([e != guarded.engine for e in engines])
                g = {"variant": f"{i} + guard band x{factor:g}", "name": f"{name} + guard band x{factor:g}",
                     "guard_margin": round(guarded.guard.margin, 5), **agreement(p_g, p_fp32, spec.threshold, held_out),
                     "fallbacks": int(fell.sum()), "fallbacks_held_out": int(fell[held_out].sum()),
                     "int8_film_ms": round(g_ms, 1)}  # fmt: skip
                print(json.dumps(g), flush=True)
                rows.append(g)
            return row

        for i, (name, recipe, n_calib) in enumerate(VARIANTS):
            if args.only and i not in args.only:
                continue
            row = measure(i, name, recipe, n_calib)
            for budget in DERIVE.get(i, ()):
                measure(f"{i}/{budget}", f"the default + sensitivity search, budget {budget} groups (from {i}'s steps)",
                        derived_recipe(row["search"], budget), n_calib)  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps({"head": head, "rows": rows}, indent=2) + "\n")
    print(f"\n| variant | same decision (all {len(films)}) | same decision (held out {int(held_out.sum())}) | max abs dp | "
          f"calibration max abs dp | fallbacks | ms per film (fp32 {head['fp32_film_ms']}) |\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['name']} | {r['same_decision']} | {r['same_decision_held_out']} | {r['max_abs_dprob']} | "
              f"{r.get('calibration_max_abs_dprob', '')} | {r.get('fallbacks', '')} | {r['int8_film_ms']} |")  # fmt: skip


if __name__ == "__main__":
    main()
