"""VQA accuracy, two conventions that reproduce their reference code exactly.

Score (both): for each reference answer i, min(1, #{j != i : ref_j == prediction} / 3), averaged
over the references (the mean over the 10 leave-one-out subsets of annotators). Pass all raw
answers, duplicates included. The references drop answer i by comparing answer dicts, whose
`answer_id`s are distinct in the official annotations, so exactly one answer is left out.

- `vqa_accuracy` (the default; what lmms-eval reports for VQAv2, and the EvalAI server's rules):
  EvolvingLMMs-Lab/lmms-eval @ 75571cfe, `lmms_eval/tasks/vqav2/utils.py: vqav2_process_results`.
  Prediction and every reference: newlines and tabs to spaces, strip, then the EvalAI
  punctuation and digit / article steps (`vqa_rules.evalai_punctuation`, `evalai_digit_article`),
  always. Mean with `statistics.mean`.
- `vqa_accuracy_official`: GT-Vision-Lab/VQA @ a013f004 (HEAD, 2021 "Fixed processing answers
  bug"), `PythonEvaluationTools/vqaEvaluation/vqaEval.py: VQAEval.evaluate`, under Python 2.7.
  Prediction and references: newlines and tabs to spaces, strip. Only when the stripped
  references are not all identical do both sides get the punctuation and digit / article steps;
  a unanimous question compares the raw prediction with the raw answer ("Yes" against ten "yes"
  scores 0). Its punctuation step differs from lmms-eval's in the digit-comma test only (one
  comma between two ASCII digits). Mean as float(sum) / n.
"""
from __future__ import annotations

import statistics
from functools import lru_cache

from .registry import LMMS_EVAL, VQA_OFFICIAL, register_metric
from .vqa_rules import (evalai_digit_article, evalai_punctuation, official_digit_article, official_punctuation,
                        py2_strip)


def leave_one_out(prediction: str, references: list[str]) -> list[float]:
    """Per reference i: min(1, matches among the other references / 3)."""
    hits = sum(r == prediction for r in references)
    # leaving reference i out removes one match exactly when reference i itself matches
    return [min(1.0, (hits - (r == prediction)) / 3) for r in references]


def _flatten(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ")


# the same answers are scored under every condition and method of a run: normalise each string once
@lru_cache(maxsize=1 << 16)
def _lmms_form(text: str) -> str:
    return evalai_digit_article(evalai_punctuation(_flatten(text).strip()))


@lru_cache(maxsize=1 << 16)
def _official_form(stripped: str) -> str:
    return official_digit_article(official_punctuation(stripped))


@register_metric("vqa_accuracy", "vqa", f"{LMMS_EVAL} lmms_eval/tasks/vqav2/utils.py: vqav2_process_results")
def vqa_accuracy(prediction: str, answers) -> float:
    """lmms-eval's VQAv2 accuracy (EvalAI rules on both sides); 0 without references."""
    refs = [_lmms_form(a) for a in answers]
    if not refs:
        return 0.0
    pred = _lmms_form(prediction)
    return float(statistics.mean(leave_one_out(pred, refs)))


@register_metric("vqa_accuracy_official", "vqa", f"{VQA_OFFICIAL} PythonEvaluationTools/vqaEvaluation/vqaEval.py: "
                 "VQAEval.evaluate (Python 2.7)")
def vqa_accuracy_official(prediction: str, answers) -> float:
    """GT-Vision-Lab vqaEval.py's accuracy (normalised only when the references disagree); 0
    without references."""
    refs = [py2_strip(_flatten(a)) for a in answers]
    if not refs:
        return 0.0
    pred = py2_strip(_flatten(prediction))
    if len(set(refs)) > 1:
        refs = [_official_form(r) for r in refs]
        pred = _official_form(pred)
    accs = leave_one_out(pred, refs)
    return float(sum(accs)) / len(accs)
