"""ROIs: the one JSON type a manifest's ``rois`` column holds, and what every consumer needs from it.

Sources mark findings differently: MIAS as circles, VinDr-Mammo as boxes, INbreast as polygons,
CBIS-DDSM as mask images. The ``rois`` column is a JSON list whose items are any of

- ``[x, y, r]``                        a circle (the original form, read exactly as before),
- ``{"box": [x0, y0, x1, y1]}``        a box, corners inclusive,
- ``{"polygon": [[x, y], ...]}``       a closed outline of at least three points,
- ``{"mask": "path"}``                 a binary mask image of the film's size,

all in the original image's pixels (x = column, y = row, origin top-left). Consumers need two
things: a covering circle per finding (crops, thumbnails, patch sampling: a crop around the circle
holds the whole finding) and the exact area (the localisation score and outlines): ``Roi.circle``
and ``Roi.draw``. Preprocessing carries the area as the sample's mask, which every geometric step
already moves with the pixels.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from mammolens.utils.errors import DataError

KINDS = ("circle", "box", "polygon", "mask")


@dataclass(frozen=True)
class Roi:
    kind: str  # one of KINDS
    points: tuple[tuple[float, float], ...] = ()  # circle: (centre,); box: (top-left, bottom-right); polygon: outline
    r: float = 0.0  # circle radius
    path: str = ""  # mask image file

    def circle(self) -> tuple[float, float, float]:
        """The covering circle (x, y, r): the circle itself, or the smallest one enclosing the outline.

        A mask's circles need its pixels (``preprocess.sample.rois_from_mask``).
        """
        if self.kind == "circle":
            (x, y), = self.points
            return (x, y, self.r)
        if self.kind == "mask":
            raise ValueError("a mask ROI's circles come from its pixels (rois_from_mask)")
        (cx, cy), r = cv2.minEnclosingCircle(np.asarray(self.outline(), np.float32))
        return (float(cx), float(cy), max(float(r), 0.5))

    def outline(self) -> list[tuple[float, float]]:
        """Corner points of a box or polygon, in drawing order (empty for circles and masks)."""
        if self.kind == "box":
            (x0, y0), (x1, y1) = self.points
            return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        return list(self.points) if self.kind == "polygon" else []

    def draw(self, mask: np.ndarray) -> None:
        """Fill this ROI's area into a uint8 mask (in place); a mask ROI is drawn by its reader."""
        if self.kind == "circle":
            x, y, r = self.circle()
            cv2.circle(mask, (int(round(x)), int(round(y))), max(1, int(round(r))), 1, thickness=cv2.FILLED)
        elif self.kind in ("box", "polygon"):
            pts = np.round(np.asarray(self.outline(), np.float64)).astype(np.int32)
            cv2.fillPoly(mask, [pts], 1)

    def to_json(self) -> Any:
        if self.kind == "circle":
            (x, y), = self.points
            return [x, y, self.r]
        if self.kind == "box":
            return {"box": [v for p in self.points for v in p]}
        if self.kind == "polygon":
            return {"polygon": [list(p) for p in self.points]}
        return {"mask": self.path}


def circle(x: float, y: float, r: float) -> Roi:
    return Roi("circle", ((float(x), float(y)),), r=float(r))


def box(x0: float, y0: float, x1: float, y1: float) -> Roi:
    return Roi("box", ((float(x0), float(y0)), (float(x1), float(y1))))


def polygon(points: Iterable[Sequence[float]]) -> Roi:
    return Roi("polygon", tuple((float(x), float(y)) for x, y in points))


def mask(path: str) -> Roi:
    return Roi("mask", path=str(path))


def parse_rois(text: str, where: str = "rois") -> list[Roi]:
    """The ``rois`` column's JSON as Roi objects; ``where`` names the sample in the one-line error."""
    try:
        items = json.loads(text or "[]")
        if not isinstance(items, list):
            raise ValueError("not a list")
        return [_parse_item(item) for item in items]
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{where}: bad rois value {text!r} ({exc}); items are [x, y, r], "
                        '{"box": [x0, y0, x1, y1]}, {"polygon": [[x, y], ...]} or {"mask": "path"}') from None


def _parse_item(item: Any) -> Roi:
    if isinstance(item, list):
        if len(item) != 3:
            raise ValueError(f"a circle is [x, y, r], got {item}")
        return circle(*item)
    if not isinstance(item, dict) or len(item) != 1:
        raise ValueError(f"unknown ROI {item!r}")
    (kind, value), = item.items()
    if kind == "box":
        x0, y0, x1, y1 = (float(v) for v in value)
        if x1 < x0 or y1 < y0:
            raise ValueError(f"box corners out of order: {value}")
        return box(x0, y0, x1, y1)
    if kind == "polygon":
        roi = polygon(value)
        if len(roi.points) < 3:
            raise ValueError(f"a polygon needs at least 3 points, got {len(roi.points)}")
        return roi
    if kind == "mask" and isinstance(value, str) and value:
        return mask(value)
    raise ValueError(f"unknown ROI {item!r}")


def dump_rois(rois: Iterable[Roi]) -> str:
    return json.dumps([roi.to_json() for roi in rois])


def outlines_of_mask(mask: np.ndarray) -> list[np.ndarray]:
    """The outer contours of a binary mask as (N, 2) int point arrays, for drawing outlines."""
    contours, _ = cv2.findContours(np.ascontiguousarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2) for c in contours]
