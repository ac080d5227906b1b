"""The metric registry: every name is one convention, with the reference code it reproduces."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

LMMS_EVAL = "EvolvingLMMs-Lab/lmms-eval@75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3"
VQA_OFFICIAL = "GT-Vision-Lab/VQA@a013f0043c1e2cdc995922dfe257f7149aa9af06"
GQA_OOD = "gqa-ood/GQA-OOD@3853e118dc096e0551cb5792da135967cb7a312b"
LLAVA = "haotian-liu/LLaVA@c121f0432da27facab705978f83c4ada465e46fd"


@dataclass(frozen=True)
class Convention:
    """name: what suites list; score(prediction, answers) -> [0, 1]; family: how rows aggregate
    (vqa | gqa | caption | match | pope | mme | choice | mmbench); source: the reference it reproduces (repository@commit file: function)."""

    name: str
    score: Callable[[str, tuple[str, ...]], float]
    family: str
    source: str


CONVENTIONS: dict[str, Convention] = {}
METRICS: dict[str, Callable[[str, tuple[str, ...]], float]] = {}


def register_metric(name: str, family: str, source: str):
    def deco(fn):
        if name in CONVENTIONS:
            raise ValueError(f"metric {name!r} registered twice")
        CONVENTIONS[name] = Convention(name, fn, family, source)
        METRICS[name] = fn
        return fn
    return deco


def names_of(family: str) -> tuple[str, ...]:
    return tuple(n for n, c in CONVENTIONS.items() if c.family == family)
