"""A finished run read back from its directory: results.json (manifest + rows) and samples.jsonl."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..conditions import REFERENCE
from ..errors import UserError
from ..results import RESULTS, SAMPLES
from ..stats import cluster_index


@dataclass
class RunData:
    """`samples`: one dict per (example, condition, method), as in samples.jsonl."""

    run_dir: Path
    manifest: dict
    rows: list[dict]
    samples: list[dict]
    conditions: list[str] = field(default_factory=list)  # suite order
    methods: list[str] = field(default_factory=list)  # suite order; the reference first when present
    published: dict | None = None  # results.json's run beside the published figures (beside_published)
    subsets: dict = field(default_factory=dict)  # results.json's `subsets` sections (robust_atp.subsets)

    @property
    def reference(self) -> str | None:
        return REFERENCE if REFERENCE in self.methods else None

    def stats_config(self) -> dict:
        """The suite's `stats` section (defaults when the run predates it)."""
        cfg = {"confidence": 0.95, "bootstrap": 10_000, "cluster_by": "image_id", "correction": "maxt"}
        cfg.update((self.manifest.get("config") or {}).get("stats") or {})
        return cfg

    def score_matrix(self, cluster_by: str = "image_id") -> tuple[np.ndarray, dict, list[str], np.ndarray]:
        """(X: [E, K] scores, NaN = missing; column of (condition, method); example ids [E];
        cluster ids [E] from each example's `cluster_by` field)."""
        examples: dict[str, int] = {}
        cluster_of: list = []
        for s in self.samples:
            if s["example_id"] not in examples:
                examples[s["example_id"]] = len(examples)
                cluster_of.append(s.get(cluster_by, s["example_id"]))
        col = {(c, m): k for k, (c, m) in enumerate((c, m) for c in self.conditions for m in self.methods)}
        X = np.full((len(examples), len(col)), np.nan)
        for s in self.samples:
            k = col.get((s["condition"], s["method"]))
            if k is not None:
                X[examples[s["example_id"]], k] = float(s["score"])
        return X, col, list(examples), cluster_index(cluster_of)


def load_run(path: str | Path) -> RunData:
    """A run directory, or a results.json whose sibling samples.jsonl holds the per-example rows.
    Raises UserError (one line naming the file) on anything unreadable."""
    path = Path(path)
    results = path / RESULTS if path.is_dir() else path
    if not results.is_file():
        what = "no results.json in this run directory" if path.is_dir() else "no such run directory or results.json"
        raise UserError(f"{results if path.is_dir() else path}: {what}")
    try:
        data = json.loads(results.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{results}: not valid JSON ({e})") from None
    except OSError as e:
        raise UserError(f"{results}: cannot read ({e.strerror})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise UserError(f"{results}: rows: missing (not a run's results.json)")
    manifest = data.get("manifest") if isinstance(data.get("manifest"), dict) else {}
    samples_path = results.with_name(SAMPLES)
    if not samples_path.is_file():
        raise UserError(f"{samples_path}: no such file (the per-example rows are needed)")
    samples = []
    try:
        lines = samples_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{samples_path}: not UTF-8 text") from None
    except OSError as e:
        raise UserError(f"{samples_path}: cannot read ({e.strerror})") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            s = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{samples_path}: line {i}: not valid JSON ({e.msg})") from None
        if not isinstance(s, dict) or not {"example_id", "condition", "method", "score"} <= s.keys():
            raise UserError(f"{samples_path}: line {i}: needs example_id, condition, method and score")
        if (isinstance(s["score"], bool) or not isinstance(s["score"], (int, float))
                or not math.isfinite(s["score"])):
            raise UserError(f"{samples_path}: line {i}: score: must be a finite number, got {s['score']!r}")
        samples.append(s)
    if not samples:
        raise UserError(f"{samples_path}: no samples")
    published = data.get("published") if isinstance(data.get("published"), dict) else None
    subsets = data.get("subsets") if isinstance(data.get("subsets"), dict) else {}
    return run_data(results.parent, manifest, data["rows"], samples, published, subsets)


def run_data(run_dir: Path, manifest: dict, rows: list[dict], samples: list[dict], published: dict | None = None,
             subsets: dict | None = None) -> RunData:
    """A run from its parts: conditions and methods in the manifest's order (the reference first)."""
    conditions = _ordered(manifest.get("conditions"), (s["condition"] for s in samples))
    labels = [m.get("label") for m in manifest.get("methods") or [] if isinstance(m, dict)]
    methods = _ordered(labels, (s["method"] for s in samples))
    if REFERENCE in methods:
        methods.remove(REFERENCE)
        methods.insert(0, REFERENCE)
    return RunData(Path(run_dir), manifest, rows, samples, conditions, methods, published, subsets or {})


def _ordered(declared, seen) -> list[str]:
    """The declared order, restricted to what occurs, then anything undeclared in order of appearance."""
    present = dict.fromkeys(seen)
    out = [x for x in (declared or []) if x in present]
    return out + [x for x in present if x not in out]
