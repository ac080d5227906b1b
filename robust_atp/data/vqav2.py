"""VQA v2, VQA-CP v2 and VQA-Rephrasings: questions with ten human answers on COCO images.

`Example.answers` keeps all raw answers (duplicates included) for the official VQA accuracy.
A question with no annotation or no answers cannot be scored and is left out.
"""
from __future__ import annotations

from pathlib import Path

from .base import Example, register_loader
from .sources import (DataError, hf_dataset, hf_image, inside, is_hf, lazy_image, local_root, read_json,
                      require)

VQA_URL = "https://visualqa.org/download.html"
COCO_URL = "https://cocodataset.org/#download"
VQACP_URL = "https://computing.ece.vt.edu/~aish/vqacp/"
REPHRASINGS_URL = "https://facebookresearch.github.io/VQA-Rephrasings/"
_SPLITS = {"val": "val2014", "validation": "val2014", "val2014": "val2014",
           "train": "train2014", "train2014": "train2014"}
_HF_SPLITS = {"val": "validation", "val2014": "validation"}


def coco_file(coco_split: str, image_id) -> str:
    return f"COCO_{coco_split}_{int(image_id):012d}.jpg"


def _image_id(q: dict) -> int:
    try:
        return int(q["image_id"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"question {q.get('question_id', '?')}: image_id must be an integer, "
                        f"got {q.get('image_id')!r}") from None


def answers_of(annotation: dict | None) -> tuple[str, ...]:
    if not annotation:
        return ()
    return tuple(str(a["answer"]) for a in annotation.get("answers") or () if isinstance(a, dict) and "answer" in a)


def _example(q: dict, ann: dict, image, **meta) -> Example:
    missing = [k for k in ("question_id", "image_id", "question") if q.get(k) is None]
    if missing:
        raise DataError(f"question record {q.get('question_id', '?')}: missing field(s) {', '.join(missing)}")
    return Example(id=str(q["question_id"]), image_id=str(q["image_id"]), image=image, question=str(q["question"]),
                   answers=answers_of(ann), question_type=str(ann.get("question_type") or ""),
                   answer_type=str(ann.get("answer_type") or ""),
                   meta={"question_id": q["question_id"], "multiple_choice_answer": ann.get("multiple_choice_answer"),
                         **meta})


def _by_qid(annotations) -> dict:
    if not isinstance(annotations, list):
        raise DataError("annotations: expected a list of annotation records")
    return {a["question_id"]: a for a in annotations if isinstance(a, dict) and "question_id" in a}


def _questions(data, path: Path) -> list:
    qs = data.get("questions") if isinstance(data, dict) else data
    if not isinstance(qs, list):
        raise DataError(f"{path}: expected {{'questions': [...]}} or a list of questions")
    return qs


def _image_dir(root: Path, source: str, image_dir: str | None, coco_split: str) -> Path:
    if image_dir is not None:
        return require(root, source, image_dir, COCO_URL, configured=True)
    return require(root, source, [coco_split, f"images/{coco_split}"], COCO_URL)


@register_loader("vqav2")
def load_vqav2(split: str = "val", limit: int | None = None, source: str | None = None,
               image_dir: str | None = None) -> list[Example]:
    """VQA v2 from the official JSON files + COCO images, or from the hub (`hf:lmms-lab/VQAv2`).

    Local layout (root = dataset.source):
        v2_OpenEnded_mscoco_val2014_questions.json   {"questions": [{image_id, question, question_id}]}
        v2_mscoco_val2014_annotations.json           {"annotations": [{question_id, image_id, question_type,
                                                       answer_type, answers: [{answer, answer_confidence,
                                                       answer_id}] x10, multiple_choice_answer}]}
        val2014/COCO_val2014_000000000042.jpg        (or images/val2014/...; or `image_dir`)
    """
    if is_hf(source):
        return _load_vqav2_hf(source, _HF_SPLITS.get(split, split), limit)
    if split not in _SPLITS:
        raise DataError(f"unknown VQA v2 split {split!r}; one of val, train")
    cs = _SPLITS[split]
    root = local_root(source, VQA_URL)
    qpath = require(root, source, f"v2_OpenEnded_mscoco_{cs}_questions.json", VQA_URL)
    apath = require(root, source, f"v2_mscoco_{cs}_annotations.json", VQA_URL)
    images = _image_dir(root, source, image_dir, cs)
    data = read_json(apath)
    anns = _by_qid(data.get("annotations") if isinstance(data, dict) else None)
    out = []
    for q in _questions(read_json(qpath), qpath):
        ann = anns.get(q.get("question_id"))
        if not answers_of(ann):
            continue
        out.append(_example(q, ann, lazy_image(inside(images, coco_file(cs, _image_id(q))))))
        if limit is not None and len(out) >= limit:
            break
    return out


def _load_vqav2_hf(source: str, split: str, limit: int | None) -> list[Example]:
    ds = hf_dataset(source, split)
    cols = ("question_id", "question", "image_id", "answers", "question_type", "answer_type",
            "multiple_choice_answer")
    missing = [c for c in cols[:4] if c not in ds.column_names]
    if missing:
        raise DataError(f"{source!r}: split {split!r} lacks columns {missing} (lmms-lab/VQAv2 layout expected)")
    meta = ds.select_columns([c for c in cols if c in ds.column_names])
    out = []
    for i, row in enumerate(meta):
        if not answers_of(row):
            continue
        out.append(_example(row, row, hf_image(ds, i)))
        if limit is not None and len(out) >= limit:
            break
    return out


@register_loader("vqacp")
def load_vqacp(split: str = "test", limit: int | None = None, source: str | None = None,
               coco_root: str | None = None) -> list[Example]:
    """VQA-CP v2: flat lists vqacp_v2_{train,test}_{questions,annotations}.json.

    Each question names its COCO image split in `coco_split` (train2014 or val2014); images are
    read from <coco_root>/<coco_split>/COCO_<coco_split>_<id>.jpg, coco_root defaulting to the
    dataset root (a path relative to it)."""
    if split not in ("train", "test"):
        raise DataError(f"unknown VQA-CP v2 split {split!r}; one of train, test")
    root = local_root(source, VQACP_URL)
    qpath = require(root, source, f"vqacp_v2_{split}_questions.json", VQACP_URL)
    apath = require(root, source, f"vqacp_v2_{split}_annotations.json", VQACP_URL)
    coco = require(root, source, coco_root, COCO_URL, configured=True) if coco_root else root
    anns = _by_qid(read_json(apath))
    dirs: dict[str, Path] = {}
    out = []
    for q in _questions(read_json(qpath), qpath):
        ann = anns.get(q.get("question_id"))
        if not answers_of(ann):
            continue
        cs = str(q.get("coco_split") or "")
        if cs not in ("train2014", "val2014"):
            raise DataError(f"{qpath}: question {q.get('question_id')}: coco_split must be train2014 or val2014, "
                            f"got {cs!r}")
        if cs not in dirs:
            dirs[cs] = require(coco, source, cs, COCO_URL)
        out.append(_example(q, ann, lazy_image(inside(dirs[cs], coco_file(cs, _image_id(q)))), coco_split=cs))
        if limit is not None and len(out) >= limit:
            break
    return out


@register_loader("rephrasings")
def load_rephrasings(split: str = "val", limit: int | None = None, source: str | None = None,
                     image_dir: str | None = None) -> list[Example]:
    """VQA-Rephrasings: each original VQA v2 val question followed by its human rephrasings.

    Files (as released): v2_OpenEnded_mscoco_valrep2014_humans_og_questions.json (questions;
    a rephrasing carries `rephrasing_of`, the original's question_id) and
    v2_mscoco_valrep2014_humans_og_annotations.json; images from COCO val2014. Examples come
    grouped (original first), each with meta["rephrasing_group"] = the original's question_id
    and meta["rephrasing"] = 0 for the original, 1.. for rephrasings. `limit` counts examples
    but never cuts a group short."""
    if split not in ("val", "validation", "val2014"):
        raise DataError(f"VQA-Rephrasings has one split, val; got {split!r}")
    root = local_root(source, REPHRASINGS_URL)
    qpath = require(root, source, "v2_OpenEnded_mscoco_valrep2014_humans_og_questions.json", REPHRASINGS_URL)
    apath = require(root, source, "v2_mscoco_valrep2014_humans_og_annotations.json", REPHRASINGS_URL)
    images = _image_dir(root, source, image_dir, "val2014")
    data = read_json(apath)
    anns = _by_qid(data.get("annotations") if isinstance(data, dict) else data)
    groups: dict = {}
    for q in _questions(read_json(qpath), qpath):
        ann = anns.get(q.get("question_id"))
        if not answers_of(ann):
            continue
        g = q.get("rephrasing_of", q.get("question_id"))
        groups.setdefault(g, []).append(q)
    out = []
    for g, qs in groups.items():
        if limit is not None and len(out) >= limit:
            break
        qs.sort(key=lambda q: (q.get("rephrasing_of") is not None, q["question_id"]))
        for i, q in enumerate(qs):
            image = lazy_image(inside(images, coco_file("val2014", _image_id(q))))
            out.append(_example(q, anns[q["question_id"]], image, rephrasing_group=str(g), rephrasing=i))
    return out
