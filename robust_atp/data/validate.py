"""Checks every run applies to a loader's examples, whatever the loader.

- `validate_examples`: example ids are unique (they key the run store: a repeated id would
  silently share one row) and no question is empty; one DataError line naming the example.
- `with_image_checks`: each example's image loader, wrapped so that a missing, empty,
  truncated or non-image file, or an image too small to corrupt, stops the run with one
  UserError line naming the file and the example, when the batch that holds it is reached.
"""
from __future__ import annotations

import dataclasses
import functools

from PIL import Image

from ..errors import UserError
from .base import Example
from .sources import DataError, ImageUnreadable


def validate_examples(examples: list[Example]) -> list[Example]:
    seen = set()
    for ex in examples:
        if ex.id in seen:
            raise DataError(f"example id {ex.id!r} occurs twice (ids key the run store)")
        seen.add(ex.id)
        if not isinstance(ex.question, str) or not ex.question.strip():
            raise DataError(f"example {ex.id}: the question is empty")
    return examples


def with_image_checks(examples: list[Example], suite_path, min_side: int | None) -> list[Example]:
    """min_side: the smallest side the run's image conditions accept (None: any size)."""
    return [dataclasses.replace(ex, image=functools.partial(_checked_image, ex.image, ex.id, str(suite_path),
                                                            min_side)) for ex in examples]


def _checked_image(load, example_id: str, suite_path: str, min_side: int | None) -> Image.Image:
    try:
        img = load()
    except ImageUnreadable as e:
        raise UserError(f"{e.path}: example {example_id}: {e.reason}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{suite_path}: dataset: example {example_id}: cannot read its image ({why})") from None
    if min_side is not None and min(img.size) < min_side:
        raise UserError(f"{suite_path}: perturbations.image.resolution: example {example_id}: its image is "
                        f"{img.size[0]}x{img.size[1]} px, corruptions need at least {min_side} px a side; set a "
                        "resolution to resize every image first")
    return img
