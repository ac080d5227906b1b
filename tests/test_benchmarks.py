"""Real-benchmark loaders on files written in the official formats, missing-data messages,
and the group-level metrics (GQA / GQA-OOD, CS(k), per-type breakdowns, captions)."""
import io
import json

import pytest

from tests.helpers.official_data import (GQA_ITEMS, VQA_ITEMS, image, write_gqa, write_gqa_ood, write_karpathy, write_rephrasings,
                           write_vqacp, write_vqav2, write_vqav2_hub)
from robust_atp.data.base import Example, load_examples, loader_names
from robust_atp.data.sources import DataError, DataMissing
from robust_atp.metrics import aggregate
from robust_atp.metrics.gqa import gqa_accuracy
from robust_atp.metrics.robustness import consensus_scores


def test_all_loaders_registered():
    assert {"vqav2", "vqacp", "rephrasings", "gqa", "gqa_ood", "coco_captions", "easy_vqa", "shapes"} <= set(
        loader_names())


# ----------------------------------------------------------------------------- VQA v2

def test_vqav2_official_files(tmp_path):
    root = write_vqav2(tmp_path / "vqa")
    ex = load_examples("vqav2", split="val", source=str(root))
    # the question without annotation and the one with an empty answer list are left out
    assert [e.id for e in ex] == [str(q[0]) for q in VQA_ITEMS]
    first = ex[0]
    assert first.image_id == "42" and first.question == "What color is the bus?"
    assert len(first.answers) == 10 and first.answers.count("red") == 8  # duplicates kept
    assert first.question_type == "what color is the" and first.answer_type == "other"
    assert first.meta["multiple_choice_answer"] == "red"
    assert ex[3].question.startswith("¿Qué hay en la foto? 猫")
    modes = {e.image_id: e.image().mode for e in ex}
    assert modes == {"42": "RGB", "73": "L", "90": "CMYK", "95": "P"}
    assert all(e.image().size == (64, 48) for e in ex)
    assert len(load_examples("vqav2", split="val", source=str(root), limit=2)) == 2


def test_vqav2_hub_layout(tmp_path):
    root = write_vqav2_hub(tmp_path / "VQAv2")
    ex = load_examples("vqav2", split="validation", source=f"hf:{root}")
    assert [e.id for e in ex] == [str(q[0]) for q in VQA_ITEMS]
    assert ex[2].answers == tuple(a["answer"] for a in VQA_ITEMS[2][3])
    assert ex[2].answer_type == "number" and ex[2].image().size == (64, 48)
    # "val" maps onto the hub's split name
    assert len(load_examples("vqav2", split="val", source=f"hf:{root}", limit=1)) == 1


def test_missing_root_and_files_are_one_line(tmp_path):
    with pytest.raises(DataMissing) as e:
        load_examples("vqav2", split="val", source=str(tmp_path / "nope"))
    msg = str(e.value)
    assert "\n" not in msg and "missing dataset root" in msg and "visualqa.org" in msg
    root = write_vqav2(tmp_path / "vqa", with_images=False)
    with pytest.raises(DataMissing, match=r"missing val2014 or images/val2014 \(looked in .*\); download from "
                                          r"https://cocodataset.org"):
        load_examples("vqav2", split="val", source=str(root))
    (root / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(DataMissing, match="missing v2_mscoco_val2014_annotations.json"):
        load_examples("vqav2", split="val", source=str(root))
    with pytest.raises(DataMissing, match="missing data/validation-"):
        load_examples("vqav2", split="validation", source=f"hf:{tmp_path}")


def test_image_paths_from_data_files_stay_inside_the_root(tmp_path):
    root = write_karpathy(tmp_path / "coco")
    data = json.loads((root / "dataset_coco.json").read_text())
    data["images"][0]["filename"] = "../../../etc/passwd"
    (root / "dataset_coco.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="leaves the dataset root"):
        load_examples("coco_captions", split="test", source=str(root))


def test_coco_images_may_be_linked_in_or_configured_elsewhere(tmp_path):
    """COCO images kept once: a symlinked val2014 inside the root, or `image_dir` pointing outside."""
    root = write_vqav2(tmp_path / "vqa")
    shared = tmp_path / "coco_val2014"
    (root / "val2014").rename(shared)
    (root / "val2014").symlink_to(shared, target_is_directory=True)
    linked = load_examples("vqav2", split="val", source=str(root))
    pixels = [e.image().tobytes() for e in linked]
    assert linked and all(pixels)
    (root / "val2014").unlink()
    elsewhere = load_examples("vqav2", split="val", source=str(root), image_dir=str(shared))
    assert [e.id for e in elsewhere] == [e.id for e in linked]
    assert [e.image().tobytes() for e in elsewhere] == pixels


def test_malformed_json_is_a_data_error(tmp_path):
    root = write_vqav2(tmp_path / "vqa")
    (root / "v2_mscoco_val2014_annotations.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_examples("vqav2", split="val", source=str(root))


# ----------------------------------------------------------------------------- VQA-CP, Rephrasings

def test_vqacp_flat_lists_and_coco_split(tmp_path):
    root = write_vqacp(tmp_path / "cp")
    ex = load_examples("vqacp", split="test", source=str(root))
    assert [e.id for e in ex] == [str(q[0]) for q in VQA_ITEMS]
    assert {e.image_id: e.meta["coco_split"] for e in ex} == {"42": "val2014", "73": "train2014", "90": "val2014",
                                                              "95": "train2014"}
    assert ex[2].image.args[0].endswith("train2014/COCO_train2014_000000000073.jpg")
    assert ex[2].image().mode == "L"
    with pytest.raises(DataMissing, match="vqacp_v2_train_questions.json.*computing.ece.vt.edu"):
        load_examples("vqacp", split="train", source=str(root))


def test_rephrasings_grouped(tmp_path):
    root = write_rephrasings(tmp_path / "rep")
    ex = load_examples("rephrasings", split="val", source=str(root))
    assert len(ex) == 8  # two groups of original + 3; the unannotated rephrasing is left out
    assert [e.meta["rephrasing"] for e in ex] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert [e.meta["rephrasing_group"] for e in ex] == ["42000"] * 4 + ["42001"] * 4
    assert ex[0].question == "What color is the bus?" and "ñ" in ex[1].question
    assert ex[1].answers == ex[0].answers and ex[0].image().mode == "L"
    # a limit never cuts a group short
    assert len(load_examples("rephrasings", split="val", source=str(root), limit=2)) == 4


# ----------------------------------------------------------------------------- GQA, GQA-OOD

def test_gqa_balanced_questions(tmp_path):
    root = write_gqa(tmp_path / "gqa")
    ex = load_examples("gqa", split="testdev", source=str(root))
    assert [e.id for e in ex] == list(GQA_ITEMS)  # the question without an answer is left out
    e = ex[2]
    assert e.answers == ("red",) and e.image_id == "n235859" and "café’s" in e.question
    assert e.meta["types"]["structural"] == "query" and e.answer_type == "open" and e.meta["is_balanced"]
    assert ex[0].answer_type == "binary" and ex[0].question_type == "weather"
    assert {x.image().mode for x in ex} == {"RGB", "L", "CMYK"}


def test_gqa_all_questions_scores_balanced_only(tmp_path):
    root = write_gqa(tmp_path / "gqa", kind="all")
    ex = load_examples("gqa", split="testdev", source=str(root), questions="all")
    assert len(ex) == 6 and not ex[-1].meta["is_balanced"]
    preds = {e.id: (e.answers[0], {"gqa_accuracy": 1.0}) for e in ex}
    preds[ex[-1].id] = ("wrong", {"gqa_accuracy": 0.0})  # the unbalanced one: not counted
    preds[ex[0].id] = ("wrong", {"gqa_accuracy": 0.0})
    out = aggregate(["gqa_accuracy"], ex, preds)
    assert out["metrics"]["gqa_accuracy"] == 0.8
    assert out["breakdown"]["gqa_accuracy"]["structural_type"] == {"logical": 1.0, "query": 1.0, "verify": 0.0}


def test_gqa_hub_layout(tmp_path):
    import datasets

    root = tmp_path / "GQA"
    qs = [dict(v, id=k, types=v["types"]) for k, v in GQA_ITEMS.items()]
    cols = ["id", "imageId", "question", "answer", "fullAnswer", "isBalanced", "types"]
    (root / "testdev_balanced_instructions").mkdir(parents=True)
    datasets.Dataset.from_list([{c: q[c] for c in cols} for q in qs]).to_parquet(
        str(root / "testdev_balanced_instructions" / "testdev-00000-of-00001.parquet"))
    ims = []
    for i, im in enumerate(sorted({q["imageId"] for q in qs})):
        buf = io.BytesIO()
        image(i).save(buf, format="JPEG")
        ims.append({"id": im, "image": {"bytes": buf.getvalue(), "path": None}})
    (root / "testdev_balanced_images").mkdir()
    datasets.Dataset.from_list(ims, features=datasets.Features({"id": datasets.Value("string"),
                                                                "image": datasets.Image()})).to_parquet(
        str(root / "testdev_balanced_images" / "testdev-00000-of-00001.parquet"))
    ex = load_examples("gqa", split="testdev", source=f"hf:{root}")
    assert [e.id for e in ex] == list(GQA_ITEMS) and ex[1].answers == ("man",)
    assert ex[1].image().size == (64, 48)


def test_gqa_metric_is_the_official_exact_match():
    assert gqa_accuracy("yes", ("yes",)) == 1.0
    assert gqa_accuracy("Yes.", ("yes",)) == 0.0
    assert gqa_accuracy(" the man ", ("the man",)) == 0.0
    assert gqa_accuracy("left", ()) == 0.0


def test_gqa_ood_head_tail_all(tmp_path):
    """Hand-built: head = q0, q1; tail = q2, q3; q4 only in all. Right: q0, q2, q4.
    Official evaluation.py: each file on its own -> head 1/2, tail 1/2, all 3/5."""
    root = write_gqa_ood(tmp_path / "ood")
    ex = load_examples("gqa_ood", split="testdev", source=str(root))
    ids = list(GQA_ITEMS)
    assert [e.id for e in ex] == ids
    assert [e.meta["ood"] for e in ex] == [("all", "head"), ("all", "head"), ("all", "tail"), ("all", "tail"),
                                           ("all",)]
    right = {ids[0], ids[2], ids[4]}
    preds = {}
    for e in ex:
        p = e.answers[0] if e.id in right else "nonsense"
        preds[e.id] = (p, {"gqa_accuracy": gqa_accuracy(p, e.answers)})
    ood = aggregate(["gqa_accuracy"], ex, preds)["breakdown"]["gqa_accuracy"]["ood"]
    assert ood["head"] == 0.5 and ood["tail"] == 0.5 and ood["all"] == 0.6
    assert ood["n"] == {"head": 2, "tail": 2, "all": 5}
    tail = load_examples("gqa_ood", split="testdev", source=str(root), subset="tail")
    assert [e.id for e in tail] == ids[2:4]
    (root / "ood_testdev_head.json").unlink()
    with pytest.raises(DataMissing, match="missing ood_testdev_head.json.*github.com/gqa-ood/GQA-OOD"):
        load_examples("gqa_ood", split="testdev", source=str(root))


# ----------------------------------------------------------------------------- CS(k), per-type breakdowns

def test_consensus_scores_hand_computed():
    """Group A all right: S_k = 1 for every k. Group B: 3 of 4 right (one 0):
    S_1 = 3/4, S_2 = C(3,2)/C(4,2) = 3/6, S_3 = 1/4, S_4 = 0. Group C has 3 questions: left out.
    CS(k) = mean of A and B."""
    out = consensus_scores([[1, 0.3, 0.6, 1], [1, 1, 0, 0.3], [1, 1, 1]])
    assert out == {"CS(1)": 0.875, "CS(2)": 0.75, "CS(3)": 0.625, "CS(4)": 0.5, "groups": 2}
    assert consensus_scores([])["CS(1)"] is None


def test_consensus_through_aggregate(tmp_path):
    root = write_rephrasings(tmp_path / "rep")
    ex = load_examples("rephrasings", split="val", source=str(root))
    right = [True, True, True, True, True, False, True, False]
    preds = {e.id: ("x", {"vqa_accuracy": 1.0 if r else 0.0}) for e, r in zip(ex, right)}
    cs = aggregate(["vqa_accuracy"], ex, preds)["breakdown"]["vqa_accuracy"]["consensus"]
    # group 1: S = 1 for all k; group 2: 2 of 4 right: S_1 = 1/2, S_2 = 1/6, S_3 = S_4 = 0
    assert cs["CS(1)"] == 0.75 and cs["CS(2)"] == round((1 + 1 / 6) / 2, 6) and cs["CS(4)"] == 0.5


def test_vqa_breakdown_per_answer_and_question_type(tmp_path):
    root = write_vqav2(tmp_path / "vqa")
    ex = load_examples("vqav2", split="val", source=str(root))
    scores = [1.0, 0.0, 0.6, 1.0, 1.0, 0.3]
    preds = {e.id: ("x", {"vqa_accuracy": s}) for e, s in zip(ex, scores)}
    out = aggregate(["vqa_accuracy"], ex, preds)
    assert out["metrics"] == {}  # the per-row mean stands
    b = out["breakdown"]["vqa_accuracy"]
    assert b["answer_type"] == {"number": 0.6, "other": round((1 + 1 + 0.3) / 3, 6), "yes/no": 0.5}
    assert b["question_type"]["is the"] == 0.0 and b["question_type"]["how many"] == 0.6


# ----------------------------------------------------------------------------- captions, easy-vqa

def test_karpathy_split(tmp_path):
    root = write_karpathy(tmp_path / "coco")
    ex = load_examples("coco_captions", split="test", source=str(root))
    assert [e.id for e in ex] == ["391895", "522418"]  # the caption-less image is skipped
    assert len(ex[0].answers) == 5 and ex[0].answers[3] == "Un homme à vélo."
    assert ex[1].image().mode == "L" and "caption" in ex[0].question
    assert [e.id for e in load_examples("coco_captions", split="train", source=str(root))] == ["184613"]


def test_corpus_cider_d_in_the_summary(tmp_path, monkeypatch):
    """CIDEr-D over the set (document frequencies from every image's references), as
    pycocoevalcap computes it; the Python tokenizer here (the Java one is tested on its own)."""
    from pycocoevalcap.cider.cider import Cider

    import robust_atp.metrics.captions as captions

    monkeypatch.setattr(captions, "java_available", lambda: False)
    from robust_atp.metrics.captions import corpus_scores, simple_tokenize

    root = write_karpathy(tmp_path / "coco")
    ex = load_examples("coco_captions", split="test", source=str(root))
    caps = {ex[0].id: "A man riding a bike number 0.", ex[1].id: "a dog"}
    preds = {e.id: (caps[e.id], {"cider_d": 0.5}) for e in ex}
    out = aggregate(["cider_d"], ex, preds)
    direct = corpus_scores(caps, {e.id: list(e.answers) for e in ex}, meteor=False, use_java=False)
    gts = {e.id: [simple_tokenize(r) for r in e.answers] for e in ex}
    res = {k: [simple_tokenize(v)] for k, v in caps.items()}
    assert direct["cider_d"] == round(Cider().compute_score(gts, res)[0], 6)
    b = out["breakdown"]["cider_d"]
    assert out["metrics"]["cider_d"] == b["cider_d"] and b["n"] == 2 and "bleu4" in b
    assert b["cider_d"] > 0 and b["tokenizer"] == "python"  # "number 0" is specific to the first image


@pytest.mark.slow
@pytest.mark.skipif(__import__("shutil").which("java") is None,
                    reason="Java is an optional run-time dependency (PTB tokenizer, METEOR); without it the "
                           "pure-Python path is tested by test_corpus_cider_d_in_the_summary; .ci/run installs a JRE, so CI runs this")
def test_captions_with_java_tokenizer_and_meteor():
    from robust_atp.metrics.captions import corpus_scores

    refs = {"1": ["A man riding a bike number 0.", "Someone on a bicycle."], "2": ["A dog in the park.", "a dog"]}
    out = corpus_scores({"1": "a man riding a bike number 0", "2": "a cat"}, refs)
    assert out["tokenizer"] == "ptb-java" and out["cider_d"] > 0 and 0 < out["meteor"] <= 1
    py = corpus_scores({"1": "a man riding a bike number 0", "2": "a cat"}, refs, use_java=False)
    assert py["cider_d"] == pytest.approx(out["cider_d"], rel=1e-6)  # same tokens on plain text


def test_easy_vqa_external_package():
    ex = load_examples("easy_vqa", split="test", limit=5)
    assert len(ex) == 5 and ex[0].question.endswith("?") and len(ex[0].answers) == 1
    assert ex[0].image().size == (64, 64)
    assert {e.answer_type for e in load_examples("easy_vqa", split="test", limit=50)} == {"yes/no", "other"}


def test_malformed_records_are_one_line_data_errors(tmp_path):
    root = write_vqav2(tmp_path / "vqa")
    qpath = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    data = json.loads(qpath.read_text())
    data["questions"][0]["image_id"] = "COCO_42"
    qpath.write_text(json.dumps(data))
    with pytest.raises(DataError, match="question 42000: image_id must be an integer, got 'COCO_42'"):
        load_examples("vqav2", split="val", source=str(root))
    del data["questions"][0]["question"]
    data["questions"][0]["image_id"] = 42
    qpath.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"question record 42000: missing field\(s\) question"):
        load_examples("vqav2", split="val", source=str(root))
