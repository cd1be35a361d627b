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
from mammolens.utils.atomic import write_json
from mammolens.utils.errors import ConfigError

RUN_RECORD = "run.json"  # the resolved config, manifest hash and split hash a run started with
# What a run folder holds; any of them means the folder holds a run.
RUN_FILES = (RUN_RECORD, "summary.json", "split.json", "manifest.csv", "training", "bundle")
MARK = ".mammolens.json"  # {"verb": ...}: which verb's output a folder holds, so --fresh never deletes another's

# verb -> (the record that says a folder holds its output when no MARK does, the names it writes at the top)
OUTPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "train": (RUN_RECORD, RUN_FILES),
    "cv": ("cv.json", ("cv.json", "repeat*", "ensemble", "predictions*.csv", "metrics.json", "report.html")),
    "evaluate": ("metrics.json", ("metrics.json", "predictions*.csv", "report.html")),
    "explain": ("explanations.json", ("explanations.json", "*_overlay.png", "*_overlay_*.png", "*_panel.png")),
    "explain-eval": ("localisation.csv", ("localisation.csv", "localisation_per_image.csv", "localisation.html",
                                          "gallery.png")),
}
ALIASES = {"demo": "train"}  # demo is train on the built-in config: the same folder


def output_owner(out_dir: Path) -> str | None:
    """The verb whose output ``out_dir`` holds (its mark, else the record only that verb writes), or None."""
    try:
        verb = json.loads((out_dir / MARK).read_text(encoding="utf-8")).get("verb")
    except (OSError, ValueError, AttributeError):
        verb = None
    if verb in OUTPUTS:
        return verb
    for verb, (record, _) in OUTPUTS.items():  # folders written before the mark existed; cv.json before metrics.json
        if (out_dir / record).exists():
            return verb
    return None


def claim_output(out_dir: Path, verb: str, *, resume: bool = False, fresh: bool = False,
                 resumable: bool = False) -> None:
    """One rule for every verb that writes a folder, checked before anything is computed or written:
    an existing folder is refused unless ``resume`` continues it or ``fresh`` replaces it, and either
    only when it holds this verb's own output (a user's folder is never continued or emptied)."""
    kind = ALIASES.get(verb, verb)
    if resume and fresh:
        raise ConfigError("--resume continues the output in --out and --fresh replaces it: choose one")
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("--out exists and is not a directory", path=out_dir)
    held = out_dir.is_dir() and any(out_dir.iterdir())
    if not held:
        if resume:
            raise ConfigError("nothing to resume here (the folder is empty or absent)", path=out_dir)
        return
    owner = output_owner(out_dir)
    if owner is None:
        raise ConfigError(f"holds files that `mammolens {verb}` did not write; choose another --out "
                          "(nothing was changed)", path=out_dir)
    if owner != kind:
        raise ConfigError(f"holds the output of `mammolens {owner}`, not of `mammolens {verb}`; choose another --out "
                          "(nothing was changed)", path=out_dir)
    if resume and not resumable:
        raise ConfigError(f"`mammolens {verb}` cannot continue earlier output; pass --fresh to replace it",
                          path=out_dir)
    if not resume and not fresh:
        hint = "pass --resume to continue it, --fresh to replace it" if resumable else "pass --fresh to replace it"
        raise ConfigError(f"already holds the output of `mammolens {verb}`; {hint}, or choose another --out",
                          path=out_dir)


def open_output(out_dir: Path, verb: str, *, fresh: bool = False) -> None:
    """Create the claimed folder and mark it as ``verb``'s; ``fresh`` first removes exactly what this verb
    writes (anything else in the folder stays where it is)."""
    kind = ALIASES.get(verb, verb)
    if fresh and out_dir.is_dir():
        for pattern in (*OUTPUTS[kind][1], MARK):
            for target in out_dir.glob(pattern):
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / MARK, {"verb": kind})


def claim_run_dir(out_dir: Path, *, resume: bool, fresh: bool) -> None:
    """``claim_output`` for a training run; resuming needs the checkpoint and the record it started with."""
    claim_output(out_dir, "train", resume=resume, fresh=fresh, resumable=True)
    if resume:
        if not (out_dir / "training" / "checkpoints" / "last.ckpt").is_file():
            raise ConfigError("nothing to resume here (no training/checkpoints/last.ckpt)", path=out_dir)
        if not (out_dir / RUN_RECORD).is_file():
            raise ConfigError(f"cannot resume: no {RUN_RECORD} records what this run was started with", path=out_dir)


def read_record(path: Path) -> dict[str, Any]:
    """The record a run (or cv) started with, which a resume is checked against."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot resume: unreadable record ({exc})", path=path) from None


def check_resume(out_dir: Path, record: dict[str, Any]) -> None:
    """A resumed run must see the data, split and settings it started with (else it would train on
    what it once held out), naming the first difference."""
    path = out_dir / RUN_RECORD
    old = read_record(path)
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
