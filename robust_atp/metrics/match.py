"""`exact_match`: lmms-eval's exact match as its GQA task configures it, against any answer.

EvolvingLMMs-Lab/lmms-eval @ 75571cfe: `lmms_eval/api/metrics.py: exact_match_hf_evaluate` with
`ignore_case: true, ignore_punctuation: true` (`tasks/gqa/gqa.yaml`), on the generated text as
`api/task.py` hands it over (stripped), true when any reference matches (`task.py`'s rule for
tasks with several targets). See `gqa.lmms_exact_match` for the exact rule.
"""
from __future__ import annotations

from .gqa import lmms_exact_match
from .registry import LMMS_EVAL, register_metric


@register_metric("exact_match", "match", f"{LMMS_EVAL} lmms_eval/api/metrics.py: exact_match_hf_evaluate "
                 "(ignore_case, ignore_punctuation), any answer")
def exact_match(prediction: str, answers) -> float:
    """1.0 if the prediction matches any reference answer (case and ASCII punctuation ignored)."""
    if isinstance(answers, str):
        answers = (answers,)
    return float(any(lmms_exact_match(prediction, a) for a in answers))
