"""GQA (balanced questions) and GQA-OOD (head / tail / all), GQA question format.

A GQA question file is {question id: {imageId, question, answer, fullAnswer, isBalanced,
types: {structural, semantic, detailed}, groups, semantic, ...}}; images are
<images>/<imageId>.jpg. `Example.meta` keeps isBalanced (`is_balanced`), `types` and
`full_answer`; GQA-OOD examples also list the files they appear in (`ood`).
"""
from __future__ import annotations

from pathlib import Path

from .base import Example, register_loader
from .sources import (DataError, hf_dataset, hf_image, inside, is_hf, lazy_image, local_root, read_json,
                      require)

GQA_URL = "https://cs.stanford.edu/people/dorarad/gqa/download.html"
GQA_OOD_URL = "https://github.com/gqa-ood/GQA-OOD"


def _example(qid, q: dict, image, **meta) -> Example:
    types = q.get("types") if isinstance(q.get("types"), dict) else {}
    return Example(id=str(qid), image_id=str(q["imageId"]), image=image, question=str(q["question"]),
                   answers=(str(q["answer"]),), question_type=str(types.get("detailed") or ""),
                   answer_type="open" if types.get("structural") == "query" else ("binary" if types else ""),
                   meta={"is_balanced": bool(q.get("isBalanced", True)), "types": dict(types),
                         "full_answer": q.get("fullAnswer"), **meta})


def _questions(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected {{question id: question}} (GQA question format)")
    return data


def _answered(q) -> bool:
    return isinstance(q, dict) and q.get("answer") not in (None, "") and "imageId" in q and "question" in q


@register_loader("gqa")
def load_gqa(split: str = "testdev", limit: int | None = None, source: str | None = None,
             questions: str = "balanced", image_dir: str = "images") -> list[Example]:
    """GQA from <root>/<split>_<questions>_questions.json + <root>/<image_dir>/<imageId>.jpg
    (questions: balanced, or all: the metric then scores only the balanced ones), or from
    the hub (`hf:lmms-lab/GQA`: configs <split>_<questions>_instructions and _images)."""
    if questions not in ("balanced", "all"):
        raise DataError(f"questions must be 'balanced' or 'all', got {questions!r}")
    if is_hf(source):
        return _load_gqa_hf(source, split, questions, limit)
    root = local_root(source, GQA_URL)
    qpath = require(root, source, f"{split}_{questions}_questions.json", GQA_URL)
    images = require(root, source, image_dir, GQA_URL, configured=True)
    out = []
    for qid, q in _questions(qpath).items():
        if _answered(q):
            out.append(_example(qid, q, lazy_image(inside(images, f"{q['imageId']}.jpg"))))
            if limit is not None and len(out) >= limit:
                break
    return out


def _load_gqa_hf(source: str, split: str, questions: str, limit: int | None) -> list[Example]:
    qs = hf_dataset(source, split, f"{split}_{questions}_instructions")
    ims = hf_dataset(source, split, f"{split}_{questions}_images")
    row_of = {str(i): n for n, i in enumerate(ims["id"])}
    out = []
    for q in qs:
        if not _answered(q):
            continue
        n = row_of.get(str(q["imageId"]))
        if n is None:
            raise DataError(f"{source!r}: image {q['imageId']!r} of question {q.get('id')} is not in "
                            f"{split}_{questions}_images")
        out.append(_example(q.get("id"), q, hf_image(ims, n)))
        if limit is not None and len(out) >= limit:
            break
    return out


@register_loader("gqa_ood")
def load_gqa_ood(split: str = "testdev", limit: int | None = None, source: str | None = None,
                 subset: str = "all", image_dir: str = "images") -> list[Example]:
    """GQA-OOD from the official ood_<split>_{all,head,tail}.json (split: val or testdev) and
    the GQA images (<root>/<image_dir>/<imageId>.jpg). `subset` picks the file loaded; each
    example records in meta["ood"] which of the three files hold it, so one run scores
    head, tail and all."""
    if split not in ("val", "testdev"):
        raise DataError(f"unknown GQA-OOD split {split!r}; one of val, testdev")
    if subset not in ("all", "head", "tail"):
        raise DataError(f"subset must be all, head or tail, got {subset!r}")
    root = local_root(source, GQA_OOD_URL)
    files = {part: _questions(require(root, source, f"ood_{split}_{part}.json", GQA_OOD_URL))
             for part in ("all", "head", "tail")}
    images = require(root, source, image_dir, GQA_URL, configured=True)
    out = []
    for qid, q in files[subset].items():
        if not _answered(q):
            continue
        parts = tuple(p for p in ("all", "head", "tail") if qid in files[p])
        out.append(_example(qid, q, lazy_image(inside(images, f"{q['imageId']}.jpg")), ood=parts))
        if limit is not None and len(out) >= limit:
            break
    return out
