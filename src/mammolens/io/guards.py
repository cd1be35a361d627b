"""Checks that run on headers, before any pixel buffer is allocated.

Each failure is an ImageReadError naming the file, so a bad file in a dataset of thousands is
one readable line rather than a traceback or a machine brought down by a decompression bomb.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mammolens.utils.errors import ConfigError, ImageReadError

# 64 Mi pixels: admits a 4500x2800 CBIS-DDSM film, a 4096x3328 FFDM and 5928x4728 (50 um)
# detectors with room to spare (256 MiB as float32), and rejects a 30000x30000 bomb.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024


def check_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise ImageReadError("file not found", path=path)
    if not path.is_file():
        raise ImageReadError("is not a regular file (a directory?), expected an image file", path=path)
    if path.stat().st_size == 0:
        raise ImageReadError("is empty (0 bytes), not an image", path=path)
    return path


def check_max_pixels(max_pixels: int) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels <= 0:
        raise ConfigError(f"max_pixels must be a positive integer, got {max_pixels!r}")


def check_shape(path: Path, shape: tuple[int, ...], max_pixels: int | None = None) -> None:
    """Reject degenerate shapes and, when ``max_pixels`` is given, images larger than it."""
    if len(shape) < 2:
        raise ImageReadError(f"has {len(shape)} dimension(s) (shape {tuple(shape)}), an image needs 2", path=path)
    if min(shape) <= 0:
        raise ImageReadError(f"has a zero-size axis (shape {tuple(shape)})", path=path)
    if max_pixels is not None:
        rows, cols = int(shape[0]), int(shape[1])
        if rows * cols > max_pixels:
            raise ImageReadError(
                f"is {rows}x{cols} = {rows * cols:,} pixels, more than max_pixels={max_pixels:,}; "
                "pass a larger max_pixels if the image is genuine",
                path=path,
            )


def check_frame(path: Path, frame: int | None, frames: int) -> int | None:
    """Return the frame index to decode (None: the file holds a single image)."""
    if frame is None:
        if frames > 1:
            raise ImageReadError(f"holds {frames} frames; pass frame=0..{frames - 1} to pick one", path=path)
        return None
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
        raise ImageReadError(f"frame must be an integer or None, got {frame!r}", path=path)
    if not 0 <= frame < frames:
        raise ImageReadError(f"frame {frame} is out of range: the file holds {frames} frame(s)", path=path)
    return int(frame)


def check_finite(path: Path, array: np.ndarray) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ImageReadError("contains NaN or infinite values", path=path)
