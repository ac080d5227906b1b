"""MMBench (English) dev: single-choice questions with their circular copies.

Sources:
- the official TSV (`MMBench_DEV_EN.tsv`, or LLaVA's `mmbench_dev_20230712.tsv`; `file`
  names another): columns index, question, hint, A, B, C, D, answer, category, image (base64),
  source, l2-category, comment, split; a question's circular copies (its options rotated) have
  index + k * 1e6;
- the hub, `hf:lmms-lab/MMBench`, configuration `en`, split `dev` (lmms-eval's mmbench_en_dev),
  the same columns with the image decoded and `L2-category`.

The question text follows `prompt_style`:
- `llava` (default; LLaVA's `llava/eval/model_vqa_mmbench.py`, `eval_model`, haotian-liu/LLaVA
  @ c121f04): "<hint>\\n" when there is a hint, the question, then "\\nA. <option>" per option
  up to the first missing one (missing: None, NaN, 'nan', 'none');
- `lmms_eval` (`mmbench_doc_to_text` + `MMBench_Evaluator.create_options_prompt`, lmms-eval @
  75571cfe): "<hint> <question> There are several options:\\nA. <option>..." .
The instruction ("Answer with the option's letter from the given choices directly.") is in the
suite's prompt. `answers` = (the correct letter, "A. <option>", ...) with the options the
reference's answer matching reads (A-D that are not None / NaN); `meta["group_id"]` is
index mod 1e6 (the circular group, also `image_id`: the copies share the image) and
`meta["circular_main"]` marks the original question (index < 1e6).
"""
from __future__ import annotations

import base64
import functools
import io
import math
from pathlib import Path

from PIL import Image

from .base import Example, register_loader
from .sources import DataError, ImageUnreadable, hf_dataset, hf_image, is_hf, local_root, require

MMBENCH_URL = "https://github.com/open-compass/mmbench"
_TSV_NAMES = ("MMBench_DEV_EN.tsv", "mmbench_dev_20230712.tsv", "mmbench_dev_en_20231003.tsv")
OPTIONS = ("A", "B", "C", "D")
CIRCULAR = 1_000_000


def _missing(value) -> bool:
    """pandas.isna for one cell: None or a float NaN (the reference's answer matching)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _none_llava(value) -> bool:
    """model_vqa_mmbench.is_none: also the strings 'nan' and 'none', any case."""
    return _missing(value) or (isinstance(value, str) and value.lower() in ("nan", "none"))


def question_text(row: dict, style: str) -> str:
    hint, question = row.get("hint"), str(row["question"])
    if style == "llava":
        text = question if _none_llava(hint) else f"{hint}\n{question}"
        for ch in OPTIONS:
            if _none_llava(row.get(ch)):
                break
            text += f"\n{ch}. {row[ch]}"
        return text
    options = "There are several options:\n" + "".join(
        f"{ch}. {row[ch]}\n" for ch in OPTIONS if row.get(ch) and not _missing(row.get(ch)) and row[ch] != "nan")
    options = options.rstrip("\n")
    return f"{hint} {question} {options}" if not _missing(hint) and hint != "nan" else f"{question} {options}"


def _example(row: dict, image, style: str) -> Example:
    try:
        index = int(row["index"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"MMBench row: index must be an integer, got {row.get('index')!r}") from None
    answer = row.get("answer")
    if _missing(answer) or str(answer) not in OPTIONS:
        raise DataError(f"MMBench question {index}: answer must be one of A-D, got {answer!r}")
    if row.get("question") is None:
        raise DataError(f"MMBench question {index}: missing question")
    group = str(index % CIRCULAR)
    options = tuple(f"{ch}. {row[ch]}" for ch in OPTIONS if ch in row and not _missing(row[ch]))
    l2 = row.get("L2-category", row.get("l2-category"))
    return Example(id=str(index), image_id=f"mmbench/{group}", image=image, question=question_text(row, style),
                   answers=(str(answer),) + options, question_type=str(row.get("category") or ""),
                   answer_type="multiple choice",
                   meta={"group_id": group, "circular_main": index < CIRCULAR, "category": row.get("category"),
                         "l2_category": None if _missing(l2) else l2, "source": row.get("source")})


def _decode_b64(data: str, where: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            im.load()
            return im
    except (ValueError, OSError, SyntaxError) as e:
        raise ImageUnreadable(where, f"not a base64-encoded image ({type(e).__name__})") from None


@register_loader("mmbench_en")
def load_mmbench_en(split: str = "dev", limit: int | None = None, source: str | None = None,
                    config: str = "en", file: str | None = None, prompt_style: str = "llava") -> list[Example]:
    """`limit` counts examples but never cuts a circular group short."""
    if prompt_style not in ("llava", "lmms_eval"):
        raise DataError(f"prompt_style must be llava or lmms_eval, got {prompt_style!r}")
    if is_hf(source):
        ds = hf_dataset(source, split, config)
        missing = [c for c in ("index", "question", "answer", "A", "B") if c not in ds.column_names]
        if missing:
            raise DataError(f"{source!r}: {config}/{split} lacks columns {missing} (lmms-lab/MMBench layout expected)")
        cols = [c for c in ds.column_names if c != "image"]
        examples = [_example(row, hf_image(ds, i), prompt_style) for i, row in enumerate(ds.select_columns(cols))]
    else:
        examples = _load_tsv(source, file, prompt_style)
    return _take_groups(examples, limit)


def _load_tsv(source, file, style) -> list[Example]:
    import pandas as pd

    root = local_root(source, MMBENCH_URL)
    path = require(root, source, file, MMBENCH_URL, configured=True) if file else require(
        root, source, list(_TSV_NAMES), MMBENCH_URL)
    try:
        table = pd.read_table(path, keep_default_na=True)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DataError(f"{path}: not a readable MMBench TSV ({str(e).splitlines()[0] if str(e) else e})") from None
    for col in ("index", "question", "answer", "image"):
        if col not in table.columns:
            raise DataError(f"{path}: no column {col!r} (MMBench TSV layout expected)")
    out = []
    for rec in table.to_dict("records"):
        image = functools.partial(_decode_b64, str(rec["image"]), f"{Path(path).name}: index {rec.get('index')}")
        out.append(_example(rec, image, style))
    return out


def _take_groups(examples: list[Example], limit) -> list[Example]:
    if limit is None:
        return examples
    keep, out = set(), []
    for ex in examples:
        if ex.meta["group_id"] not in keep:
            if len(out) >= int(limit):
                continue
            keep.add(ex.meta["group_id"])
        out.append(ex)
    return out

