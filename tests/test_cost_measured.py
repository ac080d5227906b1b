"""Measured cost: counted FLOPs and KV-cache bytes against the analytical model, the suite
option end to end (predictions unchanged, persisted, resumable), and the results columns."""
import json
import textwrap

import pytest
import torch

from robust_atp import cost
from robust_atp.measure import add_measured_cost
from robust_atp.run import main

QUESTION = "what color is the circle?"


@pytest.mark.parametrize("keep", [1.0, 0.25])
def test_counted_prefill_flops_equal_the_analytical_count_under_sdpa(tiny_adapter, keep):
    """The adapter's prefill (as measured in runs) under sdpa on CPU: FlopCounterMode, given the
    CPU sdpa kernel's formula, counts exactly the analytical FLOPs."""
    a = tiny_adapter
    assert a.model.config.text_config._attn_implementation == "sdpa"
    shape = cost.LayerShape.from_config(a.model.config.text_config)
    k = round(keep * a.num_visual_tokens)
    tokens = torch.randn(k, shape.d)
    counted = cost.counted_flops(lambda: a.run_llm([tokens], [QUESTION]))
    assert counted == cost.prefill_flops(shape, a.prompt_length(QUESTION) + k)


def test_cpu_sdpa_formula_counts_what_the_math_does():
    q, k = torch.randn(2, 4, 7, 8), torch.randn(2, 4, 11, 8)
    # scores q k^T and mixing p v: 2 * (B H Lq Lk E) MACs each side, 2 FLOPs per MAC
    expected = 2 * 2 * (2 * 4 * 7 * 11 * 8)
    assert cost.counted_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k)) == expected
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:  # torch's own registry is left as it was
        torch.nn.functional.scaled_dot_product_attention(q, k, k)
    assert fc.get_total_flops() in (0, expected)


def test_kv_cache_bytes_match_the_shape_formula(tiny_adapter):
    a = tiny_adapter
    shape = cost.LayerShape.from_config(a.model.config.text_config)
    seq = a.prompt_length(QUESTION) + 9
    out = a.run_llm([torch.randn(9, shape.d)], [QUESTION])
    assert shape.kv_heads < shape.heads  # GQA: the cache holds the key/value heads only
    assert out["kv_bytes"] == cost.kv_cache_bytes_expected(shape, seq, 4) > 0
    # a batch is left-padded to its longest prompt
    two = a.run_llm([torch.randn(9, shape.d), torch.randn(5, shape.d)], [QUESTION, QUESTION])
    assert two["kv_bytes"] == cost.kv_cache_bytes_expected(shape, seq, 4, batch=2)


def test_run_llm_prefill_is_the_prefill_generate_runs(tiny_adapter):
    """The timed prefill computes what `generate` computes: its KV cache equals the model's own
    forward over the same embeddings (left padding, mask and positions included)."""
    a = tiny_adapter
    d = a.model.config.text_config.hidden_size
    tokens, qs = [torch.randn(6, d), torch.randn(3, d)], [QUESTION, "is there a square?"]
    caches = []
    orig = a.model.model.language_model.forward

    def spy(*args, **kwargs):
        out = orig(*args, **kwargs)
        if len(caches) < 1:
            caches.append([(layer.keys.clone(), layer.values.clone()) for layer in out.past_key_values.layers])
        return out

    a.model.model.language_model.forward = spy
    try:
        a.generate(tokens, qs)
        ref = caches.pop()
        a.run_llm(tokens, qs)
        mine = caches.pop()
    finally:
        del a.model.model.language_model.forward
    for (k1, v1), (k2, v2) in zip(ref, mine):
        assert torch.allclose(k1, k2, atol=1e-5) and torch.allclose(v1, v2, atol=1e-5)


def test_clock_median_skips_warmup():
    calls = []
    ticks = iter(range(100))
    clock = lambda: next(ticks)  # noqa: E731  every reading 1 s later
    s = cost.median_seconds(lambda: calls.append(1), clock, repeats=3, warmup=2)
    assert len(calls) == 5 and s == 1


def test_results_columns_from_cost_records():
    rows = [{"condition": "clean", "method": m} for m in ("full", "atp@0.25", "cls@0.25")]
    rec = lambda pre, e2e, c, a: {"batch": 4, "prefill_ms": pre, "end_to_end_ms": e2e, "vision_ms": 10.0,  # noqa: E731
                                   "text_ms": 0.5, "select_ms": 0.1, "decode_per_token_ms": 1.0, "generate_ms": 5.0,
                                   "select_overhead": 0.06, "peak_mem_mb": 100.0, "peak_mem_kind": "process_peak_rss",
                                   "kv_cache_mb": 0.5, "counted_prefill_flops": c, "analytic_prefill_flops": a}
    records = [("clean", "full", "b0", rec(8.0, 20.0, 2e12, 2e12)),
               ("clean", "full", "b1", rec(12.0, 20.0, 2e12, 2e12)),
               ("clean", "atp@0.25", "b0", rec(3.0, 15.0, 1.01e12, 1e12))]
    add_measured_cost(rows, records)
    full, atp, cls = rows
    assert full["latency_ms"]["prefill"] == 10.0 and full["cost_batches"] == 2 and full["latency_batch"] == 4
    assert atp["latency_ratio"] == {"prefill": 0.3, "end_to_end": 0.75}
    assert atp["flops_error"] == 0.01 and atp["counted_prefill_tflops"] == 1.01
    assert cls["latency_ms"] is None and cls["latency_ratio"] is None and cls["cost_batches"] == 0
    untouched = [{"condition": "clean", "method": "full"}]
    add_measured_cost(untouched, [])
    assert untouched == [{"condition": "clean", "method": "full"}]  # accuracy-only runs keep their columns


SUITE = """
name: costed
seed: 1
dataset: {{loader: shapes, split: test, limit: 2}}
model: {{checkpoint: {llava}, clip: {clip}, generation: {{max_new_tokens: 3}}}}
methods:
  - {{name: full}}
  - {{name: atp, keep: 0.25}}
  - {{name: fastv, keep: 0.25, layer: 0}}
perturbations:
  image: {{corruptions: [fog], severities: [3]}}
batch_size: 2
{cost}
"""


def _suite(tmp_path, tiny_dir, cost_line: str):
    p = tmp_path / f"s{abs(hash(cost_line))}.yaml"
    p.write_text(textwrap.dedent(SUITE.format(llava=tiny_dir / "llava", clip=tiny_dir / "clip", cost=cost_line)))
    return p


def test_cost_option_measures_without_changing_predictions_and_survives_resume(tmp_path, tiny_dir):
    plain, costed = tmp_path / "plain", tmp_path / "costed"
    assert main([str(_suite(tmp_path, tiny_dir, "")), "--out", str(plain), "--no-progress", "--no-report"]) == 0
    cost_line = "cost: {latency: true, flops: true, repeats: 1, warmup: 1}"
    assert main([str(_suite(tmp_path, tiny_dir, cost_line)), "--out", str(costed), "--no-progress",
                 "--no-report"]) == 0
    assert (plain / "samples.jsonl").read_bytes() == (costed / "samples.jsonl").read_bytes()
    res = json.loads((costed / "results.json").read_text())
    plain_res = json.loads((plain / "results.json").read_text())
    assert res["manifest"]["config_hash"] == plain_res["manifest"]["config_hash"]  # cost is not in the hash
    assert res["manifest"]["engine"]["cost_measured"] == 2 * 3  # the batch under 2 conditions x 3 methods
    rows = {(r["condition"], r["method"]): r for r in res["rows"]}
    for (cond, method), r in rows.items():
        assert r["cost_batches"] == 1 and r["latency_batch"] == 2
        lat = r["latency_ms"]
        assert all(v > 0 for k, v in lat.items() if k != "text")
        assert lat["end_to_end"] == pytest.approx(lat["vision"] + lat["text"] + lat["select"] + lat["generate"],
                                                  abs=1e-3)
        assert r["peak_mem_mb"] > 0 and r["kv_cache_mb"] > 0 and r["select_overhead"] >= 0
        # exact, FastV included (its executed count: every layer over the whole prompt + its ranking)
        assert r["flops_error"] == 0.0, (method, r["flops_error"])
        assert r["counted_prefill_tflops"] == r["analytic_prefill_tflops"] > 0
    assert rows["clean", "full"]["latency_ratio"] == {"prefill": 1.0, "end_to_end": 1.0}
    assert rows["clean", "atp@0.25"]["kv_cache_mb"] < rows["clean", "full"]["kv_cache_mb"]
    # the accuracy-only run resumed with cost on: no prediction recomputed, only the measurements added
    before = (plain / "samples.jsonl").read_bytes()
    assert main([str(_suite(tmp_path, tiny_dir, cost_line)), "--out", str(plain), "--no-progress",
                 "--no-report"]) == 0
    again = json.loads((plain / "results.json").read_text())
    assert again["manifest"]["engine"]["generations"] == 0 and again["manifest"]["engine"]["cost_measured"] == 6
    assert (plain / "samples.jsonl").read_bytes() == before
    # and a finished run read again keeps reporting its measurements without measuring anything
    assert main([str(_suite(tmp_path, tiny_dir, cost_line)), "--out", str(costed), "--no-progress",
                 "--no-report"]) == 0
    third = json.loads((costed / "results.json").read_text())
    assert third["manifest"]["engine"]["cost_measured"] == 0
    assert [r["latency_ms"] for r in third["rows"]] == [r["latency_ms"] for r in res["rows"]]
    # the report: the latency ratio beside the cost ratio, and accuracy against measured latency
    from robust_atp.report.html import build_report

    build_report(costed, ["html"], log=lambda s: None)
    html = (costed / "report.html").read_text()
    assert "latency ratio" in html and (costed / "plots" / "accuracy_vs_latency.png").is_file()


def test_cost_section_is_validated(tmp_path, tiny_dir, capsys):
    p = _suite(tmp_path, tiny_dir, "cost: {latency: true, repeat: 3}")
    assert main([str(p), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {p}: cost.repeat: unknown key (did you mean 'repeats'?)"
    p = _suite(tmp_path, tiny_dir, "cost: {latency: true, repeats: 0}")
    assert main([str(p), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "cost.repeats" in capsys.readouterr().err


def test_report_plots_accuracy_against_measured_latency():
    from types import SimpleNamespace

    from robust_atp.report.plots import plot_accuracy_vs_latency

    cost_rows = [{"method": "full", "latency_ratio": 1.0, "clean": 0.9, "corrupted": 0.6},
                 {"method": "atp@0.25", "latency_ratio": 0.6, "clean": 0.8, "corrupted": 0.55}]
    fig = plot_accuracy_vs_latency(SimpleNamespace(cost=cost_rows, methods=["full", "atp@0.25"]))
    ax = fig.axes[0]
    assert "measured end-to-end latency" in ax.get_xlabel()
    xs = sorted(float(x) for coll in ax.collections for x, _ in coll.get_offsets())
    assert xs == [0.6, 0.6, 1.0, 1.0]  # clean and corrupted point per method, at its latency ratio
    no_latency = [{**c, "latency_ratio": None} for c in cost_rows]
    assert plot_accuracy_vs_latency(SimpleNamespace(cost=no_latency, methods=["full", "atp@0.25"])) is None
