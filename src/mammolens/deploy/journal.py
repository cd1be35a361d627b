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

from mammolens.utils.errors import ConfigError

SUFFIX = ".journal.sqlite"

# SQLite's failures, said in the project's words (the library's messages can name internals)
_WHY = {
    "SQLITE_BUSY": "another run is writing it (two predicts into one --out?); wait for it, or --out another file",
    "SQLITE_FULL": "the disk is full",
    "SQLITE_READONLY": "it is read-only",
    "SQLITE_CANTOPEN": "it cannot be created or opened (is the folder writable?)",
}
_FOREIGN = "is not a journal this version can read (an SQLite database of finished rows); pass --fresh to start over"

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

    busy_seconds = 30.0  # how long to wait for another connection's transaction

    def __init__(self, path: str | Path, header: Sequence[str]) -> None:
        self.path = Path(path)
        self.header = list(header)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_seconds)  # explicit transactions
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        try:
            self._db.execute("PRAGMA journal_mode=PERSIST")
            self._db.execute("PRAGMA synchronous=FULL")
            self._transaction(self._initialise)
            written = json.loads(self._db.execute("SELECT value FROM meta WHERE name = 'header'").fetchone()[0])
        except (sqlite3.Error, ConfigError) as exc:
            self._db.close()
            raise (exc if isinstance(exc, ConfigError) else self._error(exc)) from None
        if written != self.header:
            self._db.close()
            raise ConfigError(f"was written for other columns ({', '.join(written)}); "
                              "pass --fresh to start over, or --out another file", path=self.path)  # fmt: skip

    def _initialise(self, db: sqlite3.Connection) -> None:
        """Tables and header in one transaction: a journal is empty (0 bytes) or whole, never half set up."""
        for statement in _SCHEMA:
            db.execute(statement)
        db.execute("INSERT OR IGNORE INTO meta VALUES ('header', ?)", (json.dumps(self.header),))

    def _error(self, exc: sqlite3.Error) -> ConfigError:
        why = _WHY.get(getattr(exc, "sqlite_errorname", ""))
        return ConfigError(f"cannot be written: {why}" if why else _FOREIGN, path=self.path)

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                work(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise self._error(exc) from None

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
