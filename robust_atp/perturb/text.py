"""Question perturbations, graded to severities 1-5 and seeded per (suite seed, example, condition).

A text condition is a (perturbation, severity) pair named `text:<perturbation>@<severity>`;
crossed with an image condition it is `image:<c>@<s>+text:<p>@<s>`. Each perturbation is a
function (text, severity, seed) -> text registered in `TEXT_PERTURBATIONS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import SuiteError

TextPerturbation = Callable[[str, int, int], str]
TEXT_PERTURBATIONS: dict[str, TextPerturbation] = {}


def register_text_perturbation(name: str):
    def deco(fn: TextPerturbation) -> TextPerturbation:
        TEXT_PERTURBATIONS[name] = fn
        return fn
    return deco


@dataclass(frozen=True, order=True)
class TextCondition:
    perturbation: str
    severity: int

    @property
    def name(self) -> str:
        return f"text:{self.perturbation}@{self.severity}"


def resolve_text_conditions(cfg) -> list[TextCondition]:
    """The suite's text conditions (perturbation x severity), in preset order then severity."""
    from .image import load_preset

    if cfg is None:
        return []
    names = load_preset(cfg.preset, key="perturbations")["perturbations"] if cfg.preset else list(cfg.perturbations)
    for i, name in enumerate(names):
        if name not in TEXT_PERTURBATIONS:
            import difflib
            near = difflib.get_close_matches(str(name), sorted(TEXT_PERTURBATIONS), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            where = ".preset" if cfg.preset else f".perturbations[{i}]"
            raise SuiteError(f"{where}: unknown text perturbation {name!r}{hint}; "
                             f"known: {', '.join(sorted(TEXT_PERTURBATIONS)) or 'none'}")
    return [TextCondition(n, s) for n in names for s in cfg.severities]


def perturb_text(text: str, cond: TextCondition, seed: int) -> str:
    """The perturbed question; depends on (text, condition, seed) only."""
    return TEXT_PERTURBATIONS[cond.perturbation](text, cond.severity, seed)
