"""Per-layer sensitivity search for static int8: which node groups to keep in float.

On MIAS the int8 error of the hybrid-lite is spread through its backbones (RESULTS.md): no named layer
group explains it, so the groups are measured instead. Only calibration images are used. Each group
(a Conv or Gemm with the elementwise nodes after it: Clip, residual Add) is quantised *alone*, everything
else left in float, and scored by the mean |delta p| it causes against fp32 on ``recipe.search_films``
images: that isolates each group's own error, which a removal from the full int8 model would hide under
the other groups' errors. The most damaging groups then go to float one at a time, the full model
re-measured on every calibration image after each, until its max |delta p| is at or below
``recipe.float_target`` or ``recipe.float_budget`` groups are in float; the prefix with the smallest
max |delta p| is kept. Cost: one quantisation and a ``search_films``-image run per group, then one
quantisation and an all-image run per step (a 66-conv hybrid-lite: see RESULTS.md).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Quantise = Callable[..., None]  # (out, exclude, only=None): see export.Quantiser
UNIT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # each starts a new group


def onnx_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    """(N, C) probabilities of an exported file on (N, H, W) images, batches of 8.

    Threads: OMP_NUM_THREADS when set (2 threads spinning on 2 shared cores ran 25x slower here), else
    onnxruntime's default."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    parts = [session.run(None, {name: np.ascontiguousarray(images[i : i + 8, None], dtype=np.float32)})[0]
             for i in range(0, len(images), 8)]  # fmt: skip
    return np.concatenate(parts)


def node_groups(model: Any, exclude: set[str], max_groups: int) -> list[list[str]]:
    """Quantisable nodes of ``model`` not in ``exclude``, in graph order, cut before each Conv/Gemm/MatMul
    (nodes before the first form their own group); adjacent groups merged into at most ``max_groups``."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    quantisable = set(QDQRegistry) | set(QLinearOpsRegistry)
    units: list[list[str]] = []
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if node.name in exclude or node.op_type not in quantisable:
            continue
        if node.op_type in UNIT_OPS or not units:
            units.append([])
        units[-1].append(node.name)
    chunks = np.array_split(np.arange(len(units)), min(max_groups, len(units))) if units else []
    return [[name for i in chunk for name in units[i]] for chunk in chunks]


@dataclass
class SearchResult:
    chosen: list[str]  # node names moved to float
    chosen_groups: int
    max_abs_dprob: float  # of the chosen model, over every calibration image
    start_max_abs_dprob: float  # before the search
    groups: int
    films: int
    seconds: float
    ranking: list[dict[str, Any]] = field(default_factory=list)  # per group, most damaging first
    steps: list[dict[str, Any]] = field(default_factory=list)  # the full model after each group went to float

    def summary(self) -> dict[str, Any]:
        return {"groups": self.groups, "search_films": self.films, "seconds": round(self.seconds, 1),
                "start_max_abs_dprob": self.start_max_abs_dprob, "max_abs_dprob": self.max_abs_dprob,
                "chosen_groups": self.chosen_groups, "ranking": self.ranking[:16], "steps": self.steps}  # fmt: skip

    def note(self) -> str:
        return (f"sensitivity search: {self.chosen_groups} of {self.groups} groups ({len(self.chosen)} nodes) to float, "
                f"calibration max |dp| {self.start_max_abs_dprob:.4f} -> {self.max_abs_dprob:.4f}, "
                f"{self.films} films per group, {self.seconds:.0f} s")  # fmt: skip


def search_float_nodes(model: Any, quantise: Quantise, images: np.ndarray, reference: np.ndarray,
                       exclude: Sequence[str], start_error: float, recipe: Any) -> SearchResult:  # fmt: skip
    """The groups to keep in float (see the module docstring); ``reference``: fp32 probabilities of
    ``images``, ``start_error``: the max |delta p| of the model quantised with ``exclude`` alone."""
    t0 = time.perf_counter()
    groups = node_groups(model, set(exclude), recipe.search_groups)
    films = images[: recipe.search_films]
    ranking = []
    with tempfile.TemporaryDirectory(prefix="mammolens-search-") as tmp:
        trial = Path(tmp) / "trial.onnx"
        for group in groups:
            quantise(trial, exclude, only=group)
            d = np.abs(onnx_probabilities(trial, films) - reference[: len(films)]).max(axis=1)
            ranking.append({"nodes": group, "mean_abs_dprob": float(d.mean()), "max_abs_dprob": float(d.max())})
        ranking.sort(key=lambda r: -r["mean_abs_dprob"])
        steps: list[dict[str, Any]] = []
        chosen: list[str] = []
        best, best_error = 0, start_error
        for entry in ranking[: recipe.float_budget]:
            if best_error <= recipe.float_target:
                break
            chosen += entry["nodes"]
            quantise(trial, [*exclude, *chosen])
            error = float(np.abs(onnx_probabilities(trial, images) - reference).max())
            steps.append({"nodes": entry["nodes"], "max_abs_dprob": error})
            if error < best_error:
                best, best_error = len(steps), error
    kept = [name for s in steps[:best] for name in s["nodes"]]
    return SearchResult(chosen=kept, chosen_groups=best, max_abs_dprob=best_error, start_max_abs_dprob=start_error, groups=len(groups),
                        films=len(films), seconds=time.perf_counter() - t0, ranking=ranking, steps=steps)  # fmt: skip
