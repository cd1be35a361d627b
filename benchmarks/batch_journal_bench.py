"""What `predict`'s SQLite journal costs per batch, against the bound of a durable journal measured in the
same run on the same folder: one CSV append plus one fsync per batch (the old journal's cost; fewer
syncs cannot make a batch survive a power cut). Also the resume read: every row of a journal of
``--rows`` rows, against reading the same rows from one CSV.

    python benchmarks/batch_journal_bench.py --dir /tmp --batches 200 --out bench-journal.json
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from pathlib import Path

from mammolens.utils.atomic import write_json
from mammolens.deploy.batch import columns, row_key
from mammolens.deploy.journal import Journal

HEADER = columns(["benign", "malignant"])


def _rows(start: int, n: int) -> list[dict[str, str]]:
    return [{"file": f"/data/screening/2026/12/07/film-{i:08d}.dcm", "p_benign": "0.734215", "p_malignant": "0.265785",
             "label": "benign", "decision": "benign", "threshold": "0.400000", "engine": "torch",
             "model_id": "scratch-cnn-0123456789ab", "error": ""} for i in range(start, start + n)]  # fmt: skip


def per_batch(folder: Path, batches: int, batch: int) -> dict[str, float]:
    """Median seconds per committed batch: the SQLite journal, and a CSV append + fsync (the bound)."""
    sqlite_s, csv_s = [], []
    with Journal(folder / "j.sqlite", HEADER) as journal, open(folder / "j.csv", "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HEADER)
        for b in range(batches):
            rows = _rows(b * batch, batch)
            t = time.perf_counter()
            journal.add([(row_key(r), r) for r in rows])
            sqlite_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            writer.writerows(rows)
            fh.flush()
            os.fsync(fh.fileno())
            csv_s.append(time.perf_counter() - t)
    ours, bound = statistics.median(sqlite_s), statistics.median(csv_s)
    return {"sqlite_ms": 1e3 * ours, "csv_fsync_ms": 1e3 * bound, "ratio": ours / bound}


def resume_read(folder: Path, rows: int) -> dict[str, float]:
    """Seconds to read every row back: the journal's ``rows()`` against ``csv.DictReader`` on one CSV."""
    data = _rows(0, rows)
    with Journal(folder / "r.sqlite", HEADER) as journal:
        journal.add([(row_key(r), r) for r in data])
    with open(folder / "r.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows(data)
    t = time.perf_counter()
    with Journal(folder / "r.sqlite", HEADER) as journal:
        assert len(journal.rows()) == rows
    ours = time.perf_counter() - t
    t = time.perf_counter()
    with open(folder / "r.csv", newline="") as fh:
        assert len({row_key(r): r for r in csv.DictReader(fh)}) == rows
    bound = time.perf_counter() - t
    return {"sqlite_s": ours, "csv_s": bound, "ratio": ours / bound}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="Folder on the file system to measure (default: temp).")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result = {"batch_size": args.batch_size, "batches": args.batches, "rows": args.rows,
                  "per_batch": per_batch(Path(tmp), args.batches, args.batch_size),
                  "resume_read": resume_read(Path(tmp), args.rows)}  # fmt: skip
    print(result)
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
