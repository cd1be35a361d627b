"""A throw-away Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) on free ports in a folder.

The tests and the screening-day benchmark run the node against a real PACS, not a mock: this starts
one in the foreground with a short ``StableAge`` and HTTP basic authentication, waits until it
answers, and stops it (``stop``/``start`` again keep its storage, so "PACS down and back" is real).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

import requests

from mammolens.utils.errors import ConfigError

ORTHANC = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "mammolens", "node-secret"


def orthanc_missing() -> str | None:
    """Why no local Orthanc can start (None: it can)."""
    if shutil.which(ORTHANC) is None:
        return "Orthanc is not installed (`apt-get install orthanc orthanc-dicomweb`; `make setup` does it)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"the Orthanc DICOMweb plugin is missing ({DICOMWEB_PLUGIN}; `apt-get install orthanc-dicomweb`)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalOrthanc:
    """``with LocalOrthanc(folder) as pacs:`` -> ``pacs.url``, ``pacs.auth``, ``pacs.dicom_port``."""

    def __init__(self, folder: Path, *, stable_age: int = 1, aet: str = "ORTHANC") -> None:
        reason = orthanc_missing()
        if reason:
            raise ConfigError(reason)
        self.folder = Path(folder)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.aet = aet
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.auth = (USER, PASSWORD)
        self.process: subprocess.Popen | None = None
        (self.folder / "config").mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "mammolens-local", "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": aet, "DicomCheckCalledAet": False, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}, "StableAge": stable_age,
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "UnknownSopClassAccepted": True, "StorageCompression": False, "HttpCompressionEnabled": False,
            "ConcurrentJobs": 1, "DicomModalities": {}, "SaveJobs": False,
        }  # fmt: skip
        (self.folder / "config" / "orthanc.json").write_text(json.dumps(config, indent=1))

    def start(self, timeout: float = 30.0) -> Self:
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen([ORTHANC, str(self.folder / "config") + "/"], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ConfigError(f"Orthanc exited with code {self.process.returncode}; see {self.folder / 'orthanc.log'}")
            try:
                if requests.get(f"{self.url}/system", auth=self.auth, timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise ConfigError(f"Orthanc did not answer within {timeout:.0f} s; see {self.folder / 'orthanc.log'}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
