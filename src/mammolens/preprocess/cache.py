"""On-disk cache of preprocessed arrays, built by parallel worker processes.

Decoding a 4500x2800 DICOM and cropping it costs far more than training on the 224x224 result,
so each image is preprocessed once and kept as a small uint16 ``.npy``. An entry is keyed by
what its pixels depend on: the source file's bytes (and path and frame), the row's ROI, mask
and laterality, the loader (its arguments and code), and the pipeline config and the code that
runs it (``Pipeline.config_hash``). Anything stale or damaged is rebuilt, never used.

Layout: ``root/<pipeline hash>/index.json`` and ``root/<pipeline hash>/arrays/<key>.npy``, so
one root can hold several preprocessings (224 and 512, say) side by side. One build at a time
per root: the index is rewritten by whoever builds.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import inspect
import io
import json
import logging
import multiprocessing
import os
import pickle
import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from mammolens.preprocess.pipeline import Pipeline, PreprocessConfig
from mammolens.preprocess.sample import ROI, Loader, default_loader, sample_from_row
from mammolens.utils import atomic, errors
from mammolens.utils.errors import DataError, MammolensError

if TYPE_CHECKING:  # pandas stays out of the worker processes: they start faster without it
    from mammolens.data.manifest import Manifest

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
_DTYPE = np.dtype("<u2")  # 16 bits: half of float32 on disk, finer steps than float16 near 1
_CHECKPOINT_S = 30.0  # rewrite the index this often during a long build, so a crash loses little


@dataclass
class BuildReport:
    total: int = 0
    computed: int = 0  # new entries
    reused: int = 0  # valid entries left as they were
    rebuilt_stale: int = 0  # source file, ROI/mask or laterality changed since the last build
    rebuilt_corrupt: int = 0  # array missing, truncated, wrong shape/dtype or checksum mismatch
    flags: dict[str, list[str]] = field(default_factory=dict)  # e.g. roi_missing -> sample ids
    workers: int = 1
    seconds: float = 0.0

    @property
    def rebuilt(self) -> int:
        return self.rebuilt_stale + self.rebuilt_corrupt

    @property
    def roi_missing(self) -> list[str]:
        """Samples that crop_roi (on_missing='full') kept whole because they have no ROI."""
        return self.flags.get("roi_missing", [])

    def summary(self) -> str:
        parts = [
            f"{self.total} samples: {self.computed} computed, {self.reused} reused, "
            f"{self.rebuilt_stale} rebuilt (stale), {self.rebuilt_corrupt} rebuilt (corrupt)"
        ]
        parts += [f"{len(ids)} flagged {flag}" for flag, ids in sorted(self.flags.items())]
        return "; ".join(parts) + f" in {self.seconds:.1f}s with {self.workers} worker(s)"


class PreprocessCache:
    """Preprocessed arrays for manifest rows, by sample_id; ``build`` first, then ``load``."""

    def __init__(
        self,
        root: str | Path,
        config: PreprocessConfig | Pipeline | dict[str, Any] | None = None,
        loader: Loader | None = None,
    ) -> None:
        self.pipeline = config if isinstance(config, Pipeline) else Pipeline(config)
        self.loader = loader or default_loader
        self.root = Path(root)
        self.dir = self.root / self.pipeline.config_hash()
        self.index_path = self.dir / "index.json"
        self._entries: dict[str, dict[str, Any]] = self._read_index()

    # ------------------------------------------------------------------ reading
    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def sample_ids(self) -> list[str]:
        return sorted(self._entries)

    def load(self, sample_id: str) -> np.ndarray:
        """The preprocessed image (H, W) or (C, H, W), float32 in [0, 1]; a stale or damaged entry is an error."""
        entry = self._entry(sample_id)
        for which in ("source", "mask"):
            memo = entry[which]
            if memo is not None and _stat(memo["path"]) != (memo["size"], memo["mtime_ns"]):
                raise DataError(
                    f"{which} file of sample {sample_id!r} changed after it was cached; run the cache build again",
                    path=memo["path"],
                )
        array = _read_array(self.dir / entry["file"], entry)
        if array is None:
            raise DataError(
                f"cached array of sample {sample_id!r} is damaged; run the cache build again",
                path=self.dir / entry["file"],
            )
        return array.astype(np.float32) * np.float32(1.0 / 65535.0)

    def sample_keys(self, sample_ids: Sequence[str]) -> list[str]:
        """Each sample's entry key: it changes with the source file, ROI input, config and code."""
        return [self._entry(s)["key"] for s in sample_ids]

    def content_key(self, sample_ids: Sequence[str]) -> str:
        """One key for these samples' cached arrays, which changes whenever any source file, ROI
        input or the pipeline config does (each entry's key already covers them)."""
        keys = [self._entry(s)["key"] for s in sample_ids]
        return hashlib.blake2b("\n".join(keys).encode(), digest_size=16).hexdigest()

    def load_rois(self, sample_id: str) -> list[ROI]:
        """ROI circles in the preprocessed image's pixels (x = column, y = row)."""
        return [tuple(c) for c in self._entry(sample_id)["rois"]]

    def load_descriptors(self, sample_id: str) -> np.ndarray:
        """The (K,) float64 descriptor vector a descriptor step recorded (empty when none did)."""
        return np.array([v for _, v in self._entry(sample_id).get("descriptors", [])], dtype=np.float64)

    def descriptor_names(self, sample_id: str) -> list[str]:
        return [n for n, _ in self._entry(sample_id).get("descriptors", [])]

    def flags(self, sample_id: str) -> list[str]:
        return list(self._entry(sample_id)["flags"])

    def _entry(self, sample_id: str) -> dict[str, Any]:
        try:
            return self._entries[sample_id]
        except KeyError:
            raise DataError(f"sample {sample_id!r} is not in the preprocessing cache; build it first", path=self.dir) from None

    # ------------------------------------------------------------------ building
    def build(self, manifest: Manifest, workers: int | None = None, progress: bool = True) -> BuildReport:
        """Bring every row of ``manifest`` up to date; only the small index lives in this process.

        ``workers``: processes (default: one per available core); 1 runs here, in-process. A
        failure on one file stops the build with one error naming that file; everything
        finished before it is kept.
        """
        start = time.perf_counter()
        rows = manifest.df.to_dict("records")
        report = BuildReport(total=len(rows))
        self._remove_temp_files()
        tasks = []
        for row in rows:
            task = self._plan(row)
            if task is None:
                report.reused += 1
            else:
                tasks.append(task)
        workers = max(1, min(workers or _cpu_count(), len(tasks) or 1))
        report.workers = workers
        replaced: set[str] = set()
        bar = tqdm(total=len(rows), initial=report.reused, unit="img", desc="preprocess", disable=not progress)
        last_save = time.monotonic()
        try:
            for task, result in self._run(tasks, workers):
                entry, status = result["entry"], result["status"]
                old = self._entries.get(task["sample_id"])
                if old is not None and old["file"] != entry["file"]:
                    replaced.add(old["file"])
                self._entries[task["sample_id"]] = entry
                setattr(report, status, getattr(report, status) + 1)
                bar.update(1)
                if time.monotonic() - last_save > _CHECKPOINT_S:
                    self._write_index()
                    last_save = time.monotonic()
        finally:
            bar.close()
            self._write_index()
            self._remove_unreferenced(replaced)
        for row in rows:
            for flag in self._entries[row["sample_id"]]["flags"]:
                report.flags.setdefault(flag, []).append(row["sample_id"])
        report.seconds = time.perf_counter() - start
        log.info("preprocessing cache %s: %s", self.dir, report.summary())
        return report

    def _plan(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """None when the entry is valid as it is; otherwise the task for a worker."""
        sample_id = row["sample_id"]
        inputs = _inputs(row, self.loader)
        source_stat = _stat(inputs["path"])
        mask_stat = _stat(inputs["mask_path"]) if inputs["mask_path"] else None
        old = self._entries.get(sample_id)
        task: dict[str, Any] = {"sample_id": sample_id, "row": _plain(row), "inputs": inputs, "old": None}
        if old is None:
            return task
        task["old"] = old
        same_files = _memo_hit(old["source"], inputs["path"], source_stat) and (
            (mask_stat is None and old["mask"] is None) or _memo_hit(old["mask"], inputs["mask_path"], mask_stat)
        )
        if same_files and old["inputs"] == inputs and _read_array(self.dir / old["file"], old) is not None:
            return None
        return task

    def _run(self, tasks: list[dict[str, Any]], workers: int) -> Iterator[tuple[dict, dict]]:
        """Yield (task, result) as tasks finish; raise one MammolensError on the first failure."""
        config = self.pipeline.to_dict()
        if not tasks:
            return
        if workers == 1:
            threads = cv2.getNumThreads()
            worker = _Worker(config, self.loader, str(self.dir))
            try:
                for task in tasks:
                    yield task, _raise_failure(task, worker(task))
            finally:
                cv2.setNumThreads(threads)
            return
        context = multiprocessing.get_context("spawn")  # fork is unsafe once torch/OpenMP threads exist
        pool = cf.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(config, self.loader, str(self.dir))
        )
        queue = iter(tasks)
        pending: dict[cf.Future, dict[str, Any]] = {}
        failure: MammolensError | None = None

        def submit() -> None:
            task = next(queue, None)
            if task is not None:
                pending[pool.submit(_work, task)] = task

        try:
            for _ in range(2 * workers):  # a short queue: memory stays flat however long the manifest
                submit()
            while pending:
                done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
                    try:
                        result = _raise_failure(task, future.result())
                    except BrokenProcessPool:
                        in_flight = [task["inputs"]["path"], *(t["inputs"]["path"] for t in pending.values())]
                        raise DataError(
                            "a preprocessing worker process died (killed, out of memory, or it could not start: "
                            "a script that builds with workers > 1 needs an `if __name__ == '__main__':` guard) "
                            "while reading one of: " + ", ".join(in_flight)
                        ) from None
                    except MammolensError as exc:
                        failure = failure or exc
                        continue
                    yield task, result
                    if failure is None:
                        submit()
            if failure is not None:
                raise failure
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ index
    def _read_index(self) -> dict[str, dict[str, Any]]:
        if not self.index_path.is_file():
            return {}
        try:
            data = json.loads(self.index_path.read_text(encoding="utf-8"))
            if data["format"] == INDEX_FORMAT and data["config_hash"] == self.pipeline.config_hash():
                return dict(data["entries"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        log.warning("%s: unreadable or foreign cache index; every sample will be recomputed", self.index_path)
        return {}

    def _write_index(self) -> None:
        atomic.write_json(
            self.index_path,
            {
                "format": INDEX_FORMAT,
                "config_hash": self.pipeline.config_hash(),
                "config": self.pipeline.resolved(),
                "entries": self._entries,
            },
        )

    def _remove_temp_files(self) -> None:
        """Temp files left by a worker killed mid-write; an hour old, so never another build's."""
        for tmp in (self.dir / "arrays").glob(".*.tmp"):
            try:
                if time.time() - tmp.stat().st_mtime > 3600:
                    tmp.unlink()
            except FileNotFoundError:
                pass

    def _remove_unreferenced(self, files: set[str]) -> None:
        used = {e["file"] for e in self._entries.values()}
        for name in files - used:
            (self.dir / name).unlink(missing_ok=True)


# ---------------------------------------------------------------------- worker side
class _Worker:
    """Preprocesses one task at a time; lives in a worker process (or in-process for workers=1)."""

    def __init__(self, config: dict[str, Any], loader: Loader, directory: str) -> None:
        cv2.setNumThreads(1)  # the processes are the parallelism; threads would oversubscribe
        self.pipeline = Pipeline(config)
        self.loader = loader
        self.dir = Path(directory)

    def __call__(self, task: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._process(task)
        except Exception as exc:  # noqa: BLE001 - returned as a compact record, raised by the parent
            return {
                "error": type(exc).__name__,
                "message": str(exc),
                "user_error": isinstance(exc, MammolensError),
                "has_path": getattr(exc, "path", None) is not None,
                "traceback": traceback.format_exc(),
            }

    def _process(self, task: dict[str, Any]) -> dict[str, Any]:
        inputs, old = task["inputs"], task["old"]
        source = _fingerprint(inputs["path"], old and old["source"])
        mask = _fingerprint(inputs["mask_path"], old and old["mask"]) if inputs["mask_path"] else None
        key = _key(self.pipeline.config_hash(), inputs, source, mask)
        entry_base = {"key": key, "file": f"arrays/{key}.npy", "inputs": inputs, "source": source, "mask": mask}
        if old is not None and old["key"] == key:
            if _read_array(self.dir / old["file"], old) is not None:  # touched, not changed
                return {"status": "reused", "entry": {**old, **entry_base}}
            status = "rebuilt_corrupt"
        else:
            status = "computed" if old is None else "rebuilt_stale"
        sample, roi_source = sample_from_row(task["row"], self.loader)
        out = self.pipeline(sample)
        array = np.rint(np.clip(out.pixels, 0.0, 1.0) * 65535.0).astype(_DTYPE)
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        data = buffer.getvalue()
        with atomic.atomic_open(self.dir / entry_base["file"], "wb") as fh:
            fh.write(data)
        entry = {
            **entry_base,
            "shape": list(array.shape),
            "checksum": hashlib.blake2b(data, digest_size=16).hexdigest(),
            "rois": [[round(float(v), 3) for v in roi] for roi in out.rois],
            "roi_source": roi_source,
            "flags": list(out.flags),
            "descriptors": [[name, float(value)] for name, value in out.descriptors],
        }
        return {"status": status, "entry": entry}


_WORKER: _Worker | None = None


def _init_worker(config: dict[str, Any], loader: Loader, directory: str) -> None:
    global _WORKER
    _WORKER = _Worker(config, loader, directory)


def _work(task: dict[str, Any]) -> dict[str, Any]:
    assert _WORKER is not None
    return _WORKER(task)


def _raise_failure(task: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Turn a worker's error record into one MammolensError line naming the file."""
    if "error" not in result:
        return result
    path = task["inputs"]["path"]
    sample = task["sample_id"]
    if result["user_error"]:
        cls = getattr(errors, result["error"], DataError)
        if not (isinstance(cls, type) and issubclass(cls, MammolensError)):
            cls = DataError
        exc = cls(result["message"]) if result["has_path"] else cls(f"sample {sample!r}: {result['message']}", path=path)
    else:
        exc = DataError(f"sample {sample!r}: preprocessing failed ({result['error']}: {result['message']})", path=path)
        exc.add_note(result["traceback"])  # for a debugger; the CLI prints only the one line
    raise exc


# ---------------------------------------------------------------------- helpers
def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def _inputs(row: dict[str, Any], loader: Loader) -> dict[str, Any]:
    """The parts of a manifest row the preprocessed pixels depend on, canonicalised."""
    try:
        rois = json.loads(row.get("rois") or "[]")
    except ValueError:
        raise DataError(f"bad rois value {row.get('rois')!r} for sample {row['sample_id']!r}") from None
    return {
        "path": os.path.abspath(str(row["path"])),
        "frame": int(row.get("frame", -1)),
        "rois": rois,
        "laterality": str(row.get("laterality", "")).upper(),
        "mask_path": os.path.abspath(row["mask_path"]) if row.get("mask_path") else "",
        "loader": loader_identity(loader),
    }


def loader_identity(loader: Loader) -> str:
    """What a loader computes: its pickle (module, name and, for ``functools.partial`` or a callable
    object, its arguments and state) and the source code of the functions behind it."""
    digest = hashlib.sha256(pickle.dumps(loader))
    target = loader
    while isinstance(target, functools.partial):
        target = target.func
    code_of = target if inspect.isfunction(target) or inspect.ismethod(target) else type(target)
    try:
        digest.update(inspect.getsource(code_of).encode())
    except (OSError, TypeError):  # built-in or source unavailable: the pickle still names it
        pass
    return digest.hexdigest()[:32]


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError("image file not found", path=path) from None
    return st.st_size, st.st_mtime_ns


def _memo_hit(memo: dict[str, Any] | None, path: str, stat: tuple[int, int]) -> bool:
    return memo is not None and memo["path"] == path and (memo["size"], memo["mtime_ns"]) == stat


def _fingerprint(path: str, memo: dict[str, Any] | None) -> dict[str, Any]:
    """Content hash of a file, reusing the memo when size and mtime say it cannot have changed."""
    stat = _stat(path)
    if _memo_hit(memo, path, stat):
        return dict(memo)
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return {"path": path, "size": stat[0], "mtime_ns": stat[1], "sha256": digest}


def _key(config_hash: str, inputs: dict[str, Any], source: dict[str, Any], mask: dict[str, Any] | None) -> str:
    material = json.dumps(
        [config_hash, inputs, source["sha256"], mask and mask["sha256"]], sort_keys=True, separators=(",", ":")
    )
    return hashlib.blake2b(material.encode(), digest_size=16).hexdigest()


def _read_array(path: Path, entry: dict[str, Any]) -> np.ndarray | None:
    """The array if its bytes, shape and dtype are what the index recorded; else None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if hashlib.blake2b(data, digest_size=16).hexdigest() != entry["checksum"]:
        return None
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    if array.dtype != _DTYPE or list(array.shape) != list(entry["shape"]):
        return None
    return array
