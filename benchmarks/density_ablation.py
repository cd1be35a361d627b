"""The MIAS tissue (density) ablation: each row a `mammolens cv` run of a config in configs/, scored per
film and per exam, with patient-bootstrap CIs, in the order docs/results/density.md shows them.

A row is ``KEY`` (the cv run of ``configs/mias-tissue-KEY.yaml``) or ``KEY+KEY`` (the mean of the runs'
out-of-fold probabilities, which is what ``mammolens ensemble --stack mean`` bundles). Per exam: a
woman's two films (left and right MLO, one exam in MIAS) combined by ``evaluate.exams.aggregate`` with
``mean`` (left/right consistency: both breasts of a MIAS woman carry one tissue grade). Every run sets
the held-out women of configs/splits/mias-tissue-holdout.json aside, so nothing here has seen them.

    python benchmarks/density_ablation.py --runs /work/runs/density/cv --run intensity-mean descriptors
    python benchmarks/density_ablation.py --runs /work/runs/density/cv --json docs/results/density-ablation.json \
        intensity-mean intensity5 mobilenetv2-384-clahe descriptors+mobilenetv2-384

``--run`` first runs the rows' missing cv runs (``mammolens cv configs/mias-tissue-KEY.yaml --folds 5``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mammolens.data.adapters.base import load_source
from mammolens.evaluate.levels import exam_columns, level_predictions
from mammolens.evaluate.predictions import proba_of, read_predictions
from mammolens.evaluate.summary import evaluate_predictions

ROOT = Path(__file__).resolve().parents[1]
MIAS = ROOT.parent / "shared" / "data" / "mias"


def run_cv(key: str, runs: Path, n_boot: int) -> None:
    out = runs / key
    if (out / "metrics.json").is_file():
        return
    config = ROOT / "configs" / f"mias-tissue-{key}.yaml"
    command = ["mammolens", "cv", str(config), "--folds", "5", "--out", str(out), "--n-boot", str(n_boot)]
    print(" ".join(command), file=sys.stderr)
    subprocess.run([sys.executable, "-c", "from mammolens.cli import main; main()", *command[1:]], check=True)


def row_predictions(row: str, runs: Path) -> tuple[pd.DataFrame, list[str]]:
    """Pooled out-of-fold predictions of a row (repeat 0), sorted by sample id; a ``+`` row averages its runs."""
    tables = []
    for key in row.split("+"):
        df, classes = read_predictions(runs / key / "predictions.csv")
        tables.append(df[df["repeat"] == 0].sort_values("sample_id").reset_index(drop=True))
    first = tables[0]
    for other in tables[1:]:
        if other["sample_id"].tolist() != first["sample_id"].tolist():
            raise SystemExit(f"{row}: the runs hold different samples; not one split")
    mean = np.mean([proba_of(t, classes) for t in tables], axis=0)
    out = first.copy()
    for i, c in enumerate(classes):
        out[f"p_{c}"] = mean[:, i]
    return out, classes


def with_exams(table: pd.DataFrame, source: Path) -> pd.DataFrame:
    """The table with each film's exam_id, laterality and view from the source's manifest."""
    manifest = load_source(str(source)).manifest
    exams = exam_columns(manifest).assign(sample_id=manifest.df["sample_id"].to_numpy())
    return table.drop(columns=[c for c in ("exam_id", "laterality", "view") if c in table]).merge(
        exams, on="sample_id", how="left", validate="one_to_one")


def median_class(proba: np.ndarray) -> np.ndarray:
    """One-hot of each row's median class (the first whose cumulative probability reaches 1/2): the
    ordinal decision, which minimises the expected number of grades off, where argmax need not."""
    chosen = (np.cumsum(proba, axis=1) >= 0.5 - 1e-9).argmax(axis=1)
    return np.eye(proba.shape[1])[chosen]


def scores(table: pd.DataFrame, classes: list[str], n_boot: int, decision: str = "argmax") -> dict:
    y, proba = table["label_index"].to_numpy(), proba_of(table, classes)
    if decision == "median":
        proba = median_class(proba)  # decisions only: F1 and kappa are meaningful, the AUC is not
    m = evaluate_predictions(y, proba, table["group"].astype(str).tolist(), classes, n_boot=n_boot, ordinal=True)
    pick = lambda ci: {"value": ci["value"], "ci": [ci["low"], ci["high"]]}  # noqa: E731
    return {"n": int(len(y)), "macro_f1": pick(m["macro_f1"]), "kappa_linear": pick(m["kappa_linear"]),
            "auc": pick(m["auc"]), "accuracy": m["accuracy"], "confusion_matrix": m["confusion_matrix"]}


def score_row(row: str, runs: Path, source: Path, n_boot: int, decision: str) -> dict:
    films, classes = row_predictions(row, runs)
    films = with_exams(films, source)
    exams = level_predictions(films, classes, "exam", "mean")
    return {"row": row, "decision": decision, "film": scores(films, classes, n_boot, decision),
            "exam_mean": scores(exams, classes, n_boot, decision)}


def fmt(s: dict) -> str:
    v, (lo, hi) = s["value"], s["ci"]
    return f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+", help="KEY or KEY+KEY (configs/mias-tissue-KEY.yaml cv runs)")
    ap.add_argument("--runs", type=Path, required=True, help="folder holding one cv run per KEY")
    ap.add_argument("--source", type=Path, default=MIAS, help="the MIAS folder the runs read")
    ap.add_argument("--run", action="store_true", help="run missing cv runs first")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--decision", choices=("argmax", "median"), default="argmax",
                    help="the most probable class (what bundles decide) or the median class (ordinal)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.run:
        for key in dict.fromkeys(k for row in args.rows for k in row.split("+")):
            run_cv(key, args.runs, args.n_boot)
    results = [score_row(row, args.runs, args.source, args.n_boot, args.decision) for row in args.rows]
    print("| row | films | macro F1 (film) | κ linear (film) | macro F1 (exam, L/R mean) | κ linear (exam, L/R mean) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        f, e = r["film"], r["exam_mean"]
        print(f"| {r['row']} | {f['n']} | {fmt(f['macro_f1'])} | {fmt(f['kappa_linear'])} | "
              f"{fmt(e['macro_f1'])} | {fmt(e['kappa_linear'])} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
