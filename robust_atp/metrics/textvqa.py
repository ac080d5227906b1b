"""TextVQA / VizWiz accuracy as lmms-eval computes it.

EvolvingLMMs-Lab/lmms-eval @ 75571cfe, `lmms_eval/tasks/textvqa/utils.py:
textvqa_process_results` (and `tasks/vizwiz_vqa/utils.py: vizwiz_vqa_process_results`, the same
rule). The prediction and every reference go through the whole EvalAI processor
(`vqa_rules.evalai_process`: lower-case; commas and question marks deleted; "'s" split off;
newlines and tabs to spaces; the punctuation and digit / article steps); then the VQA
leave-one-out score, references left out by index, averaged with `statistics.mean`.
Unlike `vqa_accuracy`, "dog's" becomes "dog 's" and "1,000" "1000" on both sides.
"""
from __future__ import annotations

import statistics
from functools import lru_cache

from .registry import LMMS_EVAL, register_metric
from .vqa import leave_one_out
from .vqa_rules import evalai_process

_processed = lru_cache(maxsize=1 << 16)(evalai_process)  # each answer string once per run


@register_metric("textvqa_accuracy", "vqa", f"{LMMS_EVAL} lmms_eval/tasks/textvqa/utils.py: textvqa_process_results "
                 "(= tasks/vizwiz_vqa/utils.py: vizwiz_vqa_process_results)")
def textvqa_accuracy(prediction: str, answers) -> float:
    """Mean over references i of min(1, matches among the others / 3); 0 without references
    (VizWiz's rule; TextVQA's own code would fail on an empty list)."""
    refs = [_processed(a) for a in answers]
    if not refs:
        return 0.0
    return float(statistics.mean(leave_one_out(_processed(prediction), refs)))
