"""Multiple-choice answer extraction: ScienceQA-IMG and MMBench (with its circular evaluation).

`Example.answers[0]` is the correct option letter. MMBench examples also carry their options
as `answers[1:]`, each "X. option text" (what the reference's text matching needs).

ScienceQA, two named conventions:
- `scienceqa_accuracy`: lmms-eval's `lmms_eval/tasks/scienceqa/utils.py`, `sqa_process_results`
  (EvolvingLMMs-Lab/lmms-eval @ 75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3): the stripped
  prediction equals the letter ignoring case, or it starts with an upper-case letter followed
  by '.' and that letter is the answer ("B. Paris"); anything else scores 0.
- `scienceqa_accuracy_llava`: LLaVA's `llava/eval/eval_science_qa.py`, `__main__`
  (haotian-liu/LLaVA @ c121f0432da27facab705978f83c4ada465e46fd): the prediction is one of
  A-E exactly, or starts with one of A-E followed by ". ", or the regex 'The answer is ([A-Z]).'
  (its '.' matching any character) finds exactly one letter; otherwise FAILED.

MMBench, `mmbench_accuracy`: lmms-eval's static (offline) evaluation,
`lmms_eval/tasks/mmbench/mmbench_evals.py` (`MMBench_Evaluator.can_infer`, `can_infer_option`,
`can_infer_text`, `eval_sub_data` with `static_only`) and
`lmms_eval/tasks/_task_utils/mcq_extract.py` (`extract_mcq_answer`), same commit; the prediction
is stripped first (`mmbench_process_results`). Quirks kept: the option-letter pass looks for
A-E whatever the question's options; a lone "A" is taken for a quantifier when the answer has
more than three words; the text pass matches an option's text as a substring of the
lower-cased answer and needs exactly one hit; the fallback ranks letters by format.
`mmbench_circular` has the same per-row score and, as its group-level value, the circular
accuracy: a question (index < 1e6) counts only when every rotated copy of it (index mod 1e6)
in the run is answered right (`eval_result`); its group is `Example.meta["group_id"]`.
"""
from __future__ import annotations

import re

# ----------------------------------------------------------------------------- ScienceQA


def scienceqa_accuracy(prediction: str, answers) -> float:
    if not answers:
        return 0.0
    target = str(answers[0]).strip().lower()
    pred = prediction.strip()
    if pred.lower() == target:
        return 1.0
    if len(pred) >= 2 and pred[0].isupper() and pred[1] == ".":
        return float(pred[0].lower() == target)
    return 0.0


_LLAVA_OPTIONS = ("A", "B", "C", "D", "E")
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def parse_choice_llava(pred: str) -> str:
    """The letter LLaVA's eval_science_qa reads from a prediction, or 'FAILED'."""
    if pred in _LLAVA_OPTIONS:
        return pred
    if len(pred) >= 3 and pred[0] in _LLAVA_OPTIONS and pred[1:3] == ". ":
        return pred[0]
    found = _ANSWER_IS.findall(pred)
    return found[0] if len(found) == 1 else "FAILED"


def scienceqa_accuracy_llava(prediction: str, answers) -> float:
    # eval_science_qa then maps the letter to an index among the problem's choices; the correct
    # letter is always one of them, so letter equality is the same test
    return float(bool(answers) and parse_choice_llava(prediction) == str(answers[0]))


# ----------------------------------------------------------------------------- MMBench


def options_of(answers) -> dict[str, str]:
    """answers[1:] ("X. text") as {letter: text}."""
    out = {}
    for a in answers[1:]:
        a = str(a)
        if len(a) >= 2 and a[1] == ".":
            out[a[0]] = a[3:] if a[2:3] == " " else a[2:]
    return out


def _count(splits, letters, prefix="", suffix="") -> int:
    return sum(prefix + c + suffix in splits for c in letters)


_AFFIXES = (("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""), (":", ","),
            (":", "."), (":", ")"), (":", ")."))


def infer_option(answer: str, num_choice: int = 5):
    """can_infer_option: a letter standing alone (or wrapped in the usual punctuation), or None."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:num_choice]
    if "Failed to obtain answer via API" in answer:
        return None
    splits = [x.strip() for x in answer.split()]
    if _count(splits, letters) == 1:
        for ch in letters:
            if "A" in splits and len(splits) > 3:
                break  # "A" may be the article: fall through to the punctuated forms
            if ch in splits:
                return ch
    for prefix, suffix in _AFFIXES:
        if _count(splits, letters, prefix, suffix) == 1:
            for ch in letters:
                if prefix + ch + suffix in splits:
                    return ch
    return None


def infer_text(answer: str, choices: dict[str, str]):
    """can_infer_text: the one option whose text occurs in the answer (case-insensitive), or None."""
    answer = answer.lower()
    hits = [k for k, v in choices.items() if str(v).lower() in answer]
    return hits[0] if len(hits) == 1 else None


_PHRASES = ("the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
            "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
            "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
            "i pick", "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは")
_PRIORITY = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
             "space": 2, "fallback": 0}


def extract_letter(response: str, choices=None) -> str:
    """extract_mcq_answer: the best-ranked letter candidate (format priority, then the later
    position), or '' when none is found."""
    if not response or not response.strip():
        return ""
    letters = list(choices) if choices else list("ABCDEFGH")
    text = response.strip()
    for ch in ",.!?;:'\"":
        text = text.strip(ch)
    text = f" {text} "
    found = []
    for fmt, pattern in (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"),
                         ("space", "{} ")):
        for ch in letters:
            p = pattern.format(ch)
            if p in text:
                found.append((ch, text.rfind(p), fmt))
    lower = text.lower()
    for phrase in _PHRASES:
        at = lower.find(phrase)
        if at != -1:
            for ch in letters:
                pos = text.find(ch, at + len(phrase))
                if pos != -1:
                    found.append((ch, pos, "phrase"))
    core = text.strip()
    for ch in letters:
        if core.startswith(ch) and (len(core) == 1 or not core[1].isalpha()):
            found.append((ch, 0, "start"))
    for ch in letters:
        if core.endswith(ch) and (len(core) == 1 or not core[-2].isalpha()):
            found.append((ch, len(text) - 1, "end"))
    if not found:
        found = [(ch, text.rfind(ch), "fallback") for ch in letters if ch in text]
    if not found:
        return ""
    found.sort(key=lambda c: (_PRIORITY[c[2]], c[1]), reverse=True)
    return found[0][0]


def mmbench_choice(prediction: str, choices: dict[str, str]) -> str:
    """The letter the static evaluation settles on: can_infer, then extract_mcq_answer."""
    pred = prediction.strip()
    return infer_option(pred) or infer_text(pred, dict(choices)) or extract_letter(pred, sorted(choices))


def mmbench_accuracy(prediction: str, answers) -> float:
    if not answers:
        return 0.0
    return float(mmbench_choice(prediction, options_of(answers)) == str(answers[0]))


def aggregate_mmbench(name: str, examples, scores: dict) -> tuple[dict, dict]:
    """Circular accuracy overall and per category / L2 category (lmms-eval's eval_result, static).

    A group is scored when its main question (meta["circular_main"]) is in the run; it is right
    when every row of the group in the run is right."""
    rows: dict[str, list[float]] = {}
    main: dict[str, object] = {}
    for ex in examples:
        if ex.id not in scores:
            continue
        g = str(ex.meta.get("group_id", ex.id))
        rows.setdefault(g, []).append(float(scores[ex.id]))
        if ex.meta.get("circular_main", True):
            main[g] = ex
    if not main:
        return {}, {}
    hits = {g: float(all(s == 1.0 for s in rows[g])) for g in main}
    breakdown = {"circular": round(sum(hits.values()) / len(hits), 6), "questions": len(hits),
                 "vanilla": round(sum(scores[ex.id] for ex in main.values()) / len(main), 6)}
    for key, field in (("category", "category"), ("l2_category", "l2_category")):
        per: dict[str, list[float]] = {}
        for g, ex in main.items():
            per.setdefault(str(ex.meta.get(field) or "uncategorized"), []).append(hits[g])
        if any(k != "uncategorized" for k in per):
            breakdown[key] = {k: round(sum(v) / len(v), 6) for k, v in sorted(per.items())}
    metrics = {name: breakdown["circular"]} if name == "mmbench_circular" else {}
    return metrics, breakdown

# the per-question score behind `mmbench_circular` (the summary replaces its mean by circular accuracy)
mmbench_circular = mmbench_accuracy
