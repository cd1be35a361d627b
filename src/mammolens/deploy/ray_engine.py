"""`mammolens predict --engine ray`: the same Predictor and row format, spread over Ray Data actors.

The file list becomes a Ray Dataset; ``map_batches`` runs a pool of actors, each of which loads the
model once and scores batches with the very function the local engine uses (so rows are identical);
each actor reads its own files, so decoding runs in parallel too. Results land as Parquet shards
in ``<out>.shards/``, then merge with rows from earlier runs into the final CSV (written atomically).
With heatmaps, each actor writes its overlay PNGs into the one folder, each atomically (a unique
temporary name renamed into place), so no reader or crash ever sees half a file.

Scaling out: started here with a local Ray of ``num_cpus`` CPUs; on a cluster, ``ray.init(address=...)``
(``RAY_ADDRESS``) makes the same code place actors on every node. Per node: the actors, each with
its own model copy and reads. Shared: the file list (driver), the bundle and the images, which must
sit on storage every node reads (NFS or object storage), and the shard folder, which must be too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mammolens.deploy.batch import (
    OTHER,
    ROI_COLUMNS,
    BatchReport,
    check_heatmaps,
    in_order,
    plan,
    read_rows,
    row_key,
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
                others: Sequence[Any] | None = None, heatmaps: str | Path | None = None, backend: str = "torch",
                batch_size: int = 16, force: bool = False, num_cpus: int = 2, actors: int | None = None,
                threads_per_actor: int = 1, guard_band: float | None = None) -> BatchReport:  # fmt: skip
    """Score ``files`` (with one ``rois`` entry each for a lesion bundle, one ``others`` entry each for
    a bilateral one) into the CSV ``out`` with Ray Data; skips what is already scored there unless
    ``force``. ``heatmaps``: each actor writes its overlay PNGs there (atomically, so never half a file).
    ``guard_band``: as ``Predictor.load``'s; every actor loads the int8 file and its fp32 twin."""
    import csv
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
    done = {} if force else read_rows(out, header)
    keep = {k: r for k, r in done.items() if not r["error"]}
    todo = [u for u in units if unit_key(*u) not in keep]
    shards = out.with_name(out.name + ".shards")
    shutil.rmtree(shards, ignore_errors=True)
    start = time.perf_counter()
    if todo:
        with ray_session(num_cpus) as ray:
            class Scorer:
                """One per actor: loads the model once, then scores batch after batch."""

                def __init__(self) -> None:
                    self.predictor = load(threads=threads_per_actor)

                def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
                    from mammolens.deploy.batch import _score

                    files = [Path(f) for f in batch["file"]]
                    rois = zip(batch["x"], batch["y"], batch["r"]) if lesions else [None] * len(files)
                    others = [str(o) for o in batch[OTHER]] if pairs else [None] * len(files)
                    rows = _score(self.predictor, list(zip(files, rois, others)), header, heatmap_dir)
                    return {k: [r[k] for r in rows] for k in header}

            items = [{"file": str(f), **(dict(zip(ROI_COLUMNS, map(float, roi))) if lesions else {}),
                      **({OTHER: str(other)} if pairs else {})} for f, roi, other in todo]  # fmt: skip
            ds = ray.data.from_items(items)
            # a fixed pool of n actors (``concurrency=`` is deprecated since Ray 2.51)
            pool = ray.data.ActorPoolStrategy(size=actors or num_cpus)
            scored = ds.map_batches(Scorer, batch_size=batch_size, batch_format="numpy", compute=pool, num_cpus=1)
            scored.write_parquet(str(shards))
        import pandas as pd

        new = pd.read_parquet(shards).fillna("").astype(str).to_dict("records")
        keep.update({row_key(r): r for r in new})
    with atomic_open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows({k: r[k] for k in header} for r in in_order(keep, units))
    failed = sum(1 for u in todo if keep.get(unit_key(*u), {}).get("error"))
    return BatchReport(out=out, total=len(units), skipped=len(units) - len(todo), scored=len(todo) - failed,
                       failed=failed, seconds=round(time.perf_counter() - start, 3))  # fmt: skip
