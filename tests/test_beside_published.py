"""A run's clean figures beside the published ones: which rows are compared (budget from the
tokens the LLM saw, method by name), the figure each source prints, the differences, and the
notes when a figure is incomplete; hand-derived from published/llava-1.5-7b.yaml."""
import pytest

from tests.helpers.fake_published import POPE_CONFIG, POPE_METHODS, mme_rows, pope_rows
from robust_atp.beside_published import beside_published, planned_tokens

MME_CONFIG = {**POPE_CONFIG, "published": {"model": "llava-1.5-7b", "benchmark": "mme"},
              "metrics": ["mme_accuracy"], "dataset": {"loader": "mme", "split": "test"}}


def _cells(section):
    return [(r["method"], r["tokens"], r["metric"], r["run"], r["published"], r["difference"], r["arxiv"])
            for r in section["rows"]]


def test_pope_rows_and_differences():
    s = beside_published(POPE_CONFIG, pope_rows(), POPE_METHODS)
    assert (s["model"], s["benchmark"], s["condition"]) == ("llava-1.5-7b", "pope", "clean")
    # full: 84.12 beside LLaVA's model zoo and VisionZip's table (85.9 each); visionzip at 64: 75.0 vs 77.0;
    # divprune at 128: no F1 (undefined) vs 86.72; fastv keep 0.3333 saw 192 tokens: 50.0 vs 64.8
    assert _cells(s) == [
        ("full", 576, "f1", 84.12, 85.9, -1.78, "2310.03744"),
        ("full", 576, "f1", 84.12, 85.9, -1.78, "2412.04467"),
        ("visionzip@k64", 64, "f1", 75.0, 77.0, -2.0, "2412.04467"),
        ("divprune@k128", 128, "f1", None, 86.72, None, "2508.18264"),
        ("fastv@0.3333", 192, "f1", 50.0, 64.8, -14.8, "2412.04467")]
    assert {r["run_metric"] for r in s["rows"]} == {"pope_f1"}
    assert s["rows"][2]["table"].startswith("Table 1") and "VisionZip" in s["rows"][2]["paper"]
    assert s["not_compared"] == ["atp@k64 (64 tokens: no published value)",
                                 "random@0.25 (144 tokens: no published value)", "atp@mass0.9 (adaptive budget)"]
    assert s["notes"] == ["divprune@k128, f1: pope_f1 undefined (a split without a 'yes' answer)",
                          "fastv@0.3333, f1: the mean F1 of random (the published mean is over all three)"]
    assert "llava-hf/llava-1.5-7b-hf in float16" in s["differs"] and "first 1500 examples" in s["differs"]
    assert "averaged over the random, popular and adversarial splits" in s["differs"]


def test_mme_reads_the_sums_and_refuses_an_incomplete_one():
    s = beside_published(MME_CONFIG, mme_rows(), POPE_METHODS[:1])
    # perception + cognition 1700.75 vs VisionZip's 1862; perception 1400.5 vs LLaVA's model zoo 1510.7
    assert _cells(s) == [("full", 576, "perception+cognition", 1700.75, 1862.0, -161.25, "2412.04467"),
                         ("full", 576, "perception", 1400.5, 1510.7, -110.2, "2310.03744")]
    s = beside_published(MME_CONFIG, mme_rows(cognition_subtasks=3), POPE_METHODS[:1])
    assert _cells(s)[0][3] is None and _cells(s)[1][3] == 1400.5
    assert s["notes"] == ["full, perception+cognition: the run holds 3 of 4 cognition subtasks: no "
                          "perception+cognition score to compare"]


def test_the_budget_is_the_tokens_the_llm_saw():
    rows = [{**r, "kept_tokens": 64.5} if r["method"] == "visionzip@k64" else r for r in pope_rows()]
    s = beside_published(POPE_CONFIG, rows, POPE_METHODS)
    assert "visionzip@k64" not in {r["method"] for r in s["rows"]}
    assert "visionzip@k64 (kept 64.5 tokens on average: not one budget)" in s["not_compared"]


@pytest.mark.parametrize("settings, tokens", [({"keep": 1 / 3}, 192), ({"keep": 2 / 9}, 128), ({"keep": 1 / 9}, 64),
                                              ({"keep": 0.33}, 190), ({"k": 128}, 128), ({"k": 999}, 576),
                                              ({"mass": 0.5}, None)])
def test_planned_tokens_round_half_up(settings, tokens):
    assert planned_tokens({"name": "atp", "settings": settings}, 576) == tokens


def test_no_section_without_the_field():
    assert beside_published({"metrics": ["pope_f1"]}, pope_rows(), POPE_METHODS) is None


def test_textvqa_without_ocr_tokens_says_so():
    config = {**POPE_CONFIG, "published": {"model": "llava-1.5-7b", "benchmark": "textvqa"},
              "metrics": ["textvqa_accuracy"], "dataset": {"loader": "textvqa", "split": "validation",
                                                           "options": {"ocr": False}}}
    rows = [{"condition": "clean", "method": "full", "kept_tokens": 576.0, "metrics": {"textvqa_accuracy": 0.5}}]
    s = beside_published(config, rows, POPE_METHODS[:1])
    assert [(r["run"], r["published"], r["difference"]) for r in s["rows"]] == [(50.0, 58.2, -8.2)] * 2
    assert "use LLaVA's OCR-token prompt; this run does not" in s["differs"]
    with_ocr = {**config, "dataset": {**config["dataset"], "options": {"ocr": True}}}
    assert "OCR-token" not in beside_published(with_ocr, rows, POPE_METHODS[:1])["differs"]
