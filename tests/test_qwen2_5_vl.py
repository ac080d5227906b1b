"""The Qwen2.5-VL adapter against `Qwen2_5_VLForConditionalGeneration` itself, on a tiny random
model whose ViT mixes windowed and full-attention blocks: `full` is the model's own generate at
three image sizes, the saliency is the eager attention in the LLM's token order (the tower's
window order undone), kept tokens keep their M-RoPE positions."""
import pytest
import torch

from robust_atp.engine import kept_tokens_of
from robust_atp.prune.methods import validate_method
from robust_atp.suite import MethodCfg, ModelCfg
from tests.helpers.tiny_families import QWEN_PROMPT
from tests.helpers.tiny_families_new import QWEN25_SIZES, build_tiny_qwen2_5_vl

MAX_NEW = 8


@pytest.fixture(scope="module")
def tiny_qwen25_dir(tmp_path_factory):
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_qwen2_5_vl"))


def _adapter(path, **kw):
    from robust_atp.models.base import load_adapter

    return load_adapter(ModelCfg(adapter="qwen2_5_vl", checkpoint=str(path), prompt=QWEN_PROMPT,
                                 generation={"max_new_tokens": MAX_NEW}, **kw))


@pytest.fixture(scope="module")
def qwen(tiny_qwen25_dir):
    return _adapter(tiny_qwen25_dir)


def _images(examples, size):
    return [e.image().convert("RGB").resize(size) for e in examples]


@pytest.fixture(scope="module")
def batch(shapes_examples):
    """Four shapes images at 96 px: 80x80 after the processor, 5x5 merged tokens in 3x3 windows."""
    exs = shapes_examples[:4]
    return _images(exs, (96, 96)), [e.question for e in exs]


def _kept(method_cfg, vision, text=None):
    m = validate_method(MethodCfg(**method_cfg))
    return m.apply(vision, text, [""] * len(vision))


def _generated_ids(adapter, tokens, questions, indices):
    captured = {}
    orig = adapter.model.generate

    def spy(*a, **kw):
        out = orig(*a, **kw)
        captured["out"] = out[:, kw["input_ids"].shape[1]:]  # the prompt ids, then the new ones
        return out

    adapter.model.generate = spy
    try:
        texts = adapter.generate(tokens, questions, kept_indices=indices)
    finally:
        adapter.model.generate = orig
    return captured["out"], texts


@pytest.mark.parametrize("size", QWEN25_SIZES)
def test_full_matches_hf_generate_token_for_token(qwen, shapes_examples, size):
    exs = shapes_examples[4:8]
    images, questions = _images(exs, size), [e.question for e in exs]
    ref = qwen.reference_inputs(images, questions)
    with torch.inference_mode():
        out = qwen.model.generate(**ref, max_new_tokens=MAX_NEW, do_sample=False)
    ref_ids = out[:, ref["input_ids"].shape[1]:]
    vision = qwen.encode_images(images)
    _, h, w = ref["image_grid_thw"][0].tolist()
    assert vision.grid == (h // 2, w // 2) and vision.tokens.shape[1] == h * w // 4
    kept = _kept({"name": "full"}, vision)
    ids, texts = _generated_ids(qwen, [k.tokens for k in kept], questions, [k.indices for k in kept])
    assert ids.shape == ref_ids.shape == (4, MAX_NEW)
    assert torch.equal(ids, ref_ids)
    assert texts == [t.strip() for t in qwen.tokenizer.batch_decode(ref_ids, skip_special_tokens=True)]


def test_the_sizes_give_different_grids_and_partial_windows(qwen, shapes_examples):
    """The three sizes of the equality test are three token layouts, each with windows cut at
    the image's edge, so the window order is no raster order."""
    from robust_atp.models.qwen2_5_vl import window_order

    grids = set()
    for size in QWEN25_SIZES:
        vision = qwen.encode_images(_images(shapes_examples[:1], size))
        grids.add(vision.grid)
        lengths = qwen.window_lengths()
        assert len(set(lengths)) > 1 and sum(lengths) == vision.tokens.shape[1] * 4
        rows, cols = vision.grid
        order = window_order(torch.tensor([[1, rows * 2, cols * 2]]), qwen.model.config.vision_config)
        assert not torch.equal(order, torch.arange(rows * cols))
    assert len(grids) == 3


def test_vit_features_and_tokens_are_in_the_llms_order(qwen, batch):
    """The features the merger reads, taken from the tower's window-ordered last hidden state
    and put back in raster order, give exactly the tokens the model hands its LLM."""
    images, _ = batch
    vision = qwen.encode_images(images)
    with torch.inference_mode():
        again = qwen.visual.merger.mlp(vision.vit_features.flatten(0, 1)).view_as(vision.tokens)
        px, grids = qwen.processed(images)
        own = qwen.model.model.get_image_features(px, grids).pooler_output
    assert torch.allclose(again, vision.tokens, atol=1e-6)
    assert torch.equal(torch.cat(own), vision.tokens.flatten(0, 1))


def test_keeping_every_token_is_full(qwen, batch):
    images, questions = batch
    vision = qwen.encode_images(images)
    full = _kept({"name": "full"}, vision)
    answers = qwen.generate([k.tokens for k in full], questions, kept_indices=[k.indices for k in full])
    for cfg in ({"name": "atp", "keep": 1.0, "alpha": 0.0, "layer": -1}, {"name": "cls", "k": 25}):
        kept = _kept(cfg, vision)
        assert all(torch.equal(a.indices, f.indices) and torch.equal(a.tokens, f.tokens) for a, f in zip(kept, full))
        assert qwen.generate([k.tokens for k in kept], questions, kept_indices=[k.indices for k in kept]) == answers


def _full_rope_index(qwen, images, questions):
    ref = qwen.reference_inputs(images, questions)
    pos, deltas = qwen.model.model.get_rope_index(ref["input_ids"], mm_token_type_ids=ref["mm_token_type_ids"],
                                                  image_grid_thw=ref["image_grid_thw"],
                                                  attention_mask=ref["attention_mask"])
    return ref, pos, deltas


def _kept_columns(ref, pos, i, kept):
    """The model's own positions of example i restricted to its text and its kept visual tokens: [3, T_i]."""
    real = ref["attention_mask"][i].bool()
    p, types = pos[:, i, real], ref["mm_token_type_ids"][i, real]
    vis = (types == 1).nonzero().flatten()
    keep = torch.ones(p.shape[1], dtype=torch.bool)
    keep[vis] = False
    keep[vis[kept]] = True
    return p[:, keep]


@pytest.mark.parametrize("size", QWEN25_SIZES[1:])
def test_positions_are_the_models_own_rope_index_on_the_kept_tokens(qwen, shapes_examples, size):
    exs = shapes_examples[:4]
    images, questions = _images(exs, size), [e.question for e in exs]
    vision = qwen.encode_images(images)
    n = vision.tokens.shape[1]
    ref, pos, deltas = _full_rope_index(qwen, images, questions)
    kept = [k.indices for k in _kept({"name": "cls", "k": 6, "layer": -1}, vision)]
    mine, my_deltas = qwen.positions(kept, questions)
    for i in range(4):
        expect = _kept_columns(ref, pos, i, kept[i].cpu())
        assert torch.equal(mine[1:, i, mine.shape[2] - expect.shape[1]:].cpu(), expect.cpu())
        assert int(mine[1:, i, :mine.shape[2] - expect.shape[1]].abs().sum()) == 0  # pads at 0, as the model puts them
        assert int(my_deltas[i]) == int(deltas[i]) + n - 6 == int(expect.max()) + 1 - expect.shape[1]
    full, full_deltas = qwen.positions([torch.arange(n)] * 4, questions)
    assert torch.equal(full_deltas.cpu(), deltas.cpu())
    assert torch.equal(full[1:].cpu(), pos.cpu())


def test_pruned_decoding_follows_the_kept_tokens_rope_positions(qwen, batch):
    """Decoding after pruning: the same tokens and logits at every step as feeding the kept
    tokens, by hand and without a cache, at the positions the model's get_rope_index gives them."""
    images, questions = batch
    vision = qwen.encode_images(images)
    ref, pos, _ = _full_rope_index(qwen, images, questions)
    kept = _kept({"name": "cls", "keep": 0.5, "layer": -1}, vision)
    captured = {}
    orig = qwen.model.generate

    def spy(*a, **kw):
        out = orig(*a, output_logits=True, return_dict_in_generate=True, **kw)
        captured["out"], captured["prompt"] = out, kw["input_ids"].shape[1]
        return out.sequences

    qwen.model.generate = spy
    try:
        qwen.generate([k.tokens for k in kept], questions, kept_indices=[k.indices for k in kept])
    finally:
        qwen.model.generate = orig
    ids = captured["out"].sequences[:, captured["prompt"]:]
    logits = torch.stack(captured["out"].logits, 1)  # [B, steps, V]
    model, embed = qwen.model, qwen.model.get_input_embeddings()
    for i, (k, q) in enumerate(zip(kept, questions)):
        before, after = qwen.prompt_ids(q)
        with torch.inference_mode():
            seq = torch.cat([embed(before), k.tokens, embed(after)])[None]
            p = _kept_columns(ref, pos, i, k.indices.cpu())[:, None]
            for step in range(ids.shape[1]):
                last = model(inputs_embeds=seq, position_ids=p).logits[0, -1]
                assert int(last.argmax()) == int(ids[i, step])
                assert torch.allclose(last, logits[i, step], atol=1e-3)
                if int(ids[i, step]) == qwen.tokenizer.eos_token_id:
                    break
                seq = torch.cat([seq, embed(ids[i, step:step + 1])[None]], 1)
                p = torch.cat([p, p[:, :, -1:] + 1], 2)


def test_llm_receives_exactly_the_kept_tokens(qwen, batch):
    images, questions = batch
    vision = qwen.encode_images(images)
    seen = []
    lm = qwen.model.model.language_model
    handle = lm.register_forward_pre_hook(lambda mod, args, kw: seen.append(
        (kw["inputs_embeds"].clone(), kw["attention_mask"].clone())), with_kwargs=True)
    try:
        for k in (1, 7, 20):
            seen.clear()
            kept = _kept({"name": "cls", "k": k, "layer": -1}, vision)
            qwen.generate([x.tokens for x in kept], questions, kept_indices=[x.indices for x in kept])
            embeds, mask = seen[0]  # the prefill call
            for i, (x, q) in enumerate(zip(kept, questions)):
                before, after = qwen.prompt_ids(q)
                n = len(before) + k + len(after)
                assert int(mask[i].sum()) == n
                row = embeds[i, embeds.shape[1] - n:]
                assert torch.equal(row[len(before):len(before) + k], vision.tokens[i, x.indices])
    finally:
        handle.remove()


def test_batch_size_does_not_change_answers(qwen, batch):
    images, questions = batch
    method = {"name": "atp", "keep": 0.4, "alpha": 0.0, "layer": -1}
    kept = _kept(method, qwen.encode_images(images))
    batched = qwen.generate([k.tokens for k in kept], questions, kept_indices=[k.indices for k in kept])
    single = []
    for i in range(4):
        k = _kept(method, qwen.encode_images(images[i:i + 1]))
        assert torch.equal(k[0].indices, kept[i].indices)
        single += qwen.generate([x.tokens for x in k], questions[i:i + 1], kept_indices=[x.indices for x in k])
    assert single == batched


def test_received_attention_saliency_matches_eager_attention(tiny_qwen25_dir, batch):
    """The hooked saliency (under sdpa) equals the weights the eager kernel computes: each
    block's segment matrices (windows, or the whole image in a full-attention block) placed in
    one block-diagonal matrix per image, averaged over its query patches, each patch scattered
    to its merged token through the tower's window index, summed per merged token."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as mq
    from transformers.vision_utils import get_vision_window_index

    images, _ = batch
    adapter = _adapter(tiny_qwen25_dir, attn_implementation="eager")
    vc = adapter.model.config.vision_config
    weights = []
    orig = mq.eager_attention_forward

    def keep(*a, **kw):
        out = orig(*a, **kw)
        weights.append(out[1][0].float())  # [H, n, n] of one segment
        return out

    mq.eager_attention_forward = keep
    try:
        sal = adapter.encode_images(images).cls_attn  # [B, L, H, N]
    finally:
        mq.eager_attention_forward = orig
    px, grids = adapter.processed(images)
    index, cu_windows = get_vision_window_index(grids.cpu(), spatial_merge_size=2, window_size=vc.window_size,
                                                patch_size=vc.patch_size)
    per_image, total = 100, 400  # 10x10 patches each
    heads = vc.num_heads
    segments = {True: [(a * per_image, (a + 1) * per_image) for a in range(4)],
                False: list(zip(cu_windows[:-1].tolist(), cu_windows[1:].tolist()))}
    assert len(segments[False]) == 4 * 9
    expect = torch.zeros(4, vc.depth, heads, 25)
    calls = iter(weights)
    for layer in range(vc.depth):
        dense = torch.zeros(heads, total, total)
        for a, b in segments[layer in vc.fullatt_block_indexes]:
            dense[:, a:b, a:b] = next(calls)
        for img in range(4):
            a, b = img * per_image, (img + 1) * per_image  # an image's patches stay together in window order
            received = dense[:, a:b, a:b].mean(1)  # [H, 100], window order
            for p in range(per_image):
                unit = int(index[(a + p) // 4]) - img * 25  # the merged token patch p belongs to
                expect[img, layer, :, unit] += received[:, p]
    assert next(calls, None) is None
    assert torch.allclose(sal, expect, atol=1e-5)
    assert float((sal[:, -1].amax(-1) - sal[:, -1].amin(-1)).min()) > 1e-3  # not a flat map: the order is seen


def test_merging_methods_and_fastv_are_refused(qwen, batch):
    from robust_atp.errors import UserError
    from robust_atp.models.fastv import FastVSpec

    images, questions = batch
    vision = qwen.encode_images(images)
    merged = kept_tokens_of(validate_method(MethodCfg(name="tome_posthoc", keep=0.5)), vision, None, [""] * 4)
    with pytest.raises(UserError, match="merging method .* qwen2_5_vl places every visual token"):
        qwen.generate(merged, questions, kept_indices=[None] * 4)
    with pytest.raises(UserError, match="fastv is not supported on the qwen2_5_vl adapter"):
        qwen.generate(list(vision.tokens), questions, in_llm=FastVSpec(0, 4))


def test_text_relevance_without_a_scorer_is_refused(qwen):
    from robust_atp.errors import UserError

    with pytest.raises(UserError, match=r"^model.scorer: .*Qwen2.5-VL's tower is not in a CLIP space"):
        qwen.encode_texts(["what colour?"])


def test_images_of_different_sizes_ask_for_a_resolution(qwen):
    from PIL import Image

    from robust_atp.errors import UserError

    with pytest.raises(UserError, match=r"^perturbations.image.resolution: qwen2_5_vl gives"):
        qwen.encode_images([Image.new("RGB", (96, 96)), Image.new("RGB", (64, 32))])


def test_vision_flops_count_windowed_blocks_window_by_window(qwen, batch):
    from robust_atp.cost import LayerShape, layer_macs

    images, _ = batch
    qwen.encode_images(images)
    s = LayerShape.from_config(qwen.cost_configs()["vision"], gated=True)
    windows = [16, 16, 8, 16, 16, 8, 8, 8, 4]  # 10x10 patches in 4x4-patch windows
    assert qwen.window_lengths() == windows
    blocks = 2 * layer_macs(s, 100) + 2 * sum(layer_macs(s, w) for w in windows)
    embed = 100 * 3 * 2 * 64 * 32
    merger = 25 * (128 * 128 + 128 * 48)
    assert qwen.vision_flops(25) == 2 * (embed + blocks + merger)
    assert qwen.vision_flops(25) < 2 * (embed + 4 * layer_macs(s, 100) + merger)


@pytest.mark.slow
def test_qwen2_5_vl_through_the_engine(tmp_path, tiny_qwen25_dir):
    import json

    import yaml

    from robust_atp.prune.select import budget
    from robust_atp.run import main

    suite = {"name": "family", "dataset": {"loader": "shapes", "split": "val", "limit": 4},
             "model": {"adapter": "qwen2_5_vl", "checkpoint": str(tiny_qwen25_dir), "prompt": QWEN_PROMPT,
                       "generation": {"max_new_tokens": 3}},
             "methods": [{"name": "full"}, {"name": "atp", "keep": 0.25, "alpha": 0.0, "layer": -1},
                         {"name": "random", "keep": 0.25}],
             "perturbations": {"image": {"corruptions": ["fog"], "severities": [1], "resolution": 96}},
             "batch_size": 2}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    run = tmp_path / "run"
    assert main([str(tmp_path / "suite.yaml"), "--out", str(run), "--no-progress", "--no-report"]) == 0
    rows = {(r["condition"], r["method"]): r for r in json.loads((run / "results.json").read_text())["rows"]}
    methods = ("full", "atp@0.25[layer=-1,alpha=0]", "random@0.25")
    assert set(rows) == {(c, m) for c in ("clean", "image:fog@1") for m in methods}
    for (_, method), r in rows.items():
        assert r["n"] == 4 and r["kept_tokens"] == (25 if method == "full" else budget(25, 0.25, None))
        assert r["flops_ratio"] == 1.0 if method == "full" else r["flops_ratio"] < 0.6
    samples = [json.loads(s) for s in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["vision_flops"] > 0 for s in samples)
