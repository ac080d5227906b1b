"""ScienceQA-IMG: the ScienceQA test problems that come with an image, as multiple choice.

Sources:
- the official release (lupantech/ScienceQA, `data/scienceqa/`): `problems.json`
  ({pid: {question, choices, answer (index), hint, image ("image.png" or null), task, grade,
  subject, topic, category, skill, lecture, solution, split}}), `pid_splits.json`
  ({"test": [pid, ...], ...}) and the images at `images/<split>/<pid>/image.png`;
- the hub, `hf:lmms-lab/ScienceQA`, configuration `ScienceQA-IMG` (lmms-eval's scienceqa_img),
  split `test`, with the same fields as columns and the image embedded.

The question text is lmms-eval's `sqa_doc_to_text` (default format; lmms-eval @ 75571cfe):
"Context: <hint>\\n" when there is a hint, the question, then one "A. <choice>" line per choice;
the suite's prompt adds the instruction ("Answer with the option's letter from the given
choices directly.", as LLaVA's `model_vqa_science --single-pred-prompt` and lmms-eval do).
`answers` is the correct letter.
"""
from __future__ import annotations

from .base import Example, register_loader
from .sources import DataError, hf_dataset, hf_image, inside, is_hf, lazy_image, local_root, read_json, require

SQA_URL = "https://github.com/lupantech/ScienceQA#ghost-download-the-dataset"
LETTERS = "ABCDEFGHIJ"


def question_text(question: str, choices, hint: str | None) -> str:
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    context = f"Context: {hint}\n" if hint else ""
    return f"{context}{question}\n{options}"


def _example(eid: str, p: dict, image) -> Example:
    choices, answer = p.get("choices"), p.get("answer")
    if not isinstance(choices, (list, tuple)) or not choices or p.get("question") is None:
        raise DataError(f"ScienceQA problem {eid}: missing question or choices")
    if not isinstance(answer, int) or not 0 <= answer < len(choices) or len(choices) > len(LETTERS):
        raise DataError(f"ScienceQA problem {eid}: answer must index its {len(choices)} choices, got {answer!r}")
    return Example(id=eid, image_id=eid, image=image, question=question_text(str(p["question"]), choices, p.get("hint")),
                   answers=(LETTERS[answer],), question_type=str(p.get("category") or ""),
                   answer_type="multiple choice",
                   meta={k: p.get(k) for k in ("subject", "topic", "grade", "skill") if p.get(k) is not None})


@register_loader("scienceqa_img")
def load_scienceqa_img(split: str = "test", limit: int | None = None, source: str | None = None,
                       config: str = "ScienceQA-IMG") -> list[Example]:
    if is_hf(source):
        ds = hf_dataset(source, split, config)
        missing = [c for c in ("question", "choices", "answer", "hint", "image") if c not in ds.column_names]
        if missing:
            raise DataError(f"{source!r}: {config}/{split} lacks columns {missing} (lmms-lab/ScienceQA layout expected)")
        cols = [c for c in ("question", "choices", "answer", "hint", "category", "subject", "topic", "grade", "skill")
                if c in ds.column_names]
        out = []
        for i, row in enumerate(ds.select_columns(cols)):
            out.append(_example(f"{split}/{i}", row, hf_image(ds, i)))
            if limit is not None and len(out) >= int(limit):
                break
        return out
    root = local_root(source, SQA_URL)
    problems = read_json(require(root, source, "problems.json", SQA_URL))
    splits = read_json(require(root, source, "pid_splits.json", SQA_URL))
    if not isinstance(problems, dict) or not isinstance(splits, dict):
        raise DataError(f"{root}: problems.json and pid_splits.json must be JSON objects")
    if split not in splits:
        raise DataError(f"{root / 'pid_splits.json'}: no split {split!r}; it has {', '.join(sorted(splits))}")
    images = None
    out = []
    for pid in splits[split]:
        p = problems.get(str(pid))
        if not isinstance(p, dict):
            raise DataError(f"{root / 'problems.json'}: problem {pid} of split {split} is missing")
        if not p.get("image"):  # -IMG: problems with an image only
            continue
        images = images or require(root, source, f"images/{split}", SQA_URL)
        out.append(_example(str(pid), p, lazy_image(inside(images, f"{pid}/{p['image']}"))))
        if limit is not None and len(out) >= int(limit):
            break
    return out
