"""Where patches lie on a film: the sliding-window grid, how much breast a patch holds, and whether a
square patch touches a finding's circle. Pure numpy, shared by sampling, the model and the tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mammolens.utils.errors import ConfigError, DataError


def check_window(patch_size: int, stride: int, where: str = "model.options") -> None:
    """One line for a patch size or stride that no film could use."""
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 8:
        raise ConfigError(f"{where}.patch_size: must be an integer >= 8 pixels, got {patch_size!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ConfigError(f"{where}.stride: must be an integer >= 1 pixel (a stride of 0 never moves), got {stride!r}")


def axis_starts(length: int, patch_size: int, stride: int) -> list[int]:
    """Window starts along one axis: every ``stride`` pixels, plus one flush with the far edge so the
    whole axis is covered."""
    if patch_size > length:
        raise DataError(f"patch_size {patch_size} is larger than the film ({length} pixels along one side); "
                        "use a smaller patch_size or a larger resize")
    starts = list(range(0, length - patch_size + 1, stride))
    if starts[-1] != length - patch_size:
        starts.append(length - patch_size)
    return starts


def grid_positions(shape: Sequence[int], patch_size: int, stride: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(N, 2) top-left (row, col) of every window, row-major, and the grid's (rows, cols)."""
    check_window(patch_size, stride)
    height, width = int(shape[0]), int(shape[1])
    ys, xs = axis_starts(height, patch_size, stride), axis_starts(width, patch_size, stride)
    pos = np.array([(y, x) for y in ys for x in xs], dtype=np.int64)
    return pos, (len(ys), len(xs))


def tissue_fraction(film: np.ndarray, positions: np.ndarray, patch_size: int) -> np.ndarray:
    """Share of non-zero (breast) pixels in each patch: crop_breast blanks everything else to 0."""
    tissue = np.asarray(film) > 0
    integral = np.pad(tissue.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    y, x = positions[:, 0], positions[:, 1]
    p = patch_size
    count = integral[y + p, x + p] - integral[y, x + p] - integral[y + p, x] + integral[y, x]
    return count / float(p * p)


def touches_circle(top: int, left: int, patch_size: int, circle: Sequence[float]) -> bool:
    """Whether the patch square [top, top+p) x [left, left+p) comes within the circle (x, y, r)."""
    cx, cy, r = (float(v) for v in circle)
    nearest_x = min(max(cx, left), left + patch_size - 1)
    nearest_y = min(max(cy, top), top + patch_size - 1)
    return (nearest_x - cx) ** 2 + (nearest_y - cy) ** 2 <= r * r


def map_to_pixels(scores: np.ndarray, starts: tuple[Sequence[int], Sequence[int]], patch_size: int,
                  shape: Sequence[int]) -> np.ndarray:
    """A (rows, cols) patch score map as an image: each pixel takes the largest score of the windows
    that cover it (0 where none does)."""
    out = np.zeros(tuple(int(s) for s in shape), np.float32)
    ys, xs = starts
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            view = out[y:y + patch_size, x:x + patch_size]
            np.maximum(view, scores[i, j], out=view)
    return out
