"""Errors a user can cause and fix.

The CLI prints ``str(error)`` as a single line and exits non-zero; anything that is *not* a
MammolensError is a bug in mammolens and is allowed to show a traceback.
"""

from __future__ import annotations

from pathlib import Path


class MammolensError(Exception):
    """A problem with the user's input (file, config field, option), stated in one line."""

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        message = " ".join(str(message).split())  # one line, whatever the caller passed
        super().__init__(f"{path}: {message}" if path is not None else message)
        self.path = None if path is None else str(path)


class ConfigError(MammolensError):
    """A config file or option names an unknown key or holds a bad value."""


class DataError(MammolensError):
    """A dataset source is malformed: missing files, missing columns, unmapped labels."""


class ImageReadError(DataError):
    """An image file cannot be read: corrupt, truncated, too large, not an image. Its message is in
    mammolens's words, never a decoder's (those can quote the file's content, a patient's name)."""
