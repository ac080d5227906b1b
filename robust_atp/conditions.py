"""Conditions: their names (`clean`, `image:<c>@<s>`, `text:<p>@<s>`, `image:<c>@<s>+text:<p>@<s>`),
parsing them back, and the plan of which text conditions each image condition carries."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .perturb.image import ImageCondition
    from .perturb.text import TextCondition

CLEAN = "clean"
REFERENCE = "full"  # the method every pruned one is compared with
# One vocabulary for the three kinds of non-clean condition, in the terminal summary, results.json
# (rows' `kind`) and the report (a "crossed" condition applies an image corruption and a question
# perturbation together).
KINDS = ("image", "text", "image+text")
KIND_NAMES = {"clean": "clean", "image": "image corruptions", "text": "question perturbations",
              "image+text": "crossed conditions"}


@dataclass(frozen=True)
class Condition:
    """A parsed condition name."""

    name: str
    image: tuple[str, int] | None = None  # (corruption, severity)
    text: tuple[str, int] | None = None  # (perturbation, severity)

    @property
    def kind(self) -> str:
        return {(False, False): "clean", (True, False): "image", (False, True): "text",
                (True, True): "image+text"}[(self.image is not None, self.text is not None)]

    @property
    def family(self) -> str | None:
        """What a severity axis varies over: `image:fog`, `text:typo`; a crossed condition keeps its
        image severity fixed and varies the text one (`image:fog@3+text:typo`). None for clean."""
        if self.kind == "clean":
            return None
        if self.kind == "image":
            return f"image:{self.image[0]}"
        if self.kind == "text":
            return f"text:{self.text[0]}"
        return f"image:{self.image[0]}@{self.image[1]}+text:{self.text[0]}"

    @property
    def severity(self) -> int:
        """The severity along `family` (0 for clean)."""
        if self.text is not None:
            return self.text[1]
        return self.image[1] if self.image is not None else 0


def parse_condition(name: str) -> Condition:
    """Parse any of the four condition forms; ValueError on anything else."""
    if name == CLEAN:
        return Condition(name)
    parts = {}
    for part in name.split("+"):
        axis, sep, rest = part.partition(":")
        body, at, sev = rest.rpartition("@")
        if axis not in ("image", "text") or not sep or not at or not body or not sev.isdigit() or axis in parts:
            raise ValueError(f"malformed condition name {name!r}")
        parts[axis] = (body, int(sev))
    if list(parts) == ["text", "image"]:
        raise ValueError(f"malformed condition name {name!r} (image part comes first)")
    return Condition(name, parts.get("image"), parts.get("text"))


def split_condition(name: str, axis: str = "image") -> tuple[str | None, int]:
    """The image corruption (or, with axis "text", the text perturbation) of a condition name and
    its severity; (None, 0) when that side is clean."""
    part = getattr(parse_condition(name), axis)
    return part if part is not None else (None, 0)


def condition_name(image: ImageCondition | None, text: TextCondition | None) -> str:
    """`clean`, `image:<c>@<s>`, `text:<p>@<s>` or `image:<c>@<s>+text:<p>@<s>`."""
    parts = [c.name for c in (image, text) if c is not None]
    return "+".join(parts) or CLEAN


def condition_plan(image_conditions: list[ImageCondition], text_conditions: list[TextCondition] = (),
                   include_clean: bool = True, cross: bool = False) -> list[tuple[ImageCondition | None, list]]:
    """Per image condition (None = the clean image), the text conditions (None = the clean
    question) evaluated on it: the clean image carries every text condition; a corrupted image
    carries the clean question, and every text condition too when `cross`."""
    plan = []
    clean_texts = ([None] if include_clean else []) + list(text_conditions)
    if clean_texts:
        plan.append((None, clean_texts))
    for ic in image_conditions:
        plan.append((ic, [None] + (list(text_conditions) if cross else [])))
    return plan


def condition_names(image_conditions: list[ImageCondition], include_clean: bool = True,
                    text_conditions: list[TextCondition] = (), cross: bool = False) -> list[str]:
    """Every condition of a suite, in the plan's order (the order of results and reports)."""
    return [condition_name(ic, tc) for ic, tcs in condition_plan(image_conditions, text_conditions, include_clean, cross)
            for tc in tcs]
