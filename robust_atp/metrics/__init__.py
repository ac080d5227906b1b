"""Metric registry: name -> score(prediction, answers) in [0, 1], and the group-level `aggregate`.

Every name is one convention reproducing one reference implementation (`CONVENTIONS[name].source`;
README "How the metrics are computed"); each is also a module-level function of the same name
(`metrics.vqa.vqa_accuracy`, `metrics.vqa.vqa_accuracy_official`, `metrics.textvqa.textvqa_accuracy`,
`metrics.gqa.gqa_accuracy`, `metrics.gqa.gqa_accuracy_lmms`, `metrics.gqa.gqa_accuracy_llava`,
`metrics.match.exact_match`, `metrics.captions.cider_d`).

Per-row metrics are scored by the engine right after generation and scored again from the
stored prediction when a run is summarised (`score_all`), so a run resumed across a change of
a convention reports every row under the current one. What cannot be computed one row at a
time (per answer / question type, GQA's balanced-only and GQA-OOD's head / tail accuracy,
VQA-Rephrasings' CS(k), corpus-level CIDEr-D, POPE's F1 and yes-ratio, MME's accuracy+ and
perception / cognition sums, MMBench's circular accuracy) is computed by `aggregate` once per
(condition, method) when the run is summarised.
"""
from __future__ import annotations

from . import captions, gqa, match, textvqa, vqa  # noqa: F401  (each registers its conventions)
from .captions import cider_d
from .choice import mmbench_accuracy, mmbench_circular, scienceqa_accuracy, scienceqa_accuracy_llava
from .gqa import gqa_accuracy, gqa_accuracy_llava, gqa_accuracy_lmms
from .match import exact_match
from .mme import mme_accuracy, mme_accuracy_plus
from .pope import pope_accuracy, pope_accuracy_lmms_eval, pope_f1
from .registry import CONVENTIONS, LLAVA, LMMS_EVAL, METRICS, names_of, register_metric
from .textvqa import textvqa_accuracy
from .vqa import vqa_accuracy, vqa_accuracy_official

# the benchmarks of the token-pruning papers: a per-question score each (so the paired tests apply);
# the group-level value a name stands for (F1, accuracy+, circular accuracy) is computed by `aggregate`
for _name, _fn, _family, _source in (
        ("pope_accuracy", pope_accuracy, "pope", f"{LLAVA} llava/eval/eval_pope.py: eval_pope"),
        ("pope_accuracy_lmms_eval", pope_accuracy_lmms_eval, "pope",
         f"{LMMS_EVAL} lmms_eval/tasks/pope/utils.py: pope_process_results"),
        ("pope_f1", pope_f1, "pope", f"{LLAVA} llava/eval/eval_pope.py: eval_pope (F1, mean over splits)"),
        ("mme_accuracy", mme_accuracy, "mme", f"{LMMS_EVAL} lmms_eval/tasks/mme/utils.py: mme_process_results"),
        ("mme_accuracy_plus", mme_accuracy_plus, "mme",
         f"{LMMS_EVAL} lmms_eval/tasks/mme/utils.py: mme_aggregate_results (accuracy+)"),
        ("scienceqa_accuracy", scienceqa_accuracy, "choice",
         f"{LMMS_EVAL} lmms_eval/tasks/scienceqa/utils.py: sqa_process_results"),
        ("scienceqa_accuracy_llava", scienceqa_accuracy_llava, "choice", f"{LLAVA} llava/eval/eval_science_qa.py"),
        ("mmbench_accuracy", mmbench_accuracy, "mmbench",
         f"{LMMS_EVAL} lmms_eval/tasks/mmbench/mmbench_evals.py: MMBench_Evaluator (static extraction)"),
        ("mmbench_circular", mmbench_circular, "mmbench",
         f"{LMMS_EVAL} lmms_eval/tasks/mmbench/mmbench_evals.py: circular evaluation (static extraction)")):
    register_metric(_name, _family, _source)(_fn)

VQA_METRICS = names_of("vqa")
GQA_METRICS = names_of("gqa")
CAPTION_METRICS = names_of("caption")
POPE_METRICS = names_of("pope")
MME_METRICS = names_of("mme")
MMBENCH_METRICS = names_of("mmbench")

__all__ = ["CONVENTIONS", "METRICS", "aggregate", "cider_d", "exact_match", "gqa_accuracy", "gqa_accuracy_llava",
           "gqa_accuracy_lmms", "mmbench_accuracy", "mmbench_circular", "mme_accuracy", "mme_accuracy_plus", "pope_accuracy", "pope_accuracy_lmms_eval", "pope_f1",
           "scienceqa_accuracy", "scienceqa_accuracy_llava", "score_all", "sources", "textvqa_accuracy",
           "vqa_accuracy", "vqa_accuracy_official"]


def score_all(names: list[str], prediction: str, answers: tuple[str, ...]) -> dict[str, float]:
    return {n: float(METRICS[n](prediction, answers)) for n in names}


def sources(names: list[str]) -> dict[str, str]:
    """What each metric of a suite reproduces: name -> 'repository@commit file: function'."""
    return {n: CONVENTIONS[n].source for n in names}


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
        elif name in GQA_METRICS:
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
        if any(ex.meta.get("rephrasing_group") is not None for ex in examples) and name not in CAPTION_METRICS:
            part["consensus"] = consensus_from_examples(examples, scores)
        if part:
            breakdown[name] = part
    return {"metrics": metrics, "breakdown": breakdown}
