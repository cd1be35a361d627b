"""Batch prediction over files and folders into one CSV: resumable, atomic, one bad file never stops it.

While it runs, finished rows are appended (and flushed) to ``<out>.partial``, a journal; the final CSV
is written atomically at the end and the journal removed. A re-run reads both, so an interrupted
run resumes where it stopped and a finished one skips every image already scored (``force``
starts over). Rows that failed are tried again on a re-run: the file may have been fixed.
"""

from __future__ import annotations

import csv
import hashlib
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammolens.atomic import atomic_open
from mammolens.errors import ConfigError, MammolensError

# What a screening export holds; '.npy' is read_image's too, but is not an image a scanner writes.
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".pgm", ".tif", ".tiff", ".jpg", ".jpeg")


@dataclass
class BatchReport:
    out: Path
    total: int  # images found
    skipped: int  # already in the CSV from an earlier run
    scored: int  # scored in this run
    failed: int  # rows with an error, this run
    seconds: float


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files given directly, and every image under the folders given (sorted, each once).

    In folders, a file is an image by its extension, or by the DICOM preamble when it has none
    (PACS exports are often named by UID). A file given by name is always tried.
    """
    found: dict[str, Path] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    candidate = Path(root) / name
                    if _looks_like_image(candidate):
                        found.setdefault(str(candidate.resolve()), candidate.resolve())
        elif path.exists():
            found.setdefault(str(path.resolve()), path.resolve())
        else:
            raise ConfigError("input not found (expected an image file or a folder of them)", path=path)
    return list(found.values())


def _looks_like_image(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    if suffix and not suffix[1:].isdigit():  # '1.2.840.10008.123' style names end in digits
        return False
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def columns(classes: Sequence[str]) -> list[str]:
    return ["file", *(f"p_{c}" for c in classes), "label", "decision", "threshold", "model_id", "error"]


def read_rows(path: Path, header: list[str]) -> dict[str, dict[str, str]]:
    """Rows of an earlier CSV or journal by file; a journal's torn last line (a crash mid-write) is dropped."""
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != header:
            raise ConfigError(
                f"was written for other columns ({', '.join(reader.fieldnames or [])}); "
                "pass --force to start over, or --out another file",
                path=path,
            )
        rows = {}
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                continue  # torn line
            rows[row["file"]] = row
    return rows


def predict_files(predictor: Any, files: Sequence[Path], out: str | Path, *, heatmaps: str | Path | None = None,
                  force: bool = False, progress: bool = True) -> BatchReport:  # fmt: skip
    """Score ``files`` into the CSV ``out`` (see the module docstring for resuming)."""
    from tqdm.auto import tqdm

    out = Path(out)
    spec = predictor.spec
    if spec.needs_roi:
        raise ConfigError(f"model {spec.model_id} scores lesion crops and needs each lesion's ROI; "
                          "batch prediction over whole films does not apply to it")  # fmt: skip
    if heatmaps is not None and not predictor.explains:
        raise ConfigError("--heatmaps: explanations are not installed in this mammolens (mammolens.explain)")
    header = columns(spec.classes)
    journal = out.with_name(out.name + ".partial")
    if force:
        journal.unlink(missing_ok=True)
        done: dict[str, dict[str, str]] = {}
    else:
        done = {**read_rows(out, header), **read_rows(journal, header)}
        other = {r["model_id"] for r in done.values()} - {spec.model_id}
        if other:
            raise ConfigError(f"holds results of model {sorted(other)[0]}, not {spec.model_id}; pass --force",
                              path=out)  # fmt: skip
    keep = {f: r for f, r in done.items() if not r["error"]}
    todo = [f for f in files if str(f) not in keep]
    start = time.perf_counter()
    failed = 0
    new_journal = not journal.exists() or force
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(journal, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        if new_journal:
            writer.writeheader()
        bar = tqdm(total=len(todo), desc="predict", unit="image", disable=not progress)
        for chunk in _chunks(todo, predictor.batch_size):
            rows = _score(predictor, chunk, header, heatmaps)
            for row in rows:
                writer.writerow(row)
                keep[row["file"]] = row
                failed += bool(row["error"])
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(len(chunk))
        bar.close()
    order = {str(f): i for i, f in enumerate(files)}
    ordered = sorted(keep.values(), key=lambda r: (order.get(r["file"], len(order)), r["file"]))
    with atomic_open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(ordered)
    journal.unlink(missing_ok=True)
    return BatchReport(out=out, total=len(files), skipped=len(files) - len(todo), scored=len(todo) - failed,
                       failed=failed, seconds=round(time.perf_counter() - start, 3))  # fmt: skip


def _score(predictor: Any, files: Sequence[Path], header: list[str], heatmaps: str | Path | None) -> list[dict]:
    """Rows for one batch: each file is read and preprocessed alone (its error stays in its row),
    then the readable ones go through the model together."""
    spec = predictor.spec
    rows: list[dict[str, Any]] = []
    arrays, ready = [], []
    for path in files:
        row = dict.fromkeys(header, "") | {"file": str(path), "model_id": spec.model_id}
        try:
            pixels, laterality = predictor.read(path)
            arrays.append(predictor._preprocess(pixels, laterality, None, "", str(path)))
            ready.append((row, pixels, laterality))
        except Exception as exc:  # noqa: BLE001 - one unreadable file of millions is a row, not a crash
            row["error"] = _one_line(exc)
        rows.append(row)
    if arrays:
        for (row, pixels, laterality), probs in zip(ready, predictor.predict_arrays(np.stack(arrays))):
            p = predictor._prediction(probs)
            row.update({f"p_{c}": f"{v:.6f}" for c, v in p.probabilities.items()})
            row.update(label=p.label, decision=p.decision, threshold=f"{p.threshold:g}")
            if heatmaps is not None:
                try:
                    _write_heatmap(predictor, Path(heatmaps), Path(row["file"]), pixels, laterality)
                except Exception as exc:  # noqa: BLE001 - the scores stand; the row says the overlay failed
                    row["error"] = f"heatmap: {_one_line(exc)}"
    return rows


def _write_heatmap(predictor: Any, folder: Path, file: Path, pixels: np.ndarray, laterality: str) -> None:
    from mammolens.explain import overlay_png

    heatmap = predictor.explain(pixels, laterality=laterality)
    tag = hashlib.sha256(str(file).encode()).hexdigest()[:8]  # two folders may hold the same file name
    with atomic_open(folder / f"{file.stem}-{tag}.png", "wb") as fh:
        fh.write(overlay_png(pixels, heatmap))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, MammolensError) else f"{type(exc).__name__}: {text}"


def _chunks(items: Sequence[Path], size: int) -> Iterable[list[Path]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])
