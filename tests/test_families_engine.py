"""Each new adapter through the engine (CLI) on a few shapes examples: full, ATP on the
adapter's own saliency, and ATP with an external open_clip scorer (or the VLM's own CLIP)."""
import json
import pytest
import yaml

from robust_atp.run import main
from tests.helpers.tiny_families import BLIP2_PROMPT, QWEN_PROMPT


def _suite(tmp_path, model: dict, methods: list[dict], fog: bool = True) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / "suite.yaml"
    suite = {"name": "family", "dataset": {"loader": "shapes", "split": "val", "limit": 4},
             "model": {**model, "generation": {"max_new_tokens": 3}}, "methods": methods, "batch_size": 2}
    if fog:
        suite["perturbations"] = {"image": {"corruptions": ["fog"], "severities": [1], "resolution": 96}}
    p.write_text(yaml.safe_dump(suite))
    return str(p)


def _run(tmp_path, model, methods, fog: bool = True):
    run = tmp_path / "run"
    assert main([_suite(tmp_path, model, methods, fog), "--out", str(run), "--no-progress", "--no-report"]) == 0
    rows = json.loads((run / "results.json").read_text())["rows"]
    samples = [json.loads(s) for s in (run / "samples.jsonl").read_text().splitlines()]
    return {(r["condition"], r["method"]): r for r in rows}, samples


@pytest.mark.slow
def test_qwen2_vl_through_the_engine(tmp_path, tiny_qwen_dir, open_clip_config):
    model = {"adapter": "qwen2_vl", "checkpoint": str(tiny_qwen_dir), "prompt": QWEN_PROMPT,
             "scorer": {"kind": "open_clip", "model": str(open_clip_config)}}
    rows, samples = _run(tmp_path, model, [{"name": "full"}, {"name": "atp", "keep": 0.25, "alpha": 0.0},
                                           {"name": "atp", "keep": 0.25}])
    assert set(rows) == {(c, m) for c in ("clean", "image:fog@1") for m in ("full", "atp@0.25[alpha=0]", "atp@0.25")}
    for (cond, method), r in rows.items():
        assert r["n"] == 4 and r["kept_tokens"] == (16 if method == "full" else 4)
        assert r["flops_ratio"] == 1.0 if method == "full" else r["flops_ratio"] < 0.6
    assert all(s["vision_flops"] > 0 and s["scorer_flops"] >= 0 for s in samples)


@pytest.mark.slow
def test_llava_next_through_the_engine(tmp_path, tiny_next_dir, open_clip_config):
    base = {"adapter": "llava_next", "checkpoint": str(tiny_next_dir / "llava_next")}
    rows, samples = _run(tmp_path, {**base, "clip": str(tiny_next_dir / "clip"), "budget_scope": "per_crop"},
                         [{"name": "full"}, {"name": "atp", "keep": 0.25}])
    assert rows["clean", "full"]["kept_tokens"] == 80 and rows["clean", "atp@0.25"]["kept_tokens"] == 20
    # the prefill counts the newlines of the rows kept tokens touch: 88 visual tokens for full
    assert 0 < rows["clean", "atp@0.25"]["flops_ratio"] < 0.6
    rows, _ = _run(tmp_path / "scorer", {**base, "scorer": {"model": str(open_clip_config)}},
                   [{"name": "full"}, {"name": "atp", "keep": 0.25}, {"name": "tome", "keep": 0.25}], fog=False)
    assert rows["clean", "tome@0.25"]["kept_tokens"] == 20


@pytest.mark.slow
def test_blip2_through_the_engine(tmp_path, tiny_blip2_dir, open_clip_config, capsys):
    model = {"adapter": "blip2", "checkpoint": str(tiny_blip2_dir), "prompt": BLIP2_PROMPT,
             "scorer": {"kind": "open_clip", "model": str(open_clip_config)}}
    rows, samples = _run(tmp_path, model, [{"name": "full"}, {"name": "cls", "keep": 0.25},
                                           {"name": "atp", "keep": 0.25}])
    for key, r in rows.items():
        assert r["flops_ratio"] == 1.0  # the LLM reads the 8 query tokens whatever is pruned
    by = {}
    for s in samples:
        by.setdefault(s["method"], []).append(s)
    assert all(s["qformer_flops"] < by["full"][0]["qformer_flops"] for s in by["atp@0.25"])
    assert rows["clean", "atp@0.25"]["vision_tflops"] < rows["clean", "full"]["vision_tflops"]
    assert rows["clean", "atp@0.25"]["qformer_tflops"] < rows["clean", "full"]["qformer_tflops"]
    assert "its prefill is unchanged (flops 1.000); pruning saves only Q-Former" in capsys.readouterr().out


def test_fastv_on_a_new_adapter_is_one_line(tmp_path, tiny_blip2_dir, capsys):
    model = {"adapter": "blip2", "checkpoint": str(tiny_blip2_dir), "prompt": BLIP2_PROMPT}
    assert main([_suite(tmp_path, model, [{"name": "fastv", "keep": 0.5, "layer": 0}]), "--out",
                 str(tmp_path / "run"), "--no-progress", "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fastv is not supported on the blip2 adapter" in err


@pytest.mark.parametrize("family", ["qwen2_vl", "llava_next"])
def test_measured_cost_on_an_adapter_without_timed_llm_passes_is_one_error(tmp_path, family, request, capsys):
    """LLaVA-NeXT inherits LLaVA's timed LLM loop, but that loop has no newline tokens: refused too."""
    if family == "qwen2_vl":
        model = {"adapter": "qwen2_vl", "checkpoint": str(request.getfixturevalue("tiny_qwen_dir")),
                 "prompt": QWEN_PROMPT}
    else:
        model = {"adapter": "llava_next", "checkpoint": str(request.getfixturevalue("tiny_next_dir") / "llava_next")}
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump({
        "name": "family", "dataset": {"loader": "shapes", "split": "val", "limit": 2},
        "model": model, "methods": [{"name": "full"}], "cost": {"latency": True}}))
    assert main([str(p), "--out", str(tmp_path / "run"), "--no-progress", "--no-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    name = {"qwen2_vl": "Qwen2VLAdapter", "llava_next": "LlavaNextAdapter"}[family]
    assert len(err) == 1 and err[0].startswith("error: cost: measured latency") and name in err[0]
    assert not (tmp_path / "run" / "results.json").exists()
