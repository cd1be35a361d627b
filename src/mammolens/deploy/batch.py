"""Batch prediction over files and folders into one CSV: resumable, atomic, one bad file never stops it.

While it runs, each finished batch of rows is committed to ``<out>.journal.sqlite`` (``journal``: a
``kill -9`` leaves whole batches, never a torn row); the Ray engine writes each batch as its own
shard file in ``<out>.shards/`` instead. The final CSV is written atomically and durably (fsynced,
file and folder) at the end, then journal and shards are removed. A re-run reads all of them (and
the CSV journal ``<out>.partial`` of older versions), so an interrupted run resumes where it stopped,
with either engine, and a finished one skips every image already scored (``fresh`` starts over).
Rows that failed are tried again on a re-run: the file may have been fixed.

The ``file`` column is the path as given, made absolute: a symlink is not replaced by its target.

A lesion bundle (its pipeline crops to or measures the finding) scores lesions, not films:
``read_rois`` reads a CSV of ``file, x, y, r`` (original-image pixels, one row per lesion) and each
lesion gets its own row, keyed by file and ROI. A bilateral bundle (it reads a film with the same woman's other film) scores
films listed with their partner: ``read_pairs`` reads a CSV of ``file, other`` and the rows are keyed
by both.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mammolens.deploy.journal import Journal, journal_path, remove_journal
from mammolens.utils.atomic import atomic_open, fsync_dir
from mammolens.utils.errors import ConfigError, DataError, MammolensError

# What a screening export holds; '.npy' is read_image's too, but is not an image a scanner writes.
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".pgm", ".tif", ".tiff", ".jpg", ".jpeg")
# What one CSV row scores: the file, the lesion's (x, y, r) or None, the other film (bilateral: '' for none) or None.
Unit = tuple[Path, "tuple[float, float, float] | None", "Path | str | None"]


@dataclass
class BatchReport:
    out: Path
    total: int  # images found
    skipped: int  # already in the CSV from an earlier run
    scored: int  # scored in this run
    failed: int  # rows with an error, this run
    seconds: float
    model: str = ""  # what scored: the ONNX file, or the bundle folder (torch)


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Files given directly, and every image under the folders given (sorted, each once: a file
    reached twice, e.g. through a symlink, keeps the first path it was reached by).

    In folders, a file is an image by its extension, or by the DICOM preamble when it has none
    (PACS exports are often named by UID). A file given by name is always tried. Paths are made
    absolute but symlinks are kept: the CSV names the file as the user knows it.
    """
    found: dict[str, Path] = {}
    for item in inputs:
        path = _absolute(item)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    candidate = Path(root) / name
                    if _looks_like_image(candidate):
                        found.setdefault(str(candidate.resolve()), candidate)
        elif path.exists():
            found.setdefault(str(path.resolve()), path)
        else:
            raise ConfigError("input not found (expected an image file or a folder of them)", path=path)
    return list(found.values())


def _absolute(path: str | Path) -> Path:
    """``path`` made absolute without following symlinks (``Path.resolve`` would)."""
    return Path(os.path.abspath(path))


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
OTHER = "other"  # a bilateral row's partner film ('' for a film scored without one)
ENGINE = "engine"  # what scored the row (Prediction.engine); '' for an error row and for rows of CSVs older than it


def columns(classes: Sequence[str], *, lesions: bool = False, pairs: bool = False) -> list[str]:
    where = ["file", *(ROI_COLUMNS if lesions else ()), *((OTHER,) if pairs else ())]
    return [*where, *(f"p_{c}" for c in classes), "label", "decision", "threshold", ENGINE, "model_id", "error"]


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    """What a row scores: its file, and for a lesion row also its ROI, for a pair row its other film."""
    return (row["file"], *(row[c] for c in (*ROI_COLUMNS, OTHER) if c in row))


def unit_key(file: Path | str, roi: Sequence[float] | None, other: Path | str | None = None) -> tuple[str, ...]:
    """``row_key`` of a unit: ``other`` is None unless the bundle reads pairs ('' then means no partner)."""
    where = (*(f"{v:g}" for v in roi),) if roi is not None else ()
    return (str(file), *where, *((str(other),) if other is not None else ()))


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
        files.append(_beside(path, row["file"].strip()))
        rois.append((x, y, r))
    if not files:
        raise DataError("lists no lesions", path=path)
    return files, rois


def read_pairs(path: str | Path) -> tuple[list[Path], list[Path | str]]:
    """A film list for a bilateral bundle: CSV columns file, other (the same woman's other film; empty
    for a film without one, which only a bundle trained with the pairing's fallback accepts).

    Relative names are taken from the CSV's own folder. Returns (files, others), aligned.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("pair file not found (expected a CSV with columns file, other)", path=path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("file", OTHER) if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"missing column(s) {', '.join(missing)}; expected file, other", path=path)
            rows = [((row["file"] or "").strip(), (row[OTHER] or "").strip(), line)
                    for line, row in enumerate(reader, start=2)]  # fmt: skip
    except UnicodeDecodeError:
        raise DataError("is not a UTF-8 CSV (expected columns file, other)", path=path) from None
    files, others = [], []
    for file, other, line in rows:
        if not file:
            raise DataError(f"line {line}: needs a file name", path=path)
        if other == file:
            raise DataError(f"line {line}: a film is not its own other film (leave 'other' empty instead)", path=path)
        files.append(_beside(path, file))
        others.append(_beside(path, other) if other else "")
    if not files:
        raise DataError("lists no films", path=path)
    return files, others


def _beside(csv_path: Path, name: str) -> Path:
    return _absolute(csv_path.parent / name)  # an absolute name stays as it is


def read_rows(path: Path, header: list[str]) -> dict[tuple[str, ...], dict[str, str]]:
    """Rows of an earlier CSV, shard or older CSV journal by what they score (``row_key``); a journal's
    torn line (a crash mid-write) is dropped, and an empty journal (killed before its first flush)
    holds no rows. A CSV written before the engine column existed is read too: its rows get an empty
    engine (not recorded then), so a resumed run keeps them."""
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            return {}
        if reader.fieldnames != header and reader.fieldnames != [c for c in header if c != ENGINE]:
            raise ConfigError(
                f"was written for other columns ({', '.join(reader.fieldnames or [])}); "
                "pass --fresh to start over, or --out another file",
                path=path,
            )
        rows = {}
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                continue  # torn line
            rows[row_key(row)] = {c: row.get(c, "") for c in header}
    return rows


def shards_dir(out: str | Path) -> Path:
    """Where the Ray engine's actors write one CSV shard per batch."""
    out = Path(out)
    return out.with_name(out.name + ".shards")


def _legacy_journal(out: Path) -> Path:
    return out.with_name(out.name + ".partial")  # the CSV journal of versions before the SQLite one


def finished(out: str | Path, header: list[str], units: Sequence[Unit], model_id: str, *, fresh: bool = False
             ) -> dict[tuple[str, ...], dict[str, str]]:  # fmt: skip
    """Rows an earlier run into ``out`` finished: its CSV, and what an interrupted run left (the journal,
    the Ray shards, an older version's CSV journal). ``fresh``: none, and those leftovers are removed.

    An older CSV journal was appended after a possibly torn line, so a half row and the next could
    read as one valid-looking row with a bogus file name: only its whole rows for units of this run
    are kept (the bogus name is no unit; the file it hid is scored again).
    """
    out = Path(out)
    if fresh:
        _remove_leftovers(out)
        return {}
    done = read_rows(out, header)
    wanted = {unit_key(*u) for u in units}
    done.update((k, r) for k, r in read_rows(_legacy_journal(out), header).items() if k in wanted)
    for shard in sorted(shards_dir(out).glob("*.csv")):  # each written atomically: whole or absent
        done.update(read_rows(shard, header))
    if journal_path(out).exists():
        with Journal(journal_path(out), header) as journal:
            done.update(journal.rows())
    other = {r["model_id"] for r in done.values()} - {model_id}
    if other:
        raise ConfigError(f"holds results of model {sorted(other)[0]}, not {model_id}; pass --fresh", path=out)
    return done


def finish(out: str | Path, header: list[str], rows: dict[tuple[str, ...], dict[str, str]],
           units: Sequence[Unit]) -> None:  # fmt: skip
    """Write the final CSV (atomically, fsynced before and after the rename), then drop the leftovers
    that it now holds."""
    out = Path(out)
    with atomic_open(out, "w", durable=True, newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows({c: r.get(c, "") for c in header} for r in in_order(rows, units))
    _remove_leftovers(out)


def leftovers(out: str | Path) -> list[Path]:
    """What an earlier run into ``out`` left: its CSV, journal, Ray shards, an older version's CSV journal."""
    out = Path(out)
    return [p for p in (out, journal_path(out), shards_dir(out), _legacy_journal(out)) if p.exists()]


def _remove_leftovers(out: Path) -> None:
    remove_journal(journal_path(out))
    _legacy_journal(out).unlink(missing_ok=True)
    shutil.rmtree(shards_dir(out), ignore_errors=True)
    if out.parent.is_dir():
        fsync_dir(out.parent)


def check_units(spec: Any, rois: Sequence[Any] | None, others: Sequence[Any] | None = None) -> None:
    """A lesion bundle needs ROIs, a bilateral one the other films, other bundles neither: one clear line otherwise."""
    if spec.needs_roi and rois is None:
        raise ConfigError(f"model {spec.model_id} scores lesion crops and needs each lesion's ROI: "
                          "give --rois ROIS.csv (columns file, x, y, r in original-image pixels, one row per lesion)")  # fmt: skip
    if not spec.needs_roi and rois is not None:
        raise ConfigError(f"--rois: model {spec.model_id} scores whole films (its pipeline has no crop_roi, "
                          "multiscale_crop or lesion_descriptors); "
                          "drop --rois")  # fmt: skip
    if spec.pairs is not None and others is None:
        empty = "; leave other empty for a film without one" if spec.pairs["fallback"] else ""
        raise ConfigError(f"model {spec.model_id} reads each film with the same woman's other film: "
                          f"give --pairs PAIRS.csv (columns file, other{empty})")  # fmt: skip
    if spec.pairs is None and others is not None:
        raise ConfigError(f"--pairs: model {spec.model_id} scores single films; drop --pairs")


def plan(spec: Any, files: Sequence[Path], rois: Sequence[Any] | None, others: Sequence[Any] | None
         ) -> tuple[list[str], list[Unit]]:  # fmt: skip
    """The CSV header and the units to score: (file, roi or None, other film or None) each."""
    check_units(spec, rois, others)
    for name, items in (("rois", rois), ("other films", others)):
        if items is not None and len(items) != len(files):
            raise ConfigError(f"{len(files)} files but {len(items)} {name}")
    none = [None] * len(files)
    header = columns(spec.classes, lesions=rois is not None, pairs=others is not None)
    return header, list(zip(files, rois if rois is not None else none, others if others is not None else none))


def check_heatmaps(predictor: Any) -> None:
    refusal = predictor.heatmap_refusal
    if refusal is not None:
        raise ConfigError(f"--heatmaps: {refusal}")


def predict_files(predictor: Any, files: Sequence[Path], out: str | Path, *, rois: Sequence[Any] | None = None,
                  others: Sequence[Any] | None = None, heatmaps: str | Path | None = None, fresh: bool = False,
                  progress: bool = True) -> BatchReport:  # fmt: skip
    """Score ``files`` into the CSV ``out`` (see the module docstring for resuming).

    ``rois`` (lesion bundles only): one (x, y, r) per entry of ``files``, which may repeat a file.
    ``others`` (bilateral bundles only): each file's other film ('' for none).
    """
    from tqdm.auto import tqdm

    out = Path(out)
    spec = predictor.spec
    header, units = plan(spec, files, rois, others)
    if heatmaps is not None:
        check_heatmaps(predictor)
    done = finished(out, header, units, spec.model_id, fresh=fresh)
    keep = {k: r for k, r in done.items() if not r["error"]}
    todo = [u for u in units if unit_key(*u) not in keep]
    start = time.perf_counter()
    failed = 0
    with Journal(journal_path(out), header) as journal:
        bar = tqdm(total=len(todo), desc="predict", unit="image" if rois is None else "lesion", disable=not progress)
        for chunk in _chunks(todo, predictor.batch_size):
            rows = _score(predictor, chunk, header, heatmaps)
            journal.add([(row_key(row), row) for row in rows])  # one transaction: the batch whole, or not at all
            for row in rows:
                keep[row_key(row)] = row
                failed += bool(row["error"])
            bar.update(len(chunk))
        bar.close()
    finish(out, header, keep, units)
    return BatchReport(out=out, total=len(units), skipped=len(units) - len(todo), scored=len(todo) - failed,
                       failed=failed, seconds=round(time.perf_counter() - start, 3), model=scored_by(predictor))  # fmt: skip


def scored_by(predictor: Any) -> str:
    """The file or folder whose model scored, with its engine: what a user checks after inferring the backend."""
    return f"{predictor.model_file or predictor.bundle_path} ({predictor.engine})"


def in_order(rows: dict[tuple[str, ...], dict[str, str]], units: Sequence[Unit]) -> list[dict[str, str]]:
    """Rows in the order of the input, then rows of earlier runs for inputs not given this time."""
    order = {unit_key(*u): i for i, u in enumerate(units)}
    return [rows[k] for k in sorted(rows, key=lambda k: (order.get(k, len(order)), k))]


def _score(predictor: Any, units: Sequence[Unit], header: list[str], heatmaps: str | Path | None) -> list[dict]:
    """Rows for one batch of units: each is read and preprocessed alone (its error stays in its row),
    then the readable ones go through the model together. The local and the Ray engine both call it."""
    spec = predictor.spec
    rows: list[dict[str, Any]] = []
    inputs, ready = [], []
    read: dict[Path, Any] = {}  # a film with several lesions (or read as a partner too) is decoded once per batch

    def film(path: Path) -> Any:
        if path not in read:
            read[path] = predictor.read(path)
        return read[path]

    for path, roi, other in units:
        row = dict.fromkeys(header, "") | {"file": str(path), "model_id": spec.model_id}
        row.update(zip((*(ROI_COLUMNS if roi is not None else ()), OTHER), unit_key(path, roi, other)[1:]))
        try:
            image = film(path)
            inputs.append(predictor.prepare(image, roi=roi, name=str(path), other=film(Path(other)) if other else None))
            ready.append((row, image, roi))
        except Exception as exc:  # noqa: BLE001 - one unreadable file of millions is a row, not a crash
            row["error"] = _one_line(exc)
        rows.append(row)
    if inputs:
        probs, engines = predictor.score_inputs(inputs)  # the guard band's fallback re-scores some of them
        for (row, image, roi), p in zip(ready, map(predictor._prediction, probs, engines)):
            row.update({f"p_{c}": f"{v:.6f}" for c, v in p.probabilities.items()})
            row.update(label=p.label, decision=p.decision, threshold=f"{p.threshold:.6f}", engine=p.engine)
            if heatmaps is not None:
                try:
                    _write_heatmap(predictor, Path(heatmaps), Path(row["file"]), image, roi)
                except Exception as exc:  # noqa: BLE001 - the scores stand; the row says the overlay failed
                    row["error"] = f"heatmap: {_one_line(exc)}"
    return rows


def _write_heatmap(predictor: Any, folder: Path, file: Path, image: Any, roi: Any) -> None:
    """The overlay PNG, written atomically: Ray actors write into one folder side by side."""
    from mammolens.explain import overlay_png

    heatmap = predictor.explain(image, roi=roi, laterality=image.laterality)
    # two folders may hold the same file name, and a film several lesions
    tag = hashlib.sha256(repr(unit_key(file, roi)).encode()).hexdigest()[:8]
    with atomic_open(folder / f"{file.stem}-{tag}.png", "wb") as fh:
        fh.write(overlay_png(image.pixels, heatmap))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, MammolensError) else f"{type(exc).__name__}: {text}"


def _chunks(items: Sequence[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])
