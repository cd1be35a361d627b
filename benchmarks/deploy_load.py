"""Load test of `mammolens serve` from a second process on loopback: sequential, then N-way concurrent
phases one after another.

Starts the server as a subprocess on a free port, uploads one film over and over (bounded by time and
count), and reports per phase requests/s, p50/p95/p99 latency, errors and the server's RSS after it:
with several concurrent phases in a row, flat memory under concurrency shows (or not) as equal RSS
after each of them.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/deploy_load.py /tmp/na/bundle ../shared/data/mias/mdb001.png \
        --seconds 30 --concurrent-phases 3
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def phase(url: str, data: bytes, workers: int, seconds: float, max_requests: int) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def worker() -> None:
        with httpx.Client(timeout=120) as client:
            while time.perf_counter() < deadline:
                with lock:
                    if len(latencies) + sum(errors.values()) >= max_requests:
                        return
                t = time.perf_counter()
                try:
                    r = client.post(url + "/v1/predict", files={"file": ("film.png", data, "image/png")})
                    status = str(r.status_code) if r.status_code != 200 else ""
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                dt = time.perf_counter() - t
                with lock:
                    if status:
                        errors[status] = errors.get(status, 0) + 1
                    else:
                        latencies.append(dt)

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for _ in range(workers):
            pool.submit(worker)
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "workers": workers, "seconds": round(wall, 1), "ok": len(latencies), "errors": errors,
        "rps": round(len(latencies) / wall, 2),
        **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) if len(ms) else None for q in (50, 95, 99)},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("image")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--concurrent-phases", type=int, default=3, help="concurrent phases in a row (RSS after each)")
    ap.add_argument("--max-requests", type=int, default=20000)
    ap.add_argument("--backend", default="torch")
    args = ap.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mammolens.cli", "serve", args.bundle, "--port", str(port), "--backend", args.backend],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300  # start-up imports torch and the explanation stack: slow when busy
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        data = open(args.image, "rb").read()
        phase(url, data, 1, 5, 3)  # warm up: first-call allocations are not the steady state
        out = {"backend": args.backend, "image_bytes": len(data), "load_average_start": os.getloadavg(),
               "rss_mib_start": round(rss_mib(server.pid), 1)}  # fmt: skip
        phases = [("sequential", 1)] + [(f"concurrent {i + 1}", args.concurrency) for i in range(args.concurrent_phases)]
        out["phases"] = []
        for name, workers in phases:
            row = {"phase": name, **phase(url, data, workers, args.seconds, args.max_requests)}
            row["rss_mib_after"] = round(rss_mib(server.pid), 1)
            row["load_average_after"] = round(os.getloadavg()[0], 1)
            out["phases"].append(row)
            print(json.dumps(row), flush=True)
        print(json.dumps(out, indent=2))
        print(f"\nRSS after warm-up {out['rss_mib_start']} MiB\n\n| phase | requests | errors | req/s | p50 ms | p95 ms | "
              "p99 ms | RSS after, MiB | load avg |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in out["phases"]:
            errors = sum(r["errors"].values())
            print(f"| {r['phase']} ({r['workers']} client{'s' if r['workers'] > 1 else ''}) | {r['ok'] + errors} | {errors} | "
                  f"{r['rps']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['rss_mib_after']} | {r['load_average_after']} |")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
