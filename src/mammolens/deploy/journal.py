"""A batch run's journal: the rows it has finished, in SQLite, keyed by what each row scores.

A CSV journal appended line by line can be torn by ``kill -9`` mid-line, and the next run's first
line then merges with the half line into one valid-looking bogus row. SQLite commits each batch
as one transaction (rolled back on the next open if the process died inside it), so a journal
holds whole batches or nothing of them; a journal killed before its first commit is an empty
database that the next run simply fills. ``synchronous=FULL``: a committed batch survives a
power cut too. The rollback journal is kept between commits (``journal_mode=PERSIST``): a third of
the per-batch cost of creating and deleting it (benchmarks/batch_journal_bench.py); WAL would be
cheaper still but needs shared memory, which a network file system does not give.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from mammolens.errors import ConfigError

SUFFIX = ".journal.sqlite"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS rows (unit TEXT PRIMARY KEY, row TEXT NOT NULL)",
)


def journal_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + SUFFIX)


def remove_journal(path: str | Path) -> None:
    """Delete a journal and SQLite's rollback file beside it."""
    path = Path(path)
    path.unlink(missing_ok=True)
    path.with_name(path.name + "-journal").unlink(missing_ok=True)


class Journal:
    """The finished rows of one output CSV; ``add`` commits a batch at once (use as a context manager)."""

    def __init__(self, path: str | Path, header: Sequence[str]) -> None:
        self.path = Path(path)
        self.header = list(header)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)  # transactions are explicit below
        try:
            self._db.execute("PRAGMA journal_mode=PERSIST")
            self._db.execute("PRAGMA synchronous=FULL")
            self._transaction(self._initialise)
            written = json.loads(self._db.execute("SELECT value FROM meta WHERE name = 'header'").fetchone()[0])
        except sqlite3.DatabaseError:
            self._db.close()
            raise ConfigError("is not a journal this version can read (an SQLite database of finished rows); "
                              "pass --force to start over", path=self.path) from None  # fmt: skip
        if written != self.header:
            self._db.close()
            raise ConfigError(f"was written for other columns ({', '.join(written)}); "
                              "pass --force to start over, or --out another file", path=self.path)  # fmt: skip

    def _initialise(self, db: sqlite3.Connection) -> None:
        """Tables and header in one transaction: a journal is empty (0 bytes) or whole, never half set up."""
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('header', ?)", (json.dumps(self.header),))

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            work(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def add(self, keyed_rows: Iterable[tuple[Sequence[str], dict[str, str]]]) -> None:
        """Record rows (a row already there for the same unit, e.g. a failed one retried, is replaced)."""
        items = [(json.dumps(list(key)), json.dumps({c: row[c] for c in self.header})) for key, row in keyed_rows]
        self._transaction(lambda db: db.executemany("INSERT OR REPLACE INTO rows VALUES (?, ?)", items))

    def rows(self) -> dict[tuple[str, ...], dict[str, str]]:
        return {tuple(json.loads(unit)): json.loads(row) for unit, row in self._db.execute("SELECT unit, row FROM rows")}

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
