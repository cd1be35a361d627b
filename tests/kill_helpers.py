"""`mammolens predict` in a child process, sent SIGKILL at a chosen moment (the hard-kill tests).

The child's batches are made to take a known time (``seconds_per_batch``, a sleep before each batch
is scored, through a ``sitecustomize`` that Ray's worker processes load too), and the final CSV can
wait a while after the last batch, so that "mid-run" and "all batches done, no CSV yet" are moments
the test can reach on a busy machine; the kill itself is a real ``SIGKILL`` of the
child and every process of its session: a Ray driver's local cluster, whose workers sit in process
groups of their own (left alone, an orphaned actor finishes its batch and writes one more shard).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import mammolens

_SLOW_BATCHES = """
import os

if os.environ.get("MAMMOLENS_TEST_SECONDS_PER_BATCH"):
    import time

    from mammolens.deploy import batch

    _score = batch._score

    def _slow_score(*args, **kwargs):
        time.sleep(float(os.environ["MAMMOLENS_TEST_SECONDS_PER_BATCH"]))
        return _score(*args, **kwargs)

    batch._score = _slow_score

if os.environ.get("MAMMOLENS_TEST_SECONDS_BEFORE_FINISH"):
    import time

    from mammolens.deploy import batch

    _finish = batch.finish

    def _late_finish(*args, **kwargs):
        time.sleep(float(os.environ["MAMMOLENS_TEST_SECONDS_BEFORE_FINISH"]))
        return _finish(*args, **kwargs)

    batch.finish = _late_finish
"""


def start_predict(args: Sequence[str], site: Path, seconds_per_batch: float, seconds_before_finish: float = 0.0
                  ) -> subprocess.Popen:  # fmt: skip
    """``mammolens predict ARGS`` in a new process group; ``site``: a folder for the sitecustomize.
    ``seconds_before_finish``: a pause (local engine) between the last batch and the final CSV."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(_SLOW_BATCHES)
    src = str(Path(mammolens.__file__).parents[1])
    path = os.pathsep.join(p for p in (str(site), src, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "MAMMOLENS_TEST_SECONDS_PER_BATCH": str(seconds_per_batch),
           "MAMMOLENS_TEST_SECONDS_BEFORE_FINISH": str(seconds_before_finish or "")}  # fmt: skip
    code = "import sys; from mammolens.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "predict", *args], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def kill_when(child: subprocess.Popen, ready: Callable[[], bool], *, after: float = 0.0, timeout: float = 240) -> None:
    """SIGKILL ``child``'s process group ``after`` seconds once ``ready()`` holds (polled every 2 ms)."""
    deadline = time.monotonic() + timeout
    while not ready():
        if child.poll() is not None:
            raise AssertionError(f"predict ended (exit {child.returncode}) before the kill point:\n"
                                 f"{child.stdout.read().decode(errors='replace')}")  # fmt: skip
        if time.monotonic() > deadline:
            os.killpg(child.pid, signal.SIGKILL)
            raise AssertionError(f"the kill point was not reached in {timeout} s")
        time.sleep(0.002)
    time.sleep(after)
    assert child.poll() is None, "predict ended before the kill"
    os.killpg(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    child.stdout.close()
    _kill_session(child.pid)


def _kill_session(sid: int) -> None:
    """SIGKILL what is left of the session ``sid`` (the child started it: these are its descendants)."""
    for _ in range(100):
        alive = [pid for pid in _session(sid) if not _zombie(pid)]
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    raise AssertionError(f"processes of the killed run survive: {alive}")


def _session(sid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if os.getsid(int(name)) == sid:
                    found.append(int(name))
    return found


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True  # gone


def journal_rows(path: Path) -> int:
    """Rows committed to a journal so far, read beside the writer (0 before its tables exist)."""
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
            return db.execute("SELECT count(*) FROM rows").fetchone()[0]
    except sqlite3.Error:
        return 0
