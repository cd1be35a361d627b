"""A real Orthanc per test module (Debian's, on free ports in tmp, StableAge 1 s), tiny bundles and
synthetic four-view studies for the PACS node tests."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from deploy_fixtures import make_bundle

from mammolens.pacs.local_orthanc import LocalOrthanc, orthanc_missing
from mammolens.pacs.synthetic import four_view_exam

needs_orthanc = pytest.mark.skipif(orthanc_missing() is not None, reason=str(orthanc_missing()))
DICOM_TOOLS = ("dciodvfy", "dsrdump")  # dicom3tools and dcmtk: someone else's checks of what the node writes
needs_dicom_tools = pytest.mark.skipif(not all(shutil.which(t) for t in DICOM_TOOLS),
                                       reason="dciodvfy (dicom3tools) and dsrdump (dcmtk) not installed: `make setup`")


def dciodvfy_errors(path: Path) -> list[str]:
    import subprocess

    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    with LocalOrthanc(tmp_path_factory.mktemp("orthanc")) as pacs:
        yield pacs


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("bundle") / "abnormality", threshold=0.5)


def write_config(folder: Path, pacs: LocalOrthanc, bundle: Path, **extra) -> Path:
    config = {"pacs": {"url": pacs.url, "username": pacs.auth[0], "password": pacs.auth[1], "timeout_s": 10},
              "bundles": [{"name": "abnormality", "path": str(bundle), "heatmap": True}],
              "state": str(folder / "node.sqlite"), "poll_s": 0.2, "backoff_s": 0.2, "backoff_max_s": 1.0, **extra}  # fmt: skip
    path = folder / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def exam(seed: int, **options) -> list:
    return four_view_exam(np.random.default_rng(seed), seed, **options)


def orthanc_study(pacs: LocalOrthanc, study_uid: str) -> str:
    found = requests.post(f"{pacs.url}/tools/lookup", data=study_uid, auth=pacs.auth, timeout=10).json()
    return next(f["ID"] for f in found if f["Type"] == "Study")


def wait_stable(pacs: LocalOrthanc, study_uid: str, timeout: float = 20.0) -> None:
    """Until Orthanc calls the study stable (its StableStudy change is then in the feed)."""
    ident = orthanc_study(pacs, study_uid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if requests.get(f"{pacs.url}/studies/{ident}", auth=pacs.auth, timeout=10).json().get("IsStable"):
            return
        time.sleep(0.1)
    raise TimeoutError("study did not become stable")


def study_instances(pacs: LocalOrthanc, study_uid: str) -> list[dict]:
    """Every instance of the study: its tags (simplified) by Orthanc."""
    ident = orthanc_study(pacs, study_uid)
    return requests.get(f"{pacs.url}/studies/{ident}/instances?expand", auth=pacs.auth, timeout=10).json()


def instance_file(pacs: LocalOrthanc, orthanc_id: str, out: Path) -> Path:
    out.write_bytes(requests.get(f"{pacs.url}/instances/{orthanc_id}/file", auth=pacs.auth, timeout=10).content)
    return out
