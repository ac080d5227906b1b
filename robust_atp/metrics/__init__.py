"""Metric registry: name -> score(prediction, answers) in [0, 1], and the group-level `aggregate`.

Per-row metrics are scored by the engine right after generation. What cannot be computed
one row at a time (per answer / question type, GQA's balanced-only and GQA-OOD's head / tail
accuracy, VQA-Rephrasings' CS(k), corpus-level CIDEr-D, POPE's F1 and yes-ratio, MME's accuracy+
and perception / cognition sums, MMBench's circular accuracy) is computed by `aggregate` once per
(condition, method) when the run is summarised.
"""
from __future__ import annotations

from typing import Callable

from .captions import caption_f1
from .choice import mmbench_accuracy, scienceqa_accuracy, scienceqa_accuracy_llava
from .gqa import gqa_accuracy
from .match import exact_match
from .mme import mme_accuracy
from .pope import pope_accuracy, pope_accuracy_lmms_eval
from .vqa import vqa_accuracy, vqa_accuracy_official

METRICS: dict[str, Callable[[str, tuple[str, ...]], float]] = {
    "exact_match": exact_match,
    "vqa_accuracy": vqa_accuracy,                    # EvalAI convention: references always normalised
    "vqa_accuracy_official": vqa_accuracy_official,  # vqaEval.py: references normalised only when they disagree
    "gqa_accuracy": gqa_accuracy,
    "cider_d": caption_f1,                           # per-row proxy; the summary holds corpus CIDEr-D
    # benchmarks of the token-pruning papers: the per-question score; group-level values in `aggregate`
    "pope_accuracy": pope_accuracy,                  # LLaVA's eval_pope.py parsing
    "pope_accuracy_lmms_eval": pope_accuracy_lmms_eval,
    "pope_f1": pope_accuracy,                        # per-row proxy; the summary holds the mean per-split F1
    "mme_accuracy": mme_accuracy,
    "mme_accuracy_plus": mme_accuracy,               # per-row proxy; the summary holds accuracy+ over images
    "scienceqa_accuracy": scienceqa_accuracy,        # lmms-eval's sqa_process_results
    "scienceqa_accuracy_llava": scienceqa_accuracy_llava,
    "mmbench_accuracy": mmbench_accuracy,            # lmms-eval's static extraction, one question
    "mmbench_circular": mmbench_accuracy,            # per-row proxy; the summary holds circular accuracy
}
VQA_METRICS = ("vqa_accuracy", "vqa_accuracy_official")
CAPTION_METRICS = ("cider_d",)
POPE_METRICS = ("pope_accuracy", "pope_accuracy_lmms_eval", "pope_f1")
MME_METRICS = ("mme_accuracy", "mme_accuracy_plus")
MMBENCH_METRICS = ("mmbench_accuracy", "mmbench_circular")


def score_all(names: list[str], prediction: str, answers: tuple[str, ...]) -> dict[str, float]:
    return {n: float(METRICS[n](prediction, answers)) for n in names}


def aggregate(metric_names: list[str], examples, predictions: dict) -> dict:
    """Group-level results for one (condition, method).

    predictions: example id -> (prediction text, {metric name: per-row score}).
    Returns {"metrics": {name: value replacing the per-row mean}, "breakdown": {name: {...}}};
    both may be empty."""
    from .captions import corpus_scores
    from .choice import aggregate_mmbench
    from .gqa import aggregate_gqa
    from .mme import aggregate_mme
    from .pope import aggregate_pope
    from .robustness import by_field, consensus_from_examples

    metrics, breakdown = {}, {}
    for name in metric_names:
        scores = {eid: s[name] for eid, (_, s) in predictions.items() if name in s}
        if not scores:
            continue
        part = {}
        if name in VQA_METRICS:
            for field in ("answer_type", "question_type"):
                groups = by_field(examples, scores, field)
                if groups:
                    part[field] = groups
        elif name == "gqa_accuracy":
            override, part = aggregate_gqa(name, examples, scores)
            metrics.update(override)
        elif name in POPE_METRICS:
            override, part = aggregate_pope(name, examples, {eid: predictions[eid] for eid in scores})
            metrics.update(override)
        elif name in MME_METRICS:
            override, part = aggregate_mme(name, examples, scores)
            metrics.update(override)
        elif name in MMBENCH_METRICS:
            override, part = aggregate_mmbench(name, examples, scores)
            metrics.update(override)
        elif name in CAPTION_METRICS:
            refs = {ex.id: list(ex.answers) for ex in examples if ex.id in predictions}
            corpus = corpus_scores({eid: p for eid, (p, _) in predictions.items()}, refs)
            if corpus:
                metrics[name] = corpus["cider_d"]
                part = corpus
        if any(ex.meta.get("rephrasing_group") is not None for ex in examples) and name != "cider_d":
            part["consensus"] = consensus_from_examples(examples, scores)
        if part:
            breakdown[name] = part
    return {"metrics": metrics, "breakdown": breakdown}
