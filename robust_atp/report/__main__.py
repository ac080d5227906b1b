"""Rebuild a run's report without re-running the model:
`python -m robust_atp.report RUN_DIR [--formats html,pdf] [--bootstrap N]`."""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m robust_atp.report",
                                 description="Build report.html / report.pdf and plots/ for a finished run.")
    ap.add_argument("run_dir", help="a run directory holding results.json and samples.jsonl")
    ap.add_argument("--formats", default=None,
                    help="comma-separated subset of html,pdf (default: the suite's report.formats)")
    ap.add_argument("--bootstrap", type=int, default=None, help="bootstrap resamples (default: the suite's stats)")
    args = ap.parse_args(argv)
    try:
        from .html import build_report
        from .rundata import load_run

        formats = _formats(args.formats, args.run_dir, load_run)
        if args.bootstrap is not None and args.bootstrap < 100:
            raise UserError(f"--bootstrap: must be at least 100, got {args.bootstrap}")
        build_report(args.run_dir, formats, n_boot=args.bootstrap, log=lambda s: print(s, file=sys.stderr))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _formats(text, run_dir, load_run) -> list[str]:
    if text is None:
        cfg = (load_run(run_dir).manifest.get("config") or {}).get("report") or {}
        return list(cfg.get("formats") or ["html", "pdf"])
    formats = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("html", "pdf")]
    if bad or not formats:
        raise UserError(f"--formats: must be a comma-separated subset of html,pdf, got {text!r}")
    return formats


if __name__ == "__main__":
    raise SystemExit(main())
