"""The DICOM node: stable mammography studies in, structured reports and heatmaps back into them.

One loop: read Orthanc's ``/changes`` from the stored cursor and queue every ``StableStudy``;
take the oldest queued study; fetch its MG series by WADO-RS; keep the "for presentation" views;
score each with every bundle; combine views into breasts and the exam with the exam room
(``mammolens.evaluate.exams``, the code ``evaluate --level exam`` uses); write the heatmaps (a
parametric map and an overlay per view) and then the SR by STOW-RS; mark the study done.

Exactly once: every result object's UID is fixed by the study, the bundles and the view
(``writers.result_uid``), the SR goes last, and a study whose SR is already in the PACS is done
without work. A node killed anywhere re-runs at most the study it was in, and the PACS keeps one
copy of each object. The PACS failing (connection refused, 5xx) puts the study back in the queue
and the loop waits, doubling the wait up to ``backoff_max_s``.

Logs name studies by a hash of their UID and give counts and durations; never a patient's name,
ID, birth date, accession number or a UID in clear.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom
from pydicom.dataset import Dataset

from mammolens.pacs.client import Pacs, PacsUnavailable
from mammolens.pacs.config import NodeConfig
from mammolens.pacs.state import State
from mammolens.pacs.writers import (
    Finding,
    heatmap_capture,
    heatmap_map,
    result_uid,
    structured_report,
)
from mammolens.utils.errors import ConfigError, MammolensError

log = logging.getLogger("mammolens.pacs")
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
STAGES = ("fetch", "decode", "preprocess", "model", "heatmap", "write")


def hashed(uid: str) -> str:
    """What the logs call a study or an instance: 12 hex digits of its UID's SHA-256."""
    return hashlib.sha256(uid.encode()).hexdigest()[:12]


@dataclass
class View:
    header: Dataset  # no pixel data
    laterality: str
    view: str
    film: Any  # the Predictor's Film


@dataclass
class Timer:
    """Wall seconds per stage, and the process's CPU seconds (``<stage>_cpu``, all its threads): on a
    shared machine the CPU time is what a stage costs, the wall time also what it waited."""

    seconds: dict[str, float] = field(default_factory=lambda: {k: 0.0 for s in STAGES for k in (s, f"{s}_cpu")})

    @staticmethod
    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def add(self, stage: str, start: tuple[float, float]) -> None:
        wall, cpu = self.now()
        self.seconds[stage] += wall - start[0]
        self.seconds[f"{stage}_cpu"] += cpu - start[1]


@dataclass
class Scorer:
    """One configured bundle, its Predictor and its views -> breast -> exam aggregation."""

    name: str
    predictor: Any
    heatmap: bool
    method: str  # the exam room's AGGREGATORS
    params: dict[str, Any] | None  # the fitted method's JSON

    @property
    def spec(self) -> Any:
        return self.predictor.spec

    @property
    def columns(self) -> list[str]:
        return [f"p_{c}" for c in self.spec.classes]


def load_scorers(config: NodeConfig) -> list[Scorer]:
    """The configured bundles; each combines views with the config's aggregation when it names one,
    else with the bundle's own (chosen on its validation data), as ``Predictor.predict_exam`` does."""
    from mammolens.deploy.predictor import Predictor

    scorers = []
    for i, bundle in enumerate(config.bundles):
        try:
            predictor = Predictor.load(bundle.path)
        except MammolensError as exc:
            raise ConfigError(f"bundles[{i}] ({bundle.name}): {exc}") from None
        if predictor.spec.needs_roi:
            raise ConfigError(f"bundles[{i}]: {bundle.name} is a lesion model (it needs the lesion's position); "
                              "the node scores whole films")  # fmt: skip
        if bundle.heatmap and predictor.heatmap_refusal:
            raise ConfigError(f"bundles[{i}]: {bundle.name} gives no heatmap: {predictor.heatmap_refusal}")
        own = predictor.spec.aggregator
        method = config.aggregation.method or own.get("method", "max")
        params = config.aggregation.params if config.aggregation.method else own.get("params")
        if method == "fitted" and not params:
            raise ConfigError(f"bundles[{i}]: {bundle.name}: aggregation 'fitted' needs the fitted parameters "
                              "(aggregation.params, or a bundle that stores them)")  # fmt: skip
        scorers.append(Scorer(bundle.name, predictor, bundle.heatmap, method, params))
    return scorers


class Node:
    def __init__(self, config: NodeConfig, *, scorers: list[Scorer] | None = None) -> None:
        self.config = config
        self.pacs = Pacs(config.pacs.url, config.dicomweb_url, config.auth, config.pacs.timeout_s)
        self.state = State(config.state)
        self.scorers = scorers if scorers is not None else load_scorers(config)
        self.key = "+".join(f"{s.name}={s.spec.model_id}" for s in self.scorers)
        self.spool = Path(config.spool or config.state.with_suffix(".spool"))

    # -- the change feed -------------------------------------------------------------------------
    def poll(self) -> bool:
        """Queue the studies that became stable since the cursor; True when the feed is exhausted."""
        since = self.state.cursor()
        if since is None:  # first start: what the PACS held before is history, not work
            since = 0 if self.config.start == "beginning" else self.pacs.last_change()
            self.state.advance(since, [])
        changes, last, done = self.pacs.changes(since)
        stable = []
        for change in changes:
            if change.kind == "StableStudy":
                uid = self.pacs.study_uid(change.resource)
                if uid is not None:
                    stable.append(uid)
        new = self.state.advance(max([last, since] + [c.seq for c in changes]), stable)
        if new:
            log.info("queued %d stable stud%s", new, "y" if new == 1 else "ies")
        return done

    # -- one study -------------------------------------------------------------------------------
    def work_one(self) -> bool:
        """Process the oldest queued study; False when none is queued."""
        study = self.state.next_pending()
        if study is None:
            return False
        uid, tag = study.uid, hashed(study.uid)
        attempt = self.state.start(uid)
        started = time.perf_counter()
        try:
            outcome = self.process(uid)
        except PacsUnavailable:
            self.state.retry_later(uid)
            raise
        except MammolensError as exc:
            self._failed(uid, tag, attempt, str(exc))
            return True
        except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen file: the study fails, the node goes on
            self._failed(uid, tag, attempt, f"{type(exc).__name__} while processing")
            log.debug("study %s: %s", tag, type(exc).__name__, exc_info=False)
            return True
        finally:
            shutil.rmtree(self.spool / tag, ignore_errors=True)
        status, reason, problems, timings, n_views = outcome
        timings["total"] = time.perf_counter() - started
        self.state.finish(uid, status, reason=reason, problems=problems, timings=timings, n_views=n_views)
        log.info("study %s %s: %d views, %d skipped, %.2f s (%s)%s", tag, status, n_views, len(problems),
                 timings["total"], ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if k in STAGES),
                 f"; {reason}" if reason else "")  # fmt: skip
        return True

    def _failed(self, uid: str, tag: str, attempt: int, reason: str) -> None:
        if attempt >= self.config.max_attempts:
            self.state.finish(uid, "failed", reason=reason)
            log.warning("study %s failed for good after %d attempts", tag, attempt)
        else:
            self.state.retry_later(uid)
            self.state.db.execute("UPDATE studies SET attempts = ? WHERE uid = ?", (attempt, uid))
            log.warning("study %s attempt %d failed; will retry", tag, attempt)

    def process(self, uid: str) -> tuple[str, str, list[str], dict[str, float], int]:
        """(status, reason, problems, timings, number of views scored) of one study."""
        timer, problems = Timer(), []
        tag = hashed(uid)
        start = timer.now()
        series = self.pacs.series(uid)
        if result_uid(uid, "sr-series", self.key) in {str(s.SeriesInstanceUID) for s in series}:
            sr_uids = self.pacs.instance_uids(uid, result_uid(uid, "sr-series", self.key))
            if result_uid(uid, "sr", self.key) in sr_uids:
                return "done", "results already in the PACS", [], timer.seconds, 0
        mg = [s for s in series if str(s.get("Modality", "")) == "MG"]
        if not mg:
            return "ignored", "no MG series", [], timer.seconds, 0
        folder = self.spool / tag
        folder.mkdir(parents=True, exist_ok=True)
        paths = [p for s in mg for p in self.pacs.fetch_series(uid, str(s.SeriesInstanceUID), folder)]
        timer.add("fetch", start)
        views = [v for v in (self._read(p, timer, problems) for p in paths) if v is not None]
        if not views:
            reason = "no readable MG view for presentation" + (f" ({'; '.join(problems)})" if problems else "")
            return ("failed" if problems else "ignored"), reason, problems, timer.seconds, 0
        findings, maps = self._score(views, timer)
        start = timer.now()
        sources = [v.header for v in views]
        if maps:
            self.pacs.store(maps)
        self.pacs.store([structured_report(sources, findings, bundles_key=self.key)])
        timer.add("write", start)
        reason = f"{len(problems)} instance(s) skipped" if problems else ""
        log.debug("study %s: %d objects stored", tag, len(maps) + 1)
        return "done", reason, problems, timer.seconds, len(views)

    def _read(self, path: Path, timer: Timer, problems: list[str]) -> View | None:
        """The view of one fetched file, or None (with the problem noted) for what the node does not read."""
        from mammolens.io import read_image

        name = f"instance {path.name.split('.')[1]} of series {hashed(path.name.split('.')[0])}"
        start = timer.now()
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - a garbled file: noted, never a crash loop
            problems.append(f"{name}: unreadable DICOM header ({type(exc).__name__})")
            return None
        if str(header.get("SOPClassUID", "")) != MG_FOR_PRESENTATION or \
                str(header.get("PresentationIntentType", "FOR PRESENTATION")) != "FOR PRESENTATION":  # fmt: skip
            problems.append(f"{name}: not a mammogram for presentation (skipped)")
            return None
        try:
            image = read_image(path)
        except MammolensError as exc:
            problems.append(f"{name}: {str(exc).replace(str(path), 'pixel data')}")
            return None
        except Exception as exc:  # noqa: BLE001 - a decoder's own error type: noted, never a crash loop
            problems.append(f"{name}: pixel data cannot be decoded ({type(exc).__name__})")
            return None
        laterality, view = image.meta.laterality, image.meta.view
        if laterality not in ("L", "R"):
            problems.append(f"{name}: no ImageLaterality (skipped)")
            return None
        film = self.scorers[0].predictor.read(image)  # the Predictor's checked film: part of decoding
        timer.add("decode", start)
        return View(header, laterality, view or "?", film)

    def _score(self, views: list[View], timer: Timer) -> tuple[list[Finding], list[Dataset]]:
        from mammolens.evaluate.exams import aggregate

        findings: list[Finding] = []
        maps: list[Dataset] = []
        for scorer in self.scorers:
            spec = scorer.spec
            start = timer.now()
            inputs = [scorer.predictor.prepare(v.film, laterality=v.laterality, other=self._partner(scorer, v, views))
                      for v in views]  # fmt: skip
            timer.add("preprocess", start)
            start = timer.now()
            probs, _ = scorer.predictor.score_inputs(inputs)
            timer.add("model", start)
            findings += [self._finding(scorer, p, v.laterality, v.view, v.header) for v, p in zip(views, probs)]
            table = pd.DataFrame({"exam_id": "exam", "laterality": [v.laterality for v in views],
                                  "view": [v.view for v in views],
                                  **{f"p_{c}": probs[:, k] for k, c in enumerate(spec.classes)}})  # fmt: skip
            at = spec.exam_threshold  # breasts and exams: the aggregator's threshold, as Predictor.predict_exam
            for _, row in aggregate(table, "breast", scorer.method, scorer.params).iterrows():
                findings.append(self._finding(scorer, _vector(row, scorer), str(row["laterality"]), threshold=at))
            exam = aggregate(table, "exam", scorer.method, scorer.params).iloc[0]
            findings.append(self._finding(scorer, _vector(exam, scorer), "", threshold=at))
            if scorer.heatmap:
                maps.extend(self._heatmaps(scorer, views, timer))
        return findings, maps

    def _partner(self, scorer: Scorer, view: View, views: list[View]) -> Any:
        if scorer.spec.pairs is None:
            return None
        other = next((v for v in views if v.view == view.view and v.laterality != view.laterality), None)
        return None if other is None else other.film

    def _finding(self, scorer: Scorer, probs: np.ndarray, laterality: str, view: str = "",
                 source: Dataset | None = None, threshold: float | None = None) -> Finding:  # fmt: skip
        """A binary task reports its positive class; a multi-class one its top class, the others beside it."""
        classes = scorer.spec.classes
        probs = np.asarray(probs, dtype=float)
        main = classes[1] if len(classes) == 2 else classes[int(np.argmax(probs))]
        extra = {} if len(classes) == 2 else {c: float(q) for c, q in zip(classes, probs) if c != main}
        return Finding(bundle=scorer.name, bundle_hash=scorer.spec.model_id, task=scorer.spec.task, cls=main,
                       probability=float(probs[classes.index(main)]), decision=scorer.spec.decide(probs, threshold)[1],
                       laterality=laterality, view=view, source=source, extra=extra)  # fmt: skip

    def _heatmaps(self, scorer: Scorer, views: list[View], timer: Timer) -> list[Dataset]:
        out: list[Dataset] = []
        for v in views:
            start = timer.now()
            heat = scorer.predictor.explain(v.film, laterality=v.laterality)
            timer.add("heatmap", start)
            start = timer.now()
            out.append(heatmap_map(v.header, heat, bundles_key=self.key, bundle_hash=scorer.spec.model_id))
            if self.config.secondary_capture:
                out.append(heatmap_capture(v.header, v.film.pixels, heat, bundles_key=self.key))
            timer.add("write", start)
        return out

    # -- the loop --------------------------------------------------------------------------------
    def run(self, *, until_idle: bool = False, should_stop: Callable[[], bool] = lambda: False,
            sleep: Callable[[float], None] = time.sleep) -> None:  # fmt: skip
        """Poll and work until ``should_stop()`` (or, with ``until_idle``, until the feed is exhausted and
        nothing is queued); the PACS failing makes it wait ``backoff_s``, doubling to ``backoff_max_s``."""
        wait = self.config.backoff_s
        log.info("node started: %d bundle(s), state %s", len(self.scorers), self.state.counts() or "empty")
        while not should_stop():
            try:
                exhausted = self.poll()
                worked = self.work_one()
                wait = self.config.backoff_s
            except PacsUnavailable as exc:
                log.warning("PACS unavailable (%s); retrying in %.1f s", exc, wait)
                sleep(wait)
                wait = min(2 * wait, self.config.backoff_max_s)
                continue
            if not worked:
                if until_idle and exhausted:
                    break
                sleep(self.config.poll_s)
        log.info("node stopped: %s", self.state.counts())


def _vector(row: pd.Series, scorer: Scorer) -> np.ndarray:
    return np.array([float(row[c]) for c in scorer.columns])
