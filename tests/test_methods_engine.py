"""Every registered method through the engine (CLI) on the demo model and on a tiny random
LlavaConfig model: rows carry kept tokens, FLOPs ratio and object recall as documented."""
import json
import textwrap

import pytest

from robust_atp.prune.methods import method_names, validate_method
from robust_atp.run import main
from robust_atp.suite import MethodCfg

MERGING = {"pool", "tome", "tome_posthoc", "visionzip", "visionzip_mean", "prumerge_plus"}
STAGED = {"pdrop", "dart", "sparsevlm"}  # tokens leave between the LLM's decoder layers
# runs only where the token count follows the image size, which llava's is not (tests/test_downsample.py)
ON_LLAVA = [m for m in method_names() if m != "downsample"]


def _suite(tmp_path, checkpoint, clip):
    # FastV cuts after LLM layer 0: the tiny LLM has 2 layers, and a cut after the last one prunes nothing
    fastv = "layer: 0, label: "
    methods = ["{name: full}", "{name: fastv, keep: 1.0, " + fastv + "fastv@1}"] + [
        f"{{name: {m}, keep: 0.25" + (", " + fastv + "fastv@0.25" if m == "fastv" else "") + "}"
        for m in ON_LLAVA if m != "full"]
    p = tmp_path / "all.yaml"
    p.write_text(textwrap.dedent(f"""
        name: all_methods
        dataset: {{loader: shapes, split: val, limit: 4}}
        model: {{checkpoint: "{checkpoint}", clip: "{clip}", generation: {{max_new_tokens: 3}}}}
        methods: [{", ".join(methods)}]
        batch_size: 4
    """))
    return p


@pytest.mark.parametrize("model", ["demo", "tiny"])
def test_every_method_runs_through_the_engine(model, tmp_path, request):
    if model == "demo":
        ckpt, clip, n, depth = "zoo:shapes_vlm/llava", "zoo:shapes_vlm/clip", 144, 4
    else:
        tiny = request.getfixturevalue("tiny_dir")
        ckpt, clip, n, depth = tiny / "llava", tiny / "clip", 36, 2
    run = tmp_path / "run"
    assert main([str(_suite(tmp_path, ckpt, clip)), "--out", str(run), "--no-progress"]) == 0
    rows = {r["method"]: r for r in json.loads((run / "results.json").read_text())["rows"]}
    assert set(rows) == {"full", "fastv@1"} | {f"{m}@0.25" for m in ON_LLAVA if m != "full"}
    full = rows["full"]
    assert full["flops_ratio"] == 1.0 and full["object_recall"] == 1.0 and full["prefill_tflops"] > 0
    assert rows["fastv@1"]["accuracy"] == full["accuracy"] and rows["fastv@1"]["flops_ratio"] == 1.0
    for name in ON_LLAVA:
        if name == "full":
            continue
        r = rows[f"{name}@0.25"]
        assert r["n"] == 4 and 0 <= r["accuracy"] <= 1
        if name == "prumerge_plus":  # its fixed-ratio path: K / 2 outliers, arange(4, N - 1, 8), the extra token
            assert r["kept_tokens"] == n // 8 + len(range(4, n - 1, 8)) + 1
        elif name in STAGED:  # the last decoder layer's image tokens, as the policy at this depth has them
            policy = validate_method(MethodCfg(name=name, keep=0.25)).staged(n, depth)
            assert r["kept_tokens"] == policy.layer_image_tokens(n, depth)[-1]
        elif name != "pool":
            assert r["kept_tokens"] == n // 4
        if name == "fastv" or name in STAGED:  # every token through the first layer(s), then fewer
            assert 0.25 < r["flops_ratio"] < 1.0
        else:
            assert r["flops_ratio"] < 0.5
        assert (r["object_recall"] is None) == (name in MERGING)
    samples = [json.loads(s) for s in (run / "samples.jsonl").read_text().splitlines()]
    for s in samples:
        name = s["method"].split("@")[0]
        assert (s["kept_indices"] is None) == (name in MERGING)
        assert s["prefill_flops"] > 0 and s["vision_flops"] > 0


def test_object_recall_through_the_engine_follows_a_canonical_resolution(tmp_path):
    """uniform keeps the same patch indices whatever the image, and 96 px shapes at resolution 192
    (an exact 2x) reach the demo model's 48 px input on the same patch grid: the object recall must
    not move. It did, by mapping original-pixel boxes onto the resized image."""
    recall = {}
    for res in (None, 192):
        p = tmp_path / f"r{res}.yaml"
        p.write_text(textwrap.dedent("""
            name: recall
            dataset: {loader: shapes, split: val, limit: 6}
            model: {checkpoint: zoo:shapes_vlm/llava, clip: zoo:shapes_vlm/clip, generation: {max_new_tokens: 1}}
            methods: [{name: uniform, keep: 0.25}]
            """) + (f"perturbations: {{image: {{corruptions: [fog], severities: [1], resolution: {res}}}}}\n"
                    if res else ""))
        run = tmp_path / f"run{res}"
        assert main([str(p), "--out", str(run), "--no-progress", "--no-report"]) == 0
        samples = [json.loads(s) for s in (run / "samples.jsonl").read_text().splitlines()]
        recall[res] = [s["object_recall"] for s in samples if s["condition"] == "clean"]
    assert any(r is not None for r in recall[None]) and recall[192] == recall[None]
