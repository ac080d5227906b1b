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

    def claim(self, suite_name: str, config_hash: str) -> None:
        """Bind an empty store to a suite config, or check that it already holds that config."""
        meta = self.meta()
        if meta and meta.get("schema") != SCHEMA_VERSION:
            raise UserError(f"{self.path.parent}: holds a run store of format {meta.get('schema')}, this version "
                            f"writes format {SCHEMA_VERSION}; choose another --out or pass --fresh to discard it")
        if not meta:
            with self.conn:
                self.conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema", SCHEMA_VERSION), ("suite", suite_name), ("config_hash", config_hash)])
            return
        if meta.get("config_hash") != config_hash:
            raise UserError(
                f"{self.path.parent}: holds a run of suite {meta.get('suite')!r} (config {meta.get('config_hash')}), "
                f"not this suite's config {config_hash}; choose another --out or pass --fresh to discard it")

    # ------------------------------------------------------------------ rows

    def done(self) -> set[tuple[str, str, str]]:
        return set(self.conn.execute("SELECT example_id, condition, method FROM predictions"))

    def put(self, rows: list[Prediction]) -> None:
        with self.conn:
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
        with self.conn:
            self.conn.execute(self._COST_SCHEMA)
            self.conn.executemany("INSERT OR REPLACE INTO cost VALUES (?, ?, ?, ?)",
                                  [(c, m, b, json.dumps(r, sort_keys=True)) for c, m, b, r in records])

    def cost_rows(self) -> list[tuple[str, str, str, dict]]:
        self.conn.execute(self._COST_SCHEMA)
        return [(c, m, b, json.loads(r)) for c, m, b, r in
                self.conn.execute("SELECT condition, method, batch, record FROM cost ORDER BY condition, method, batch")]

    def close(self) -> None:
        self.conn.close()
