"""Exact match after the usual light normalisation (case, surrounding space and punctuation)."""
from __future__ import annotations

import re
import string

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_SPACE = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def exact_match(prediction: str, answers: tuple[str, ...]) -> float:
    """1.0 if the normalised prediction equals any normalised reference answer."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(a) for a in answers))
