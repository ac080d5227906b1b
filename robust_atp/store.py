"""The SQLite run store: one row per (example, condition, method), the resume point.

Rows are written in one transaction per unit of work (a batch under one image condition),
so a killed run leaves whole units or nothing; WAL journaling keeps committed units across
a SIGKILL. The primary key makes a doubled row impossible.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import UserError

SCHEMA_VERSION = "2"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS predictions (
    example_id TEXT NOT NULL,
    condition  TEXT NOT NULL,
    method     TEXT NOT NULL,
    prediction TEXT NOT NULL,
    score      REAL NOT NULL,
    scores     TEXT NOT NULL,
    kept       INTEGER NOT NULL,
    kept_idx   TEXT,                -- JSON list of kept token indices; NULL for merging methods
    extra      TEXT NOT NULL,       -- JSON object of per-row measurements (object recall, FLOPs, ...)
    PRIMARY KEY (example_id, condition, method)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Prediction:
    example_id: str
    condition: str
    method: str
    prediction: str
    score: float
    scores: dict
    kept: int
    kept_indices: tuple[int, ...] | None = None  # into the N visual tokens; None when tokens were merged
    extra: dict = field(default_factory=dict)


class RunStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.conn = sqlite3.connect(self.path, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path}: not a usable run store ({e})") from None

    # ------------------------------------------------------------------ identity

    def meta(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT key, value FROM meta"))

    def claim(self, suite_name: str, config_hash: str, rebind_empty: bool = True) -> None:
        """Bind an empty store to a suite config, or check that it already holds that config.
        rebind_empty: a store without predictions may take another config (False when store
        shards of a data-parallel run sit beside it: their rows are its run's)."""
        meta = self.meta()
        if meta and meta.get("schema") != SCHEMA_VERSION:
            raise UserError(f"{self.path.parent}: holds a run store of format {meta.get('schema')}, this version "
                            f"writes format {SCHEMA_VERSION}; choose another --out or pass --fresh to discard it")
        if not meta:
            with self.conn:
                self.conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema", SCHEMA_VERSION), ("suite", suite_name), ("config_hash", config_hash)])
            return
        if meta.get("config_hash") != config_hash and rebind_empty and self.count() == 0:
            # a store with no prediction holds nothing to protect (a run that stopped before its
            # first unit, e.g. on a bad input): it takes the new config
            with self.conn:
                self.conn.executemany("UPDATE meta SET value = ? WHERE key = ?",
                                      [(suite_name, "suite"), (config_hash, "config_hash")])
            return
        if meta.get("config_hash") != config_hash:
            raise UserError(
                f"{self.path.parent}: holds a run of suite {meta.get('suite')!r} (config {meta.get('config_hash')}), "
                f"not this suite's config {config_hash}; choose another --out or pass --fresh to discard it")

    # ------------------------------------------------------------------ rows

    def done(self) -> set[tuple[str, str, str]]:
        return set(self.conn.execute("SELECT example_id, condition, method FROM predictions"))

    def put(self, rows: list[Prediction]) -> None:
        """One transaction: every row or none (a full disk or I/O error rolls the whole unit back)."""
        try:
            with self.conn:
                self._insert(rows)
        except sqlite3.OperationalError as e:
            raise UserError(f"{self.path}: cannot write ({e}); the units committed before are kept, "
                            "run again to continue once there is room") from None

    def _insert(self, rows: list[Prediction]) -> None:
        self.conn.executemany(
            # only a repeated key is skipped (rows are deterministic, so it holds the same
            # answer); OR IGNORE would also drop a row violating NOT NULL without a word
            "INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(example_id, condition, method) DO NOTHING",
            [(r.example_id, r.condition, r.method, r.prediction, float(r.score),
              json.dumps(r.scores, sort_keys=True), int(r.kept),
              None if r.kept_indices is None else json.dumps([int(i) for i in r.kept_indices]),
              json.dumps(r.extra, sort_keys=True)) for r in rows])

    def rows(self) -> Iterator[Prediction]:
        for ex, cond, meth, pred, score, scores, kept, idx, extra in self.conn.execute(
                "SELECT example_id, condition, method, prediction, score, scores, kept, kept_idx, extra "
                "FROM predictions"):
            yield Prediction(ex, cond, meth, pred, score, json.loads(scores), kept,
                             None if idx is None else tuple(json.loads(idx)), json.loads(extra))

    def merge(self, shard: Path) -> int:
        """Copy a shard's rows (another process's store of the same run) into this store in one
        transaction; returns the rows added. A key both hold must hold the same answer (prediction,
        scores, kept tokens; `extra` may hold timings and is not compared), else UserError and
        nothing is merged. The caller deletes the shard only after this returns."""
        shard = Path(shard)
        try:
            src = sqlite3.connect(shard, timeout=30)
            theirs = dict(src.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as e:
            raise UserError(f"{shard}: not a usable store shard ({e}); move it away to drop its rows") from None
        try:
            mine = self.meta()
            if theirs.get("config_hash") != mine.get("config_hash") or theirs.get("schema") != mine.get("schema"):
                raise UserError(f"{shard}: a shard of suite {theirs.get('suite')!r} (config {theirs.get('config_hash')}) "
                                f"beside a run of config {mine.get('config_hash')}; move it away or pass --fresh")
            before = self.count()
            try:
                with self.conn:
                    for batch in _chunks(src.execute("SELECT * FROM predictions"), 5000):
                        self._check_same(shard, batch)
                        self.conn.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                                              "ON CONFLICT(example_id, condition, method) DO NOTHING", batch)
                    # measured cost (a suite's `cost:` option) of the shard's sampled batches; a
                    # record the store already holds stays (measurements differ run to run)
                    has_cost = src.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'cost'").fetchone()
                    if has_cost:
                        self.conn.execute(self._COST_SCHEMA)
                        self.conn.executemany("INSERT OR IGNORE INTO cost VALUES (?, ?, ?, ?)",
                                              src.execute("SELECT condition, method, batch, record FROM cost"))
            except sqlite3.OperationalError as e:
                raise UserError(f"{self.path}: cannot merge {shard.name} ({e}); nothing of it was merged") from None
            return self.count() - before
        finally:
            src.close()

    def _check_same(self, shard: Path, rows: list[tuple]) -> None:
        for row in rows:
            have = self.conn.execute(
                "SELECT prediction, score, scores, kept, kept_idx FROM predictions "
                "WHERE example_id = ? AND condition = ? AND method = ?", row[:3]).fetchone()
            if have is not None and tuple(have) != tuple(row[3:8]):
                raise UserError(f"{shard}: row {row[:3]} answers {row[3]!r} (score {row[4]}), the run store "
                                f"{have[0]!r} (score {have[1]}): computed differently (another device or "
                                "version?); move the shard away to drop its rows")

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]

    # ------------------------------------------------------------------ measured cost

    # Measured cost (latency, memory, counted FLOPs) of sampled batches, per (condition, method,
    # batch): kept apart from the predictions, which it never changes, so a resumed run still
    # reports it and turning it on does not invalidate an accuracy-only store.
    _COST_SCHEMA = ("CREATE TABLE IF NOT EXISTS cost (condition TEXT NOT NULL, method TEXT NOT NULL, "
                    "batch TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (condition, method, batch)) WITHOUT ROWID")

    def cost_done(self) -> set[tuple[str, str, str]]:
        self.conn.execute(self._COST_SCHEMA)
        return set(self.conn.execute("SELECT condition, method, batch FROM cost"))

    def put_cost(self, records: list[tuple[str, str, str, dict]]) -> None:
        """records: (condition, method, batch key, measurements)."""
        try:
            with self.conn:
                self.conn.execute(self._COST_SCHEMA)
                self.conn.executemany("INSERT OR REPLACE INTO cost VALUES (?, ?, ?, ?)",
                                      [(c, m, b, json.dumps(r, sort_keys=True)) for c, m, b, r in records])
        except sqlite3.OperationalError as e:
            raise UserError(f"{self.path}: cannot write ({e}); the units committed before are kept, "
                            "run again to continue once there is room") from None

    def cost_rows(self) -> list[tuple[str, str, str, dict]]:
        self.conn.execute(self._COST_SCHEMA)
        return [(c, m, b, json.loads(r)) for c, m, b, r in
                self.conn.execute("SELECT condition, method, batch, record FROM cost ORDER BY condition, method, batch")]

    def close(self) -> None:
        self.conn.close()


def read_done(path: Path) -> set[tuple[str, str, str]]:
    """The (example, condition, method) keys of a store, read-only (empty when there is none)."""
    return _read_keys(path, "predictions", "SELECT example_id, condition, method FROM predictions")


def read_cost_done(path: Path) -> set[tuple[str, str, str]]:
    """The (condition, method, batch) keys of a store's measured cost, read-only."""
    return _read_keys(path, "cost", "SELECT condition, method, batch FROM cost")


def _read_keys(path: Path, table: str, query: str) -> set:
    if not Path(path).is_file():
        return set()
    con = sqlite3.connect(path, timeout=30)  # reads only (a read-only open of a WAL store can fail)
    try:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
            return set()
        return set(con.execute(query))
    finally:
        con.close()


def _chunks(cursor, n: int):
    while rows := cursor.fetchmany(n):
        yield rows
