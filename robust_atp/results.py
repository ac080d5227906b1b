"""A run's results as files: the file names of a run directory, results.json (manifest + one row
per (condition, method)) and samples.jsonl (one line per prediction), assembled from the store's
predictions and written whole or not at all. `report/` reads the same names back."""
from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
from pathlib import Path

from .errors import UserError

RESULTS, SAMPLES, STORE = "results.json", "samples.jsonl", "predictions.sqlite"
REPORT_HTML, REPORT_PDF, PLOTS_DIR = "report.html", "report.pdf", "plots"
REPORT_FILES = (REPORT_HTML, REPORT_PDF)  # and the PLOTS_DIR directory


def write_results(run_dir: Path, manifest: dict, rows: list[dict], sample_rows, published: dict | None = None,
                  subsets: dict | None = None) -> None:
    """results.json and samples.jsonl, each written whole or not at all. `published`: the run
    beside the published figures (`beside_published`), a section of its own when the suite asks;
    `subsets`: the tables on each subset of `stats.subsets` (`robust_atp.subsets`), when it names one."""
    data = {"manifest": manifest, "rows": rows} | ({"published": published} if published is not None else {})
    data |= {"subsets": subsets} if subsets else {}
    write_atomic(run_dir / RESULTS, json.dumps(data, indent=2) + "\n")
    write_atomic(run_dir / SAMPLES, "".join(json.dumps(s) + "\n" for s in sample_rows))


def write_atomic(path: Path, text: str) -> None:
    """Write a whole file or leave the old one: a full disk never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot write ({e.strerror or e}); the predictions are kept in {STORE}, "
                        "run again to write it") from None


def summarize(by_key: dict, examples, conditions: list[str], labels: list[str], metrics: list[str]) -> list[dict]:
    """One row per (condition, method) over the current examples, in suite order.

    `by_key`: the store's predictions keyed by (example id, condition, method). `metrics` holds
    each metric's mean over rows, or its group-level value where `metrics.aggregate` gives one;
    `breakdown` (when present) holds per answer / question type, GQA-OOD head / tail / all,
    CS(k) and captioning scores.

    Cost columns are means over the rows' `extra` (see `measure`): `prefill_tflops`,
    `vision_tflops`, `scorer_tflops`, and `flops_ratio` = mean prefill / mean prefill of the
    method labelled `full` under the same condition (None without one). `object_recall` is the
    mean over rows that have one (selection methods on examples with boxes). `truncated` counts
    the answers that stopped at max_new_tokens without an EOS (None when the adapter did not say)."""
    from .conditions import parse_condition, split_condition
    from .metrics import aggregate

    rows, prefill = [], {}
    for cond in conditions:
        corruption, severity = split_condition(cond)
        text, text_severity = split_condition(cond, "text")
        for label in labels:
            preds = [p for ex in examples if (p := by_key.get((ex.id, cond, label))) is not None]
            n = len(preds)
            row = {"condition": cond, "kind": parse_condition(cond).kind, "corruption": corruption,
                   "severity": severity, "text": text,
                   "text_severity": text_severity, "method": label,
                   "accuracy": rounded_mean([p.score for p in preds]), "n": n,
                   "kept_tokens": rounded_mean([p.kept for p in preds])}
            row["metrics"] = {m: rounded_mean([p.scores[m] for p in preds]) for m in metrics}
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
            cut = [bool(p.extra["truncated"]) for p in preds if "truncated" in p.extra]
            row["truncated"] = sum(cut) if cut else None  # answers stopped at max_new_tokens without an EOS
            row["flops_ratio"] = None  # filled below from the same condition's `full`
            row["object_recall"] = rounded_mean([p.extra["object_recall"] for p in preds
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
    """The rows of samples.jsonl: one per stored (example, condition, method), in suite order."""
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


def slice_note(stored_ids: set, examples, limit: int | None) -> dict | None:
    """When the store holds predictions for examples this run leaves out (a smaller --limit into
    a larger run): which slice results.json, samples.jsonl and the report cover. None otherwise."""
    outside = stored_ids - {ex.id for ex in examples}
    if not outside:
        return None
    n, stored = len(examples), len(stored_ids | {ex.id for ex in examples})
    which = f"the first {n} examples (dataset.limit {limit})" if limit is not None else f"the dataset's {n} examples"
    return {"examples": n, "stored_examples": stored, "limit": limit,
            "note": f"these outputs cover {which}; the store holds predictions for {stored} examples "
                    "(kept; a run with a larger --limit reports them)"}


def rounded_mean(xs):
    """The mean rounded to 6 digits; None for no values."""
    return round(sum(xs) / len(xs), 6) if xs else None


def this_runs_cost(records: list, examples, suite) -> list:
    """The cost records of the batches this run samples (its first `cost.batches` at its batch
    size): records from an earlier run with another batch size, --limit or `batches` are left
    out rather than averaged in."""
    from .data.base import batch_key, iter_batches

    if not records or not suite.cost.enabled:
        return []
    keys = {batch_key(b) for b in list(iter_batches(examples, suite.batch_size))[:suite.cost.batches]}
    return [r for r in records if r[2] in keys]


def build_manifest(suite, suite_path: Path, examples, conditions, methods, stats, cache=None) -> dict:
    from importlib import metadata

    import torch

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
        "limit": suite.dataset.limit,
        "conditions": conditions,
        "methods": [{"label": m.label, "name": m.name, "settings": m.settings} for m in methods],
        # every number's convention: rows' `accuracy` and samples' `score` are the first metric's
        "accuracy_metric": suite.metrics[0],
        "metric_sources": metric_sources(suite.metrics),
        "config": suite.model_dump(mode="json"),
        "engine": {"units_total": stats.units_total, "units_run": stats.units_run,
                   "vision_passes": stats.vision_passes, "merged_tower_passes": stats.merged_tower_passes,
                   "downsampled_passes": stats.downsampled_passes,
                   "generations": stats.generations, "generate_calls": stats.generate_calls,
                   "prefixes": {"computed": stats.prefixes_computed, "reused": stats.prefixes_reused},
                   "seconds": round(stats.seconds, 2), "timings": {k: round(v, 2) for k, v in stats.timings.items()},
                   "threads": torch.get_num_threads(),
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
