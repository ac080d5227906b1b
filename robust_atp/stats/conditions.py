"""Condition names: `clean`, `image:<c>@<s>`, `text:<p>@<s>` or `image:<c>@<s>+text:<p>@<s>`."""
from __future__ import annotations

from dataclasses import dataclass

CLEAN = "clean"
REFERENCE = "full"


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
