"""A run's learning curves, as data (history.csv) and as the seed projects' two-panel picture."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from mammolens.utils.atomic import atomic_path, write_text

COLUMNS = ("epoch", "train_loss", "val_loss", "train_acc", "val_acc", "val_auc", "lr")


def write_history(history: Sequence[dict[str, float]], path: str | Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buffer.getvalue())


def plot_learning_curves(
    history: Sequence[dict[str, float]], path: str | Path, *, best_epoch: int | None = None
) -> None:
    """Loss (train vs val) and accuracy/AUC (train vs val) per epoch, the best epoch marked."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display, the user's backend untouched
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_metric = fig.subplots(1, 2)
    panels = (
        (ax_loss, (("train_loss", "train"), ("val_loss", "val")), "loss"),
        (
            ax_metric,
            (("train_acc", "train accuracy"), ("val_acc", "val accuracy"), ("val_auc", "val AUC")),
            "accuracy / AUC",
        ),
    )
    for ax, keys, title in panels:
        for key, label in keys:
            values = [row.get(key, math.nan) for row in history]
            if any(math.isfinite(v) for v in values):
                ax.plot(epochs, values, marker="o", markersize=3, label=label)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_metric.set_ylim(0.0, 1.02)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
