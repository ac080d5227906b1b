"""When a report is up to date: a hash of everything its contents depend on, written next to it.

The report is a deterministic function (seeded bootstrap and tests) of samples.jsonl, results.json,
the report settings (formats, bootstrap count, the suite's `stats` and `report` sections) and the
code that analyses and draws. Resuming a finished run rewrites results.json with a new `created`
time, commit and engine timings: those bookkeeping fields change no number or figure and are left
out, so a rerun that computed nothing does not rebuild the report (the report keeps showing the
manifest of the run that produced its numbers).
"""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

FINGERPRINT = "report.fingerprint.json"
# manifest fields a resumed run rewrites without changing any result
VOLATILE = ("created", "git_commit", "engine", "processes", "suite_file")
# what the report's numbers and pictures are computed by (relative to the package root)
CODE = ("report", "stats", "conditions.py", "metrics/robustness.py", "perturb/image.py", "data/base.py")
LIBRARIES = ("numpy", "matplotlib", "seaborn", "jinja2", "weasyprint")


def fingerprint(run_dir: Path, formats, n_boot: int | None) -> str:
    h = hashlib.sha256()
    h.update(_file_digest(run_dir / "samples.jsonl").encode())
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    if not isinstance(results, dict) or not isinstance(results.get("manifest") or {}, dict):
        raise ValueError("not a run's results.json")  # load_run reports it
    manifest = {k: v for k, v in (results.get("manifest") or {}).items() if k not in VOLATILE}
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    settings = {"formats": sorted(formats), "n_boot": n_boot, "stats": config.get("stats"),
                "report": config.get("report")}
    for part in ({"rows": results.get("rows"), "manifest": manifest}, settings, code_version()):
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def code_version() -> dict:
    """Digests of the report's own code (and what it calls to compute or redraw) and library versions."""
    root = Path(__file__).resolve().parent.parent
    files = {}
    for rel in CODE:
        path = root / rel
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".py", ".j2")) if path.is_dir() \
            else ([path] if path.is_file() else [])
        for p in found:
            files[str(p.relative_to(root))] = _file_digest(p)
    versions = {}
    for dist in LIBRARIES:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"files": files, "versions": versions}


def unchanged(run_dir: Path, key: str, outputs: dict[str, Path]) -> bool:
    """True when the stored fingerprint is `key` and every file the build wrote still exists."""
    path = run_dir / FINGERPRINT
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(stored, dict) or stored.get("fingerprint") != key:
        return False
    files = [run_dir / f for f in stored.get("files") or []]
    return all(p.is_file() for p in list(outputs.values()) + files)


def record(run_dir: Path, key: str, written: list[Path]) -> None:
    files = sorted(str(p.relative_to(run_dir)) for p in written)
    (run_dir / FINGERPRINT).write_text(json.dumps({"fingerprint": key, "files": files}, indent=1) + "\n",
                                       encoding="utf-8")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
