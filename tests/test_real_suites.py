"""The real suites: each validates with --check (no weights, no download), missing data is one
line, and a tiny random-weights run of vqa_c.yaml's structure passes end to end."""
import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.official_data import write_vqacp, write_vqav2
from robust_atp.metrics.vqa import vqa_accuracy, vqa_accuracy_official
from robust_atp.run import main

SUITES = Path(__file__).resolve().parents[1] / "suites"
REAL = ["vqa_c", "gqa_ood", "vqacp", "rephrasings", "coco_c"]


def variant(tmp_path, name, edit) -> Path:
    raw = yaml.safe_load((SUITES / f"{name}.yaml").read_text())
    edit(raw)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return p


@pytest.mark.parametrize("name", REAL)
def test_real_suite_checks(name, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the suites' relative data roots do not exist here
    assert main([str(SUITES / f"{name}.yaml"), "--check"]) == 0
    out = capsys.readouterr().out
    assert f"suite {name} " in out and ": valid" in out and "weights not loaded" in out
    assert "llava-hf/llava-1.5-7b-hf (hub id" in out
    assert "plan: " in out and "conditions" in out and "methods" in out
    if name == "vqa_c":
        assert "hub dataset 'lmms-lab/VQAv2'" in out and "conditions (64)" in out and "methods (9)" in out
        # only the full model's budget is in the published tables (its pruned methods keep 0.5 and 0.25)
        assert ("  published: llava-1.5-7b vqav2 (accuracy from vqa_accuracy; clean condition; tokens out of 576)\n"
                "    full (576 tokens): accuracy 78.5 (arXiv 2310.03744), accuracy 78.5 (arXiv 2412.04467)\n"
                "    no published value: atp@0.5, atp@0.25, random@0.25") in out
    else:
        assert "  published:" not in out  # GQA-OOD, VQA-CP, ...: no published LLaVA-1.5 figure of theirs
        assert "not found here: dataset.source:" in out and "download from http" in out
        assert "The configuration is valid" in out


def test_check_counts_local_data(tmp_path, capsys):
    root = write_vqacp(tmp_path / "cp")
    suite = variant(tmp_path, "vqacp", lambda r: r["dataset"].update(source=str(root)))
    assert main([str(suite), "--check"]) == 0
    out = capsys.readouterr().out
    assert "data: found, 6 examples" in out
    assert "plan: 6 examples x 16 conditions x 7 methods = 672 generations" in out


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["methods"].append({"name": "atp", "keep": 1.5}), "methods[9].keep"),
    (lambda r: r["dataset"].update(loader="vqa2"), "dataset.loader: unknown loader 'vqa2'"),
    (lambda r: r.update(metrics=["vqa_acc"]), "metrics[0]: unknown metric 'vqa_acc'"),
    (lambda r: r["perturbations"]["image"].update(preset="imagenet_x"), "unknown preset 'imagenet_x'"),
    (lambda r: r["dataset"].update(options={"imagedir": "x"}), "dataset.options:"),
])
def test_check_rejects_an_invalid_config(tmp_path, capsys, edit, message):
    assert main([str(variant(tmp_path, "vqa_c", edit)), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_real_run_without_data_is_one_line(tmp_path, capsys):
    suite = variant(tmp_path, "gqa_ood", lambda r: r["dataset"].update(source=str(tmp_path / "gqa_ood")))
    assert main([str(suite), "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"]) == 2  # the device is checked first
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: {suite}: dataset.source: '{tmp_path / 'gqa_ood'}': missing dataset root "
                          f"(looked in ")
    assert err.endswith("download from https://github.com/gqa-ood/GQA-OOD")
    assert not (tmp_path / "run" / "predictions.sqlite").exists()


@pytest.mark.slow
def test_tiny_vqa_c_end_to_end(tmp_path, tiny_dir):
    """vqa_c.yaml with the official VQA v2 files of a fixture, a tiny random LLaVA, two corruptions
    and two question perturbations, every method of the suite."""
    root = write_vqav2(tmp_path / "vqav2")

    def edit(r):
        r["dataset"].update(source=str(root), split="val", limit=5)
        r["model"].update(checkpoint=str(tiny_dir / "llava"), clip=str(tiny_dir / "clip"), dtype="float32",
                          device="cpu", generation={"max_new_tokens": 3})
        r["perturbations"]["image"] = {"corruptions": ["gaussian_noise", "fog"], "severities": [3]}
        r["perturbations"]["text"] = {"perturbations": ["keyboard", "paraphrase"], "severities": [1]}
        r["batch_size"] = 3
        for m in r["methods"]:  # the tiny LLM has 2 layers: FastV cuts after the first
            if m["name"] == "fastv":
                m.update(layer=0, label=f"fastv@{m['keep']:g}")

    suite = variant(tmp_path, "vqa_c", edit)
    run = tmp_path / "run"
    assert main([str(suite), "--out", str(run), "--no-progress"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["manifest"]["n_examples"] == 5
    # every number names its convention: rows' `accuracy` and samples' `score` are the first metric's
    assert res["manifest"]["accuracy_metric"] == "vqa_accuracy"
    assert set(res["manifest"]["metric_sources"]) == {"vqa_accuracy", "vqa_accuracy_official"}
    assert "vqaEval.py" in res["manifest"]["metric_sources"]["vqa_accuracy_official"]
    assert res["manifest"]["conditions"] == ["clean", "text:keyboard@1", "text:paraphrase@1",
                                             "image:gaussian_noise@3", "image:fog@3"]
    rows = res["rows"]
    assert len(rows) == 5 * 9
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 5 * 5 * 9
    for s in samples:  # the stored score is the official metric of the stored prediction
        assert s["score"] == pytest.approx(vqa_accuracy(s["prediction"], tuple(s["answers"])))
        assert len(s["answers"]) == 10
    for r in rows:
        mine = [s for s in samples if s["condition"] == r["condition"] and s["method"] == r["method"]]
        assert r["n"] == 5
        assert r["metrics"]["vqa_accuracy"] == round(sum(s["score"] for s in mine) / 5, 6)
        official = sum(vqa_accuracy_official(s["prediction"], tuple(s["answers"])) for s in mine) / 5
        assert r["metrics"]["vqa_accuracy_official"] == round(official, 6)
        types = r["breakdown"]["vqa_accuracy"]["answer_type"]
        assert set(types) == {"other", "yes/no", "number"}
        yn = [s["score"] for s in mine if s["question_type"] in ("is the", "is this a")]
        assert types["yes/no"] == round(sum(yn) / len(yn), 6)


FAMILIES = {"vqa_c_llava_next": "llava_next llava-hf/llava-v1.6-mistral-7b-hf (hub id",
            "vqa_c_qwen2_vl": "qwen2_vl Qwen/Qwen2-VL-2B-Instruct (hub id",
            "vqa_c_blip2": "blip2 Salesforce/blip2-opt-2.7b (hub id"}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_suite_checks(name, capsys):
    """The LLaVA-NeXT, Qwen2-VL and BLIP-2 suites validate without weights or downloads."""
    assert main([str(SUITES / f"{name}.yaml"), "--check"]) == 0
    out = capsys.readouterr().out
    assert f"suite {name} " in out and ": valid" in out and FAMILIES[name] in out and "weights not loaded" in out
    if name != "vqa_c_llava_next":
        assert "scorer open_clip ViT-B-16 (openai)" in out


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["model"].update(adapter="qwen9_vl", scorer=None, saliency=None),
     "model.adapter: unknown adapter 'qwen9_vl'; known: blip2, internvl, llava, llava_next, llava_onevision, "
     "qwen2_5_vl, qwen2_vl, qwen3_vl"),
    (lambda r: r["model"]["scorer"].update(model="ViT-Q-99"), "model.scorer.model: unknown open_clip model"),
    (lambda r: r["model"].update(budget_scope="per_crop"), "model: 'budget_scope' applies to the llava_next"),
    (lambda r: r["model"].update(saliency="cls"), "model.saliency: Input should be 'attention' or 'feature_norm'"),
])
def test_family_check_rejects_an_invalid_model(tmp_path, capsys, edit, message):
    assert main([str(variant(tmp_path, "vqa_c_qwen2_vl", edit)), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
