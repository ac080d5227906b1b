"""The difficulty filter (`stats.subsets`): every table and test also on a subset of the questions.

    stats:
      subsets:
        difficult: {discriminator: pool@0.25}

The subset is the questions the discriminator (a method label of the suite) answers wrong on the
clean input, as VTC-Bench (arXiv 2510.07143) filters benchmarks to the questions plain downsampling
gets wrong: "wrong" is a first-metric score below 1 (`WRONG_BELOW`), so a soft VQA score of 0.9 (3
annotators of 10) is not fully right and counts. Grouped benchmarks (samples with a `group_id`: MME's
image pairs, MMBench's circular copies) are filtered by group: a group is in the subset, all its
questions, when its discriminator gets any member wrong, because their metrics score the group.

A subset's section of results.json holds its definition, its size and the same rows the whole set
gets, computed by the same code on the subset's examples: `rows` by `results.summarize`, and the
report's paired comparisons against the reference (`comparisons`: the difference with its CI, the
test, p and adjusted p, as `report.analysis.analyze` computes them with the corrections taken over
the subset's own family of comparisons)."""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from .conditions import CLEAN

WRONG_BELOW = 1.0 - 1e-9  # a score below this is not fully right (the margin absorbs float rounding)
RULE = "first-metric score < 1"  # on `condition`; a group is in when any of its questions is


def definition(discriminator: str) -> dict:
    """What a subset is, as results.json states it."""
    return {"discriminator": discriminator, "condition": CLEAN, "rule": RULE}


def describe(section: dict) -> str:
    """One line naming a subset's definition and size: 'questions pool@0.25 answers wrong on the
    clean input (first-metric score < 1): 12 of 40 questions (30.0%)'."""
    d = section["definition"]
    size = f"{section['questions']} of {section['of']} questions ({100 * section['share']:.1f}%)"
    if section.get("groups") is not None:
        size += f" in {section['groups']} groups"
    return (f"questions {d['discriminator']} answers wrong on the {d['condition']} input "
            f"({RULE}): {size}")


def members(samples: list[dict], discriminator: str) -> tuple[list[str], int | None]:
    """The example ids of the subset, in sample order, and the number of groups it holds (None
    when the samples carry no `group_id`). `samples`: samples.jsonl's rows. An example whose
    discriminator has no clean sample is left out (nothing says it is wrong)."""
    group_of = {}
    for s in samples:
        group_of.setdefault(s["example_id"], s.get("group_id"))
    grouped = any(g is not None for g in group_of.values())
    key = {ex: (g if g is not None else ex) for ex, g in group_of.items()}
    wrong = {key[s["example_id"]] for s in samples
             if s["method"] == discriminator and s["condition"] == CLEAN and float(s["score"]) < WRONG_BELOW}
    ids = [ex for ex in group_of if key[ex] in wrong]
    return ids, (len(wrong) if grouped else None)


def subset_sections(run_dir: Path, manifest: dict, samples: list[dict],
                    rows_for: Callable[[set[str]], list[dict]]) -> dict:
    """results.json's `subsets`: per subset the suite names (manifest config's `stats.subsets`, in
    its order) its definition, size, rows and comparisons; {} when it names none. `rows_for(ids)`:
    the results rows of those examples."""
    from .report.analysis import analyze
    from .report.rundata import run_data

    subsets = ((manifest.get("config") or {}).get("stats") or {}).get("subsets") or {}
    n_all = len({s["example_id"] for s in samples})
    out = {}
    for name, cfg in subsets.items():
        ids, groups = members(samples, cfg["discriminator"])
        section = {"definition": definition(cfg["discriminator"]), "questions": len(ids), "of": n_all,
                   "share": round(len(ids) / n_all, 6) if n_all else 0.0, "groups": groups}
        if not ids:
            section.update(rows=[], comparisons=[], notes=[empty_note(cfg["discriminator"])])
        else:
            keep = set(ids)
            rows = rows_for(keep)
            run = run_data(run_dir, manifest, rows, [s for s in samples if s["example_id"] in keep])
            analysis = analyze(run)
            section.update(rows=rows, comparisons=[_json_safe(c) for c in analysis.comparisons],
                           notes=analysis.notes)
        out[name] = section
    return out


def subset_run(run, name: str):
    """The run restricted to results.json's subset `name` (its rows and its members' samples):
    what the report analyses for the subset's section. None when the subset is empty."""
    from .report.rundata import run_data

    section = run.subsets[name]
    ids = set(members(run.samples, section["definition"]["discriminator"])[0])
    if not ids:
        return None
    return run_data(run.run_dir, run.manifest, section["rows"], [s for s in run.samples if s["example_id"] in ids],
                    run.published)


def empty_note(discriminator: str) -> str:
    return (f"empty: {discriminator} answers every clean question fully right, so no question is in the subset "
            "and nothing is reported on it")


def _json_safe(row: dict) -> dict:
    """NaN (a test with no data) as null: results.json stays valid JSON."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
