"""MME: 14 subtasks, two yes / no questions per image.

Sources:
- the official release, `MME_Benchmark_release_version/` (the root, or a root holding it):
  one folder per subtask; artwork, celebrity, landmark, posters and scene keep their images in
  `images/` and the questions in `questions_answers_YN/<image stem>.txt`, the others keep
  `<image stem>.txt` beside the image (.png or .jpg); each .txt holds the image's two lines
  "question<TAB>answer" (answer Yes / No);
- the hub, `hf:lmms-lab/MME` (lmms-eval's MME task): split `test`, columns question_id (the
  image, "<subtask>/<file>"), image, question, answer, category.

The released questions end in " Please answer yes or no."; with `strip_instruction` (default)
that sentence is removed, as lmms-eval's `mme_doc_to_text` does before it appends its own
instruction (the suite's prompt then adds "Answer the question using a single word or phrase.",
the LLaVA-1.5 evaluation prompt); `strip_instruction: false` keeps the question as released.

Each image is a group (`meta["group_id"]` = `image_id` = "<subtask>/<file>"): accuracy+ needs
both of its questions, so `limit` never cuts a pair. Example ids are "<subtask>/<file>#<k>".
"""
from __future__ import annotations

from pathlib import Path

from .base import Example, register_loader
from .sources import DataError, hf_dataset, hf_image, inside, is_hf, lazy_image, local_root, require

MME_URL = "https://github.com/BradyFU/Awesome-Multimodal-Large-Language-Models/tree/Evaluation"
SUBTASKS = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
            "OCR", "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_IMAGE_FOLDER_TASKS = ("artwork", "celebrity", "landmark", "posters", "scene")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPG", ".PNG")


INSTRUCTION = " Please answer yes or no."


def _example(group: str, k: int, category: str, question, answer, image, strip: bool = True) -> Example:
    if question is None or answer is None:
        raise DataError(f"MME {group}: question {k} lacks its question or answer")
    question = str(question).strip()
    if strip:
        question = question.replace(INSTRUCTION, "")
    if str(answer).strip().lower().replace(".", "") not in ("yes", "no"):
        raise DataError(f"MME {group}: answer must be Yes or No, got {answer!r}")
    return Example(id=f"{group}#{k}", image_id=group, image=image, question=question,
                   answers=(str(answer).strip(),), question_type=category, answer_type="yes/no",
                   meta={"category": category, "group_id": group})


@register_loader("mme")
def load_mme(split: str = "test", limit: int | None = None, source: str | None = None,
             subtasks: list[str] | None = None, strip_instruction: bool = True) -> list[Example]:
    """MME from the official folders or the hub; `subtasks` restricts to some of the 14."""
    chosen = tuple(subtasks) if subtasks else SUBTASKS
    unknown = [t for t in chosen if t not in SUBTASKS]
    if unknown:
        raise DataError(f"unknown MME subtask(s) {unknown}; known: {', '.join(SUBTASKS)}")
    groups = (_load_hub(source, split, chosen, strip_instruction) if is_hf(source)
              else _load_local(source, chosen, strip_instruction))
    out = []
    for rows in groups:
        if limit is not None and len(out) >= int(limit):
            break
        out += rows
    return out


def _load_local(source, chosen, strip: bool) -> list[list[Example]]:
    root = local_root(source, MME_URL)
    if (root / "MME_Benchmark_release_version").is_dir():
        root = root / "MME_Benchmark_release_version"
    groups = []
    for task in chosen:
        folder = require(root, source, task, MME_URL)
        qdir = folder / "questions_answers_YN" if task in _IMAGE_FOLDER_TASKS else folder
        idir = folder / "images" if task in _IMAGE_FOLDER_TASKS else folder
        if not qdir.is_dir():
            require(root, source, f"{task}/questions_answers_YN", MME_URL)
        for txt in sorted(qdir.glob("*.txt")):
            image = next((idir / (txt.stem + s) for s in _IMAGE_SUFFIXES if (idir / (txt.stem + s)).exists()), None)
            if image is None:
                raise DataError(f"{txt}: no image {txt.stem}.png or .jpg beside it (looked in {idir})")
            group = f"{task}/{image.name}"
            rows = []
            for k, line in enumerate(_lines(txt)):
                question, sep, answer = line.rpartition("\t")
                if not sep:
                    raise DataError(f"{txt}: line {k + 1}: expected 'question<TAB>answer'")
                rows.append(_example(group, k, task, question, answer, lazy_image(inside(idir, image.name)), strip))
            groups.append(rows)
    return groups


def _lines(path: Path) -> list[str]:
    try:
        return [ln.rstrip("\r\n") for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


def _load_hub(source: str, split: str, chosen, strip: bool) -> list[list[Example]]:
    ds = hf_dataset(source, split)
    missing = [c for c in ("question_id", "question", "answer", "category") if c not in ds.column_names]
    if missing:
        raise DataError(f"{source!r}: split {split!r} lacks columns {missing} (lmms-lab/MME layout expected)")
    groups: dict[str, list[Example]] = {}
    for i, row in enumerate(ds.select_columns(["question_id", "question", "answer", "category"])):
        if row["category"] not in chosen:
            continue
        group = str(row["question_id"])
        rows = groups.setdefault(group, [])
        rows.append(_example(group, len(rows), row["category"], row["question"], row["answer"], hf_image(ds, i),
                             strip))
    return list(groups.values())
