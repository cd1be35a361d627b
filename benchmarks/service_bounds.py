"""The service's resource bounds on a real uvicorn server, as ratios to bounds measured in the same run.

1. A chunked upload of --upload-mb streamed at a 2 MiB limit: the bytes the client got out before the
   413, and the most bytes this process held in temp files (unnamed, read through /proc/self/fd),
   each over the limit.
2. /health latency while --slow requests ask for a heatmap that takes --cam-s seconds (timeout
   --timeout-s, --in-flight workers), over its latency on the idle server; the status codes.

    python benchmarks/service_bounds.py BUNDLE [--upload-mb 200] [--slow 20]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import socket
import statistics
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import uvicorn
from PIL import Image

from mammolens.deploy.predictor import Predictor
from mammolens.deploy.service import ServiceConfig, create_app

MiB = 1 << 20


@contextmanager
def serving(app):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def held(folder: str) -> int:
    total = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(folder):
                total += os.fstat(int(fd)).st_size
        except OSError:
            continue
    return total


def upload(predictor: Predictor, megabytes: int) -> dict:
    limit = 2 * MiB
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    cache_dir()  # torch pins its inductor cache folder under the temp folder of the moment: before ours
    folder = tempfile.mkdtemp(dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    tempfile.tempdir = folder
    most, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            most[0] = max(most[0], held(folder))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n").encode()
    with serving(create_app(predictor, ServiceConfig(max_upload_bytes=limit))) as port:
        watcher.start()
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode())  # fmt: skip
        conn.sendall(b"%x\r\n%s\r\n" % (len(head), head))
        sent, t0 = len(head), time.perf_counter()
        try:
            while sent < megabytes * MiB and not select.select([conn], [], [], 0)[0]:
                conn.sendall(b"%x\r\n%s\r\n" % (MiB, b"\x89PNG" + b"\x00" * (MiB - 4)))
                sent += MiB
        except OSError:
            pass
        conn.settimeout(30)
        answer = conn.recv(200)
        seconds = time.perf_counter() - t0
        conn.close()
        stop.set()
        watcher.join()
    tempfile.tempdir = None
    shutil.rmtree(folder, ignore_errors=True)
    return {"status": answer.split(b"\r\n")[0].decode(), "limit_bytes": limit, "upload_bytes": megabytes * MiB,
            "sent_before_answer_over_limit": round(sent / limit, 2), "most_spooled_over_limit": round(most[0] / limit, 3),
            "seconds_to_answer": round(seconds, 3)}  # fmt: skip


def slow_heatmaps(predictor: Predictor, n: int, cam_s: float, timeout_s: float, in_flight: int) -> dict:
    real = predictor.predict

    def slow(*args, heatmap=False, **kwargs):
        if heatmap:
            time.sleep(cam_s)
        return real(*args, **kwargs)

    predictor.predict = slow
    buffer = __import__("io").BytesIO()
    Image.fromarray((np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8)).save(buffer, "PNG")
    png = buffer.getvalue()
    config = ServiceConfig(max_in_flight=in_flight, timeout_s=timeout_s)
    with serving(create_app(predictor, config)) as port, httpx.Client(timeout=60) as client:
        url = f"http://127.0.0.1:{port}"

        def health() -> float:
            t0 = time.perf_counter()
            client.get(f"{url}/health").raise_for_status()
            return time.perf_counter() - t0

        idle = [health() for _ in range(20)]

        def ask(_):
            with httpx.Client(timeout=60) as c:
                return c.post(f"{url}/v1/predict", files={"file": ("a.png", png)}, data={"heatmap": "true"}).status_code

        with ThreadPoolExecutor(n) as pool:
            statuses = pool.map(ask, range(n))
            busy = [health() for _ in range(20)]
            statuses = Counter(statuses)
    predictor.predict = real
    return {"requests": n, "statuses": dict(sorted(statuses.items())), "health_idle_median_ms": round(1000 * statistics.median(idle), 2),
            "health_busy_max_ms": round(1000 * max(busy), 2),
            "health_busy_max_over_idle_median": round(max(busy) / statistics.median(idle), 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--upload-mb", type=int, default=200)
    parser.add_argument("--slow", type=int, default=20)
    parser.add_argument("--cam-s", type=float, default=3.0)
    parser.add_argument("--timeout-s", type=float, default=0.5)
    parser.add_argument("--in-flight", type=int, default=4)
    args = parser.parse_args()
    predictor = Predictor.load(args.bundle)
    print(json.dumps({"upload": upload(predictor, args.upload_mb),
                      "slow_heatmaps": slow_heatmaps(predictor, args.slow, args.cam_s, args.timeout_s, args.in_flight)},
                     indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
