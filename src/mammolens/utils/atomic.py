"""Write-then-rename helpers: a crash or a user error never leaves a half-written file.

Temporary files and folders are created with the modes ``open`` and ``mkdir`` would use (0666 /
0777 less the umask), not ``mkstemp``'s owner-only 0600: a bundle or run written here must be
readable by the service account or container that deploys it, as any other file the user writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


def umask_mode(path: str | Path) -> None:
    """Give a file written by a library that creates it owner-only (safetensors does) the mode
    ``open`` would have given it: 0666 less the umask."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def _temp_name(path: Path, suffix: str) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(6)}{suffix}"


def make_temp_dir(path: str | Path, suffix: str = ".tmp") -> Path:
    """A new, empty folder beside ``path`` (same file system, so it can be renamed onto it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_name(path, suffix)
        try:
            tmp.mkdir(mode=0o777)  # the umask applies, as for any folder
            return tmp
        except FileExistsError:
            continue


def fsync_dir(path: str | Path) -> None:
    """Make a rename, creation or deletion inside the folder ``path`` survive a power cut."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    ``durable``: the file's bytes reach the disk before the rename, and the rename before the return,
    so a power cut leaves the old file or the whole new one (without it, a crash of this process
    already does, but the kernel may reorder data and rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp_path = _temp_name(path, ".tmp")
        try:
            os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # umask applies
            break
        except FileExistsError:
            continue
    try:
        yield tmp_path
        if durable:
            fsync_file(tmp_path)
        os.replace(tmp_path, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, durable: bool = False, **kwargs: Any) -> Iterator[IO]:
    with atomic_path(path, durable=durable) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def replace_dir(new: str | Path, target: str | Path) -> None:
    """Rename the finished folder ``new`` onto ``target``; an old ``target`` is moved aside first
    and removed after, so readers see the old folder or the new one, never a mix."""
    import shutil

    new, target = Path(new), Path(target)
    if not target.exists():
        os.replace(new, target)
        return
    old = make_temp_dir(target, ".old")
    os.replace(target, old / target.name)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
