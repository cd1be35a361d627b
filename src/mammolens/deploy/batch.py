"""Batch prediction over files and folders into one CSV: resumable, atomic, one bad file never stops it.

While it runs, finished rows are appended (and flushed) to ``<out>.partial``, a journal; the final CSV
is written atomically at the end and the journal removed. A re-run reads both, so an interrupted
run resumes where it stopped and a finished one skips every image already scored (``force``
starts over). Rows that failed are tried again on a re-run: the file may have been fixed.

A lesion bundle (its pipeline crops to the ROI) scores lesions, not films: ``read_rois`` reads a CSV
of ``file, x, y, r`` (original-image pixels, one row per lesion) and each lesion gets its own row,
keyed by file and ROI.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammolens.atomic import atomic_open
from mammolens.errors import ConfigError, DataError, MammolensError

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


ROI_COLUMNS = ("x", "y", "r")


def columns(classes: Sequence[str], *, lesions: bool = False) -> list[str]:
    where = ["file", *ROI_COLUMNS] if lesions else ["file"]
    return [*where, *(f"p_{c}" for c in classes), "label", "decision", "threshold", "model_id", "error"]


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    """What a row scores: its file, and for a lesion row also its ROI."""
    return (row["file"], *(row[c] for c in ROI_COLUMNS if c in row))


def unit_key(file: Path | str, roi: Sequence[float] | None) -> tuple[str, ...]:
    return (str(file), *(f"{v:g}" for v in roi)) if roi is not None else (str(file),)


def read_rois(path: str | Path) -> tuple[list[Path], list[tuple[float, float, float]]]:
    """A lesion list: CSV columns file, x, y, r (original-image pixels, origin top-left), one row per lesion.

    Relative file names are taken from the CSV's own folder. Returns (files, rois), aligned: a file
    with three lesions appears three times.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("ROI file not found (expected a CSV with columns file, x, y, r)", path=path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return _parse_rois(path, csv.DictReader(fh))
    except UnicodeDecodeError:
        raise DataError("is not a UTF-8 CSV (expected columns file, x, y, r)", path=path) from None


def _parse_rois(path: Path, reader: csv.DictReader) -> tuple[list[Path], list[tuple[float, float, float]]]:
    missing = [c for c in ("file", *ROI_COLUMNS) if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)}; expected file, x, y, r", path=path)
    files, rois = [], []
    for line, row in enumerate(reader, start=2):
        try:
            x, y, r = (float(row[c]) for c in ROI_COLUMNS)
        except (TypeError, ValueError):
            raise DataError(f"line {line}: x, y, r must be numbers, got {[row[c] for c in ROI_COLUMNS]}",
                            path=path) from None  # fmt: skip
        if not all(math.isfinite(v) for v in (x, y, r)) or r <= 0 or not (row["file"] or "").strip():
            raise DataError(f"line {line}: needs a file name and finite x, y and r > 0", path=path)
        file = Path(row["file"].strip())
        files.append((file if file.is_absolute() else path.parent / file).resolve())
        rois.append((x, y, r))
    if not files:
        raise DataError("lists no lesions", path=path)
    return files, rois


def read_rows(path: Path, header: list[str]) -> dict[tuple[str, ...], dict[str, str]]:
    """Rows of an earlier CSV or journal by what they score (``row_key``); a journal's torn last line
    (a crash mid-write) is dropped."""
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
            rows[row_key(row)] = row
    return rows


def check_lesions(spec: Any, rois: Sequence[Any] | None) -> None:
    """A lesion bundle needs ROIs and a film bundle takes none: one clear line otherwise."""
    if spec.needs_roi and rois is None:
        raise ConfigError(f"model {spec.model_id} scores lesion crops and needs each lesion's ROI: "
                          "give --rois ROIS.csv (columns file, x, y, r in original-image pixels, one row per lesion)")  # fmt: skip
    if not spec.needs_roi and rois is not None:
        raise ConfigError(f"--rois: model {spec.model_id} scores whole films (its pipeline has no crop_roi); "
                          "drop --rois")  # fmt: skip


def predict_files(predictor: Any, files: Sequence[Path], out: str | Path, *, rois: Sequence[Any] | None = None,
                  heatmaps: str | Path | None = None, force: bool = False, progress: bool = True) -> BatchReport:  # fmt: skip
    """Score ``files`` into the CSV ``out`` (see the module docstring for resuming).

    ``rois`` (lesion bundles only): one (x, y, r) per entry of ``files``, which may repeat a file.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    spec = predictor.spec
    check_lesions(spec, rois)
    if rois is not None and len(rois) != len(files):
        raise ConfigError(f"{len(files)} files but {len(rois)} rois")
    if heatmaps is not None and not predictor.explains:
        raise ConfigError("--heatmaps: explanations are not installed in this mammolens (mammolens.explain)")
    header = columns(spec.classes, lesions=rois is not None)
    units = list(zip(files, rois if rois is not None else [None] * len(files)))
    journal = out.with_name(out.name + ".partial")
    if force:
        journal.unlink(missing_ok=True)
        done: dict[tuple[str, ...], dict[str, str]] = {}
    else:
        done = {**read_rows(out, header), **read_rows(journal, header)}
        other = {r["model_id"] for r in done.values()} - {spec.model_id}
        if other:
            raise ConfigError(f"holds results of model {sorted(other)[0]}, not {spec.model_id}; pass --force",
                              path=out)  # fmt: skip
    keep = {k: r for k, r in done.items() if not r["error"]}
    todo = [u for u in units if unit_key(*u) not in keep]
    start = time.perf_counter()
    failed = 0
    new_journal = not journal.exists() or force
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(journal, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        if new_journal:
            writer.writeheader()
        bar = tqdm(total=len(todo), desc="predict", unit="image" if rois is None else "lesion", disable=not progress)
        for chunk in _chunks(todo, predictor.batch_size):
            rows = _score(predictor, chunk, header, heatmaps)
            for row in rows:
                writer.writerow(row)
                keep[row_key(row)] = row
                failed += bool(row["error"])
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(len(chunk))
        bar.close()
    with atomic_open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(in_order(keep, units))
    journal.unlink(missing_ok=True)
    return BatchReport(out=out, total=len(units), skipped=len(units) - len(todo), scored=len(todo) - failed,
                       failed=failed, seconds=round(time.perf_counter() - start, 3))  # fmt: skip


def in_order(rows: dict[tuple[str, ...], dict[str, str]], units: Sequence[tuple[Path, Any]]) -> list[dict[str, str]]:
    """Rows in the order of the input, then rows of earlier runs for inputs not given this time."""
    order = {unit_key(*u): i for i, u in enumerate(units)}
    return [rows[k] for k in sorted(rows, key=lambda k: (order.get(k, len(order)), k))]


def _score(predictor: Any, units: Sequence[tuple[Path, Any]], header: list[str], heatmaps: str | Path | None) -> list[dict]:
    """Rows for one batch of (file, roi or None): each is read and preprocessed alone (its error stays
    in its row), then the readable ones go through the model together."""
    spec = predictor.spec
    rows: list[dict[str, Any]] = []
    arrays, ready = [], []
    read: dict[Path, Any] = {}  # a film with several lesions is decoded once per batch
    for path, roi in units:
        row = dict.fromkeys(header, "") | {"file": str(path), "model_id": spec.model_id}
        if roi is not None:
            row.update(zip(ROI_COLUMNS, unit_key(path, roi)[1:]))
        try:
            if path not in read:
                read[path] = predictor.read(path)
            pixels, laterality = read[path]
            arrays.append(predictor._preprocess(pixels, laterality, roi, "", str(path)))
            ready.append((row, pixels, laterality, roi))
        except Exception as exc:  # noqa: BLE001 - one unreadable file of millions is a row, not a crash
            row["error"] = _one_line(exc)
        rows.append(row)
    if arrays:
        for (row, pixels, laterality, roi), probs in zip(ready, predictor.predict_arrays(np.stack(arrays))):
            p = predictor._prediction(probs)
            row.update({f"p_{c}": f"{v:.6f}" for c, v in p.probabilities.items()})
            row.update(label=p.label, decision=p.decision, threshold=f"{p.threshold:g}")
            if heatmaps is not None:
                try:
                    _write_heatmap(predictor, Path(heatmaps), Path(row["file"]), pixels, laterality, roi)
                except Exception as exc:  # noqa: BLE001 - the scores stand; the row says the overlay failed
                    row["error"] = f"heatmap: {_one_line(exc)}"
    return rows


def _write_heatmap(predictor: Any, folder: Path, file: Path, pixels: np.ndarray, laterality: str, roi: Any) -> None:
    from mammolens.explain import overlay_png

    heatmap = predictor.explain(pixels, roi=roi, laterality=laterality)
    # two folders may hold the same file name, and a film several lesions
    tag = hashlib.sha256(repr(unit_key(file, roi)).encode()).hexdigest()[:8]
    with atomic_open(folder / f"{file.stem}-{tag}.png", "wb") as fh:
        fh.write(overlay_png(pixels, heatmap))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, MammolensError) else f"{type(exc).__name__}: {text}"


def _chunks(items: Sequence[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])
