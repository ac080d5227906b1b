"""The benchmarks of the token-pruning papers: POPE, MME, ScienceQA-IMG, MMBench-en dev, TextVQA.

Loaders on files in the released formats and the lmms-lab hub parquet layout, the official
answer parsing of each metric (quirks included), the group-level values through
`metrics.aggregate`, and the published numbers."""
import pytest

from tests.helpers.pruning_bench_data import (MMB_ROWS, POPE_ROWS, SQA_PROBLEMS, TEXTVQA_DATA, write_mmbench_hub, write_mmbench_tsv,
                                write_mme, write_mme_hub, write_pope, write_pope_hub, write_scienceqa,
                                write_scienceqa_hub, write_textvqa, write_textvqa_hub)
from robust_atp.data.base import Example, load_examples
from robust_atp.data.sources import DataError, DataMissing
from robust_atp.metrics import METRICS, aggregate
from robust_atp.metrics.choice import mmbench_choice, options_of, parse_choice_llava
from robust_atp.metrics.mme import parse_yes_no_mme
from robust_atp.metrics.pope import parse_yes_no_llava
from robust_atp.published import published


def _ex(eid, answers, **meta):
    return Example(id=eid, image_id=meta.pop("image_id", eid), image=lambda: None, question="q",
                   answers=tuple(answers), meta=meta)


# ----------------------------------------------------------------------------- POPE

def test_pope_official_files_interleave_the_splits(tmp_path):
    root = write_pope(tmp_path / "pope")
    ex = load_examples("pope", source=str(root))
    assert len(ex) == sum(len(r) for r in POPE_ROWS.values())
    assert [e.id for e in ex[:4]] == ["random/0", "popular/0", "adversarial/0", "random/1"]
    assert ex[0].question == "Is there a dining table in the image?" and ex[0].answers == ("yes",)
    assert ex[0].image_id == "COCO_val2014_000000548882" and ex[0].meta["pope_split"] == "random"
    assert ex[0].image().size == (64, 48)
    # a limit takes the same number from each split, a larger limit extends the prefix
    assert [e.meta["pope_split"] for e in load_examples("pope", source=str(root), limit=3)] == [
        "random", "popular", "adversarial"]
    assert [e.id for e in load_examples("pope", source=str(root), limit=5)] == [e.id for e in ex[:5]]
    adv = load_examples("pope", source=str(root), subset="adversarial")
    assert [e.id for e in adv] == [f"adversarial/{i}" for i in range(4)]


def test_pope_hub_layout(tmp_path):
    root = write_pope_hub(tmp_path / "POPE")
    ex = load_examples("pope", split="test", source=f"hf:{root}")
    assert len(ex) == 9 and ex[0].id == "random/1" and ex[1].id == "popular/1"
    assert {e.meta["pope_split"] for e in ex} == {"random", "popular", "adversarial"}
    assert ex[0].image_id == "COCO_val2014_000000548882" and ex[0].image().size == (40, 30)
    assert len(load_examples("pope", split="test", source=f"hf:{root}", subset="popular")) == 2


def test_pope_bad_data_is_one_line(tmp_path):
    root = write_pope(tmp_path / "pope")
    (root / "coco_pope_popular.json").write_text('{"question_id": 0, "image": "x.jpg", "text": "q", '
                                                 '"label": "maybe"}\n')
    with pytest.raises(DataError, match="label must be yes or no, got 'maybe'"):
        load_examples("pope", source=str(root))
    (root / "coco_pope_popular.json").unlink()
    with pytest.raises(DataMissing, match="missing coco_pope_popular.json"):
        load_examples("pope", source=str(root))
    with pytest.raises(DataError, match="unknown POPE subset"):
        load_examples("pope", source=str(root), subset="rare")


@pytest.mark.parametrize("text, parsed", [
    ("Yes", "yes"), ("No", "no"), ("No.", "no"), ("no, there is not.", "no"), ("Yes, there is a dog.", "yes"),
    ("There is no dog in the image", "no"), ("I do not see one", "no"), ("Yes. No.", "yes"),
    ("NO", "yes"),      # words are not lower-cased: only 'No', 'no' and 'not' count
    ("no\nthere", "yes"),  # split on ' ' only: 'no\nthere' is one word
    ("", "yes"), ("nope", "yes"),
])
def test_pope_parsing_as_llava_eval_pope(text, parsed):
    assert parse_yes_no_llava(text) == parsed
    assert METRICS["pope_accuracy"](text, (parsed,)) == 1.0


def test_pope_lmms_eval_exact_match():
    assert METRICS["pope_accuracy_lmms_eval"](" Yes ", ("yes",)) == 1.0
    assert METRICS["pope_accuracy_lmms_eval"]("Yes.", ("yes",)) == 0.0
    assert METRICS["pope_accuracy"]("Yes.", ("yes",)) == 1.0


def test_pope_group_values_hand_computed():
    # random: TP=2 FP=1 TN=1 FN=0 -> P 2/3, R 1, F1 0.8, acc 3/4, yes-ratio 3/4
    # popular: TP=1 FP=0 TN=1 FN=1 -> P 1, R 1/2, F1 2/3, acc 2/3, yes-ratio 1/3
    rows = [("r1", "yes", "Yes", "random"), ("r2", "yes", "Yes.", "random"), ("r3", "no", "Yes, it is", "random"),
            ("r4", "no", "No", "random"), ("p1", "yes", "Yes", "popular"), ("p2", "yes", "No, not", "popular"),
            ("p3", "no", "no", "popular")]
    examples = [_ex(eid, (lab,), pope_split=s) for eid, lab, _, s in rows]
    preds = {eid: (text, {}) for eid, _, text, _ in rows}
    for eid, lab, text, _ in rows:
        preds[eid] = (text, {"pope_f1": METRICS["pope_f1"](text, (lab,))})
    out = aggregate(["pope_f1"], examples, preds)
    r, p = out["breakdown"]["pope_f1"]["random"], out["breakdown"]["pope_f1"]["popular"]
    assert (r["TP"], r["FP"], r["TN"], r["FN"]) == (2, 1, 1, 0)
    assert r["precision"] == round(2 / 3, 6) and r["recall"] == 1.0 and r["f1"] == 0.8
    assert r["accuracy"] == 0.75 and r["yes_ratio"] == 0.75
    assert p["f1"] == round(2 / 3, 6) and p["yes_ratio"] == round(1 / 3, 6) and p["accuracy"] == round(2 / 3, 6)
    assert out["metrics"]["pope_f1"] == round((0.8 + 2 / 3) / 2, 6)
    assert out["breakdown"]["pope_f1"]["all"]["n"] == 7


def test_pope_lmms_eval_yes_ratio_counts_labels():
    examples = [_ex("a", ("yes",)), _ex("b", ("no",)), _ex("c", ("no",))]
    preds = {e.id: ("yes", {"pope_accuracy_lmms_eval": 0.0}) for e in examples}
    part = aggregate(["pope_accuracy_lmms_eval"], examples, preds)["breakdown"]["pope_accuracy_lmms_eval"]["all"]
    assert part["yes_ratio"] == round(1 / 3, 6)  # the labels' share, not the predictions' (the reference's quirk)
    assert part["precision"] == round(1 / 3, 6) and part["recall"] == 1.0


def test_pope_f1_undefined_without_a_yes():
    examples = [_ex("a", ("yes",), pope_split="random"), _ex("b", ("no",), pope_split="random")]
    preds = {e.id: ("No", {"pope_f1": 0.0}) for e in examples}
    out = aggregate(["pope_f1"], examples, preds)
    assert out["metrics"]["pope_f1"] is None and out["breakdown"]["pope_f1"]["random"]["precision"] is None


# ----------------------------------------------------------------------------- MME

MME_TASKS = ["existence", "artwork", "code_reasoning"]  # the fixture's subtasks (the release has 14)


def test_mme_official_folders(tmp_path):
    root = write_mme(tmp_path / "mme")
    ex = load_examples("mme", source=str(root), subtasks=MME_TASKS)
    assert len(ex) == 8
    assert [e.id for e in ex[:2]] == ["existence/000000006040.png#0", "existence/000000006040.png#1"]
    assert ex[0].question == "Is there a train in this image?" and ex[0].answers == ("Yes",)
    assert ex[0].meta == {"category": "existence", "group_id": "existence/000000006040.png"}
    assert ex[0].image_id == ex[1].image_id == "existence/000000006040.png"
    art = [e for e in ex if e.meta["category"] == "artwork"]
    assert art[0].image_id == "artwork/10002.jpg" and art[0].image().size == (64, 48)
    kept = load_examples("mme", source=str(root), subtasks=MME_TASKS, strip_instruction=False)
    assert kept[0].question == "Is there a train in this image? Please answer yes or no."
    # a limit never cuts an image's pair
    assert len(load_examples("mme", source=str(root), subtasks=MME_TASKS, limit=3)) == 4
    assert len(load_examples("mme", source=str(root / "MME_Benchmark_release_version"), subtasks=MME_TASKS)) == 8
    assert {e.meta["category"] for e in load_examples("mme", source=str(root), subtasks=["artwork"])} == {"artwork"}
    with pytest.raises(DataMissing, match="missing count"):  # by default all 14 subtask folders are read
        load_examples("mme", source=str(root))


def test_mme_hub_layout(tmp_path):
    root = write_mme_hub(tmp_path / "MME")
    ex = load_examples("mme", split="test", source=f"hf:{root}")
    assert len(ex) == 8 and ex[0].id == "existence/000000006040.png#0" and ex[1].id.endswith("#1")
    assert ex[0].meta["group_id"] == "existence/000000006040.png" and ex[0].image().size == (40, 30)


def test_mme_bad_data(tmp_path):
    root = write_mme(tmp_path / "mme")
    txt = root / "MME_Benchmark_release_version" / "existence" / "000000006040.txt"
    txt.write_text("Is there a train?\tMaybe\n")
    with pytest.raises(DataError, match="answer must be Yes or No"):
        load_examples("mme", source=str(root), subtasks=MME_TASKS)
    txt.write_text("no tab here\n")
    with pytest.raises(DataError, match="expected 'question<TAB>answer'"):
        load_examples("mme", source=str(root), subtasks=MME_TASKS)
    with pytest.raises(DataError, match="unknown MME subtask"):
        load_examples("mme", source=str(root), subtasks=["colour"])
    with pytest.raises(DataMissing, match="missing count"):
        load_examples("mme", source=str(root), subtasks=["count"])


@pytest.mark.parametrize("text, parsed", [
    ("Yes", "yes"), ("No.", "no"), (" yes ", "yes"), ("Y", "yes"), ("n", "no"), ("x", "other"),
    ("Yes, there is.", "yes"), ("not sure", "no"), ("Nope", "no"), ("I think yes", "other"),
    ("The answer is no", "other"), ("", "other"),
])
def test_mme_parsing_as_lmms_eval(text, parsed):
    assert parse_yes_no_mme(text) == parsed


def test_mme_scores_hand_computed():
    # existence: image e1 both right, e2 one right -> acc 75, acc+ 50, score 125
    # code_reasoning: c1 both wrong -> 0; artwork c2 both right -> 200
    items = [("e1", "existence", ("Yes", "No"), ("yes", "no")), ("e2", "existence", ("Yes", "No"), ("yes", "yes")),
             ("c1", "code_reasoning", ("No", "Yes"), ("yes", "no")), ("a1", "artwork", ("Yes", "No"), ("Yes.", "No"))]
    examples, preds = [], {}
    for g, cat, labels, outs in items:
        for k, (lab, out) in enumerate(zip(labels, outs)):
            e = _ex(f"{g}#{k}", (lab,), category=cat, group_id=g)
            examples.append(e)
            preds[e.id] = (out, {"mme_accuracy": METRICS["mme_accuracy"](out, (lab,)),
                                 "mme_accuracy_plus": METRICS["mme_accuracy_plus"](out, (lab,))})
    out = aggregate(["mme_accuracy", "mme_accuracy_plus"], examples, preds)
    b = out["breakdown"]["mme_accuracy"]
    assert b["subtasks"]["existence"] == {"accuracy": 75.0, "accuracy_plus": 50.0, "score": 125.0, "questions": 4,
                                          "images": 2}
    assert b["subtasks"]["artwork"]["score"] == 200.0 and b["subtasks"]["code_reasoning"]["score"] == 0.0
    assert list(b["subtasks"]) == ["existence", "artwork", "code_reasoning"]  # the official order
    assert b["perception"] == 325.0 and b["cognition"] == 0.0 and b["total"] == 325.0
    assert b["perception_subtasks"] == 2 and b["cognition_subtasks"] == 1
    assert out["metrics"]["mme_accuracy_plus"] == 0.5  # e1 and a1 of 4 images
    assert "mme_accuracy" not in out["metrics"]  # the per-question mean stays


def test_mme_incomplete_pair_left_out_of_accuracy_plus():
    examples = [_ex("e1#0", ("Yes",), category="existence", group_id="e1")]
    out = aggregate(["mme_accuracy_plus"], examples, {"e1#0": ("Yes", {"mme_accuracy_plus": 1.0})})
    assert out["metrics"]["mme_accuracy_plus"] is None
    assert out["breakdown"]["mme_accuracy_plus"]["subtasks"]["existence"]["accuracy_plus"] is None


# ----------------------------------------------------------------------------- ScienceQA-IMG

def test_scienceqa_official_files(tmp_path):
    root = write_scienceqa(tmp_path / "sqa")
    ex = load_examples("scienceqa_img", source=str(root))
    assert [e.id for e in ex] == ["5", "9"]  # 7 has no image, 11 is train
    assert ex[0].question == ("Which of these states is farthest north?\nA. West Virginia\nB. Louisiana\n"
                              "C. Arizona\nD. Oklahoma")
    assert ex[0].answers == ("A",) and ex[1].answers == ("B",)
    assert ex[1].question.startswith("Context: The passage below describes an experiment.\n\nTom placed")
    assert ex[1].question.endswith("\nC. Neither")
    assert ex[0].image().size == (40, 30) and ex[0].meta["subject"] == "social science"
    with pytest.raises(DataError, match="no split 'dev'"):
        load_examples("scienceqa_img", source=str(root), split="dev")


def test_scienceqa_hub_layout(tmp_path):
    root = write_scienceqa_hub(tmp_path / "ScienceQA")
    ex = load_examples("scienceqa_img", split="test", source=f"hf:{root}")
    local = load_examples("scienceqa_img", source=str(write_scienceqa(tmp_path / "sqa")))
    assert [e.question for e in ex] == [e.question for e in local]
    assert [e.answers for e in ex] == [("A",), ("B",)] and ex[0].id == "test/0"


@pytest.mark.parametrize("pred, lmms, llava", [
    ("A", 1, 1), ("a", 1, 0), ("A.", 1, 0), ("A. West Virginia", 1, 1), ("A.West", 1, 0),
    ("The answer is A.", 0, 1), ("The answer is A", 0, 0), ("The answer is A. The answer is B.", 0, 0),
    ("(A)", 0, 0), ("B", 0, 0), (" A ", 1, 0),
])
def test_scienceqa_extraction(pred, lmms, llava):
    assert METRICS["scienceqa_accuracy"](pred, ("A",)) == lmms
    assert METRICS["scienceqa_accuracy_llava"](pred, ("A",)) == llava


def test_scienceqa_llava_regex_quirk():
    assert parse_choice_llava("The answer is C!") == "C"  # its '.' matches any character
    assert parse_choice_llava("F") == "FAILED"  # options A-E only


# ----------------------------------------------------------------------------- MMBench

def test_mmbench_tsv_and_circular_groups(tmp_path):
    root = write_mmbench_tsv(tmp_path / "mmb")
    ex = load_examples("mmbench_en", source=str(root))
    assert [e.id for e in ex] == ["30", "1000030", "2000030", "41"]
    assert [e.meta["group_id"] for e in ex] == ["30", "30", "30", "41"]
    assert [e.meta["circular_main"] for e in ex] == [True, False, False, True]
    assert ex[0].question == "What is the main object in the image?\nA. teddy bear\nB. rabbit\nC. cat"
    assert ex[0].answers == ("A", "A. teddy bear", "B. rabbit", "C. cat")
    assert ex[3].question == ("Look at the faces.\nWhich mood does this image convey?\nA. Happy\nB. Sad\n"
                              "C. Anxious\nD. Angry")
    assert ex[1].image_id == ex[0].image_id == "mmbench/30" and ex[0].image().size == (40, 30)
    assert ex[3].meta["category"] == "image_emotion" and ex[3].meta["l2_category"] == "coarse_perception"
    lm = load_examples("mmbench_en", source=str(root), prompt_style="lmms_eval")
    assert lm[0].question == ("What is the main object in the image? There are several options:\nA. teddy bear\n"
                              "B. rabbit\nC. cat")
    assert lm[3].question.startswith("Look at the faces. Which mood does this image convey? There are")
    # a limit never cuts a circular group
    assert [e.id for e in load_examples("mmbench_en", source=str(root), limit=1)] == ["30", "1000030", "2000030"]


def test_mmbench_hub_layout(tmp_path):
    root = write_mmbench_hub(tmp_path / "MMBench")
    ex = load_examples("mmbench_en", split="dev", source=f"hf:{root}")
    local = load_examples("mmbench_en", source=str(write_mmbench_tsv(tmp_path / "mmb")))
    assert [(e.id, e.question, e.answers) for e in ex] == [(e.id, e.question, e.answers) for e in local]
    assert ex[0].meta["l2_category"] == "coarse_perception"


def test_mmbench_bad_rows(tmp_path):
    import pandas as pd

    root = write_mmbench_tsv(tmp_path / "mmb")
    t = pd.read_table(root / "MMBench_DEV_EN.tsv")
    t.loc[0, "answer"] = "E"
    t.to_csv(root / "MMBench_DEV_EN.tsv", sep="\t", index=False)
    with pytest.raises(DataError, match="answer must be one of A-D, got 'E'"):
        load_examples("mmbench_en", source=str(root))
    with pytest.raises(DataMissing, match="missing MMBench_DEV_EN.tsv or"):
        load_examples("mmbench_en", source=str(tmp_path))


OPTS = ("B", "A. teddy bear", "B. rabbit", "C. cat", "D. dog")


@pytest.mark.parametrize("pred, letter", [
    ("B", "B"), ("B.", "B"), ("(B)", "B"), ("B) rabbit", "B"), ("The answer is B", "B"),
    ("rabbit", "B"), ("It is a rabbit.", "B"), ("a cute teddy bear", "A"),
    ("A rabbit sits on the grass", "B"),  # a lone 'A' in a long answer is an article: text match wins
    ("E", "E"),  # the option-letter pass reads A-E whatever the options
    ("cat or dog", ""),  # two option texts match and no capital letter: nothing extracted
    ("I pick C because", "C"),  # extract_mcq_answer's phrase rule
])
def test_mmbench_extraction(pred, letter):
    assert mmbench_choice(pred, options_of(OPTS)) == letter
    assert METRICS["mmbench_accuracy"](pred, OPTS) == float(letter == "B")


def test_mmbench_circular_accuracy():
    # group 30: main right, one copy wrong -> 0; group 41: right -> 1; group 55: copy without its main -> ignored
    rows = [("30", "30", True, "A", "A"), ("1000030", "30", False, "C", "C"), ("2000030", "30", False, "B", "C"),
            ("41", "41", True, "B", "B"), ("1000055", "55", False, "A", "A")]
    examples = [_ex(eid, (ans, "A. x", "B. y", "C. z"), group_id=g, circular_main=main, category="cat1")
                for eid, g, main, ans, _ in rows]
    preds = {eid: (out, {"mmbench_circular": METRICS["mmbench_circular"](out, (ans, "A. x", "B. y", "C. z"))})
             for eid, _, _, ans, out in rows}
    out = aggregate(["mmbench_circular"], examples, preds)
    assert out["metrics"]["mmbench_circular"] == 0.5
    b = out["breakdown"]["mmbench_circular"]
    assert b["questions"] == 2 and b["vanilla"] == 1.0 and b["category"] == {"cat1": 0.5}


# ----------------------------------------------------------------------------- TextVQA

def test_textvqa_official_files_with_and_without_ocr(tmp_path):
    root = write_textvqa(tmp_path / "tv")
    plain = load_examples("textvqa", split="val", source=str(root))
    assert [e.question for e in plain] == ["What is the brand of this camera?", "What brand phone is this?"]
    assert plain[0].answers == tuple(TEXTVQA_DATA[0]["answers"]) and plain[0].id == "34602"
    assert plain[0].image_id == "003a8ae2ef43b901" and plain[0].image().size == (64, 48)
    ocr = load_examples("textvqa", split="val", source=str(root), ocr=True)
    assert ocr[0].question == ("What is the brand of this camera?\n"
                               "Reference OCR token: DAKOTA, DIGITAL, Single-Use, Camera, Pire, digitat")
    assert ocr[1].question == "What brand phone is this?"  # no OCR tokens: LLaVA's two-line question
    lm = load_examples("textvqa", split="val", source=str(root), ocr=True, prompt_style="lmms_eval")
    assert lm[1].question == "What brand phone is this?\nReference OCR token: "
    (root / "TextVQA_Rosetta_OCR_v0.2_val.json").unlink()
    assert len(load_examples("textvqa", split="val", source=str(root))) == 2  # OCR file needed only with ocr
    with pytest.raises(DataMissing, match="TextVQA_Rosetta_OCR_v0.2_val.json"):
        load_examples("textvqa", split="val", source=str(root), ocr=True)


def test_textvqa_hub_layout(tmp_path):
    root = write_textvqa_hub(tmp_path / "textvqa")
    ex = load_examples("textvqa", split="validation", source=f"hf:{root}", ocr=True)
    local = load_examples("textvqa", split="val", source=str(write_textvqa(tmp_path / "tv")), ocr=True)
    assert [(e.id, e.question, e.answers) for e in ex] == [(e.id, e.question, e.answers) for e in local]
    assert ex[0].image().size == (40, 30)


# ----------------------------------------------------------------------------- published numbers

def test_published_numbers():
    full = published("llava-1.5-7b", "pope", "full", 576)
    assert {v.value for v in full} == {85.9} and {v.arxiv for v in full} == {"2310.03744", "2412.04467"}
    vz = published("llava-1.5-7b", "mme", "visionzip", 64)
    assert [(v.value, v.metric, v.arxiv) for v in vz] == [(1690.0, "perception+cognition", "2412.04467")]
    assert "Table 1" in vz[0].table and vz[0].read_in
    assert [v.value for v in published("LLaVA-1.5-7B", "gqa", "DivPrune", 128)] == [59.25]
    assert [v.value for v in published("llava-1.5-7b", "gqa", "vanilla", 576)] == [62.0, 61.9]
    assert published("llava-1.5-7b", "mme", "visionzip", 128) == []  # left out: its copies disagree
    assert {v.tokens for v in published("llava-1.5-7b", "textvqa", "fastv")} == {192, 128, 64}
    assert published("qwen2-vl-7b", "pope") == []


def test_published_rows_name_real_sources():
    rows = published("llava-1.5-7b", "scienceqa_img")
    assert rows and all(v.paper and v.arxiv and v.table and v.read_in for v in rows)
    assert {v.method for v in rows} == {"full", "fastv", "sparsevlm", "visionzip", "divprune"}
