"""TextVQA val: questions about the text in OpenImages photos, ten human answers each.

Sources:
- the official release (textvqa.org): `TextVQA_0.5.1_val.json` ({"data": [{question, image_id,
  question_id, answers (10), image_classes, flickr_original_url, flickr_300k_url, image_width,
  image_height, question_tokens, set_name}]}), the images at `train_images/<image_id>.jpg`
  (train_val_images.zip; `image_dir` points elsewhere), and for the OCR prompt the Rosetta OCR
  file `TextVQA_Rosetta_OCR_v0.2_val.json` ({"data": [{image_id, ocr_tokens, ocr_info}]});
- the hub, `hf:lmms-lab/textvqa` (lmms-eval's textvqa_val): split `validation`, the same
  fields plus `ocr_tokens` and the image as columns.

The question text (`ocr`, `prompt_style`):
- the question with its first letter capitalised and the rest lower-cased (Python's
  `str.capitalize`, as lmms-eval's `textvqa_doc_to_text` does; lmms-eval @ 75571cfe);
- with `ocr: true`, a second line "Reference OCR token: <tokens joined by ', '>", the
  OCR prompt of LLaVA-1.5's evaluation (its `llava_textvqa_val_v051_ocr.jsonl` questions read
  "<question>\\nReference OCR token: <tokens>\\nAnswer the question using a single word or
  phrase."; `llava/eval/eval_textvqa.py`'s `prompt_processor` also reads two-line questions,
  those without OCR tokens). `prompt_style: llava` (default) leaves the line out when an
  image has no OCR tokens; `lmms_eval` always writes it (lmms-eval's `ocr: true` option).
The instruction line is in the suite's prompt. `answers` holds the ten raw answers; the
metric is `textvqa_accuracy`.
"""
from __future__ import annotations

from .base import Example, register_loader
from .sources import DataError, hf_dataset, hf_image, inside, is_hf, lazy_image, local_root, read_json, require

TEXTVQA_URL = "https://textvqa.org/dataset/"
_LOCAL_SPLITS = {"val": "val", "validation": "val", "train": "train"}


def question_text(question: str, ocr_tokens, ocr: bool, style: str) -> str:
    text = str(question).capitalize()
    if ocr and (ocr_tokens or style == "lmms_eval"):
        text += "\nReference OCR token: " + ", ".join(str(t) for t in ocr_tokens or ())
    return text


def _example(q: dict, ocr_tokens, image, ocr: bool, style: str) -> Example:
    missing = [k for k in ("question_id", "question", "image_id") if q.get(k) is None]
    if missing:
        raise DataError(f"TextVQA question {q.get('question_id', '?')}: missing field(s) {', '.join(missing)}")
    answers = q.get("answers")
    if not isinstance(answers, (list, tuple)) or not answers:
        raise DataError(f"TextVQA question {q['question_id']}: answers must be a non-empty list")
    return Example(id=str(q["question_id"]), image_id=str(q["image_id"]), image=image,
                   question=question_text(q["question"], ocr_tokens, ocr, style),
                   answers=tuple(str(a) for a in answers), question_type="textvqa", answer_type="other",
                   meta={"question_id": q["question_id"], "ocr_tokens": list(ocr_tokens or ()),
                         "raw_question": str(q["question"])})


@register_loader("textvqa")
def load_textvqa(split: str = "validation", limit: int | None = None, source: str | None = None,
                 ocr: bool = False, prompt_style: str = "llava", image_dir: str | None = None) -> list[Example]:
    if prompt_style not in ("llava", "lmms_eval"):
        raise DataError(f"prompt_style must be llava or lmms_eval, got {prompt_style!r}")
    if is_hf(source):
        ds = hf_dataset(source, split)
        need = ["question_id", "question", "image_id", "answers"] + (["ocr_tokens"] if ocr else [])
        missing = [c for c in need if c not in ds.column_names]
        if missing:
            raise DataError(f"{source!r}: split {split!r} lacks columns {missing} (lmms-lab/textvqa layout expected)")
        out = []
        for i, row in enumerate(ds.select_columns(need)):
            out.append(_example(row, row.get("ocr_tokens"), hf_image(ds, i), ocr, prompt_style))
            if limit is not None and len(out) >= int(limit):
                break
        return out
    if split not in _LOCAL_SPLITS:
        raise DataError(f"unknown TextVQA split {split!r}; one of val, train")
    s = _LOCAL_SPLITS[split]
    root = local_root(source, TEXTVQA_URL)
    qpath = require(root, source, f"TextVQA_0.5.1_{s}.json", TEXTVQA_URL)
    images = (require(root, source, image_dir, TEXTVQA_URL, configured=True) if image_dir is not None
              else require(root, source, ["train_images", "train_val_images/train_images"], TEXTVQA_URL))
    data = read_json(qpath)
    questions = data.get("data") if isinstance(data, dict) else None
    if not isinstance(questions, list):
        raise DataError(f"{qpath}: expected {{'data': [...]}} (TextVQA 0.5.1 format)")
    tokens = _ocr_tokens(root, source, s) if ocr else {}
    out = []
    for q in questions:
        if not isinstance(q, dict):
            raise DataError(f"{qpath}: every entry of 'data' must be an object")
        image = lazy_image(inside(images, f"{q.get('image_id')}.jpg"))
        out.append(_example(q, q.get("ocr_tokens", tokens.get(q.get("image_id"))), image, ocr, prompt_style))
        if limit is not None and len(out) >= int(limit):
            break
    return out


def _ocr_tokens(root, source, s: str) -> dict:
    path = require(root, source, f"TextVQA_Rosetta_OCR_v0.2_{s}.json", TEXTVQA_URL)
    data = read_json(path)
    rows = data.get("data") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise DataError(f"{path}: expected {{'data': [...]}} (Rosetta OCR format)")
    return {r.get("image_id"): r.get("ocr_tokens") or [] for r in rows if isinstance(r, dict)}
