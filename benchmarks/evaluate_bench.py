"""Patient-bootstrap cost: the numpy resample statistics against the scikit-learn metric functions.

Run: ``OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/evaluate_bench.py``. Prints seconds for
``n_boot`` resamples of AUC, PR AUC, sensitivity and specificity with each implementation (same
draws, same values checked), their ratio, and the full ``evaluate_predictions`` time at 2,000
resamples.
"""

from __future__ import annotations

import time

import numpy as np

from mammolens.evaluate import bootstrap as b
from mammolens.evaluate import metrics as m
from mammolens.evaluate.summary import evaluate_predictions


def main(n: int = 300, n_boot: int = 200) -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(n // 2), 2).astype(str)
    y = np.repeat(rng.integers(0, 2, n // 2), 2)
    p1 = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    proba = np.stack([1 - p1, p1], 1)
    fast = {"auc": b.fast_auc, "pr_auc": b.fast_average_precision,
            "sens": b.fast_sensitivity(0.5), "spec": b.fast_specificity(0.5)}
    slow = {"auc": m.roc_auc, "pr_auc": m.pr_auc,
            "sens": lambda y, p: m.binary_at_threshold(y, p, 0.5)["sensitivity"],
            "spec": lambda y, p: m.binary_at_threshold(y, p, 0.5)["specificity"]}
    times, results = {}, {}
    for name, stats in (("numpy", fast), ("scikit-learn", slow)):
        t0 = time.perf_counter()
        results[name] = b.bootstrap_cis(stats, y, proba, groups, n_boot=n_boot, seed=0)
        times[name] = time.perf_counter() - t0
    for key in fast:
        assert np.isclose(results["numpy"][key]["low"], results["scikit-learn"][key]["low"])
        assert np.isclose(results["numpy"][key]["high"], results["scikit-learn"][key]["high"])
    print(f"{n} samples, {n // 2} groups, {n_boot} resamples, 4 statistics (identical CIs):")
    for name, seconds in times.items():
        print(f"  {name:>12}: {seconds:.2f} s")
    print(f"  scikit-learn / numpy: {times['scikit-learn'] / times['numpy']:.0f}x")
    t0 = time.perf_counter()
    evaluate_predictions(y, proba, groups, ["benign", "malignant"], 0.5, n_boot=2000)
    print(f"evaluate_predictions with 2000 resamples (CIs and ROC band): {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
