"""Run a suite: `python -m robust_atp.run SUITE [--out DIR] [--limit N] [--batch-size B]
[--device cpu|cuda] [--threads N] [--procs N|auto] [--fresh] [--no-report]`.

Writes into the run directory (default reports/<suite name>/):
  predictions.sqlite  every prediction, the resume point (rerunning continues where a run stopped)
  results.json        manifest + one row per (condition, method)
  samples.jsonl       one line per (example, condition, method)
  report.html, report.pdf, plots/   the statistics report (`--no-report` skips it)
and prints a summary table. A user error prints one line and exits with status 2.

Data-parallel: `--procs N` on one machine (`launch`; on the CPU the default starts one process
per thread when the weights fit), or `torchrun --nproc-per-node N -m robust_atp.run SUITE` /
`accelerate launch --multi_gpu --num_processes N -m robust_atp.run SUITE` (see `distributed`).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import UserError


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m robust_atp.run", description="Run a robustness suite.")
    ap.add_argument("suite", help="suite YAML file, e.g. suites/demo.yaml")
    ap.add_argument("--out", type=Path, help="run directory (default: reports/<suite name>)")
    ap.add_argument("--limit", type=int, help="evaluate only the first N examples")
    ap.add_argument("--batch-size", type=int, help="examples per batch (answers do not depend on it)")
    ap.add_argument("--device", help="cpu, cuda, cuda:N or mps (overrides model.device)")
    ap.add_argument("--threads", type=int,
                    help="CPU threads for torch (default: OMP_NUM_THREADS if set, else the idle cores, at most 4)")
    ap.add_argument("--procs", default=os.environ.get("ROBUST_ATP_PROCS", "auto"),
                    help="data-parallel processes on this machine, each on a share of the batches (default auto: "
                         "on the CPU one per thread --threads would give, each with one thread, when that many "
                         "copies of the weights fit in half the free memory; else 1; $ROBUST_ATP_PROCS sets the default)")
    ap.add_argument("--fresh", action="store_true", help="discard an existing run in the run directory")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--no-report", action="store_true", help="skip report.html / report.pdf / plots/")
    ap.add_argument("--check", action="store_true",
                    help="validate the suite, look for its data and print the plan; loads no weights")
    ap.add_argument("--no-cache", action="store_true",
                    help="compute every corrupted image; read and write no corruption cache "
                         "(default cache: $ROBUST_ATP_CACHE or ~/.cache/robust_atp/corruptions)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    try:
        return _run(args, argv)
    except UserError as e:
        from . import distributed

        if not distributed.reports(e):
            return 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") in ("", "0"):  # once per run: the other ranks of a --procs run stay quiet
            print("interrupted: finished units are saved; run the same command again to continue", file=sys.stderr)
        return 130


def _run(args, argv: list[str]) -> int:
    """One invocation: the suite loaded with the command line's overrides, then checked or run."""
    from .suite import load_suite

    overrides = {}
    if args.threads is not None and args.threads <= 0:
        raise UserError(f"--threads: must be a positive integer, got {args.threads}")
    from . import launch

    procs = launch.parse_procs(args.procs)  # checked before anything else, --check included
    for flag, key, check in (("limit", "dataset.limit", lambda v: v > 0), ("batch_size", "batch_size", lambda v: v > 0)):
        value = getattr(args, flag)
        if value is not None:
            if not check(value):
                raise UserError(f"--{flag.replace('_', '-')}: must be a positive integer, got {value}")
            overrides[key] = value
    if args.device:
        overrides["model.device"] = args.device
    suite = load_suite(args.suite, overrides)
    if args.check:
        from .check import check_suite
        return check_suite(suite, Path(args.suite))
    if args.device:  # the suite's own model.device is checked by `evaluate`, before the run directory
        from .models.hf_base import device_problem

        if (problem := device_problem(suite.model.device)) is not None:
            raise UserError(f"{args.suite}: --device (model.device): {problem}")
    from .threads import machine_default, torch_threads

    threads = args.threads or machine_default()
    if not launch.under_launcher() and procs != 1:
        if procs is None:
            procs = launch.auto_procs(suite.model.device, threads, _threads_given(args), _weights(suite),
                                      launch.available_memory(), launch.batches_of(suite.dataset.limit, suite.batch_size))
        if procs > 1:
            return launch.launch(argv, procs, args.threads or max(1, threads // procs))
    from .engine import evaluate

    run_dir = args.out or Path("reports") / suite.name
    use_cache = not args.no_cache
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731

    def finish(outcome) -> None:  # rank 0, the run directory still held
        from .results import RESULTS, SAMPLES
        from .summary import format_summary

        stats, cache = outcome.stats, outcome.cache
        print(format_summary(outcome.rows, outcome.labels, outcome.budgets, published=outcome.published,
                             subsets=outcome.subsets))
        print(f"\nwrote {run_dir / RESULTS} and {run_dir / SAMPLES} ({stats.units_run} of {stats.units_total} units "
              f"computed now, {stats.seconds:.1f}s; corrupted images: {stats.corruption_computed} computed, "
              f"{stats.corruption_hits} from the cache{f' {cache.root}' if use_cache else ' (off)'})", file=sys.stderr)
        if not args.no_report and suite.report.formats:
            from .report.html import build_report

            build_report(run_dir, suite.report.formats, log=log)

    with torch_threads(threads):  # before the model loads
        evaluate(suite, run_dir, Path(args.suite), fresh=args.fresh, progress=not args.no_progress,
                 use_cache=use_cache, log=log, finish=finish)
    return 0


def _threads_given(args) -> bool:
    """--threads, or OMP_NUM_THREADS (which `threads.machine_default` takes as the user's choice)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return args.threads is not None or (env.strip().isdigit() and int(env) > 0)


def _weights(suite) -> int | None:
    """Bytes of the suite's local weight files (VLM and CLIP), None when one is a hub id."""
    from . import launch
    from .models.base import resolve_checkpoint

    refs = [suite.model.checkpoint] + ([suite.model.clip] if suite.model.clip else [])
    return launch.weight_bytes([resolve_checkpoint(r) for r in refs])


if __name__ == "__main__":
    raise SystemExit(main())
