"""Metric registry: name -> score(prediction, answers) in [0, 1]."""
from __future__ import annotations

from typing import Callable

from .match import exact_match

METRICS: dict[str, Callable[[str, tuple[str, ...]], float]] = {
    "exact_match": exact_match,
}


def score_all(names: list[str], prediction: str, answers: tuple[str, ...]) -> dict[str, float]:
    return {n: float(METRICS[n](prediction, answers)) for n in names}
