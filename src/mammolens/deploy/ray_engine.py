"""`mammolens predict --engine ray`: the same Predictor and row format, spread over Ray Data actors.

The file list becomes a Ray Dataset; ``map_batches`` runs a pool of actors, each of which loads the
model once and scores batches with the very function the local engine uses (so rows are identical);
each actor reads its own files, so decoding runs in parallel too. Results land as Parquet shards
in ``<out>.shards/``, then merge with rows from earlier runs into the final CSV (written atomically).

Scaling out: started here with a local Ray of ``num_cpus`` CPUs; on a cluster, ``ray.init(address=...)``
(``RAY_ADDRESS``) makes the same code place actors on every node. Per node: the actors, each with
its own model copy and reads. Shared: the file list (driver), the bundle and the images, which must
sit on storage every node reads (NFS or object storage), and the shard folder, which must be too.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mammolens.atomic import atomic_open
from mammolens.deploy.batch import BatchReport, columns, read_rows
from mammolens.errors import ConfigError


def predict_ray(bundle: str | Path, files: Sequence[Path], out: str | Path, *, backend: str = "torch",
                batch_size: int = 16, force: bool = False, num_cpus: int = 2, actors: int | None = None,
                threads_per_actor: int = 1) -> BatchReport:  # fmt: skip
    """Score ``files`` into the CSV ``out`` with Ray Data; skips files already scored there unless ``force``."""
    import csv

    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'ray[data]'") from None
    from mammolens.deploy.predictor import Predictor

    out = Path(out)
    spec = Predictor.load(bundle, backend=backend).spec  # fail here, not in every actor
    if spec.needs_roi:
        raise ConfigError(f"model {spec.model_id} scores lesion crops and needs each lesion's ROI; "
                          "batch prediction over whole films does not apply to it")  # fmt: skip
    header = columns(spec.classes)
    done = {} if force else read_rows(out, header)
    keep = {f: r for f, r in done.items() if not r["error"]}
    todo = [str(f) for f in files if str(f) not in keep]
    shards = out.with_name(out.name + ".shards")
    shutil.rmtree(shards, ignore_errors=True)
    start = time.perf_counter()
    if todo:
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     address=os.environ.get("RAY_ADDRESS") or "local")  # fmt: skip
        try:
            bundle_path = str(bundle)

            class Scorer:
                """One per actor: loads the model once, then scores batch after batch."""

                def __init__(self) -> None:
                    self.predictor = Predictor.load(bundle_path, backend=backend, threads=threads_per_actor,  # type: ignore[arg-type]
                                                    batch_size=batch_size)  # fmt: skip

                def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
                    from mammolens.deploy.batch import _score

                    rows = _score(self.predictor, [Path(f) for f in batch["file"]], header, None)
                    return {k: [r[k] for r in rows] for k in header}

            ds = ray.data.from_items([{"file": f} for f in todo])
            scored = ds.map_batches(Scorer, batch_size=batch_size, batch_format="numpy",
                                    concurrency=actors or num_cpus, num_cpus=1)  # fmt: skip
            scored.write_parquet(str(shards))
        finally:
            if started_here:
                ray.shutdown()
        import pandas as pd

        new = pd.read_parquet(shards).fillna("").astype(str).to_dict("records")
        keep.update({r["file"]: r for r in new})
    order = {str(f): i for i, f in enumerate(files)}
    ordered = sorted(keep.values(), key=lambda r: (order.get(r["file"], len(order)), r["file"]))
    with atomic_open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows({k: r[k] for k in header} for r in ordered)
    failed = sum(1 for f in todo if keep.get(f, {}).get("error"))
    return BatchReport(out=out, total=len(files), skipped=len(files) - len(todo), scored=len(todo) - failed,
                       failed=failed, seconds=round(time.perf_counter() - start, 3))  # fmt: skip
