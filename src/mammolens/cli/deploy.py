"""``mammolens export | predict | serve``: the ways a bundle leaves the lab.

Nothing heavy is imported here at module level: ``mammolens --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from mammolens.utils.errors import ConfigError

BackendOpt = typer.Option(None, "--backend", help="torch (runs a bundle folder) or onnxruntime (an exported .onnx file, or the bundle's model.onnx, else model.int8.onnx); default: onnxruntime for an .onnx file, torch otherwise.")
GuardBandOpt = typer.Option(None, "--guard-band", help="int8 ONNX (BUNDLE = its .onnx file, --backend onnxruntime): re-score in fp32 the films within this factor x the export's calibration error of the threshold.")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
    app.command("predict")(predict)
    app.command("serve")(serve)


def export(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    int8: bool = typer.Option(False, "--int8", help="Static QDQ int8 (needs --calibration)."),
    calibration: Optional[str] = typer.Option(None, "--calibration", help="Dataset source (folder or 'synthetic') to calibrate int8 on: the training data."),
    split: Optional[Path] = typer.Option(None, "--calibration-split", help="Split file of SOURCE: calibrate on its train part only."),
    samples: int = typer.Option(256, "--calibration-samples", help="Images drawn from the source (its train part with --calibration-split) for calibration."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output file (default: BUNDLE/model.onnx or model.int8.onnx)."),
    exporter: str = typer.Option("dynamo", "--exporter", help="dynamo (torch.export, opset 18, faster graphs) or torchscript (opset 17, exports faster)."),
    calibration_method: Optional[str] = typer.Option(None, "--calibration-method", help="int8 calibration: minmax, percentile or entropy (default: the measured best, see docs/deploy.md)."),
    float_layers: Optional[str] = typer.Option(None, "--float-layers", help="int8: comma-separated layer groups kept in float (stem, depthwise, head; 'none'); default: the measured best."),
    float_budget: int = typer.Option(0, "--float-budget", help="int8: sensitivity search on the calibration images, keeping up to K more node groups in float (0: no search)."),
    float_target: float = typer.Option(0.0, "--float-target", help="int8 search: stop once the calibration images' max |delta p| vs fp32 is at or below this."),
    fp32_fallback: bool = typer.Option(False, "--fp32-fallback", help="int8: also write the fp32 file beside it, for `predict --guard-band`."),
) -> None:
    """Export a bundle to ONNX (dynamic batch axis, preprocessing spec and classes as metadata)."""
    import dataclasses

    from mammolens.deploy.export import DEFAULT_RECIPE, FORMATS, export_onnx

    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown export format {fmt!r}; known formats: {', '.join(FORMATS)}")
    recipe = DEFAULT_RECIPE
    if calibration_method is not None:
        recipe = dataclasses.replace(recipe, calibrate=calibration_method)
    if float_layers is not None:
        groups = () if float_layers.strip() == "none" else tuple(g.strip() for g in float_layers.split(",") if g.strip())
        recipe = dataclasses.replace(recipe, float_layers=groups)
    recipe = dataclasses.replace(recipe, float_budget=float_budget, float_target=float_target)
    report = export_onnx(bundle, out, int8=int8, calibration=calibration, calibration_split=split,
                         calibration_samples=samples, exporter=exporter, recipe=recipe, fp32_fallback=fp32_fallback)
    typer.echo(json.dumps(report.summary(), indent=2))


def predict(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    inputs: Optional[list[Path]] = typer.Argument(None, help="Image files and folders (DICOM, PNG, PGM, TIFF, JPEG)."),
    out: Path = typer.Option(..., "--out", help="Results CSV (one row per image, or per lesion with --rois)."),
    rois: Optional[Path] = typer.Option(None, "--rois", help="Lesion bundles: CSV of file, x, y, r (original-image pixels), one row per lesion; lists the images instead of INPUT."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="Bilateral bundles: CSV of file, other (the same woman's other film; empty for none); lists the images instead of INPUT."),
    heatmaps: Optional[Path] = typer.Option(None, "--heatmaps", help="Folder for heatmap overlay PNGs."),
    resume: bool = typer.Option(False, "--resume", help="Continue an earlier run into --out: what is done is skipped, failed rows are tried again."),
    fresh: bool = typer.Option(False, "--fresh", help="Score every image again, replacing an earlier run's results in --out."),
    backend: Optional[str] = BackendOpt,
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (Ray Data, local Ray)."),
    actors: Optional[int] = typer.Option(None, "--actors", min=1, help="--engine ray: actors, each with its own model copy (default 2)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    guard_band: Optional[float] = GuardBandOpt,
) -> None:
    """Score images into a CSV; --resume continues an interrupted run (what is done is skipped)."""
    from mammolens.deploy.batch import leftovers, list_images, predict_files, read_pairs, read_rois
    from mammolens.deploy.predictor import Predictor

    if resume and fresh:
        raise ConfigError("--resume continues the run in --out and --fresh replaces it: choose one")
    held = leftovers(out)
    if held and not (resume or fresh):
        raise ConfigError(f"already holds results ({', '.join(p.name for p in held)}); pass --resume to continue "
                          "(what is done is skipped), --fresh to score every image again, or --out another file",
                          path=out)
    listed = [flag for flag, value in (("--rois", rois), ("--pairs", pairs)) if value is not None]
    if len(listed) > 1:
        raise ConfigError("--rois (lesion bundles) and --pairs (bilateral bundles) do not go together")
    if listed and inputs:
        raise ConfigError(f"{listed[0]} lists the images (its file column): give no INPUT with it")
    if not listed and not inputs:
        raise ConfigError("give image files or folders (INPUT), --rois ROIS.csv for a lesion bundle, "
                          "or --pairs PAIRS.csv for a bilateral bundle")  # fmt: skip
    lesions = others = None
    if rois is not None:
        files, lesions = read_rois(rois)
    elif pairs is not None:
        files, others = read_pairs(pairs)
    else:
        files = list_images(inputs or [])
    if engine == "ray":
        from mammolens.deploy.ray_engine import predict_ray

        report = predict_ray(bundle, files, out, rois=lesions, others=others, heatmaps=heatmaps, backend=backend,
                             batch_size=batch_size, fresh=fresh, guard_band=guard_band, actors=actors)  # fmt: skip
    elif engine == "local":
        if actors is not None:
            raise ConfigError("--actors is for --engine ray")
        predictor = Predictor.load(bundle, backend=backend, batch_size=batch_size, guard_band=guard_band)  # type: ignore[arg-type]
        report = predict_files(predictor, files, out, rois=lesions, others=others, heatmaps=heatmaps, fresh=fresh,
                               progress=progress)  # fmt: skip
    else:
        raise ConfigError(f"--engine: unknown engine {engine!r}; known engines: local, ray")
    typer.echo(f"{report.total} {'images' if lesions is None else 'lesions'}: {report.scored} scored, {report.failed} failed, "
               f"{report.skipped} already done -> {report.out} ({report.seconds} s; model {report.model})")  # fmt: skip


def serve(
    bundle: Path = typer.Argument(..., help="Bundle directory."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    token: Optional[str] = typer.Option(None, "--token", envvar="MAMMOLENS_TOKEN", help="Require 'Authorization: Bearer TOKEN'."),
    max_upload_mb: float = typer.Option(64.0, "--max-upload-mb", help="Limit on one request's files together."),
    timeout_s: float = typer.Option(60.0, "--timeout", help="Per-request time limit (seconds)."),
    max_in_flight: int = typer.Option(4, "--max-in-flight", min=1, help="Predictions at once; beyond: 503 with Retry-After."),
    backend: Optional[str] = BackendOpt,
    guard_band: Optional[float] = GuardBandOpt,
) -> None:
    """Serve the bundle over HTTP: a REST API and a web page for clinicians."""
    import uvicorn

    from mammolens.deploy.service import ServiceConfig, check_exposure, create_app, logging_config

    check_exposure(host, token)  # before the model loads: a refusal costs nothing
    config = ServiceConfig(token=token, max_upload_bytes=int(max_upload_mb * 1024 * 1024), timeout_s=timeout_s,
                           max_in_flight=max_in_flight)  # fmt: skip
    app = create_app(bundle, config, backend=backend, guard_band=guard_band)
    uvicorn.run(app, host=host, port=port, log_config=logging_config(), access_log=True)
