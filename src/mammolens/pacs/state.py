"""The node's memory in SQLite: where it is in the PACS's change feed, and every study it saw.

A study is ``pending`` (stable, not yet done), ``running`` (being processed: a node that died
leaves it so, and the next start takes it up again), ``done`` (results stored; ``problems`` lists
instances that were skipped and why), ``ignored`` (no mammography for presentation in it) or
``failed`` (with why, after ``max_attempts``). The cursor moves in the same transaction as the
studies it revealed, so a crash never loses a study nor queues one twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("pending", "running", "done", "ignored", "failed")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cursor (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    uid TEXT PRIMARY KEY, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '', problems TEXT NOT NULL DEFAULT '[]',
    stable_at REAL NOT NULL, started_at REAL, finished_at REAL, timings TEXT NOT NULL DEFAULT '{}',
    n_views INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS studies_status ON studies (status, stable_at);
"""


@dataclass(frozen=True)
class Study:
    uid: str
    status: str
    attempts: int
    reason: str
    problems: list[str]
    stable_at: float
    started_at: float | None
    finished_at: float | None
    timings: dict[str, float]
    n_views: int


class State:
    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None, timeout=30, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def cursor(self) -> int | None:
        row = self.db.execute("SELECT seq FROM cursor WHERE name = 'changes'").fetchone()
        return None if row is None else int(row[0])

    def advance(self, seq: int, stable: list[str]) -> int:
        """Move the cursor to ``seq`` and queue the studies that became stable; returns how many were new."""
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            new = 0
            for uid in stable:
                new += self.db.execute("INSERT OR IGNORE INTO studies (uid, status, stable_at) VALUES (?, 'pending', ?)",
                                       (uid, now)).rowcount  # fmt: skip
            self.db.execute("INSERT INTO cursor (name, seq) VALUES ('changes', ?) "
                            "ON CONFLICT(name) DO UPDATE SET seq = excluded.seq", (seq,))  # fmt: skip
        return new

    def next_pending(self) -> Study | None:
        """The oldest study to (re)do: pending, or left running by a node that stopped."""
        row = self.db.execute("SELECT * FROM studies WHERE status IN ('running', 'pending') "
                              "ORDER BY stable_at, uid LIMIT 1").fetchone()  # fmt: skip
        return None if row is None else _study(row)

    def start(self, uid: str) -> int:
        """Mark running; returns the attempt number."""
        with self.db:
            self.db.execute("UPDATE studies SET status = 'running', attempts = attempts + 1, started_at = ? "
                            "WHERE uid = ?", (time.time(), uid))  # fmt: skip
        return int(self.db.execute("SELECT attempts FROM studies WHERE uid = ?", (uid,)).fetchone()[0])

    def finish(self, uid: str, status: str, *, reason: str = "", problems: list[str] | None = None,
               timings: dict[str, Any] | None = None, n_views: int = 0) -> None:  # fmt: skip
        assert status in STATUSES
        with self.db:
            self.db.execute("UPDATE studies SET status = ?, reason = ?, problems = ?, timings = ?, n_views = ?, "
                            "finished_at = ? WHERE uid = ?",
                            (status, reason, json.dumps(problems or []), json.dumps(timings or {}), n_views,
                             time.time(), uid))  # fmt: skip

    def retry_later(self, uid: str) -> None:
        """The PACS failed under this study: back to pending, the attempt not counted against it."""
        with self.db:
            self.db.execute("UPDATE studies SET status = 'pending', attempts = MAX(attempts - 1, 0) WHERE uid = ?",
                            (uid,))  # fmt: skip

    def studies(self, status: str | None = None) -> list[Study]:
        rows = self.db.execute("SELECT * FROM studies" + (" WHERE status = ?" if status else "") + " ORDER BY stable_at",
                               (status,) if status else ()).fetchall()  # fmt: skip
        return [_study(r) for r in rows]

    def counts(self) -> dict[str, int]:
        return {s: n for s, n in self.db.execute("SELECT status, COUNT(*) FROM studies GROUP BY status")}


def _study(row: tuple) -> Study:
    uid, status, attempts, reason, problems, stable_at, started_at, finished_at, timings, n_views = row
    return Study(uid, status, attempts, reason, json.loads(problems), stable_at, started_at, finished_at,
                 json.loads(timings), n_views)  # fmt: skip
