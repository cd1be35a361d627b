"""The node when things go wrong, against a real Orthanc: a non-mammography study, a corrupt
instance, the PACS going down and coming back, the node killed mid-work and restarted (every study
done exactly once), and logs that never hold a patient identifier or a UID in clear."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pacs_fixtures
import pydicom
import pytest
from dicom_fixtures import dicom_dataset
from pacs_fixtures import (
    exam,
    instance_file,
    needs_orthanc,
    study_instances,
    wait_stable,
    write_config,
)

from mammolens.pacs.client import Pacs
from mammolens.pacs.config import load_config
from mammolens.pacs.local_orthanc import LocalOrthanc
from mammolens.pacs.node import Node
from mammolens.pacs.state import State
from mammolens.utils.errors import ConfigError

bundle, orthanc = pacs_fixtures.bundle, pacs_fixtures.orthanc  # this module's fixtures
pytestmark = needs_orthanc
SRC = Path(__file__).resolve().parents[1] / "src"


def _pacs(orthanc) -> Pacs:
    return Pacs(orthanc.url, orthanc.url + "/dicom-web", orthanc.auth)


def _node(tmp_path, orthanc, bundle, **extra) -> Node:
    node = Node(load_config(write_config(tmp_path, orthanc, bundle, **extra)))
    node.poll()
    return node


def _secrets(datasets) -> list[str]:
    """What must never reach a log: names, IDs, dates of birth, accession numbers, UIDs in clear."""
    out = set()
    for ds in datasets:
        out |= {str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate), str(ds.AccessionNumber),
                str(ds.PatientName).split("^")[-1], ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}  # fmt: skip
    return sorted(s for s in out if s)


def _assert_no_phi(text: str, datasets) -> None:
    assert text.strip(), "no log to search"
    for line in text.splitlines():
        for secret in _secrets(datasets):
            assert secret not in line, f"log line leaks {secret!r}: {line}"


def _objects(orthanc, study: str, tmp_path: Path) -> list[tuple[Path, pydicom.Dataset]]:
    out = []
    for n, inst in enumerate(study_instances(orthanc, study)):
        path = instance_file(orthanc, inst["ID"], tmp_path / f"fetched{n}.dcm")
        out.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
    return out


def _kinds(orthanc, study: str, tmp_path: Path) -> list[str]:
    return sorted(str(ds.SOPClassUID.name) for _, ds in _objects(orthanc, study, tmp_path))


def test_non_mammography_study_is_ignored(tmp_path, orthanc, bundle, caplog):
    node = _node(tmp_path, orthanc, bundle)
    ct = dicom_dataset(Modality="OT", StudyInstanceUID=pydicom.uid.generate_uid(),
                       SeriesInstanceUID=pydicom.uid.generate_uid())  # fmt: skip
    ct.set_pixel_data(np.zeros((16, 16), np.uint8), "MONOCHROME2", 8)
    _pacs(orthanc).store([ct])
    wait_stable(orthanc, ct.StudyInstanceUID)
    with caplog.at_level(logging.DEBUG, logger="mammolens.pacs"):
        node.run(until_idle=True)
    assert [(s.status, s.reason) for s in node.state.studies() if s.uid == ct.StudyInstanceUID] == [("ignored", "no MG series")]
    assert len(study_instances(orthanc, ct.StudyInstanceUID)) == 1  # nothing written into it
    _assert_no_phi(caplog.text, [ct])


def test_corrupt_and_for_processing_instances_are_skipped_the_other_views_done(tmp_path, orthanc, bundle, caplog):
    node = _node(tmp_path, orthanc, bundle)
    views = exam(7, view_position=False)  # the view only in ViewCodeSequence, as in CMMD
    corrupt = views[3]
    corrupt.PixelData = corrupt.PixelData[: len(corrupt.PixelData) // 3]  # truncated pixel data
    processing = exam(7)[0]
    processing.StudyInstanceUID, processing.PatientID = views[0].StudyInstanceUID, views[0].PatientID
    processing.SOPClassUID = processing.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2.1"
    processing.PresentationIntentType = "FOR PROCESSING"
    _pacs(orthanc).store(views + [processing])
    wait_stable(orthanc, views[0].StudyInstanceUID)
    with caplog.at_level(logging.DEBUG, logger="mammolens.pacs"):
        node.run(until_idle=True)
    (study,) = [s for s in node.state.studies() if s.uid == views[0].StudyInstanceUID]
    assert study.status == "done" and study.n_views == 3
    assert len(study.problems) == 2
    assert any("for presentation" in p for p in study.problems)
    assert any("pixel" in p.lower() for p in study.problems)
    kinds = _kinds(orthanc, views[0].StudyInstanceUID, tmp_path)
    assert kinds.count("Comprehensive 3D SR Storage") == 1 and kinds.count("Parametric Map Storage") == 3
    sr_file = next(p for p, ds in _objects(orthanc, views[0].StudyInstanceUID, tmp_path) if ds.Modality == "SR")
    sr = hd.sr.srread(sr_file)
    names = {g.tracking_identifier for g in sr.content.get_image_measurement_groups()}
    assert {"abnormality R-CC", "abnormality L-CC", "abnormality R-MLO"} <= names  # views read from ViewCodeSequence
    assert not any("L-MLO" in n for n in names)  # the corrupt one
    _assert_no_phi(caplog.text + "\n".join(study.problems), views + [processing])
    for problem in study.problems:
        assert str(tmp_path) not in problem


def test_pacs_down_and_back_backs_off_then_finishes(tmp_path, bundle, caplog):
    with LocalOrthanc(tmp_path / "pacs") as pacs:
        node = _node(tmp_path, pacs, bundle, backoff_s=0.25, backoff_max_s=1.0)
        waits: list[float] = []
        stop = threading.Event()

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            time.sleep(min(seconds, 0.2))

        views = exam(3)
        worker = threading.Thread(target=node.run, kwargs={"should_stop": stop.is_set, "sleep": sleep})
        with caplog.at_level(logging.INFO, logger="mammolens.pacs"):
            worker.start()
            pacs.stop()
            deadline = time.monotonic() + 10
            while sum(1 for w in waits if w != node.config.poll_s) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            pacs.start()
            _pacs(pacs).store(views)
            wait_stable(pacs, views[0].StudyInstanceUID)
            deadline = time.monotonic() + 30
            while not node.state.studies("done") and time.monotonic() < deadline:
                time.sleep(0.1)
            stop.set()
            worker.join(timeout=30)
        backoffs = [w for w in waits if w != node.config.poll_s]
        assert backoffs[:4] == [0.25, 0.5, 1.0, 1.0]  # doubling up to the cap, not a busy loop
        assert max(backoffs) <= node.config.backoff_max_s
        assert [s.status for s in node.state.studies()] == ["done"]
        assert "PACS unavailable" in caplog.text
        _assert_no_phi(caplog.text, views)


def _start_node(config: Path, log: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-m", "mammolens", "pacs", str(config), "--log-file", str(log), "--verbose", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def _wait_for_log(log: Path, pattern: str, count: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and len(re.findall(pattern, log.read_text())) >= count:
            return
        time.sleep(0.02)
    raise TimeoutError(f"{pattern!r} x{count} not in the node's log")


@pytest.mark.slow
def test_killed_and_restarted_node_does_every_study_exactly_once(tmp_path, bundle):
    with LocalOrthanc(tmp_path / "pacs") as orthanc:
        _killed_and_restarted(tmp_path, orthanc, bundle)


def _killed_and_restarted(tmp_path: Path, orthanc: LocalOrthanc, bundle: Path) -> None:
    config = write_config(tmp_path, orthanc, bundle, start="beginning")
    log = tmp_path / "node.log"
    exams = [exam(20 + i) for i in range(4)]
    for views in exams:
        _pacs(orthanc).store(views)
    for views in exams:
        wait_stable(orthanc, views[0].StudyInstanceUID)
    outputs = []
    # SIGKILL while the first study is being scored, and right after a study's objects were stored
    # (before it is marked done, if the race is won; test_crash_between_writes makes both windows certain)
    for pattern, delay in ((r"queued \d+ stable", 0.3), (r"objects stored", 0.0)):
        seen = len(re.findall(pattern, log.read_text())) if log.is_file() else 0
        node = _start_node(config, log)
        _wait_for_log(log, pattern, seen + 1)
        time.sleep(delay)
        node.send_signal(signal.SIGKILL)
        outputs.append(node.communicate(timeout=30)[0].decode())
    node = _start_node(config, log, "--until-idle")
    outputs.append(node.communicate(timeout=120)[0].decode())
    assert node.returncode == 0, outputs[-1]
    for views in exams:
        kinds = _kinds(orthanc, views[0].StudyInstanceUID, tmp_path)
        assert kinds.count("Comprehensive 3D SR Storage") == 1, kinds
        assert kinds.count("Parametric Map Storage") == 4 and kinds.count("Secondary Capture Image Storage") == 4
    state = State(tmp_path / "node.sqlite")
    assert {s.uid for s in state.studies("done")} == {v[0].StudyInstanceUID for v in exams}
    assert log.read_text().count("node started") == 3
    text = log.read_text() + "\n".join(outputs)
    _assert_no_phi(text, [v for views in exams for v in views])


@pytest.mark.parametrize("crash", ["after the heatmaps, before the SR", "after the SR, before the state says done"])
def test_crash_between_writes_leaves_no_duplicate(tmp_path, orthanc, bundle, monkeypatch, crash):
    """The two windows a kill can hit between the PACS and the state, made certain in-process."""

    class Killed(BaseException):  # like SIGKILL: nothing catches it
        pass

    node = _node(tmp_path, orthanc, bundle)
    views = exam(40 + len(crash))
    ours = views[0].StudyInstanceUID
    _pacs(orthanc).store(views)
    wait_stable(orthanc, views[0].StudyInstanceUID)
    if crash.startswith("after the heatmaps"):
        real = Pacs.store

        def store(self, datasets):
            if any(ds.Modality == "SR" and ds.StudyInstanceUID == ours for ds in datasets):
                raise Killed
            return real(self, datasets)

        monkeypatch.setattr(Pacs, "store", store)
    else:  # (other tests' studies, stable again after their results were written, may come first)
        real_finish = State.finish

        def finish(self, uid, *args, **kwargs):
            if uid == ours:
                raise Killed
            return real_finish(self, uid, *args, **kwargs)

        monkeypatch.setattr(State, "finish", finish)
    with pytest.raises(Killed):
        node.run(until_idle=True)
    monkeypatch.undo()
    node.state.close()
    again = Node(load_config(tmp_path / "node.yaml"))
    again.run(until_idle=True)
    (study,) = [s for s in again.state.studies() if s.uid == views[0].StudyInstanceUID]
    assert study.status == "done" and study.attempts == 2
    kinds = _kinds(orthanc, views[0].StudyInstanceUID, tmp_path)
    assert kinds.count("Comprehensive 3D SR Storage") == 1
    assert kinds.count("Parametric Map Storage") == 4 and kinds.count("Secondary Capture Image Storage") == 4
    if crash.endswith("done"):
        assert study.reason == "results already in the PACS"  # found, not redone


def test_config_mistakes_one_line_each(tmp_path, bundle):
    path = tmp_path / "node.yaml"
    path.write_text("pacs: {url: 'pacs:8042', password_env: MAMMOLENS_NO_SUCH_VAR}\n"
                    "bundles: [{name: a, path: /no/such/bundle}, {name: a, path: " + str(bundle) + "}]\n"
                    "aggregation: {method: median}\npoll_s: 0\n")  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    lines = caught.value.lines
    for expected in ("pacs.url", "pacs.password_env", "pacs.username", "bundles[0].path", "bundles[1].name: 'a' is used twice",
                     "aggregation.method: unknown 'median'", "poll_s"):  # fmt: skip
        assert sum(expected in line for line in lines) == 1, (expected, lines)
    assert len(lines) == 7
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    run = subprocess.run([sys.executable, "-m", "mammolens", "pacs", str(path)], capture_output=True, text=True, env=env,
                         check=False)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len([line for line in run.stderr.splitlines() if line.startswith("error: ")]) == 7
