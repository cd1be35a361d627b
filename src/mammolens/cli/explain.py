"""``mammolens explain`` (overlays and panels per image) and ``mammolens explain-eval`` (localisation).

Heavy imports (torch, the CAM engine, pandas) happen inside the commands so ``mammolens --help``
stays fast. Every user mistake is checked before anything is written.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional

import typer

from mammolens.cli.options import FreshOpt, KindOpt, OptionOpt, parse_options
from mammolens.engine.run_dir import claim_output, open_output
from mammolens.utils.errors import ConfigError, MammolensError


def _methods(items: list[str] | None, default: tuple[str, ...]) -> list[str]:
    names = [n.strip() for item in (items or []) for n in item.split(",") if n.strip()]
    return names or list(default)


def _stems(paths: list[Path]) -> list[str]:
    """Output names: the file's stem, numbered when one file comes with several lesions; two different files
    with one stem would overwrite each other's outputs, so they are refused."""
    by_stem: dict[str, set[Path]] = {}
    for path in paths:
        by_stem.setdefault(path.stem, set()).add(path.resolve())
    clash = sorted(stem for stem, files in by_stem.items() if len(files) > 1)
    if clash:
        raise ConfigError(f"two images share the name {clash[0]!r}: their outputs would overwrite each other")
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        k = seen[path.stem] = seen.get(path.stem, 0) + 1
        stems.append(path.stem if paths.count(path) == 1 else f"{path.stem}_lesion{k}")
    return stems


def _target(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def _rethrow(path: Path, exc: MammolensError) -> MammolensError:
    """The same error, naming the image it is about."""
    if exc.path is not None:
        return exc
    return type(exc)(str(exc), path=path)


def register(app: typer.Typer) -> None:
    @app.command("explain")
    def explain(
        bundle_path: Path = typer.Argument(..., metavar="BUNDLE", help="Bundle directory."),
        images: Optional[list[Path]] = typer.Argument(None, help="Original images (any format mammolens reads)."),
        out: Path = typer.Option(..., "--out", help="Output folder for overlays and panels."),
        method: str = typer.Option("gradcam", "--method", help="CAM method (see docs/explain.md)."),
        layer: Optional[list[str]] = typer.Option(None, "--layer", help="Target module name, repeatable."),
        target: Optional[str] = typer.Option(None, "--target", help="Class index or name (default: positive / top class)."),
        rois: Optional[Path] = typer.Option(None, "--rois", help="CSV of file, x, y, r (original-image pixels), one row per lesion, as for `predict`: lists the images instead of IMAGES (lesion bundles crop around each)."),
        laterality: str = typer.Option("", "--laterality", help="L or R when the file does not say."),
        opacity: float = typer.Option(0.5, help="Overlay opacity at full heat."),
        top: float = typer.Option(5.0, "--top", help="Outline the hottest k % of the map (0: no outline)."),
        fresh: bool = FreshOpt,
    ) -> None:
        """Heatmap overlays on the ORIGINAL films, one panel per image (original | overlay | decision)."""
        from mammolens.deploy.batch import read_rois
        from mammolens.explain.api import (
            explain_preprocessed,
            preprocess_for,
            resolve_target,
            sample_descriptors,
        )
        from mammolens.explain.layers import resolve_layers
        from mammolens.explain.methods import CAM_METHODS
        from mammolens.explain.overlay import overlay_png, panel_png
        from mammolens.io import read_image
        from mammolens.bundle import load_bundle
        from mammolens.evaluate.predict import leaf_bundles
        from mammolens.preprocess.sample import read_film
        from mammolens.utils.atomic import write_json

        def read(path: Path) -> tuple[Any, str, float | None]:  # pixels, laterality, pixel side in mm
            return read_film(lambda _path, _frame: read_image(path), str(path))

        if bool(images) == (rois is not None):
            raise ConfigError("give image files (IMAGES) or --rois ROIS.csv, one of the two")
        claim_output(out, "explain", fresh=fresh)
        bundle = load_bundle(bundle_path)  # a model bundle or an ensemble (cv's ensemble/)
        CAM_METHODS.get(method)
        for leaf in leaf_bundles(bundle):
            resolve_layers(leaf.model, layer or None)
        wanted = _target(target)
        resolve_target(bundle, wanted)
        if rois is not None:
            files, circles = read_rois(rois)
            jobs = [(path, [list(circle)]) for path, circle in zip(files, circles)]
        else:
            jobs = [(path, None) for path in images]
        stems = _stems([path for path, _ in jobs])
        for path, circles in jobs:  # every image must read and preprocess before anything is written
            try:
                pixels, side, pixel_mm = read(path)
                preprocess_for(bundle, pixels, circles, laterality or side, pixel_mm)
            except MammolensError as exc:
                raise _rethrow(path, exc) from None
        open_output(out, "explain", fresh=fresh)
        summary: dict[str, Any] = {}
        for (path, circles), stem in zip(jobs, stems):
            pixels, side, pixel_mm = read(path)
            pre, geometry = preprocess_for(bundle, pixels, circles, laterality or side, pixel_mm)
            e = explain_preprocessed(bundle, pre.pixels, geometry, method=method, layer=layer or None, target=wanted,
                                     descriptors=sample_descriptors(bundle, pre))  # fmt: skip
            outline = top or None
            _write_bytes(out / f"{stem}_overlay.png", overlay_png(pixels, e.heatmap, opacity=opacity, contour_top=outline, rois=circles))
            if len(e.per_backbone) > 1:
                for name, heat in e.per_backbone.items():
                    png = overlay_png(pixels, heat, opacity=opacity, contour_top=outline, rois=circles)
                    _write_bytes(out / f"{stem}_overlay_{name}.png", png)
            panel = panel_png(
                pixels, e.heatmap, probabilities=e.probabilities, decision=e.decision, title=path.name,
                method=method, target=e.target, rois=circles, contour_top=outline,
            )  # fmt: skip
            _write_bytes(out / f"{stem}_panel.png", panel)
            summary[stem] = {
                "method": e.method, "target": e.target, "layers": e.layers, "decision": e.decision,
                "probabilities": e.probabilities, "branch_weights": e.branch_weights,
            }  # fmt: skip
            typer.echo(f"{path.name}: {e.decision}  P({e.target})={e.probabilities[e.target]:.3f}  -> {out / (stem + '_panel.png')}")
        write_json(out / "explanations.json", summary)

    @app.command("explain-eval")
    def explain_eval(
        bundle_path: Path = typer.Argument(
            ..., metavar="BUNDLE",
            help="Bundle directory, or a `mammolens cv` run: each image is then scored by the fold model that held it out.",
        ),
        source: str = typer.Argument(..., help="Dataset with marked findings (MIAS circles, CBIS-DDSM masks)."),
        out: Path = typer.Option(..., "--out", help="Output folder: localisation CSVs and HTML page."),
        method: Optional[list[str]] = typer.Option(None, "--method", help="CAM method(s): repeatable or comma-separated (default: the standard set)."),
        kind: Optional[str] = KindOpt,
        option: Optional[list[str]] = OptionOpt,
        top: float = typer.Option(5.0, "--top", help="k of the top-k % region of the map (of the model's field of view)."),
        limit: int = typer.Option(0, "--limit", help="Score at most this many images (0: all)."),
        name: Optional[str] = typer.Option(None, "--name", help="Model label in the table (default: bundle folder)."),
        fresh: bool = FreshOpt,
        strict: bool = typer.Option(False, "--strict", help="Refuse SOURCE when it holds samples or women the bundle was trained or validated on (default: warn)."),
    ) -> None:
        """Pointing game, energy inside and top-k IoU per method, against centre-prior and breast-mask maps.

        Writes localisation.csv (means, 95 % CIs), localisation_per_image.csv, localisation.html
        (table + overlays of the first method, embedded) and gallery.png (those overlays).
        """
        from mammolens.bundle import load_bundle
        from mammolens.data.adapters.base import load_source
        from mammolens.data.tasks import derive_task
        from mammolens.engine.crossval import RECORD, held_out_bundles
        from mammolens.explain.evaluation import DEFAULT_METHODS, evaluate_localisation, evaluate_out_of_fold
        from mammolens.explain.localisation import summarise
        from mammolens.explain.methods import CAM_METHODS
        from mammolens.explain.overlay import gallery_png
        from mammolens.evaluate.overlap import refuse_if_strict
        from mammolens.explain.report import localisation_html
        from mammolens.utils.atomic import write_text

        folds = held_out_bundles(bundle_path) if (bundle_path / RECORD).is_file() else None
        bundle = load_bundle(next(iter(folds)) if folds else bundle_path)  # a model bundle or an ensemble
        claim_output(out, "explain-eval", fresh=fresh)
        chosen = _methods(method, DEFAULT_METHODS)
        for m in chosen:
            CAM_METHODS.get(m)
        if not 0 < top <= 100:
            raise ConfigError(f"--top must be in (0, 100], got {top}")
        opts = parse_options(option)
        manifest = load_source(source, kind, **opts).manifest
        try:
            manifest, _ = derive_task(manifest, bundle.task, allow_missing_classes=True)
        except MammolensError:
            pass  # a source without this task's labels is still scored on its findings
        records = manifest.df.to_dict("records")
        with_findings = [r for r in records if r.get("rois", "[]") not in ("", "[]") or r.get("mask_path")]
        if limit:
            with_findings = with_findings[:limit]
        if not with_findings:
            raise ConfigError(f"{source}: no image with a marked finding (ROI circle or mask) to score")
        warnings = _training_overlap(bundle, folds, with_findings)
        refuse_if_strict(warnings, strict)
        for line in warnings:
            typer.echo(f"mammolens: WARNING: {line}", err=True)
        label = name or bundle_path.resolve().name
        if label == "bundle":
            label = bundle_path.resolve().parent.name

        def step(i: int, n: int) -> None:
            if i % 10 == 0:
                typer.echo(f"  {i + 1}/{n}", err=True)

        if folds:
            result = evaluate_out_of_fold(folds, with_findings, model_name=label, methods=chosen, top_percent=top,
                                          progress=step)
        else:
            result = evaluate_localisation(bundle, with_findings, model_name=label, methods=chosen, top_percent=top,
                                           progress=step)
        if not result.rows:
            raise ConfigError(f"{source}: none of the {len(with_findings)} images could be scored: {result.skipped[:1]}")
        metrics = [k for k in result.rows[0] if k not in ("model", "method", "sample_id", "group", "pathology")]
        table = summarise(result.rows, metrics)
        open_output(out, "explain-eval", fresh=fresh)
        write_text(out / "localisation_per_image.csv", _csv(result.rows))
        write_text(out / "localisation.csv", _csv(table))
        notes = [
            f"{'cv run (each image scored by the fold model that held it out)' if folds else 'bundle'} {bundle_path} "
            f"(task {bundle.task}, model {_model_name(bundle)}), source {source}",
            (
                f"Scores on the original film inside the model's field of view; top-k = {top:g} %; "
                "95 % bootstrap intervals over patient groups."
            ),
        ] + [f"WARNING: {w}" for w in warnings] + [f"skipped: {s}" for s in result.skipped]
        write_text(out / "localisation.html", localisation_html(f"Localisation: {label}", table, metrics, result.tiles, notes))
        if result.tiles:
            _write_bytes(out / "gallery.png", gallery_png(result.tiles, columns=4))
        for row in table:
            cells = "  ".join(f"{m} {row[m]:.3f}" for m in metrics)
            typer.echo(f"{row['model']:<24} {row['method']:<13} n={row['images']:<4} {cells}")
        typer.echo(f"wrote {out / 'localisation.csv'} and {out / 'localisation.html'}")
        if result.skipped:
            typer.echo(f"skipped {len(result.skipped)} image(s); see the HTML page", err=True)


def _model_name(bundle: Any) -> str:
    """The architecture's name; an ensemble's members' names."""
    from mammolens.evaluate.predict import leaf_bundles

    names = sorted({str(leaf.model.config.get("name")) for leaf in leaf_bundles(bundle)})
    return names[0] if getattr(bundle, "members", None) is None else f"ensemble of {', '.join(names)}"


def _training_overlap(bundle: Any, folds: dict[Path, set[str]] | None, records: list[dict]) -> list[str]:
    """``evaluate.overlap.training_overlap`` of the images each model scores: all of them for a bundle,
    for a cv run each fold's own (read from its bundle.json, without loading the model)."""
    import json
    from types import SimpleNamespace

    from mammolens.evaluate.overlap import training_overlap

    if not folds:
        return training_overlap(bundle, [r["sample_id"] for r in records], [r["group"] for r in records])
    lines = []
    for path, ids in folds.items():
        part = [r for r in records if r["sample_id"] in ids]
        provenance = json.loads((path / "bundle.json").read_text(encoding="utf-8")).get("provenance") or {}
        found = training_overlap(SimpleNamespace(provenance=provenance), [r["sample_id"] for r in part],
                                 [r["group"] for r in part])  # fmt: skip
        lines += [f"{path.parent.name}: {line}" for line in found if part]
    return lines


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    return buffer.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    from mammolens.utils.atomic import atomic_open

    with atomic_open(path, "wb") as fh:
        fh.write(data)
