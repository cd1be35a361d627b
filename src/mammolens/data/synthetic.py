"""Synthetic mammograms, so the demo and the tests run where no real data may be shipped.

The images are caricatures built to exercise the whole pipeline, not to stand in for clinical
data: a breast-shaped tissue region against the chest wall (fatty background, fibroglandular
streaks, darker periphery, skin line), black outside, an optional burned-in label in a far
corner (for breast cropping to remove) and a pectoral muscle in MLO views. Benign findings are
well-circumscribed oval masses or a few round scattered calcifications; malignant ones are
spiculated masses or tight pleomorphic, linear calcification clusters. As in screening, cancers
are on average somewhat larger and denser, but the ranges overlap widely and fibroglandular
tissue can look like a mass, so a model has to learn shape, not brightness.

Orientation follows the usual hanging: a LEFT breast has its chest wall on the image's left edge,
a RIGHT breast on the right edge. Each synthetic patient has a CC and an MLO view of one breast
showing the same lesion, so patient-grouped splits are exercised. Everything is drawn from
``numpy.random.Generator`` streams keyed by ``(seed, patient)``: one seed gives byte-identical
files (with the same numpy / OpenCV builds).

How hard the task is, measured at 128 pixels: the mean breast intensity does not tell the classes
apart (AUC 0.51 normal vs abnormal, 0.49 benign vs malignant); single blob-filter responses (CC
views without label) give AUC 0.58-0.85 for normal vs abnormal and 0.46-0.62 for benign vs
malignant; a four-block CNN trained from scratch on 900 images reaches validation AUC 0.73 /
0.97 / 0.999 after 2 / 4 / 6 epochs for normal vs abnormal, and for benign vs malignant (600
images) hovers at 0.5-0.64 for five epochs before reaching 0.73-0.82 at epochs 8-9.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from mammolens.utils.atomic import make_temp_dir, replace_dir
from mammolens.utils.errors import ConfigError, DataError

CSV_NAME = "synthetic.csv"
CSV_COLUMNS = ("file", "patient", "laterality", "view", "pathology", "lesion_type", "roi_x", "roi_y", "roi_r")
PATHOLOGIES = ("normal", "benign", "malignant")
VIEWS = ("CC", "MLO")
MIN_SIZE = 64

Roi = tuple[float, float, float]


@dataclass(frozen=True)
class _Anatomy:
    """What the two views of one breast share: tissue character."""

    fat: float  # fatty tissue grey level
    gland: float  # extra brightness of fibroglandular tissue
    density: float  # bias of the fibroglandular fraction
    skin: float  # skin line brightness


@dataclass(frozen=True)
class _Lesion:
    """What the two views of one finding share: kind, size, contrast, shape, place in the breast."""

    pathology: str
    lesion_type: str
    radius: float  # fraction of the image size
    contrast: float
    rho: float  # position as a fraction of the breast's radius ...
    theta: float  # ... and angle from the nipple axis (radians)
    seed: int  # shape details (outline harmonics, spicules, dots)


def _check_kind(pathology: str, lesion_type: str | None) -> str:
    if pathology not in PATHOLOGIES:
        raise ConfigError(f"synthetic pathology {pathology!r} is unknown; known: {', '.join(PATHOLOGIES)}")
    if lesion_type is None:
        return "none" if pathology == "normal" else "mass"
    allowed = ("none",) if pathology == "normal" else ("mass", "calc")
    if lesion_type not in allowed:
        raise ConfigError(
            f"synthetic lesion_type {lesion_type!r} does not fit pathology {pathology!r}; use {' or '.join(allowed)}"
        )
    return lesion_type


def _sample_anatomy(rng: np.random.Generator) -> _Anatomy:
    return _Anatomy(
        fat=rng.uniform(0.22, 0.32),
        gland=rng.uniform(0.1, 0.22),
        density=rng.uniform(-0.7, 0.5),
        skin=rng.uniform(0.06, 0.14),
    )


def _sample_lesion(rng: np.random.Generator, pathology: str, lesion_type: str) -> _Lesion:
    malignant = pathology == "malignant"  # as in screening: cancers tend to be larger and denser
    return _Lesion(
        pathology=pathology,
        lesion_type=lesion_type,
        radius=rng.uniform(0.035, 0.075) if malignant else rng.uniform(0.028, 0.06),
        contrast=rng.uniform(0.15, 0.33) if malignant else rng.uniform(0.12, 0.28),
        rho=rng.uniform(0.25, 0.7),
        theta=rng.uniform(-1.1, 1.1),
        seed=int(rng.integers(2**31)),
    )


def _smooth_noise(rng: np.random.Generator, size: int, cells_y: int, cells_x: int) -> np.ndarray:
    """Unit-variance noise correlated over ``size / cells`` pixels (bicubic upsampling of a coarse grid)."""
    coarse = rng.standard_normal((cells_y + 3, cells_x + 3)).astype(np.float32)
    up = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    return (up - up.mean()) / (up.std() + 1e-6)


def _polar_noise(
    rng: np.random.Generator, radius: np.ndarray, angle: np.ndarray, cells_r: int, cells_a: int
) -> np.ndarray:
    """Unit-variance noise indexed by (radius in image sizes, angle in radians)."""
    grid = cv2.resize(
        rng.standard_normal((cells_r + 3, cells_a + 3)).astype(np.float32), (512, 128), interpolation=cv2.INTER_CUBIC
    )
    out = cv2.remap(
        grid,
        (angle * (511 / (2 * np.pi))).astype(np.float32),
        np.clip(radius * 127, 0, 127).astype(np.float32),
        interpolation=cv2.INTER_LINEAR,
    )
    return (out - out.mean()) / (out.std() + 1e-6)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _render_breast(
    rng: np.random.Generator, size: int, view: str, anatomy: _Anatomy
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Callable[[float, float], tuple[float, float]]]:
    """Tissue image of a LEFT breast, its mask, the pectoral mask and a (rho, theta) -> (x, y) map."""
    s = float(size)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    a = s * rng.uniform(0.55, 0.74)  # depth from the chest wall
    b = s * rng.uniform(0.36, 0.45)  # half height
    cy = s * (rng.uniform(0.47, 0.53) if view == "CC" else rng.uniform(0.5, 0.58))
    tilt = 0.0 if view == "CC" else rng.uniform(0.12, 0.3)  # MLO: the breast droops
    cos_t, sin_t = np.cos(tilt), np.sin(tilt)
    u = (x * cos_t + (y - cy) * sin_t) / a
    v = (-x * sin_t + (y - cy) * cos_t) / b
    rho = np.sqrt(u * u + v * v)
    angle = np.arctan2(v, u)
    outline = 1.0 + sum(
        rng.uniform(0, 0.025) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    r = rho / outline
    depth_px = (1.0 - r) * min(a, b)  # approximate distance to the skin, in pixels
    breast = r < 1.0

    # Ducts and fibroglandular tissue fan out from the nipple: noise that is smooth along the
    # distance from the nipple and fine across the angle around it.
    nipple_x, nipple_y = a * cos_t, cy + a * sin_t
    to_nipple = np.hypot(x - nipple_x, y - nipple_y) / s
    around = np.arctan2(y - nipple_y, x - nipple_x) % (2 * np.pi)
    fan = np.clip(to_nipple / 0.2, 0, 1)  # fade the fan out where its rays would converge
    ducts = 0.7 * _polar_noise(rng, to_nipple, around, 4, 48) + 0.5 * _polar_noise(rng, to_nipple, around, 3, 16)
    glands = fan * ducts
    glands += 0.3 * _smooth_noise(rng, size, 14, 14)
    glands += anatomy.density - 1.8 * np.clip(r - 0.35, 0, None)  # denser behind the nipple
    dense = _sigmoid(glands / 0.3)
    fat_texture = 0.6 * _smooth_noise(rng, size, 5, 5) + 0.4 * _smooth_noise(rng, size, 30, 30)
    tissue = anatomy.fat + 0.02 * fat_texture + anatomy.gland * dense
    thickness = np.clip(depth_px / (0.07 * s), 0, 1)  # compressed breast thins towards the skin
    tissue *= 0.55 + 0.45 * np.sqrt(thickness)
    skin_width = max(0.8, s / 320)
    tissue += anatomy.skin * np.exp(-((depth_px / skin_width) ** 2))

    pectoral = np.zeros_like(tissue)
    if view == "MLO":
        pw, ph = s * rng.uniform(0.2, 0.36), s * rng.uniform(0.45, 0.75)
        dist = (pw * (1 - y / ph) - x) / np.hypot(1.0, pw / ph)  # signed distance to the muscle edge
        pectoral = _sigmoid(dist / max(0.7, s / 300))
        muscle = rng.uniform(0.5, 0.68) + 0.03 * _smooth_noise(rng, size, 12, 4)
        tissue = tissue * (1 - pectoral) + muscle * pectoral
        breast |= pectoral > 0.5

    def place(rho_l: float, theta_l: float) -> tuple[float, float]:
        uu, vv = rho_l * np.cos(theta_l) * a, rho_l * np.sin(theta_l) * b
        return float(uu * cos_t - vv * sin_t), float(cy + uu * sin_t + vv * cos_t)

    return tissue.astype(np.float32), breast, pectoral > 0.05, place


def _patch(size: int, cx: float, cy: float, half: float) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Window of the image around (cx, cy) and its coordinates relative to the centre."""
    x0, x1 = max(0, int(cx - half)), min(size, int(cx + half) + 2)
    y0, y1 = max(0, int(cy - half)), min(size, int(cy + half) + 2)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return slice(y0, y1), slice(x0, x1), xx - cx, yy - cy


def _draw_mass(img: np.ndarray, lesion: _Lesion, cx: float, cy: float, scale: float) -> float:
    """Add a mass at (cx, cy); return the ROI radius."""
    size = img.shape[0]
    rng = np.random.default_rng(lesion.seed)
    r0 = lesion.radius * size
    malignant = lesion.pathology == "malignant"
    spicules = rng.uniform(1.6, 3.0, size=int(rng.integers(8, 22))) if malignant else np.zeros(0)
    ys, xs, dx, dy = _patch(size, cx, cy, r0 * (1 + (spicules.max() if malignant else 0.3)) + 4)
    angle = np.arctan2(dy, dx)
    if malignant:  # irregular, ill-defined core
        harmonics = [(k, rng.uniform(0.04, 0.16), rng.uniform(0, 2 * np.pi)) for k in range(2, 7)]
        edge = rng.uniform(1.0, 2.0) * scale
        aspect, rot = 1.0, 0.0
    else:  # oval, slightly lobulated at most, sharp margin
        harmonics = [(k, rng.uniform(0, 0.04), rng.uniform(0, 2 * np.pi)) for k in (2, 3)]
        edge = rng.uniform(0.4, 0.8) * scale
        aspect, rot = rng.uniform(0.65, 1.0), rng.uniform(0, np.pi)
    rx = dx * np.cos(rot) + dy * np.sin(rot)
    ry = (-dx * np.sin(rot) + dy * np.cos(rot)) / aspect
    outline = r0 * (1 + sum(amp * np.cos(k * angle + ph) for k, amp, ph in harmonics))
    d = np.hypot(rx, ry) / outline
    body = _sigmoid((1 - d) * outline / edge) * (0.75 + 0.25 * np.sqrt(np.clip(1 - d * d, 0, 1)))
    if malignant:
        width = max(0.8, rng.uniform(0.7, 1.3) * scale)  # still visible on small images
        strength = rng.uniform(0.6, 1.0)
        for length in spicules * r0:
            phi = rng.uniform(0, 2 * np.pi)
            ux, uy = np.cos(phi), np.sin(phi)
            t = np.clip(dx * ux + dy * uy, 0, length)
            dist = np.hypot(dx - t * ux, dy - t * uy)
            line = strength * np.exp(-((dist / width) ** 2)) * (1 - t / length) ** 0.7
            body = np.maximum(body, line)
    img[ys, xs] += lesion.contrast * body
    # benign: the margin; malignant: the core and the inner part of its spicules, as radiologists outline them
    return float(outline.max() * (1.3 if malignant else 1.0) + edge)


def _draw_calcs(img: np.ndarray, lesion: _Lesion, cx: float, cy: float, scale: float) -> tuple[float, float, float]:
    """Add a calcification cluster around (cx, cy); return its enclosing circle."""
    size = img.shape[0]
    rng = np.random.default_rng(lesion.seed)
    spread = lesion.radius * size
    if lesion.pathology == "malignant":  # many, tight, pleomorphic, along a branching line
        n = int(rng.integers(10, 26))
        phi = rng.uniform(0, np.pi)
        along = rng.uniform(-1, 1, n) * spread
        branch = rng.random(n) < 0.3
        phis = np.where(branch, phi + rng.choice([-0.7, 0.7]), phi)
        px = cx + along * np.cos(phis) + rng.normal(0, 0.12 * spread, n)
        py = cy + along * np.sin(phis) + rng.normal(0, 0.12 * spread, n)
        sigma = np.maximum(0.5, rng.uniform(0.4, 1.1, n) * scale)
        amp = rng.uniform(0.15, 0.45, n)
    else:  # few, round, even, scattered
        n = int(rng.integers(4, 10))
        radius = spread * 1.3 * np.sqrt(rng.random(n))
        phis = rng.uniform(0, 2 * np.pi, n)
        px, py = cx + radius * np.cos(phis), cy + radius * np.sin(phis)
        sigma = np.full(n, max(0.6, rng.uniform(0.8, 1.2) * scale))
        amp = np.full(n, rng.uniform(0.2, 0.4))
    for x, y, s, a in zip(px, py, sigma, amp):
        ys, xs, dx, dy = _patch(size, x, y, 3 * s + 1)
        img[ys, xs] += a * np.exp(-(dx * dx + dy * dy) / (2 * s * s))
    mx, my = float(px.mean()), float(py.mean())
    return mx, my, float(np.hypot(px - mx, py - my).max() + 2 * sigma.max() + 2 * scale)


def _draw_label(rng: np.random.Generator, img: np.ndarray) -> None:
    """Burn a bright film label with dark 'text' into a corner on the nipple side (away from the breast)."""
    size = img.shape[0]
    h, w = int(size * rng.uniform(0.06, 0.1)), int(size * rng.uniform(0.12, 0.2))
    margin = int(size * rng.uniform(0.01, 0.03))
    x0 = size - margin - w
    y0 = margin if rng.random() < 0.5 else size - margin - h
    img[y0 : y0 + h, x0 : x0 + w] = rng.uniform(0.85, 1.0)
    for k in range(int(rng.integers(3, 7))):
        cw = max(1, w // 9)
        cx = x0 + max(1, w // 12) + k * (cw + max(1, cw // 2))
        if cx + cw >= x0 + w:
            break
        img[y0 + h // 4 : y0 + 3 * h // 4, cx : cx + cw] = rng.uniform(0.1, 0.3)


def _render(
    rng: np.random.Generator,
    size: int,
    view: str,
    laterality: str,
    anatomy: _Anatomy,
    lesion: _Lesion | None,
    label: bool,
) -> tuple[np.ndarray, list[Roi]]:
    tissue, breast, pectoral, place = _render_breast(rng, size, view, anatomy)
    scale = size / 256
    rois: list[Roi] = []
    if lesion is not None:
        theta = lesion.theta
        cx, cy = place(lesion.rho, theta)
        for _ in range(8):  # keep the finding off the pectoral muscle and inside the image
            inside = 0 <= cx < size and 0 <= cy < size
            if inside and not pectoral[int(cy), int(cx)]:
                break
            theta = theta * 0.6 + 0.35  # slide towards the lower, muscle-free part of the breast
            cx, cy = place(lesion.rho, theta)
        cx = max(cx, 1.5 * lesion.radius * size + 2)  # not cut by the chest wall
        if lesion.lesion_type == "calc":
            cx, cy, r = _draw_calcs(tissue, lesion, cx, cy, scale)
        else:
            r = _draw_mass(tissue, lesion, cx, cy, scale)
        rois.append((cx, cy, r))
    tissue += rng.normal(0, 0.006, tissue.shape).astype(np.float32)
    img = np.where(breast, np.clip(tissue, 0, 1), 0).astype(np.float32)
    if label:
        _draw_label(rng, img)
    if laterality == "R":
        img = np.ascontiguousarray(img[:, ::-1])
        rois = [(size - 1 - x, y, r) for x, y, r in rois]
    return img, [(round(x, 1), round(y, 1), round(r, 1)) for x, y, r in rois]


def generate_array(
    rng: np.random.Generator,
    size: int,
    pathology: str,
    lesion_type: str | None = None,
    *,
    view: str | None = None,
    laterality: str | None = None,
    label: bool | None = None,
) -> tuple[np.ndarray, list[Roi]]:
    """One synthetic mammogram in memory: float32 [0, 1] ``(size, size)`` and its ROI circles.

    ``lesion_type`` defaults to ``none`` for normals and ``mass`` otherwise; view, laterality and
    the burned-in label are drawn from ``rng`` unless given. ROIs are ``(x, y, r)`` pixels, origin
    top-left, x = column.
    """
    lesion_type = _check_kind(pathology, lesion_type)
    if size < MIN_SIZE:
        raise ConfigError(f"synthetic image size must be at least {MIN_SIZE} pixels, got {size}")
    view = view or str(rng.choice(VIEWS))
    laterality = laterality or str(rng.choice(["L", "R"]))
    label = bool(rng.random() < 0.5) if label is None else label
    anatomy = _sample_anatomy(rng)
    lesion = None if pathology == "normal" else _sample_lesion(rng, pathology, lesion_type)
    return _render(rng, size, view, laterality, anatomy, lesion, label)


def _encode_png16(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.round(img * 65535).astype(np.uint16))
    if not ok:  # pragma: no cover - OpenCV cannot fail on a valid uint16 array
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _prepare_target(out: Path) -> None:
    """Refuse to replace a folder that is not a synthetic dataset (it may hold the user's files)."""
    if out.exists() and not (out.is_dir() and ((out / CSV_NAME).is_file() or not any(out.iterdir()))):
        raise DataError(
            f"exists and is not a synthetic dataset folder (no {CSV_NAME}); refusing to overwrite it", path=out
        )


def _swap_into_place(tmp: Path, out: Path) -> None:
    _prepare_target(out)
    replace_dir(tmp, out)


def generate(
    out_dir: str | Path,
    n_per_class: int = 40,
    size: int = 256,
    seed: int = 0,
    classes: tuple[str, ...] = ("normal", "benign", "malignant"),
    calc_fraction: float = 0.3,
    progress: bool = False,
) -> Path:
    """Write a synthetic dataset: ``images/*.png`` (16-bit) and ``synthetic.csv``; return ``out_dir``.

    ``n_per_class`` images per class, as ``ceil(n/2)`` patients with a CC and an MLO view of one
    breast. Abnormal patients have a calcification cluster instead of a mass with probability
    ``calc_fraction``. Everything is written into a temporary sibling folder that replaces
    ``out_dir`` only when complete, so a crash never leaves half a dataset. An existing
    ``out_dir`` is replaced only if it is empty or a previous synthetic dataset.
    """
    classes = tuple(classes)
    for cls in classes:
        _check_kind(cls, None)
    if len(set(classes)) != len(classes) or not classes:
        raise ConfigError(f"synthetic classes must be distinct and non-empty, got {list(classes)}")
    if n_per_class < 1:
        raise ConfigError(f"synthetic n_per_class must be at least 1, got {n_per_class}")
    if size < MIN_SIZE:
        raise ConfigError(f"synthetic image size must be at least {MIN_SIZE} pixels, got {size}")
    if not 0.0 <= calc_fraction <= 1.0:
        raise ConfigError(f"synthetic calc_fraction must lie in [0, 1], got {calc_fraction}")
    out = Path(out_dir).absolute()
    _prepare_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out)
    try:
        (tmp / "images").mkdir()
        rows = []
        bar = tqdm(total=n_per_class * len(classes), desc="synthetic", disable=not progress)
        patient = 0
        for cls in classes:
            for first in range(0, n_per_class, 2):
                patient += 1
                rng = np.random.default_rng([seed, patient])
                lesion_type = "none" if cls == "normal" else ("calc" if rng.random() < calc_fraction else "mass")
                laterality = str(rng.choice(["L", "R"]))
                anatomy = _sample_anatomy(rng)
                lesion = None if cls == "normal" else _sample_lesion(rng, cls, lesion_type)
                name = f"synth-{patient:04d}"
                for view in VIEWS[: min(2, n_per_class - first)]:
                    img, rois = _render(rng, size, view, laterality, anatomy, lesion, bool(rng.random() < 0.5))
                    file = f"images/{name}_{laterality}_{view}.png"
                    (tmp / file).write_bytes(_encode_png16(img))
                    roi = [f"{v:.1f}" for v in rois[0]] if rois else ["", "", ""]
                    rows.append([file, name, laterality, view, cls, lesion_type, *roi])
                    bar.update()
        bar.close()
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        writer.writerows(rows)
        (tmp / CSV_NAME).write_text(text.getvalue(), encoding="utf-8")
        _swap_into_place(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out
