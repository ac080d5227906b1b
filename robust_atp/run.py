"""Run a suite: `python -m robust_atp.run SUITE [--out DIR] [--limit N] [--batch-size B]
[--device cpu|cuda] [--fresh] [--no-report]`.

Writes into the run directory (default reports/<suite name>/):
  predictions.sqlite  every prediction, the resume point (rerunning continues where a run stopped)
  results.json        manifest + one row per (condition, method)
  samples.jsonl       one line per (example, condition, method)
  report.html, report.pdf, plots/   the statistics report (`--no-report` skips it)
and prints a summary table. A user error prints one line and exits with status 2.

Data-parallel: `torchrun --nproc-per-node N -m robust_atp.run SUITE` or `accelerate launch
--multi_gpu --num_processes N -m robust_atp.run SUITE` (see `distributed`).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from .errors import UserError

RESULTS, SAMPLES, STORE = "results.json", "samples.jsonl", "predictions.sqlite"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m robust_atp.run", description="Run a robustness suite.")
    ap.add_argument("suite", help="suite YAML file, e.g. suites/demo.yaml")
    ap.add_argument("--out", type=Path, help="run directory (default: reports/<suite name>)")
    ap.add_argument("--limit", type=int, help="evaluate only the first N examples")
    ap.add_argument("--batch-size", type=int, help="examples per batch (answers do not depend on it)")
    ap.add_argument("--device", help="cpu, cuda, cuda:N or mps (overrides model.device)")
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
    args = parse_args(argv)
    try:
        return _run(args)
    except UserError as e:
        from . import distributed

        if not distributed.reports(e):
            return 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished units are saved; run the same command again to continue", file=sys.stderr)
        return 130


def _run(args) -> int:
    from .suite import load_suite

    overrides = {}
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
    run_dir = args.out or Path("reports") / suite.name
    return execute(suite, Path(args.suite), run_dir, fresh=args.fresh, progress=not args.no_progress,
                   report=not args.no_report, use_cache=not args.no_cache)


def execute(suite, suite_path: Path, run_dir: Path, fresh: bool = False, progress: bool = True,
            report: bool = True, use_cache: bool = True) -> int:
    """Run a suite into run_dir, in one process or as one rank of a data-parallel run
    (torchrun / accelerate launch: see `distributed`)."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one progress bar: the run's

    from . import distributed
    from .data.validate import with_image_checks
    from .conditions import condition_names
    from .engine import run_engine
    from .measure import add_measured_cost
    from .models.base import load_adapter
    from .perturb.cache import CorruptionCache
    from .perturb.image import MIN_SIDE, resolve_image_conditions
    from .perturb.text import resolve_text_conditions
    from .preflight import checked_adapter
    from .prune.methods import validate_method
    from .store import RunStore

    ranks = distributed.from_env()
    device = distributed.rank_device(suite.model.device, ranks)
    if device != suite.model.device:
        suite = suite.model_copy(update={"model": suite.model.model_copy(update={"device": device})})
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731
    torch.manual_seed(suite.seed)
    methods = [validate_method(m) for m in suite.methods]
    image_conditions = resolve_image_conditions(suite.perturbations.image)
    text_conditions = resolve_text_conditions(suite.perturbations.text)
    cross = suite.perturbations.cross
    resolution = suite.perturbations.image.resolution if suite.perturbations.image else None
    cache = CorruptionCache(enabled=use_cache)
    examples = with_image_checks(_load_dataset(suite, suite_path), suite_path,
                                 MIN_SIDE if image_conditions and resolution is None else None)
    conditions = condition_names(image_conditions, suite.include_clean, text_conditions, cross)
    distributed.start(ranks)
    lock = store = None
    try:
        # rank 0 takes the run directory (lock, --fresh, config check, shards an earlier run
        # left) before any rank starts; the others wait for its word
        if ranks.rank == 0:
            failure = None
            try:
                lock, store = _open_run(run_dir, fresh, suite, log)
            except UserError as e:
                failure = e
            distributed.broadcast(None if failure is None else str(failure), ranks)
            if failure is not None:
                raise failure
        elif distributed.broadcast(None, ranks) is not None:
            raise distributed.PeerFailed("rank 0 stopped")
        if progress and ranks.rank == 0:
            procs = f" on {ranks.world} processes" if ranks.parallel else ""
            print(f"{suite.name}: {len(examples)} examples x {len(conditions)} conditions "
                  f"x {len(methods)} methods -> {run_dir}{procs}", file=sys.stderr)
        failure, stats, target, done, cost_done = None, None, store, None, None
        try:  # a user error on one rank reaches the others through the gather below
            if ranks.parallel:  # each rank writes its own shard; what is done is the merged store's
                done = distributed.read_done(run_dir / STORE)
                cost_done = distributed.read_cost_done(run_dir / STORE)
                target = RunStore(distributed.shard_path(run_dir, ranks.rank))
                target.claim(suite.name, suite.config_hash())
            stats = run_engine(examples=examples, methods=methods, image_conditions=image_conditions,
                               adapter_factory=checked_adapter(lambda: load_adapter(suite.model), methods, examples,
                                                               suite, suite_path), store=target, seed=suite.seed,
                               metrics=suite.metrics, batch_size=suite.batch_size,
                               include_clean=suite.include_clean, progress=progress and ranks.rank == 0,
                               text_conditions=text_conditions, cross=cross, resolution=resolution, cache=cache,
                               shard=(ranks.rank, ranks.world), done=done, cost=suite.cost,
                               cost_done=cost_done)
        except UserError as e:
            failure = e
        finally:
            if target is not store:  # a shard
                target.close()
        outcomes = distributed.gather((None if failure is None else str(failure), stats), ranks)
        if failure is not None:
            raise failure
        if ranks.rank != 0:
            return 0
        if any(msg is not None for msg, _ in outcomes):
            raise distributed.PeerFailed("another rank stopped")
        stats = distributed.combine_stats([s for _, s in outcomes])
        distributed.merge_shards(store, run_dir)
        labels = [m.label for m in methods]
        by_key = {(p.example_id, p.condition, p.method): p for p in store.rows()}  # read the store once
        by_key = rescored(by_key, examples, suite.metrics)
        cost_records = this_runs_cost(store.cost_rows(), examples, suite)
        store.close()
        store = None
        rows = summarize(by_key, examples, conditions, labels, suite.metrics)
        add_measured_cost(rows, cost_records)
        manifest = build_manifest(suite, suite_path, examples, conditions, methods, stats, cache)
        manifest["processes"] = ranks.world
        _write_atomic(run_dir / RESULTS, json.dumps({"manifest": manifest, "rows": rows}, indent=2) + "\n")
        _write_atomic(run_dir / SAMPLES,
                      "".join(json.dumps(s) + "\n" for s in samples(by_key, examples, conditions, labels)))
        print(format_summary(rows, labels, method_budgets(methods)))
        print(f"\nwrote {run_dir / RESULTS} and {run_dir / SAMPLES} ({stats.units_run} of {stats.units_total} units "
              f"computed now, {stats.seconds:.1f}s; corrupted images: {stats.corruption_computed} computed, "
              f"{stats.corruption_hits} from the cache{f' {cache.root}' if use_cache else ' (off)'})", file=sys.stderr)
        if report and suite.report.formats:
            from .report.html import build_report

            build_report(run_dir, suite.report.formats, log=log)
        return 0
    finally:
        if store is not None:
            store.close()
        if lock is not None:
            lock.release()
        distributed.stop()


def this_runs_cost(records: list, examples, suite) -> list:
    """The cost records of the batches this run samples (its first `cost.batches` at its batch
    size): records from an earlier run with another batch size, --limit or `batches` are left
    out rather than averaged in."""
    from .data.base import iter_batches
    from .engine import _batch_key

    if not records or not suite.cost.enabled:
        return []
    keys = {_batch_key(b) for b in list(iter_batches(examples, suite.batch_size))[:suite.cost.batches]}
    return [r for r in records if r[2] in keys]


def _open_run(run_dir: Path, fresh: bool, suite, log):
    """Take the run directory: create it, lock it, discard an old run when `fresh`, open and
    claim the store, and merge store shards a data-parallel run left. -> (lock, store)."""
    from . import distributed
    from .lock import RunLock
    from .store import RunStore

    _prepare_dir(run_dir)
    lock = RunLock(run_dir, log).acquire()
    store = None
    try:
        if fresh:
            _discard(run_dir)
        store = RunStore(run_dir / STORE)
        store.claim(suite.name, suite.config_hash(), rebind_empty=not distributed.shard_paths(run_dir))
        distributed.merge_shards(store, run_dir, log)
        return lock, store
    except BaseException:
        if store is not None:
            store.close()
        lock.release()
        raise


def _load_dataset(suite, suite_path: Path):
    from .data.base import load_examples
    from .data.sources import DataMissing

    d = suite.dataset
    kwargs = dict(d.options)
    kwargs.update(split=d.split, limit=d.limit)
    if d.source is not None:
        kwargs["source"] = d.source
    from .data.validate import validate_examples

    try:
        return validate_examples(load_examples(d.loader, **kwargs))
    except TypeError as e:
        raise UserError(f"{suite_path}: dataset.options: {e}") from None
    except DataMissing as e:
        raise UserError(f"{suite_path}: dataset.source: {e}") from None
    except (ValueError, FileNotFoundError) as e:
        raise UserError(f"{suite_path}: dataset: {e}") from None


def _prepare_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{run_dir}: cannot create the run directory ({e.strerror})") from None
    try:  # a real write: os.access says yes to root on a read-only filesystem
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as e:
        raise UserError(f"{run_dir}: the run directory is not writable ({e.strerror})") from None


def _discard(run_dir: Path) -> None:
    """--fresh: the old run's store (and any shards), results and report go."""
    from . import distributed

    for path in [run_dir / STORE] + distributed.shard_paths(run_dir):
        distributed.remove_store(path)
    for name in (RESULTS, SAMPLES, "report.html", "report.pdf"):
        (run_dir / name).unlink(missing_ok=True)
    if (run_dir / "plots").is_dir():
        shutil.rmtree(run_dir / "plots")


def _write_atomic(path: Path, text: str) -> None:
    """Write a whole file or leave the old one: a full disk never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({e.strerror or e}); the predictions are kept in {STORE}, "
                        "run again to write it") from None


# ----------------------------------------------------------------------------- results

def summarize(by_key: dict, examples, conditions: list[str], labels: list[str], metrics: list[str]) -> list[dict]:
    """One row per (condition, method) over the current examples, in suite order.

    `by_key`: the store's predictions keyed by (example id, condition, method). `metrics` holds
    each metric's mean over rows, or its group-level value where `metrics.aggregate` gives one;
    `breakdown` (when present) holds per answer / question type, GQA-OOD head / tail / all,
    CS(k) and captioning scores.

    Cost columns are means over the rows' `extra` (see `measure`): `prefill_tflops`,
    `vision_tflops`, `scorer_tflops`, and `flops_ratio` = mean prefill / mean prefill of the
    method labelled `full` under the same condition (None without one). `object_recall` is the
    mean over rows that have one (selection methods on examples with boxes)."""
    from .conditions import split_condition
    from .metrics import aggregate

    rows, prefill = [], {}
    for cond in conditions:
        corruption, severity = split_condition(cond)
        text, text_severity = split_condition(cond, "text")
        for label in labels:
            preds = [p for ex in examples if (p := by_key.get((ex.id, cond, label))) is not None]
            n = len(preds)
            row = {"condition": cond, "corruption": corruption, "severity": severity, "text": text,
                   "text_severity": text_severity, "method": label,
                   "accuracy": _mean([p.score for p in preds]), "n": n,
                   "kept_tokens": _mean([p.kept for p in preds])}
            row["metrics"] = {m: _mean([p.scores[m] for p in preds]) for m in metrics}
            group = aggregate(metrics, examples, {p.example_id: (p.prediction, p.scores) for p in preds})
            row["metrics"].update(group["metrics"])  # group-level values (corpus CIDEr-D, balanced GQA)
            if group["breakdown"]:
                row["breakdown"] = group["breakdown"]
            for key in ("prefill_flops", "vision_flops", "scorer_flops"):
                xs = [p.extra[key] for p in preds if p.extra.get(key) is not None]
                row[key.replace("_flops", "_tflops")] = round(sum(xs) / len(xs) / 1e12, 9) if xs else None
                if key == "prefill_flops" and xs:
                    prefill[cond, label] = sum(xs) / len(xs)
            qformer = [p.extra["qformer_flops"] for p in preds if p.extra.get("qformer_flops") is not None]
            if qformer:  # BLIP-2: what pruning saves is in the Q-Former, not in the LLM
                row["qformer_tflops"] = round(sum(qformer) / len(qformer) / 1e12, 9)
            row["flops_ratio"] = None  # filled below from the same condition's `full`
            row["object_recall"] = _mean([p.extra["object_recall"] for p in preds
                                          if p.extra.get("object_recall") is not None])
            rows.append(row)
    # mean prefill of a method / mean prefill of `full` under the same condition
    for r in rows:
        full = prefill.get((r["condition"], "full"))
        if full and (r["condition"], r["method"]) in prefill:
            r["flops_ratio"] = round(prefill[r["condition"], r["method"]] / full, 6)
    return rows


def rescored(by_key: dict, examples, metrics: list[str]) -> dict:
    """The stored predictions of the current examples scored again under the current metric
    conventions, so that a run resumed across a change of a convention reports every row under
    one rule (scoring is cheap; answers are never recomputed)."""
    import dataclasses

    from .metrics import score_all

    answers = {ex.id: ex.answers for ex in examples}
    out = {}
    for key, p in by_key.items():
        if p.example_id in answers:
            scores = score_all(metrics, p.prediction, answers[p.example_id])
            p = dataclasses.replace(p, score=scores[metrics[0]], scores=scores)
        out[key] = p
    return out


def samples(by_key: dict, examples, conditions: list[str], labels: list[str]):
    for ex in examples:
        for cond in conditions:
            for label in labels:
                p = by_key.get((ex.id, cond, label))
                if p is None:
                    continue
                yield {"example_id": ex.id, "image_id": ex.image_id, "condition": cond, "method": label,
                       "question": ex.question, "answers": list(ex.answers), "question_type": ex.question_type,
                       "prediction": p.prediction, "score": p.score, "kept_tokens": p.kept,
                       "kept_indices": None if p.kept_indices is None else list(p.kept_indices), **p.extra}


def _mean(xs):
    return round(sum(xs) / len(xs), 6) if xs else None


def build_manifest(suite, suite_path: Path, examples, conditions, methods, stats, cache=None) -> dict:
    from importlib import metadata

    from .metrics import sources as metric_sources

    versions = {"python": sys.version.split()[0]}
    for dist in ("robust_atp", "torch", "transformers", "numpy", "imagecorruptions-imaug", "nlpaug", "nltk", "pillow",
                 "pydantic"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "suite": suite.name,
        "suite_file": str(suite_path),
        "config_hash": suite.config_hash(),
        "seed": suite.seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "versions": versions,
        "n_examples": len(examples),
        "conditions": conditions,
        "methods": [{"label": m.label, "name": m.name, "settings": m.settings} for m in methods],
        # every number's convention: rows' `accuracy` and samples' `score` are the first metric's
        "accuracy_metric": suite.metrics[0],
        "metric_sources": metric_sources(suite.metrics),
        "config": suite.model_dump(mode="json"),
        "engine": {"units_total": stats.units_total, "units_run": stats.units_run,
                   "vision_passes": stats.vision_passes, "merged_tower_passes": stats.merged_tower_passes,
                   "generations": stats.generations,
                   "seconds": round(stats.seconds, 2), "timings": {k: round(v, 2) for k, v in stats.timings.items()},
                   "cost_measured": stats.cost_measured,
                   "corruption_cache": {"hits": stats.corruption_hits, "computed": stats.corruption_computed,
                                        "root": str(cache.root) if cache is not None and cache.enabled else None}},
    }


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def format_summary(rows: list[dict], labels: list[str], keeps: dict[str, str] | None = None) -> str:
    """Per method: its budget, kept tokens, clean accuracy, the mean over corruptions at each
    severity and over all, the mean over question perturbations, the gaps to the first method
    (`full` in every shipped suite), the prefill FLOPs ratio and the object recall.

    `keeps`: label -> the budget as written in the suite (keep ratio, k=N, mass=x)."""
    by = defaultdict(list)  # (method, image severity or "text") -> rows
    for r in rows:
        if r["accuracy"] is None or (r.get("text") and r["severity"]):
            continue  # crossed image x text conditions are in results.json, not in this table
        by[(r["method"], "text" if r.get("text") else r["severity"])].append(r)
    severities = sorted({r["severity"] for r in rows if r["severity"] and not r.get("text")})
    has_text = any(key[1] == "text" for key in by)
    ref = labels[0]
    head = ["method", "keep", "tokens", "clean"] + [f"sev{s}" for s in severities]
    head += (["corrupted"] if severities else []) + (["text"] if has_text else []) + ["d_clean"]
    head += (["d_corrupt"] if severities else []) + (["d_text"] if has_text else []) + ["flops", "recall"]
    timed = any(r.get("latency_ms") for r in rows)
    head += ["e2e_ms", "latency", "overhead"] if timed else []
    lines = []
    for label in labels:
        clean = by.get((label, 0), [])
        kept = _mean([r["kept_tokens"] for r in clean]) if clean else None
        cells = [label, (keeps or {}).get(label, "-"), f"{kept:.1f}" if kept is not None else "-",
                 _pct(_mean([r["accuracy"] for r in clean]))]
        cells += [_pct(_mean([r["accuracy"] for r in by.get((label, s), [])])) for s in severities]
        if severities:
            cells.append(_pct(_mean([r["accuracy"] for s in severities for r in by.get((label, s), [])])))
        if has_text:
            cells.append(_pct(_mean([r["accuracy"] for r in by.get((label, "text"), [])])))
        cells.append(_delta(by, label, ref, [0]))
        if severities:
            cells.append(_delta(by, label, ref, severities))
        if has_text:
            cells.append(_delta(by, label, ref, ["text"]))
        ratio = _mean([r["flops_ratio"] for r in clean if r.get("flops_ratio") is not None])
        recall = _mean([r["object_recall"] for r in clean if r.get("object_recall") is not None])
        cells += ["-" if ratio is None else f"{ratio:.3f}", _pct(recall)]
        if timed:
            cells += _latency_cells(clean)
        lines.append(cells)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    note = "accuracy in %"
    if severities:
        note += "; sevN = mean over corruptions at severity N"
    if has_text:
        note += "; text = mean over question perturbations (clean image)"
    note += f"; d_* = method - {ref} in points"
    note += ("\nflops = LLM prefill FLOPs / full's (clean); recall = % of the patches covering the objects a "
             "question names that the method kept (clean; selection methods only)")
    if any("qformer_tflops" in r for r in rows):
        note += ("\nthe LLM reads the Q-Former's query tokens whatever is pruned: its prefill is unchanged (flops "
                 "1.000); pruning saves only Q-Former cross-attention (qformer_tflops in results.json)")
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines] + [note])


def _latency_cells(clean: list[dict]) -> list[str]:
    ms = _mean([r["latency_ms"]["end_to_end"] for r in clean if r.get("latency_ms")])
    ratio = _mean([r["latency_ratio"]["end_to_end"] for r in clean if (r.get("latency_ratio") or {}).get("end_to_end")])
    over = _mean([r["select_overhead"] for r in clean if r.get("select_overhead") is not None])
    return ["-" if ms is None else f"{ms:.1f}", "-" if ratio is None else f"{ratio:.3f}",
            "-" if over is None else f"{100 * over:.1f}"]


def method_budgets(methods) -> dict[str, str]:
    """label -> the method's budget as the suite wrote it: a keep ratio, k=N or mass=x ("1" for full)."""
    out = {}
    for m in methods:
        st = m.settings
        out[m.label] = (f"{st['keep']:g}" if st.get("keep") is not None else f"k={st['k']}" if st.get("k") is not None
                        else f"mass={st['mass']:g}" if st.get("mass") is not None else "1")
    return out


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}"


def _delta(by, label, ref, severities):
    a = _mean([r["accuracy"] for s in severities for r in by.get((label, s), [])])
    b = _mean([r["accuracy"] for s in severities for r in by.get((ref, s), [])])
    if a is None or b is None:
        return "-"
    return f"{100 * (a - b):+.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
