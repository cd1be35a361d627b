"""A run folder is never overwritten by accident, nor resumed with other data or settings.

Checked before anything is computed or written: a refused run leaves the old one byte-identical,
and a resumed run that saw another split would train on what it once held out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mammolens.engine.config import first_difference
from mammolens.utils.errors import ConfigError

RUN_RECORD = "run.json"  # the resolved config, manifest hash and split hash a run started with
# What a run folder holds; any of them means the folder holds a run.
RUN_FILES = (RUN_RECORD, "summary.json", "split.json", "manifest.csv", "training", "bundle")


def claim_run_dir(out_dir: Path, *, resume: bool, fresh: bool) -> None:
    """Refuse, before anything is computed or written, a folder whose run would be overwritten."""
    if resume and fresh:
        raise ConfigError("--resume continues the run in --out and --fresh replaces it: choose one")
    held = [name for name in RUN_FILES if (out_dir / name).exists()]
    if resume:
        if not (out_dir / "training" / "checkpoints" / "last.ckpt").is_file():
            raise ConfigError("nothing to resume here (no training/checkpoints/last.ckpt)", path=out_dir)
        if not (out_dir / RUN_RECORD).is_file():
            raise ConfigError(f"cannot resume: no {RUN_RECORD} records what this run was started with", path=out_dir)
    elif held and not fresh:
        raise ConfigError(
            f"already holds a run ({', '.join(held)}); pass --resume to continue it, --fresh to replace it, "
            "or --out to write the new run elsewhere",
            path=out_dir,
        )


def check_resume(out_dir: Path, record: dict[str, Any]) -> None:
    """A resumed run must see the data, split and settings it started with (else it would train on
    what it once held out), naming the first difference."""
    path = out_dir / RUN_RECORD
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot resume: unreadable run record ({exc})", path=path) from None
    diff = first_difference(old.get("config"), record["config"])
    if diff:
        key, was, now = diff
        raise ConfigError(
            f"--resume: {key} is {json.dumps(now)} now but {json.dumps(was)} in the run; resume with the run's "
            "settings, or start over with --fresh or another --out", path=path,
        )
    for key, what in (("manifest_hash", "the data (samples, labels or groups)"), ("split_hash", "the split")):
        if old.get(key) != record[key]:
            raise ConfigError(f"--resume: {what} changed since the run started; start over with --fresh", path=path)


def clear_run_dir(out_dir: Path) -> None:
    for name in RUN_FILES:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def training_history(bundle_path: Path) -> list[dict[str, Any]] | None:
    """Per-epoch rows of the training run that wrote ``bundle_path`` (``<run>/training/history.csv``), if any."""
    import csv

    path = Path(bundle_path).parent / "training" / "history.csv"
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: float(v) if v not in ("", None) else None for k, v in row.items()} for row in rows] or None
