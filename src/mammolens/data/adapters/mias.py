"""mini-MIAS: ``mdbNNN.pgm`` (as distributed) or ``mdbNNN.png`` films beside the original ``Info.txt``.

Rules taken from ``Info.txt`` itself, so they can be checked against the source:

- Note 1: films come in pairs of one woman. Pair k holds films 2k-1 and 2k; it is the patient and
  the split group. The note says even numbers are left breasts and odd numbers right, but the
  films say the opposite, and the films are the evidence. Every film is stored mirrored (it
  was digitised through the back of the film): the burned-in side markers and their numbers
  are mirror-written on every film, and they read R on even films (mdb002, mdb004, mdb104,
  mdb210) and L on odd ones (mdb005, mdb007, mdb011, mdb209). Mirroring also moves the chest
  wall: a right breast, shown chest wall on the right in the standard (CBIS-DDSM, DICOM)
  display, shows it on the LEFT here, which is where every even film has it (all 256 films
  whose breast is clearly on one side; mdb151/152 fill the frame). So even = R, odd = L, and
  each film is the mirror image of the standard display (``meta["stored_mirrored"]``).
- Note 3: the coordinate origin is the BOTTOM-left corner; rois are flipped to the manifest's
  top-left origin with ``row = (height - 1) - y``, height read from the image header (1024, the
  documented size, when the image is absent).
- Note 4: some calcification rows carry no coordinates; their image has no ROI for that finding.

One row per film. Film-level pathology is malignant if any finding is malignant. When a film
has several findings, ``abnormality`` and ``lesion_type`` come from the most severe one (the
first listed among equals); every finding is kept in ``meta["findings"]`` with its own ROI and
severity, and lesion tasks take one sample per finding from there (``mammolens.data.units``). ARCH and ASYM are
counted as mass-like (``lesion_type="mass"``): they are density findings, not calcifications.
mini-MIAS films are all MLO views.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mammolens.data.adapters.base import ADAPTERS, Adapter, SourceResult
from mammolens.data.manifest import MIAS_CLASSES, Manifest
from mammolens.io import read_meta
from mammolens.utils.errors import DataError, ImageReadError

MIAS_SIZE = 1024  # Info.txt note 2: every mini-MIAS film is 1024 x 1024
TISSUES = {"F": "fatty", "G": "fatty-glandular", "D": "dense-glandular"}
SEVERITIES = {"B": "benign", "M": "malignant"}
LESION_TYPES = {"NORM": "none", "CALC": "calc"} | {c: "mass" for c in ("CIRC", "SPIC", "MISC", "ARCH", "ASYM")}
IMAGE_SUFFIXES = (".pgm", ".png")

_REF = re.compile(r"mdb(\d{3})")


def find_info(path: Path) -> Path | None:
    """``Info.txt`` (any case) at ``path`` or inside the folder ``path``."""
    if path.is_file():
        return path if path.name.lower() == "info.txt" else None
    return next((p for p in sorted(path.glob("*")) if p.name.lower() == "info.txt" and p.is_file()), None)


def parse_info(info: Path) -> dict[str, list[dict[str, Any]]]:
    """Finding rows of ``Info.txt`` by reference (``mdb001``), in file order.

    Data rows are the lines whose first word is a reference number; the prose header, the notes and
    the ``=====`` separators never start with one. Each finding: tissue, class, severity (None for
    NORM), x, y (bottom-left origin) and radius (None when the row has no coordinates), line number.
    """
    try:
        lines = info.read_text(encoding="latin-1").splitlines()
    except OSError as exc:
        raise DataError(f"cannot read ({exc.strerror})", path=info) from None
    findings: dict[str, list[dict[str, Any]]] = {}
    for lineno, line in enumerate(lines, start=1):
        words = line.split()
        if not words or not _REF.fullmatch(words[0]):
            continue
        where = f"{info}:{lineno}"
        ref, rest = words[0], words[1:]
        if len(rest) < 2 or rest[0] not in TISSUES or rest[1] not in MIAS_CLASSES:
            raise DataError(
                f"row {line.strip()!r} is not 'REFNUM TISSUE(F/G/D) CLASS({'/'.join(MIAS_CLASSES)}) ...'",
                path=where,
            )
        tissue, cls, rest = rest[0], rest[1], rest[2:]
        severity = None
        if cls != "NORM":
            if not rest or rest[0] not in SEVERITIES:
                raise DataError(f"{cls} finding of {ref} lacks a severity (B or M)", path=where)
            severity, rest = rest[0], rest[1:]
        numeric = [w.isdigit() for w in rest]
        if len(rest) == 3 and all(numeric):
            x, y, radius = map(int, rest)
        elif not any(numeric):  # no coordinates, perhaps a remark such as "*NOTE 3*"
            x = y = radius = None
        else:
            raise DataError(f"{ref}: expected 'X Y RADIUS' or no coordinates, got {' '.join(rest)!r}", path=where)
        findings.setdefault(ref, []).append(
            {"tissue": tissue, "class": cls, "severity": severity, "x": x, "y": y, "radius": radius,
             "remark": " ".join(rest) if x is None and rest else None, "line": lineno}
        )
    if not findings:
        raise DataError("no MIAS data rows (lines starting with mdbNNN)", path=info)
    for ref, rows in findings.items():
        classes = {r["class"] for r in rows}
        if "NORM" in classes and len(classes) > 1:
            raise DataError(f"{ref} is listed both as NORM and as {', '.join(sorted(classes - {'NORM'}))}", path=info)
        if len({r["tissue"] for r in rows}) > 1:
            raise DataError(f"{ref} rows disagree on background tissue", path=info)
    return findings


def _image_file(folder: Path, ref: str) -> tuple[Path | None, list[Path]]:
    found = [folder / f"{ref}{suffix}" for suffix in IMAGE_SUFFIXES if (folder / f"{ref}{suffix}").is_file()]
    return (found[0] if found else None), found[1:]


def _row(ref: str, findings: list[dict[str, Any]], image: Path, width: int, height: int) -> dict[str, Any]:
    number = int(ref[3:])
    pair = f"mias-pair-{(number + 1) // 2:03d}"
    order = {None: 0, "B": 1, "M": 2}
    main = max(findings, key=lambda f: order[f["severity"]])  # first of the most severe
    severities = {f["severity"] for f in findings}
    rois = []
    for f in findings:
        if f["x"] is None:
            f["roi"] = None
            continue
        if not (0 <= f["x"] < width and 0 <= f["y"] < height):
            raise DataError(
                f"{ref}: centre ({f['x']}, {f['y']}) lies outside the {width}x{height} image "
                "(resized films need coordinates rescaled first)",
                path=image,
            )
        f["roi"] = [f["x"], (height - 1) - f["y"], f["radius"]]
        rois.append(f["roi"])
    return {
        "sample_id": f"mias-{ref}",
        "source": "mias",
        "path": str(image),
        "patient_id": pair,
        "exam_id": pair,  # the film pair is one woman's one visit
        "group": pair,
        "view": "MLO",
        "laterality": "L" if number % 2 else "R",  # the films' markers, not Info.txt note 1 (module docstring)
        "pathology": "malignant" if "M" in severities else "benign" if "B" in severities else "normal",
        "abnormality": main["class"],
        "lesion_type": LESION_TYPES[main["class"]],
        "rois": json.dumps(rois),
        "meta": json.dumps(
            {
                "tissue": TISSUES[findings[0]["tissue"]],
                "stored_mirrored": True,
                "findings": [
                    {
                        "class": f["class"],
                        "severity": SEVERITIES.get(f["severity"]),
                        "lesion_type": LESION_TYPES[f["class"]],
                        "roi": f["roi"],
                        "xy_bottom_left": None if f["x"] is None else [f["x"], f["y"]],
                        "radius": f["radius"],
                        "remark": f["remark"],
                        "info_line": f["line"],
                    }
                    for f in findings
                ],
            }
        ),
    }


def load(path: str | Path, *, require_images: bool = True) -> SourceResult:
    """Read a mini-MIAS folder (or its ``Info.txt``) into one manifest row per film."""
    path = Path(path).resolve()
    info = find_info(path)
    if info is None:
        raise DataError("no Info.txt here; a MIAS source is the folder holding Info.txt and the mdbNNN images", path=path)
    folder = info.parent
    findings = parse_info(info)
    records, missing, bad, notes, no_coords, shadowed = [], [], [], [], [], []
    for ref, rows in findings.items():
        image, others = _image_file(folder, ref)
        shadowed += others
        if image is None:
            image = folder / f"{ref}.pgm"
            if require_images:
                raise DataError(f"image of {ref} not found (looked for {ref}.pgm and {ref}.png)", path=image)
            missing.append(str(image))
            width, height = MIAS_SIZE, MIAS_SIZE
        else:
            try:
                height, width = read_meta(image).shape  # header only, no pixel decoding
            except ImageReadError as exc:
                if require_images:
                    raise
                bad.append(str(exc))
                width, height = MIAS_SIZE, MIAS_SIZE
        no_coords += [
            f"{ref} {r['class']} {r['severity']} (Info.txt line {r['line']})"
            for r in rows
            if r["x"] is None and r["class"] != "NORM"
        ]
        records.append(_row(ref, rows, image, width, height))
    manifest = Manifest.from_records(records, name="mias")
    counts = manifest.df["pathology"].value_counts()
    notes.append(
        f"{len(manifest)} images, {manifest.df['group'].nunique()} film pairs, "
        f"{sum(len(r) for r in findings.values())} finding rows: "
        + ", ".join(f"{counts.get(p, 0)} {p}" for p in ("normal", "benign", "malignant"))
    )
    notes.append("laterality from the films' mirror-written side markers (even = R, odd = L), not Info.txt note 1, "
                 "which says the opposite; the films are stored mirrored")
    if no_coords:
        notes.append(f"{len(no_coords)} finding row(s) without coordinates, so no ROI: " + "; ".join(no_coords))
    listed = {f"{ref}{s}" for ref in findings for s in IMAGE_SUFFIXES}
    unlisted = sorted(p.name for p in folder.glob("mdb*") if p.suffix.lower() in IMAGE_SUFFIXES and p.name not in listed)
    if unlisted:
        notes.append(f"{len(unlisted)} image(s) have no Info.txt row and were not loaded: {', '.join(unlisted)}")
    if shadowed:
        names = ", ".join(p.name for p in shadowed)
        notes.append(f"{len(shadowed)} film(s) exist as both .pgm and .png; the .pgm was used, not {names}")
    if missing:
        notes.append(f"{len(missing)} image file(s) listed in Info.txt are missing")
    return SourceResult(manifest=manifest, notes=notes, missing_files=missing, bad_files=bad)


def detect(path: Path) -> bool:
    info = find_info(path)
    if info is None:
        return False
    with open(info, encoding="latin-1", errors="replace") as fh:
        return any(_REF.match(line) for line in fh)


ADAPTERS.register("mias")(
    Adapter(detect=detect, load=load, description="mini-MIAS films (mdbNNN.pgm/.png) with the original Info.txt")
)
