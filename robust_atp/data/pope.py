"""POPE: "Is there a <object> in the image?" on COCO val2014, negatives drawn three ways.

Sources:
- the official release (AoiDragon/POPE, `output/coco/`): a root holding
  coco_pope_{random,popular,adversarial}.json, one JSON object a line
  ({"question_id", "image", "image_id", "text", "label"}), and the COCO val2014 images in
  `val2014/` (or `image_dir`);
- the hub, `hf:lmms-lab/POPE` (lmms-eval's POPE task): split `test`, columns question_id,
  question, answer, image_source, image, category (random / popular / adversarial); the
  `Full` configuration (`options: {config: Full}`) holds one split per category instead.

`subset` picks one negative-sampling split or `all`; with `all` the splits are interleaved
(question 1 of random, of popular, of adversarial, question 2 of each, ...) so that `limit`,
which counts examples, takes the same number from each (limit 1500: 500 of each). Example ids are "<split>/<question_id>"
(question ids restart in every split), `meta["pope_split"]` names the split, images are the
COCO file (`image_id`) so a run clusters by image.
"""
from __future__ import annotations

import json
from pathlib import Path

from .base import Example, register_loader
from .sources import DataError, hf_dataset, hf_image, inside, is_hf, lazy_image, local_root, require

POPE_URL = "https://github.com/AoiDragon/POPE/tree/main/output/coco"
COCO_URL = "https://cocodataset.org/#download"
SPLITS = ("random", "popular", "adversarial")


def _subsets(subset: str) -> tuple[str, ...]:
    if subset == "all":
        return SPLITS
    if subset not in SPLITS:
        raise DataError(f"unknown POPE subset {subset!r}; one of {', '.join(SPLITS)}, all")
    return (subset,)


def _example(split: str, qid, question, label, image_id: str, image) -> Example:
    if question is None or label is None:
        raise DataError(f"POPE {split} question {qid}: missing text or label")
    label = str(label).strip().lower()
    if label not in ("yes", "no"):
        raise DataError(f"POPE {split} question {qid}: label must be yes or no, got {label!r}")
    return Example(id=f"{split}/{qid}", image_id=image_id, image=image, question=str(question).strip(),
                   answers=(label,), question_type=f"pope_{split}", answer_type="yes/no",
                   meta={"pope_split": split, "question_id": qid})


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise DataError(f"{path}: line {n}: expected a JSON object")
                    rows.append(row)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {n}: not valid JSON (column {e.colno})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    return rows


@register_loader("pope")
def load_pope(split: str = "test", limit: int | None = None, source: str | None = None, subset: str = "all",
              config: str | None = None, image_dir: str | None = None) -> list[Example]:
    """POPE from the official files or the hub; `split` is the hub split (test), ignored locally."""
    subsets = _subsets(subset)
    if is_hf(source):
        return _load_hub(source, split, subsets, limit, config)
    root = local_root(source, POPE_URL)
    images = (require(root, source, image_dir, COCO_URL, configured=True) if image_dir is not None
              else require(root, source, ["val2014", "images/val2014"], COCO_URL))
    per_split = []
    for s in subsets:
        path = require(root, source, f"coco_pope_{s}.json", POPE_URL)
        rows = []
        for row in _read_jsonl(path):
            name = row.get("image")
            if not name:
                raise DataError(f"{path}: question {row.get('question_id')}: missing image")
            rows.append(_example(s, row.get("question_id"), row.get("text"), row.get("label"),
                                 Path(str(name)).stem, lazy_image(inside(images, str(name)))))
        per_split.append(rows)
    return interleave(per_split, limit)


def interleave(per_split: list[list[Example]], limit) -> list[Example]:
    """Round-robin over the splits (a split that runs out is skipped), cut at `limit`."""
    out = []
    for i in range(max((len(r) for r in per_split), default=0)):
        out += [rows[i] for rows in per_split if i < len(rows)]
    return out if limit is None else out[: int(limit)]


def _load_hub(source: str, split: str, subsets, limit, config) -> list[Example]:
    if config:  # one hub split per category (lmms-eval's pope_random / pope_pop / pope_adv)
        return interleave([_hub_rows(source, hf_dataset(source, s, config), s, limit) for s in subsets], limit)
    ds = hf_dataset(source, split)
    missing = [c for c in ("question_id", "question", "answer", "category") if c not in ds.column_names]
    if missing:
        raise DataError(f"{source!r}: split {split!r} lacks columns {missing} (lmms-lab/POPE layout expected)")
    return interleave([_hub_rows(source, ds, s, limit) for s in subsets], limit)


def _hub_rows(source: str, ds, s: str, limit) -> list[Example]:
    cols = [c for c in ("question_id", "question", "answer", "category", "image_source") if c in ds.column_names]
    out = []
    for i, row in enumerate(ds.select_columns(cols)):
        if row.get("category", s) != s:
            continue
        image_id = str(row.get("image_source") or f"{s}/{row['question_id']}")
        out.append(_example(s, row["question_id"], row["question"], row["answer"], image_id, hf_image(ds, i)))
        if limit is not None and len(out) >= int(limit):
            break
    return out
