"""The service bounds its resources, checked on a real uvicorn server over real sockets: a chunked
upload is cut off at the limit while the temp file system's free space is watched, slow requests
beyond the cap are refused while /health answers, and no patient name or library text comes out."""

from __future__ import annotations

import getpass
import logging
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import dicom_fixtures
import httpx
import pytest
import uvicorn

from deploy_fixtures import PATIENT_ID, PATIENT_NAME, film, make_bundle, write_dicom, write_png
from mammolens.deploy.predictor import Predictor
from mammolens.deploy.service import ServiceConfig, check_exposure, create_app
from mammolens.utils.errors import ConfigError

MiB = 1 << 20


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("b") / "bundle")


@contextmanager
def serving(app):
    """``app`` on a real uvicorn server on a free loopback port, in a thread; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    # log_config=None: uvicorn's records (tracebacks included) reach the root logger and caplog
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


class TempWatch(threading.Thread):
    """While running: the lowest free space of the temp file system, and the most bytes this process
    held in temp files there. Starlette spools uploads to unnamed temp files, which show in no
    listing, but they take space, and this process's open descriptors still reach them."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path, self.stop, self.lowest, self.most_held = path, threading.Event(), None, 0

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def held(self) -> int:
        total = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith(self.path):
                    total += os.fstat(int(fd)).st_size
            except OSError:  # closed meanwhile
                continue
        return total

    def run(self) -> None:
        while not self.stop.is_set():
            free = self.free()
            self.lowest = free if self.lowest is None else min(self.lowest, free)
            self.most_held = max(self.most_held, self.held())
            time.sleep(0.005)


@pytest.fixture()
def temp(tmp_path, monkeypatch):
    """The process's temp folder, on a file system of its own where there is one (the shared disk's free
    space moves with every other process's writes)."""
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() and os.access(shm, os.W_OK) else tmp_path
    # torch's inductor pins its cache folder (an environment variable) under the temp folder of the
    # moment it first asks: keep it where it was, not in this folder
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR")
                       or str(Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"))  # fmt: skip
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_chunked_200_mb_upload_is_refused_at_the_limit_without_spooling_it(bundle, temp):
    app = create_app(Predictor.load(bundle), ServiceConfig(max_upload_bytes=2 * MiB))
    boundary = "mammolensboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + b"\x89PNG\r\n\x1a\n"  # fmt: skip
    chunk = b"\x00" * MiB
    total = 200 * MiB
    with serving(app) as port:
        watch = TempWatch(str(temp))
        with tempfile.TemporaryFile() as probe:  # the watch sees an unnamed temp file's bytes (not vacuous)
            probe.write(b"\x00" * MiB)
            probe.flush()
            assert watch.held() == MiB
        before = watch.free()
        watch.start()
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode())  # fmt: skip
        conn.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        sent, answer = len(head), b""
        try:
            while sent < total:
                if select.select([conn], [], [], 0)[0]:  # the server answered: stop sending
                    break
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            else:
                tail = f"\r\n--{boundary}--\r\n".encode()
                conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection after answering
        conn.settimeout(30)
        try:
            while b"\r\n\r\n" not in answer and (part := conn.recv(65536)):
                answer += part
            answer += conn.recv(65536)
        except (ConnectionResetError, TimeoutError):
            pass
        conn.close()
        watch.stop.set()
        watch.join()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"2 MiB limit" in answer
    # Refused early: the server answered long before the 200 MB were sent (socket buffers hold a few MB) ...
    assert sent < 32 * MiB, f"{sent / MiB:.0f} MiB sent before the 413"
    # ... and never spooled them: the server's temp files never held more than the limit's worth, and the
    # temp file system's free space dipped by far less than the upload.
    # (how much it holds at a 5 ms sample is timing: the spool may come and go between two samples)
    assert watch.most_held <= 2 * MiB + 64 * 1024, f"{watch.most_held} bytes spooled"
    assert before - watch.lowest < 64 * MiB, f"free space fell by {(before - watch.lowest) / MiB:.0f} MiB"


def test_slow_heatmaps_beyond_the_cap_are_refused_and_health_always_answers(bundle, monkeypatch, tmp_path):
    predictor = Predictor.load(bundle)
    real = predictor.predict

    def slow(*args, heatmap=False, **kwargs):  # a slow CAM: the worker thread is busy for 3 s
        if heatmap:
            time.sleep(3.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor, "predict", slow)
    png = write_png(tmp_path / "a.png", film(1)).read_bytes()
    app = create_app(predictor, ServiceConfig(max_in_flight=4, timeout_s=0.5, retry_after_s=7))
    with serving(app) as port:
        url = f"http://127.0.0.1:{port}"

        def heatmap_request(_):
            with httpx.Client(timeout=30) as client:
                r = client.post(f"{url}/v1/predict", files={"file": ("a.png", png, "image/png")},
                                data={"heatmap": "true"})  # fmt: skip
                return r.status_code, r.headers.get("retry-after"), r.json()["detail"]

        health_times = []
        with ThreadPoolExecutor(20) as pool:
            results = pool.map(heatmap_request, range(20))
            with httpx.Client(timeout=30) as client:
                for _ in range(10):
                    t0 = time.perf_counter()
                    r = client.get(f"{url}/health")
                    health_times.append(time.perf_counter() - t0)
                    assert r.status_code == 200 and r.json()["busy"] <= 4
                    time.sleep(0.05)
            results = list(results)
        statuses = sorted(status for status, _, _ in results)
        # four admitted (each timed out after 0.5 s while its CAM ran on), sixteen refused at once
        assert statuses == [503] * 16 + [504] * 4, statuses
        assert {ra for s, ra, _ in results if s == 503} == {"7"}
        assert all("busy" in d for s, _, d in results if s == 503)
        assert max(health_times) < 2.0, health_times  # stuck behind the CAMs it would wait ~2.5 s or more
        with httpx.Client(timeout=30) as client:
            # the timed-out requests' threads still hold their places: no fifth piece of work starts
            busy = client.get(f"{url}/health").json()["busy"]
            refused = client.post(f"{url}/v1/predict", files={"file": ("a.png", png, "image/png")})
            assert busy == 4 and refused.status_code == 503
            deadline = time.monotonic() + 10  # their CAMs end; the places are free again
            while client.get(f"{url}/health").json()["busy"]:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            ok = client.post(f"{url}/v1/predict", files={"file": ("a.png", png, "image/png")})
            assert ok.status_code == 200, ok.text


def test_a_patient_name_whole_or_truncated_leaks_nowhere(bundle, tmp_path, caplog):
    app = create_app(Predictor.load(bundle))
    whole = write_dicom(tmp_path / "a.dcm", film(2)).read_bytes()
    at = whole.find(PATIENT_NAME.encode())
    # a garbled header that moved the name into a field the reader parses
    pixels = (film(2) * 65535).round().astype("uint16")
    shifted = dicom_fixtures.write_dicom(tmp_path / "w.dcm", pixels, WindowCenter="100", WindowWidth="200").read_bytes()
    shifted = shifted.replace(b"200 ", PATIENT_NAME.encode()[:4])
    cuts = [*range(132, at + 64, 5), *range(at + 64, len(whole), 211)]
    bodies = [whole, shifted, *(whole[:cut] for cut in cuts)]
    secrets = (PATIENT_NAME, *PATIENT_NAME.split("^"), PATIENT_ID, "Saint Nowhere")
    library_words = ("Error:", "Exception", "b'", "reshape", "buffer size", "Traceback")
    with caplog.at_level(logging.DEBUG), serving(app) as port, httpx.Client(timeout=60) as client:
        for body in bodies:
            r = client.post(f"http://127.0.0.1:{port}/v1/predict", files={"file": (f"{PATIENT_NAME}.dcm", body)})
            assert r.status_code in (200, 415, 422), (len(body), r.text)
            for word in (*secrets, *library_words):
                assert word not in r.text, (len(body), r.text)
    ours = [r for r in caplog.records if r.name.startswith(("mammolens", "uvicorn"))]  # not the client's
    logged = "\n".join(logging.Formatter().format(r) + str(r.args) for r in ours)
    assert "predict dcm" in logged  # the service did log these requests
    for word in (*secrets, *library_words):
        assert word not in logged


def test_a_non_loopback_host_needs_a_token(bundle, capsys):
    from mammolens.cli import main

    for host in ("0.0.0.0", "192.168.1.20", "::", "scanner.example.org"):
        with pytest.raises(ConfigError, match="--token"):
            check_exposure(host, None)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        check_exposure(host, None)
    check_exposure("0.0.0.0", "s3cret")
    assert main(["serve", str(bundle), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert "--host 0.0.0.0" in err and "--token" in err and "Traceback" not in err


def test_serve_logs_one_line_per_request_without_the_patient(bundle, tmp_path):
    """The line docs/deploy.md promises (format, size, model, decision), in `mammolens serve`'s own output."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    cli = "import sys; from mammolens.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", cli, "serve", str(bundle), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    dicom = write_dicom(tmp_path / "a.dcm", film(3)).read_bytes()
    try:
        with httpx.Client(timeout=10) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    model_id = client.get(f"http://127.0.0.1:{port}/health").json()["model_id"]
                    break
                except httpx.TransportError:
                    assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
                    time.sleep(0.2)
            r = client.post(f"http://127.0.0.1:{port}/v1/predict", files={"file": (f"{PATIENT_NAME}.dcm", dicom)})
            assert r.status_code == 200, r.text
            decision = r.json()["decision"]
            cut = client.post(f"http://127.0.0.1:{port}/v1/predict", files={"file": ("x.dcm", dicom[:700])})
            assert cut.status_code == 422
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0].decode()
    assert f"predict dcm {len(dicom)} bytes 96x96 {model_id} -> {decision} in " in output, output
    assert "predict dcm: refused 422" in output
    for secret in (PATIENT_NAME, "Doe", "Jane", PATIENT_ID):
        assert secret not in output
