"""The example record every loader yields, and the loader registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from PIL import Image

_LOADERS: dict[str, Callable[..., list["Example"]]] = {}


@dataclass(frozen=True)
class Example:
    """One question about one image.

    `image` is a zero-argument callable (a picklable `functools.partial`) so that a
    dataset of thousands of examples holds no pixels until a batch needs them.
    """

    id: str
    image_id: str
    image: Callable[[], Image.Image]
    question: str
    answers: tuple[str, ...]
    question_type: str = ""
    answer_type: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def register_loader(name: str):
    def deco(fn):
        _LOADERS[name] = fn
        return fn

    return deco


def loader_names() -> list[str]:
    _import_builtin_loaders()
    return sorted(_LOADERS)


def get_loader(loader: str) -> Callable[..., list[Example]]:
    """The registered loader function of that name (KeyError when there is none)."""
    _import_builtin_loaders()
    if loader not in _LOADERS:
        raise KeyError(loader)
    return _LOADERS[loader]


def load_examples(loader: str, **kwargs) -> list[Example]:
    return get_loader(loader)(**kwargs)


def _import_builtin_loaders() -> None:
    from . import coco, easy_vqa, gqa, shapes, vqav2  # noqa: F401  (each registers itself)
    from . import mmbench, mme, pope, scienceqa, shapes_pope, textvqa  # noqa: F401


def iter_batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def batch_key(batch: list[Example]) -> str:
    """A batch as the cost table names it: its first example and its size."""
    return f"{batch[0].id}+{len(batch)}"
