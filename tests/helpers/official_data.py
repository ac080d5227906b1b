"""Small data sets written in the exact official formats (field names and nesting as released),
with the odd records real files have: questions without annotations, annotations without
answers, unicode questions, grayscale / CMYK / palette images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

MODES = ("RGB", "L", "CMYK", "P", "RGB", "L")


def image(seed: int, mode: str = "RGB", size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(arr, "RGB")
    return im.convert(mode) if mode != "P" else im.quantize(16)


def save_jpeg(path: Path, seed: int, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = image(seed, mode)
    if mode == "P":  # JPEG cannot hold a palette: such files arrive as PNG data behind a .jpg name
        im.save(path, format="PNG")
    else:
        im.save(path, format="JPEG", quality=90)


def coco_name(split: str, image_id: int) -> str:
    return f"COCO_{split}_{image_id:012d}.jpg"


def ten(*answers: str) -> list[dict]:
    """Ten answer records, the given answers repeated in order."""
    out = [answers[i % len(answers)] for i in range(10)]
    return [{"answer": a, "answer_confidence": ("yes", "maybe", "no")[i % 3], "answer_id": i + 1}
            for i, a in enumerate(out)]


VQA_ITEMS = [  # (question_id, image_id, question, answers, question_type, answer_type)
    (42000, 42, "What color is the bus?", ten("red", "red", "red", "maroon"), "what color is the", "other"),
    (42001, 42, "Is the bus moving?", ten("yes"), "is the", "yes/no"),
    (73000, 73, "How many dogs are there?", ten("2", "two", "2", "3"), "how many", "number"),
    (73001, 73, "¿Qué hay en la foto? 猫 или собака — “quoted”", ten("cat", "a cat"), "what is", "other"),
    (90000, 90, "Is this a kitchen?", ten("no"), "is this a", "yes/no"),
    (95000, 95, "What is on the plate?", ten("pizza", "cheese pizza"), "what is on the", "other"),
]
VQA_IMAGES = (42, 73, 90, 95)


def write_vqav2(root: Path, split: str = "val2014", with_images: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    questions = [{"image_id": im, "question": q, "question_id": qid} for qid, im, q, *_ in VQA_ITEMS]
    questions.append({"image_id": 90, "question": "No annotation for me?", "question_id": 90001})
    questions.append({"image_id": 90, "question": "Empty answers?", "question_id": 90002})
    annotations = [{"question_id": qid, "image_id": im, "question_type": qt, "answer_type": at, "answers": ans,
                    "multiple_choice_answer": ans[0]["answer"]} for qid, im, _, ans, qt, at in VQA_ITEMS]
    annotations.append({"question_id": 90002, "image_id": 90, "question_type": "none of the above",
                        "answer_type": "other", "answers": [], "multiple_choice_answer": ""})
    info = {"description": "fixture", "version": "2.0"}
    (root / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(json.dumps(
        {"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": {}, "data_subtype": split,
         "questions": questions}, ensure_ascii=False), encoding="utf-8")
    (root / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps(
        {"info": info, "license": {}, "data_subtype": split, "annotations": annotations}), encoding="utf-8")
    if with_images:
        for i, im in enumerate(VQA_IMAGES):
            save_jpeg(root / split / coco_name(split, im), im, MODES[i])
    return root


def write_vqav2_hub(root: Path, split: str = "validation") -> Path:
    """lmms-lab/VQAv2's parquet layout: data/<split>-00000-of-00001.parquet with its columns."""
    import datasets
    import io

    rows = {"question_type": [], "multiple_choice_answer": [], "answers": [], "image_id": [], "answer_type": [],
            "question_id": [], "question": [], "image": []}
    for i, (qid, im, q, ans, qt, at) in enumerate(VQA_ITEMS):
        buf = io.BytesIO()
        image(im, MODES[i % len(MODES)] if MODES[i % len(MODES)] != "P" else "RGB").save(buf, format="JPEG")
        for k, v in (("question_type", qt), ("multiple_choice_answer", ans[0]["answer"]), ("answers", ans),
                     ("image_id", im), ("answer_type", at), ("question_id", qid), ("question", q),
                     ("image", {"bytes": buf.getvalue(), "path": None})):
            rows[k].append(v)
    features = datasets.Features({
        "question_type": datasets.Value("string"), "multiple_choice_answer": datasets.Value("string"),
        "answers": [{"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string"),
                     "answer_id": datasets.Value("int64")}],
        "image_id": datasets.Value("int64"), "answer_type": datasets.Value("string"),
        "question_id": datasets.Value("int64"), "question": datasets.Value("string"), "image": datasets.Image()})
    ds = datasets.Dataset.from_dict(rows, features=features)
    (root / "data").mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def write_vqacp(root: Path, split: str = "test") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cs = {42: "val2014", 73: "train2014", 90: "val2014", 95: "train2014"}
    questions = [{"image_id": im, "question": q, "question_id": qid, "coco_split": cs[im]}
                 for qid, im, q, *_ in VQA_ITEMS]
    questions.append({"image_id": 95, "question": "Unanswered?", "question_id": 95009, "coco_split": "train2014"})
    annotations = [{"question_type": qt, "multiple_choice_answer": ans[0]["answer"], "answers": ans,
                    "image_id": im, "answer_type": at, "question_id": qid} for qid, im, _, ans, qt, at in VQA_ITEMS]
    (root / f"vqacp_v2_{split}_questions.json").write_text(json.dumps(questions, ensure_ascii=False), encoding="utf-8")
    (root / f"vqacp_v2_{split}_annotations.json").write_text(json.dumps(annotations), encoding="utf-8")
    for i, im in enumerate(VQA_IMAGES):
        save_jpeg(root / cs[im] / coco_name(cs[im], im), im, MODES[i])
    return root


def gqa_question(image_id: str, question: str, answer: str, structural: str, semantic: str, detailed: str,
                 balanced: bool = True) -> dict:
    return {"semantic": [{"operation": "select", "dependencies": [], "argument": "thing (1)"}],
            "entailed": [], "equivalent": [], "question": question, "imageId": image_id, "isBalanced": balanced,
            "groups": {"global": None, "local": "10q-thing"}, "answer": answer,
            "semanticStr": "select: thing (1)", "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
            "types": {"detailed": detailed, "semantic": semantic, "structural": structural},
            "fullAnswer": f"The answer is {answer}."}


GQA_ITEMS = {
    "201307251": gqa_question("n161313", "Is it overcast?", "no", "verify", "global", "weather"),
    "201640614": gqa_question("n161313", "Who is wearing the shirt?", "man", "query", "rel", "relS"),
    "202225914": gqa_question("n235859", "What color is the café’s awning — rouge?", "red", "query", "attr",
                              "chooseAttr"),
    "20968379": gqa_question("n235859", "Which side is the cup on?", "left", "query", "attr", "positionQuery"),
    "20968380": gqa_question("n46470", "Are there both cars and trucks?", "yes", "logical", "obj", "and"),
}


def write_gqa(root: Path, split: str = "testdev", kind: str = "balanced") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    qs = dict(GQA_ITEMS)
    if kind == "all":
        qs["20968399"] = gqa_question("n46470", "Is the truck unbalanced?", "no", "verify", "obj", "exist", False)
    qs["20968400"] = {k: v for k, v in gqa_question("n46470", "No answer here?", "", "query", "obj",
                                                    "exist").items() if k != "answer"}
    (root / f"{split}_{kind}_questions.json").write_text(json.dumps(qs, ensure_ascii=False), encoding="utf-8")
    for i, im in enumerate(sorted({q["imageId"] for q in qs.values()})):
        save_jpeg(root / "images" / f"{im}.jpg", i, MODES[i])
    return root


def write_gqa_ood(root: Path, split: str = "testdev") -> Path:
    """ood_<split>_{all,head,tail}.json; here head = 2 questions, tail = 2, and one only in all."""
    root.mkdir(parents=True, exist_ok=True)
    ids = list(GQA_ITEMS)
    head, tail = ids[:2], ids[2:4]
    for name, keep in (("all", ids), ("head", head), ("tail", tail)):
        (root / f"ood_{split}_{name}.json").write_text(
            json.dumps({k: GQA_ITEMS[k] for k in keep}, ensure_ascii=False, indent=4), encoding="utf-8")
    for i, im in enumerate(sorted({q["imageId"] for q in GQA_ITEMS.values()})):
        save_jpeg(root / "images" / f"{im}.jpg", i, MODES[i])
    return root


def write_rephrasings(root: Path) -> Path:
    """Two originals with three rephrasings each (question_id = 10 * original + k), one
    rephrasing without annotation."""
    root.mkdir(parents=True, exist_ok=True)
    qs, anns = [], []
    for orig, im, text, ans, qt, at in VQA_ITEMS[:2]:
        qs.append({"image_id": im, "question": text, "question_id": orig})
        anns.append({"question_id": orig, "image_id": im, "question_type": qt, "answer_type": at, "answers": ans,
                     "multiple_choice_answer": ans[0]["answer"]})
        for k in range(1, 4):
            rq = orig * 10 + k
            qs.append({"image_id": im, "question": f"{text} (rephrased {k}, ñ)", "question_id": rq,
                       "rephrasing_of": orig})
            anns.append({"question_id": rq, "image_id": im, "question_type": qt, "answer_type": at, "answers": ans,
                         "multiple_choice_answer": ans[0]["answer"]})
    qs.append({"image_id": 42, "question": "Orphan rephrasing?", "question_id": 420009, "rephrasing_of": 42000})
    (root / "v2_OpenEnded_mscoco_valrep2014_humans_og_questions.json").write_text(
        json.dumps({"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "valrep2014",
                    "license": {}, "questions": qs}, ensure_ascii=False), encoding="utf-8")
    (root / "v2_mscoco_valrep2014_humans_og_annotations.json").write_text(
        json.dumps({"info": {}, "license": {}, "data_subtype": "valrep2014", "annotations": anns}), encoding="utf-8")
    save_jpeg(root / "val2014" / coco_name("val2014", 42), 42, "L")
    return root


def write_karpathy(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    images = []
    for n, (cocoid, split, fp) in enumerate([(391895, "test", "val2014"), (522418, "test", "val2014"),
                                             (184613, "train", "train2014"), (318219, "val", "val2014"),
                                             (554625, "test", "val2014")]):
        raws = [f"A man riding a bike number {n}.", "Someone on a bicycle down a dirt road.",
                "A person rides a bike — fast, on a path.", "Un homme à vélo.", "a man on a bike"]
        if cocoid == 554625:
            raws = []  # an image without captions is skipped
        images.append({"filepath": fp, "sentids": list(range(5 * n, 5 * n + len(raws))), "filename":
                       coco_name(fp, cocoid), "imgid": n, "split": split,
                       "sentences": [{"tokens": r.lower().strip(".").split(), "raw": r, "imgid": n,
                                      "sentid": 5 * n + i} for i, r in enumerate(raws)], "cocoid": cocoid})
        save_jpeg(root / fp / coco_name(fp, cocoid), n, MODES[n])
    (root / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}, ensure_ascii=False),
                                            encoding="utf-8")
    return root
