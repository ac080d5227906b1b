"""easy-vqa: a small third-party synthetic VQA set shipped on PyPI (`pip install easy-vqa`).

64x64 PNG scenes of one coloured shape; questions about its shape, colour and presence with
yes/no or one-word answers. Loaded through the package's own API, so it is a real external
dataset that needs no download beyond the package itself.
"""
from __future__ import annotations

from .base import Example, register_loader
from .sources import DataMissing, lazy_image

_YES_NO = {"yes", "no"}


@register_loader("easy_vqa")
def load_easy_vqa(split: str = "test", limit: int | None = None) -> list[Example]:
    try:
        import easy_vqa
    except ImportError:
        raise DataMissing("missing the easy-vqa package; install it with `pip install easy-vqa` "
                          "(https://pypi.org/project/easy-vqa/)") from None
    if split == "train":
        texts, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    elif split == "test":
        texts, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    else:
        raise ValueError(f"unknown easy-vqa split {split!r}; one of train, test")
    out = []
    for i, (text, answer, image_id) in enumerate(zip(texts, answers, image_ids)):
        if limit is not None and len(out) >= limit:
            break
        out.append(Example(id=f"{split}-{i}", image_id=str(image_id), image=lazy_image(paths[image_id]),
                           question=text, answers=(answer,), question_type=text.split()[0] if text else "",
                           answer_type="yes/no" if answer in _YES_NO else "other"))
    return out
