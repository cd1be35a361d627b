"""`mammolens predict --engine ray`: the same Predictor and row format, spread over Ray Data actors.

The file list becomes a Ray Dataset; ``map_batches`` runs a pool of actors, each of which loads the
model once and scores batches with the very function the local engine uses (so rows are identical);
each actor reads its own files, so decoding runs in parallel too. Each actor writes every batch it
scores as a CSV shard of its own in ``<out>.shards/`` (atomically and durably, as it goes), so a run
killed at any point keeps every finished batch and a re-run scores only the rest; at the end the
shards merge with rows from earlier runs into the final CSV (``batch.finish``) and are removed.
With heatmaps, each actor writes its overlay PNGs into the one folder, each atomically (a unique
temporary name renamed into place), so no reader or crash ever sees half a file.

Scaling out: started here with a local Ray of ``num_cpus`` CPUs; on a cluster, ``ray.init(address=...)``
(``RAY_ADDRESS``) makes the same code place actors on every node. Per node: the actors, each with
its own model copy and reads. Shared: the file list (driver), the bundle and the images, which must
sit on storage every node reads (NFS or object storage), and the shard folder, which must be too.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mammolens.deploy.batch import (
    OTHER,
    ROI_COLUMNS,
    BatchReport,
    check_heatmaps,
    finish,
    finished,
    plan,
    read_rows,
    row_key,
    scored_by,
    shards_dir,
    unit_key,
)
from mammolens.utils.atomic import atomic_open
from mammolens.utils.errors import ConfigError


@contextlib.contextmanager
def ray_session(num_cpus: int = 2) -> Iterator[Any]:
    """Ray, ready: an already initialised Ray is used as it is; otherwise the cluster at RAY_ADDRESS,
    or a local one of ``num_cpus`` CPUs, is joined here and left on the way out."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'ray[data]'") from None
    if ray.is_initialized():
        yield ray
        return
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             address=os.environ.get("RAY_ADDRESS") or "local")  # fmt: skip
    try:
        yield ray
    finally:
        ray.shutdown()


def predict_ray(bundle: str | Path, files: Sequence[Path], out: str | Path, *, rois: Sequence[Any] | None = None,
                others: Sequence[Any] | None = None, heatmaps: str | Path | None = None, backend: str | None = None,
                batch_size: int = 16, fresh: bool = False, num_cpus: int = 2, actors: int | None = None,
                threads_per_actor: int = 1, guard_band: float | None = None) -> BatchReport:  # fmt: skip
    """Score ``files`` (with one ``rois`` entry each for a lesion bundle, one ``others`` entry each for
    a bilateral one) into the CSV ``out`` with Ray Data; skips what is already scored there, or in the
    shards or journal of an interrupted run, unless ``fresh``. ``heatmaps``: each actor writes its
    overlay PNGs there (atomically, so never half a file). ``guard_band``: as ``Predictor.load``'s;
    every actor loads the int8 file and its fp32 twin."""
    import functools

    from mammolens.deploy.predictor import Predictor

    if actors is not None and actors < 1:
        raise ConfigError(f"--actors must be at least 1, got {actors}")
    num_cpus = max(num_cpus, actors or 0)  # each actor holds one CPU: fewer CPUs than actors would wait forever
    out = Path(out)
    # the driver and every actor build the same Predictor; the driver's load fails here, not in every actor
    load = functools.partial(Predictor.load, str(bundle), backend=backend, batch_size=batch_size, guard_band=guard_band)
    predictor = load()
    spec = predictor.spec
    header, units = plan(spec, files, rois, others)
    if heatmaps is not None:
        check_heatmaps(predictor)
    lesions, pairs = rois is not None, others is not None
    heatmap_dir = None if heatmaps is None else str(heatmaps)
    done = finished(out, header, units, spec.model_id, fresh=fresh)
    keep = {k: r for k, r in done.items() if not r["error"]}
    todo = [u for u in units if unit_key(*u) not in keep]
    shards = str(shards_dir(out))
    start = time.perf_counter()
    if todo:
        with ray_session(num_cpus) as ray:
            class Scorer:
                """One per actor: loads the model once, then scores batch after batch."""

                def __init__(self) -> None:
                    self.predictor = load(threads=threads_per_actor)

                def __call__(self, batch: dict[str, Any]) -> dict[str, list[int]]:  # the count: Ray wants columns back
                    from mammolens.deploy.batch import _score

                    files = [Path(f) for f in batch["file"]]
                    rois = zip(batch["x"], batch["y"], batch["r"]) if lesions else [None] * len(files)
                    others = [str(o) for o in batch[OTHER]] if pairs else [None] * len(files)
                    rows = _score(self.predictor, list(zip(files, rois, others)), header, heatmap_dir)
                    write_shard(shards, header, rows)
                    return {"rows": [len(rows)]}

            items = [{"file": str(f), **(dict(zip(ROI_COLUMNS, map(float, roi))) if lesions else {}),
                      **({OTHER: str(other)} if pairs else {})} for f, roi, other in todo]  # fmt: skip
            ds = ray.data.from_items(items)
            # a fixed pool of n actors (``concurrency=`` is deprecated since Ray 2.51)
            pool = ray.data.ActorPoolStrategy(size=actors or num_cpus)
            scored = ds.map_batches(Scorer, batch_size=batch_size, batch_format="numpy", compute=pool, num_cpus=1)
            scored.materialize()  # runs the actors; their rows are in the shards
        new = {}
        for shard in Path(shards).glob("*.csv"):
            new.update(read_rows(shard, header))
        missing = sum(unit_key(*u) not in new for u in todo)
        if missing:  # on a cluster: actors wrote to a disk the driver does not read
            raise ConfigError(f"the shards miss {missing} of the {len(todo)} units the actors scored: on a cluster "
                              "the shard folder must be on storage every node writes and the driver reads",
                              path=shards)  # fmt: skip
        keep.update(new)
    finish(out, header, keep, units)
    failed = sum(1 for u in todo if keep.get(unit_key(*u), {}).get("error"))
    return BatchReport(out=out, total=len(units), skipped=len(units) - len(todo), scored=len(todo) - failed,
                       failed=failed, seconds=round(time.perf_counter() - start, 3), model=scored_by(predictor))  # fmt: skip


def write_shard(folder: str | Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    """One batch's rows as a CSV of their own, named by what they score (a retried task rewrites the
    same file), written atomically and fsynced: a kill leaves whole shards or none."""
    name = hashlib.sha256("\n".join(repr(row_key(r)) for r in rows).encode()).hexdigest()[:16]
    path = Path(folder) / f"{name}.csv"
    with atomic_open(path, "w", durable=True, newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path
