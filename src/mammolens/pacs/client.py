"""The PACS as the node sees it: Orthanc's change feed, then standard DICOMweb (QIDO, WADO, STOW).

``/changes`` (Orthanc's REST API) says when a study became stable (no new instance for
``StableAge`` seconds); everything else goes through DICOMweb (``dicomweb-client``), so only the
watcher is Orthanc-specific. Connection failures and 5xx answers become ``PacsUnavailable`` (the
node backs off and retries); the client's own loggers are kept at WARNING because their debug
lines quote URLs with UIDs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

for _name in ("dicomweb_client", "urllib3", "requests"):
    logging.getLogger(_name).setLevel(logging.WARNING)

# WADO-RS: the instances as stored (compressed pixel data stays compressed: the node decodes)
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


class PacsUnavailable(Exception):
    """The PACS did not answer or answered with a server error: try again later."""


@dataclass(frozen=True)
class Change:
    seq: int
    kind: str  # Orthanc's ChangeType, e.g. StableStudy
    resource: str  # Orthanc's resource ID


class Pacs:
    def __init__(self, url: str, dicomweb_url: str, auth: tuple[str, str] | None, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if auth:
            self.session.auth = auth
        self.timeout = timeout_s
        self.dicomweb_url = dicomweb_url.rstrip("/")
        self.web = DICOMwebClient(self.dicomweb_url, session=self.session)

    def _get(self, path: str, **params: object) -> dict:
        with _unavailable():
            response = self.session.get(f"{self.url}{path}", params=params, timeout=self.timeout)
            response.raise_for_status()
            return response.json()

    def changes(self, since: int, limit: int = 100) -> tuple[list[Change], int, bool]:
        """Changes after ``since``: (changes, last sequence number, whether the feed is exhausted)."""
        body = self._get("/changes", since=since, limit=limit)
        changes = [Change(int(c["Seq"]), str(c["ChangeType"]), str(c["ID"])) for c in body["Changes"]]
        return changes, int(body["Last"]), bool(body["Done"])

    def last_change(self) -> int:
        return int(self._get("/changes", last="")["Last"])

    def study_uid(self, resource: str) -> str | None:
        """The StudyInstanceUID of an Orthanc study ID (None: deleted since)."""
        try:
            return str(self._get(f"/studies/{resource}")["MainDicomTags"]["StudyInstanceUID"])
        except PacsNotFound:
            return None

    def series(self, study_uid: str) -> list[Dataset]:
        """QIDO-RS: the study's series (Modality, SeriesInstanceUID)."""
        with _unavailable():
            return [Dataset.from_json(s) for s in self.web.search_for_series(study_uid)]

    def fetch_series(self, study_uid: str, series_uid: str, folder: Path) -> list[Path]:
        """WADO-RS: a series' instances as stored (compressed stays compressed), written as DICOM files
        into ``folder``. Done with ``requests`` rather than dicomweb-client's retrieve, which refuses
        the parts Orthanc sends without the 128-byte preamble; the files get it back."""
        url = f"{self.dicomweb_url}/studies/{study_uid}/series/{series_uid}"
        with _unavailable():
            response = self.session.get(url, headers={"Accept": AS_STORED}, timeout=self.timeout)
            response.raise_for_status()
        paths = []
        for i, part in enumerate(multipart_parts(response)):
            path = folder / f"{series_uid}.{i}.dcm"
            path.write_bytes(part if part[128:132] == b"DICM" else b"\0" * 128 + b"DICM" + part)
            paths.append(path)
        return paths

    def instance_uids(self, study_uid: str, series_uid: str) -> list[str]:
        with _unavailable():
            found = self.web.search_for_instances(study_uid, series_uid, fields=["SOPInstanceUID"])
        return [str(Dataset.from_json(i).SOPInstanceUID) for i in found]

    def store(self, datasets: Sequence[Dataset]) -> None:
        """STOW-RS, one request for the study's result objects."""
        with _unavailable():
            self.web.store_instances(list(datasets))


class PacsNotFound(Exception):
    """The PACS answered 404."""


class _unavailable:
    """Map transport failures and 5xx to PacsUnavailable, 404 to PacsNotFound."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> bool:
        if exc is None:
            return False
        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            raise PacsUnavailable(type(exc).__name__) from None
        if isinstance(exc, requests.HTTPError) and exc.response is not None:
            status = exc.response.status_code
            if status == 404:
                raise PacsNotFound(str(status)) from None
            if status >= 500 or status in (401, 403, 429):
                raise PacsUnavailable(f"HTTP {status}") from None
        return False


def multipart_parts(response: requests.Response) -> list[bytes]:
    """The bodies of a multipart/related answer."""
    kind = response.headers.get("Content-Type", "")
    boundary = next((p.split("=", 1)[1].strip('"') for p in kind.split(";") if p.strip().startswith("boundary=")), "")
    if not boundary:
        raise PacsUnavailable(f"WADO-RS answered {kind.split(';')[0] or 'no content type'}, not multipart")
    parts = []
    for chunk in response.content.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        _headers, _, body = chunk.partition(b"\r\n\r\n")
        parts.append(body[:-2] if body.endswith(b"\r\n") else body)
    return parts
