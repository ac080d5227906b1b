"""Small POPE, MME, ScienceQA, MMBench and TextVQA sets in their released formats (local files as
the official releases lay them out, and the lmms-lab hub parquet layout), for the loader tests."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from .official_data import image, save_jpeg

POPE_ROWS = {  # split -> (question_id, image file, text, label), as in AoiDragon/POPE output/coco/
    "random": [(0, "COCO_val2014_000000548882.jpg", "Is there a dining table in the image?", "yes"),
               (1, "COCO_val2014_000000548882.jpg", "Is there a tv in the image?", "no"),
               (2, "COCO_val2014_000000008211.jpg", "Is there a motorcycle in the image?", "yes")],
    "popular": [(0, "COCO_val2014_000000548882.jpg", "Is there a dining table in the image?", "yes"),
                (1, "COCO_val2014_000000548882.jpg", "Is there a person in the image?", "no")],
    "adversarial": [(0, "COCO_val2014_000000548882.jpg", "Is there a dining table in the image?", "yes"),
                    (1, "COCO_val2014_000000548882.jpg", "Is there a chair in the image?", "no"),
                    (2, "COCO_val2014_000000008211.jpg", "Is there a car in the image?", "no"),
                    (3, "COCO_val2014_000000008211.jpg", "Is there an umbrella in the image?", "no")],
}


def _png_bytes(seed: int, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    image(seed, size=size).save(buf, format="PNG")
    return buf.getvalue()


def _to_parquet(root: Path, folder: str, split: str, rows: dict, features) -> Path:
    import datasets

    ds = datasets.Dataset.from_dict(rows, features=features)
    (root / folder).mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(root / folder / f"{split}-00000-of-00001.parquet"))
    return root


def write_pope(root: Path) -> Path:
    for split, rows in POPE_ROWS.items():
        lines = [json.dumps({"question_id": q, "image": im, "image_id": int(im[-10:-4]), "text": t, "label": lab})
                 for q, im, t, lab in rows]
        (root / f"coco_pope_{split}.json").parent.mkdir(parents=True, exist_ok=True)
        (root / f"coco_pope_{split}.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for i, name in enumerate(sorted({im for rows in POPE_ROWS.values() for _, im, _, _ in rows})):
        save_jpeg(root / "val2014" / name, 10 + i, "RGB")
    return root


def write_pope_hub(root: Path) -> Path:
    """lmms-lab/POPE default configuration: data/test-*.parquet."""
    import datasets

    cols = {k: [] for k in ("id", "question_id", "question", "answer", "image_source", "image", "category")}
    n = 0
    for split, rows in POPE_ROWS.items():
        for q, im, t, lab in rows:
            for k, v in (("id", str(n)), ("question_id", str(q + 1)), ("question", t), ("answer", lab),
                         ("image_source", im[:-4]), ("image", {"bytes": _png_bytes(q), "path": None}),
                         ("category", split)):
                cols[k].append(v)
            n += 1
    feats = datasets.Features({"id": datasets.Value("string"), "question_id": datasets.Value("string"),
                               "question": datasets.Value("string"), "answer": datasets.Value("string"),
                               "image_source": datasets.Value("string"), "image": datasets.Image(),
                               "category": datasets.Value("string")})
    return _to_parquet(root, "data", "test", cols, feats)


# (subtask, image stem, [(question, answer), (question, answer)])
MME_ITEMS = [
    ("existence", "000000006040", [("Is there a train in this image? Please answer yes or no.", "Yes"),
                                   ("Is there a bed in this image? Please answer yes or no.", "No")]),
    ("existence", "000000044279", [("Is there a bus in this image? Please answer yes or no.", "Yes"),
                                   ("Is there a cow in this image? Please answer yes or no.", "No")]),
    ("artwork", "10002", [("Is this artwork created by Giotto? Please answer yes or no.", "Yes"),
                          ("Is this artwork created by Monet? Please answer yes or no.", "No")]),
    ("code_reasoning", "0020", [("Will the code print 3? Please answer yes or no.", "No"),
                                ("Will the code print 5? Please answer yes or no.", "Yes")]),
]


def write_mme(root: Path) -> Path:
    """MME_Benchmark_release_version/ as released: image folders + questions_answers_YN for some subtasks."""
    base = root / "MME_Benchmark_release_version"
    for i, (task, stem, qas) in enumerate(MME_ITEMS):
        folder = base / task
        img_dir, q_dir = ((folder / "images", folder / "questions_answers_YN")
                          if task == "artwork" else (folder, folder))
        img_dir.mkdir(parents=True, exist_ok=True)
        q_dir.mkdir(parents=True, exist_ok=True)
        if task == "artwork":
            save_jpeg(img_dir / f"{stem}.jpg", 20 + i, "RGB")
        else:
            (img_dir / f"{stem}.png").write_bytes(_png_bytes(20 + i))
        (q_dir / f"{stem}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in qas), encoding="utf-8")
    return root


def write_mme_hub(root: Path) -> Path:
    import datasets

    cols = {k: [] for k in ("question_id", "image", "question", "answer", "category")}
    for i, (task, stem, qas) in enumerate(MME_ITEMS):
        for q, a in qas:
            ext = "jpg" if task == "artwork" else "png"
            for k, v in (("question_id", f"{task}/{stem}.{ext}"), ("image", {"bytes": _png_bytes(20 + i), "path": None}),
                         ("question", q), ("answer", a), ("category", task)):
                cols[k].append(v)
    feats = datasets.Features({"question_id": datasets.Value("string"), "image": datasets.Image(),
                               "question": datasets.Value("string"), "answer": datasets.Value("string"),
                               "category": datasets.Value("string")})
    return _to_parquet(root, "data", "test", cols, feats)


SQA_PROBLEMS = {
    "5": {"question": "Which of these states is farthest north?", "choices": ["West Virginia", "Louisiana", "Arizona",
                                                                             "Oklahoma"],
          "answer": 0, "hint": "", "image": "image.png", "task": "closed choice", "grade": "grade2",
          "subject": "social science", "topic": "geography", "category": "Geography", "skill": "Read a map",
          "lecture": "Maps have four cardinal directions.", "solution": "West Virginia is farthest north.",
          "split": "test"},
    "7": {"question": "Which tense does the sentence use?", "choices": ["past tense", "future tense"], "answer": 1,
          "hint": "Mona will print her name.", "image": None, "task": "closed choice", "grade": "grade3",
          "subject": "language science", "topic": "verbs", "category": "Verb tense", "skill": "Is the sentence...",
          "lecture": "", "solution": "", "split": "test"},
    "9": {"question": "Identify the question that Tom's experiment can best answer.",
          "choices": ["Do ping pong balls stop rolling along the ground sooner on a carpeted floor?",
                      "Do ping pong balls travel farther when launched from a 30° angle?", "Neither"],
          "answer": 1, "hint": "The passage below describes an experiment.\n\nTom placed a ping pong ball...",
          "image": "image.png", "task": "closed choice", "grade": "grade8", "subject": "natural science",
          "topic": "science-and-engineering-practices", "category": "Designing experiments", "skill": "Identify...",
          "lecture": "", "solution": "", "split": "test"},
    "11": {"question": "Which animal's feet are also adapted for swimming?", "choices": ["duck", "dog"], "answer": 0,
           "hint": "", "image": "image.png", "task": "closed choice", "grade": "grade4", "subject": "natural science",
           "topic": "adaptations", "category": "Animal adaptations", "skill": "", "lecture": "", "solution": "",
           "split": "train"},
}


def write_scienceqa(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "problems.json").write_text(json.dumps(SQA_PROBLEMS, ensure_ascii=False), encoding="utf-8")
    splits = {"train": ["11"], "val": [], "test": ["5", "7", "9"], "trainval": ["11"], "minitrain": [],
              "minival": [], "minitest": []}
    (root / "pid_splits.json").write_text(json.dumps(splits), encoding="utf-8")
    for pid, p in SQA_PROBLEMS.items():
        if p["image"]:
            d = root / "images" / p["split"] / pid
            d.mkdir(parents=True, exist_ok=True)
            (d / "image.png").write_bytes(_png_bytes(int(pid)))
    return root


def write_scienceqa_hub(root: Path) -> Path:
    """lmms-lab/ScienceQA configuration ScienceQA-IMG: ScienceQA-IMG/test-*.parquet."""
    import datasets

    keys = ("image", "question", "choices", "answer", "hint", "task", "grade", "subject", "topic", "category",
            "skill", "lecture", "solution")
    cols = {k: [] for k in keys}
    for pid in ("5", "9"):
        p = SQA_PROBLEMS[pid]
        for k in keys:
            cols[k].append({"bytes": _png_bytes(int(pid)), "path": None} if k == "image" else p[k])
    feats = datasets.Features({**{k: datasets.Value("string") for k in keys}, "image": datasets.Image(),
                               "choices": datasets.Sequence(datasets.Value("string")),
                               "answer": datasets.Value("int8")})
    return _to_parquet(root, "ScienceQA-IMG", "test", cols, feats)


# MMBench dev: question 30 with three options and its two circular copies (options rotated,
# answer letter moved), question 41 with four options and a hint, no copies in this fixture
MMB_ROWS = [
    {"index": 30, "question": "What is the main object in the image?", "hint": None, "A": "teddy bear",
     "B": "rabbit", "C": "cat", "D": None, "answer": "A", "category": "image_topic", "source": "MMBench",
     "l2-category": "coarse_perception", "comment": None, "split": "dev"},
    {"index": 1000030, "question": "What is the main object in the image?", "hint": None, "A": "rabbit",
     "B": "cat", "C": "teddy bear", "D": None, "answer": "C", "category": "image_topic", "source": "MMBench",
     "l2-category": "coarse_perception", "comment": None, "split": "dev"},
    {"index": 2000030, "question": "What is the main object in the image?", "hint": None, "A": "cat",
     "B": "teddy bear", "C": "rabbit", "D": None, "answer": "B", "category": "image_topic", "source": "MMBench",
     "l2-category": "coarse_perception", "comment": None, "split": "dev"},
    {"index": 41, "question": "Which mood does this image convey?", "hint": "Look at the faces.", "A": "Happy",
     "B": "Sad", "C": "Anxious", "D": "Angry", "answer": "B", "category": "image_emotion", "source": "MMBench",
     "l2-category": "coarse_perception", "comment": None, "split": "dev"},
]


def write_mmbench_tsv(root: Path, name: str = "MMBench_DEV_EN.tsv") -> Path:
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in MMB_ROWS:
        rows.append({**r, "image": base64.b64encode(_png_bytes(r["index"] % 1_000_000)).decode()})
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category",
            "comment", "split"]
    pd.DataFrame(rows, columns=cols).to_csv(root / name, sep="\t", index=False)
    return root


def write_mmbench_hub(root: Path) -> Path:
    """lmms-lab/MMBench configuration en: en/dev-*.parquet (column L2-category)."""
    import datasets

    keys = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "source", "L2-category",
            "comment", "split")
    cols = {k: [] for k in keys + ("image",)}
    for r in MMB_ROWS:
        for k in keys:
            cols[k].append(r["l2-category"] if k == "L2-category" else r[k])
        cols["image"].append({"bytes": _png_bytes(r["index"] % 1_000_000), "path": None})
    feats = datasets.Features({**{k: datasets.Value("string") for k in keys}, "index": datasets.Value("int64"),
                               "image": datasets.Image()})
    return _to_parquet(root, "en", "dev", cols, feats)


TEXTVQA_DATA = [  # TextVQA_0.5.1_val.json "data" records (fields as released)
    {"question": "what is the brand of this camera?", "image_id": "003a8ae2ef43b901", "image_classes": ["Camera"],
     "flickr_original_url": "https://farm2.staticflickr.com/x_o.jpg", "flickr_300k_url": "https://x_z.jpg",
     "image_width": 1024, "image_height": 664,
     "answers": ["nous les gosses", "dakota", "clos culombu", "dakota digital", "dakota", "dakota",
                 "dakota digital", "dakota digital", "dakota", "dakota"],
     "question_tokens": ["what", "is", "the", "brand", "of", "this", "camera"], "question_id": 34602,
     "set_name": "val"},
    {"question": "what brand phone is this?", "image_id": "0054c91397f2fe05", "image_classes": ["Mobile phone"],
     "flickr_original_url": "https://y_o.jpg", "flickr_300k_url": "https://y_z.jpg", "image_width": 1024,
     "image_height": 768, "answers": ["nokia"] * 10,
     "question_tokens": ["what", "brand", "phone", "is", "this"], "question_id": 34605, "set_name": "val"},
]
TEXTVQA_OCR = {"003a8ae2ef43b901": ["DAKOTA", "DIGITAL", "Single-Use", "Camera", "Pire", "digitat"],
               "0054c91397f2fe05": []}


def write_textvqa(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "TextVQA_0.5.1_val.json").write_text(json.dumps(
        {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": TEXTVQA_DATA}),
        encoding="utf-8")
    (root / "TextVQA_Rosetta_OCR_v0.2_val.json").write_text(json.dumps(
        {"dataset_type": "val", "dataset_name": "textvqa",
         "data": [{"image_id": k, "ocr_tokens": v, "ocr_info": []} for k, v in TEXTVQA_OCR.items()]}),
        encoding="utf-8")
    for i, q in enumerate(TEXTVQA_DATA):
        save_jpeg(root / "train_images" / f"{q['image_id']}.jpg", 50 + i, "RGB")
    return root


def write_textvqa_hub(root: Path) -> Path:
    import datasets

    keys = ("image_id", "question_id", "question", "question_tokens", "image_width", "image_height",
            "flickr_original_url", "flickr_300k_url", "answers", "image_classes", "set_name", "ocr_tokens")
    cols = {k: [] for k in keys + ("image",)}
    for i, q in enumerate(TEXTVQA_DATA):
        for k in keys:
            cols[k].append(TEXTVQA_OCR[q["image_id"]] if k == "ocr_tokens" else q[k])
        cols["image"].append({"bytes": _png_bytes(50 + i), "path": None})
    s = datasets.Value("string")
    feats = datasets.Features({"image_id": s, "question_id": datasets.Value("int64"), "question": s,
                               "question_tokens": datasets.Sequence(s), "image": datasets.Image(),
                               "image_width": datasets.Value("int64"), "image_height": datasets.Value("int64"),
                               "flickr_original_url": s, "flickr_300k_url": s, "answers": datasets.Sequence(s),
                               "image_classes": datasets.Sequence(s), "set_name": s,
                               "ocr_tokens": datasets.Sequence(s)})
    return _to_parquet(root, "data", "validation", cols, feats)
