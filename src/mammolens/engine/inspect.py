"""`mammolens data inspect`: what a source holds, before anyone trains on it."""

from __future__ import annotations

import json
from typing import Any

from mammolens.data.tasks import task_counts
from mammolens.data.units import lesion_rows
from mammolens.utils.errors import MammolensError


def inspect_source(cfg) -> dict[str, Any]:  # noqa: ANN001 - ExperimentConfig (import cycle)
    """A JSON-able report of a source: counts per label, task and group, ROIs, missing files."""
    from mammolens.engine.sources import load_experiment_source

    manifest, result = load_experiment_source(cfg, require_images=False)
    df = manifest.df
    lesions = lesion_rows(manifest, keep_unlocated=True).manifest.df
    lesions = lesions[lesions["pathology"].isin(["benign", "malignant"])]
    no_roi = (lesions["rois"] == "[]") & (lesions["mask_path"] == "")
    bad = list(result.bad_files) + _unreadable(df, set(result.missing_files), result.bad_files)
    report: dict[str, Any] = {
        "source": cfg.data.source,
        "kind": str(df["source"].iat[0]) if len(df) else "",
        "samples": int(len(df)),
        "lesions": {"count": int(len(lesions)), "pathology": _counts(lesions["pathology"])},
        "image_files": int(df["path"].nunique()),
        "groups": int(df["group"].nunique()),
        "patients": int(df["patient_id"].replace("", None).nunique()),
        "exams": int(df["exam_id"].replace("", None).nunique()),
        "images_per_exam": _exam_sizes(df),
        "pathology": _counts(df["pathology"]),
        "abnormality": _counts(df["abnormality"]),
        "lesion_type": _counts(df["lesion_type"]),
        "laterality": _counts(df["laterality"]),
        "view": _counts(df["view"]),
        "density": _counts(df["density"]),
        "birads": _counts(df["birads"]),
        "tasks": task_counts(manifest),
        "lesions_without_roi": {"count": int(no_roi.sum()), "samples": lesions.loc[no_roi, "sample_id"].tolist()},
        "missing_image_files": len(result.missing_files),
        "unreadable_files": bad,
        "missing_examples": result.missing_files[:5],
        "notes": list(result.notes),
        "by_file": _by_source_file(df),
    }
    if cfg.data.dedup:
        sizes = df.groupby("group").size()
        merged = df.groupby("group")["patient_id"].nunique()
        report["groups_after_dedup"] = int(len(sizes))
        report["groups_joining_several_patients"] = int((merged > 1).sum())
    return report


def render_report(report: dict[str, Any]) -> str:
    lines = [
        f"source   {report['source']} ({report['kind']})",
        f"samples  {report['samples']} (image files: {report['image_files']}, missing: {report['missing_image_files']}, "
        f"unreadable: {len(report['unreadable_files'])})",
        f"lesions  {report['lesions']['count']} findings ("
        + ", ".join(f"{k} {v}" for k, v in report["lesions"]["pathology"].items()) + ")",
        f"groups   {report['groups']} split groups, {report['patients']} patients, {report['exams']} exams"
        + (" (images per exam: " + ", ".join(f"{k}: {v}" for k, v in report["images_per_exam"].items()) + ")"
           if report["images_per_exam"] else ""),
    ]
    for key in ("pathology", "abnormality", "lesion_type", "laterality", "view", "density", "birads"):
        if report[key]:
            lines.append(f"{key:<12} " + ", ".join(f"{k} {v}" for k, v in report[key].items()))
    for task, counts in report["tasks"].items():
        lines.append(f"task {task:<24} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    nr = report["lesions_without_roi"]
    if nr["count"]:
        lines.append(
            f"lesions without ROI (no coordinates, no mask file), left out of lesion tasks: {nr['count']} "
            f"({', '.join(nr['samples'][:10])}{' ...' if nr['count'] > 10 else ''})"
        )
    lines += [f"unreadable: {line}" for line in report["unreadable_files"]]
    if report["missing_image_files"]:
        lines.append(f"missing image files: {report['missing_image_files']} (e.g. {report['missing_examples'][0]})")
    if "groups_after_dedup" in report:
        lines.append(f"near-duplicates: {report['groups_joining_several_patients']} groups join several patients' images")
    for name, c in report["by_file"].items():
        lines.append(f"file {name}: {c['rows']} rows, {c['patients']} patients, "
                     + ", ".join(f"{k} {v}" for k, v in c["pathology"].items()))
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def _by_source_file(df) -> dict[str, dict[str, Any]]:  # noqa: ANN001
    """Per description file (CBIS-DDSM CSVs): rows, patients and the source's own pathology labels."""
    meta = [json.loads(m) for m in df["meta"]]
    if not meta or not all("csv" in m for m in meta):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for m, patient in zip(meta, df["patient_id"]):
        entry = out.setdefault(m["csv"], {"rows": 0, "patients": set(), "pathology": {}})
        entry["rows"] += 1
        entry["patients"].add(patient)
        label = m.get("pathology_original", "")
        entry["pathology"][label] = entry["pathology"].get(label, 0) + 1
    return {k: {**v, "patients": len(v["patients"]), "pathology": dict(sorted(v["pathology"].items()))}
            for k, v in sorted(out.items())}


def _unreadable(df, missing: set[str], known: list[str]) -> list[str]:  # noqa: ANN001
    """One line per image or mask file whose header cannot be read; every file is tried."""
    from mammolens.io import read_meta

    reported = "\n".join(known)
    out = []
    paths = [*df["path"], *df.loc[df["mask_path"] != "", "mask_path"]]
    for path in dict.fromkeys(paths):
        if path in missing or path in reported:
            continue
        try:
            read_meta(path)
        except MammolensError as exc:
            out.append(str(exc))
    return out


def _exam_sizes(df) -> dict[str, int]:  # noqa: ANN001
    """How many exams have 1, 2, 4, ... images (a screening exam is four views)."""
    sizes = df.loc[df["exam_id"] != ""].groupby("exam_id").size().value_counts().sort_index()
    return {str(k): int(v) for k, v in sizes.items()}


def _counts(series) -> dict[str, int]:  # noqa: ANN001
    vc = series[series != ""].value_counts()
    return {str(k): int(v) for k, v in sorted(vc.items(), key=lambda kv: (-kv[1], kv[0]))}


__all__ = ["inspect_source", "render_report"]
