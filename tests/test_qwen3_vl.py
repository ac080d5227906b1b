"""The Qwen3-VL adapter against `Qwen3VLForConditionalGeneration` itself, on a tiny random model
with two deepstack layers: `full` is the model's own generate at three image sizes, the LLM
receives the kept tokens and the same rows of every deepstack feature, kept tokens keep their
M-RoPE positions, the saliency is the eager attention."""
import pytest
import torch

from robust_atp.engine import kept_tokens_of
from robust_atp.prune.methods import validate_method
from robust_atp.suite import MethodCfg, ModelCfg
from tests.helpers.tiny_families import QWEN_PROMPT
from tests.helpers.tiny_families_new import QWEN25_SIZES, build_tiny_qwen3_vl

MAX_NEW = 8


@pytest.fixture(scope="module")
def tiny_qwen3_dir(tmp_path_factory):
    return build_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny_qwen3_vl"))


def _adapter(path, **kw):
    from robust_atp.models.base import load_adapter

    return load_adapter(ModelCfg(adapter="qwen3_vl", checkpoint=str(path), prompt=QWEN_PROMPT,
                                 generation={"max_new_tokens": MAX_NEW}, **kw))


@pytest.fixture(scope="module")
def qwen(tiny_qwen3_dir):
    return _adapter(tiny_qwen3_dir)


def _images(examples, size):
    return [e.image().convert("RGB").resize(size) for e in examples]


@pytest.fixture(scope="module")
def batch(shapes_examples):
    """Four shapes images at 96 px: 80x80 after the processor, 5x5 merged tokens."""
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
    tokens and their deepstack rows (from the model's own image features), by hand and without a
    cache, at the positions the model's get_rope_index gives them."""
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
    from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

    px, grids = qwen.processed(images)
    with torch.inference_mode():
        own = qwen.model.model.get_image_features(px, grids)  # the model's own tokens and deepstack features
    model = qwen.model
    for i, (k, q) in enumerate(zip(kept, questions)):
        before, after = qwen.prompt_ids(q)
        image = BaseModelOutputWithDeepstackFeatures(pooler_output=(own.pooler_output[i][k.indices],),
                                                     deepstack_features=[(f[i][k.indices],) for f in
                                                                         own.deepstack_features])
        seq = torch.cat([before, torch.full((len(k.indices),), qwen.image_token_id), after])[None]
        p = _kept_columns(ref, pos, i, k.indices.cpu())[:, None]
        with torch.inference_mode():
            for step in range(ids.shape[1]):
                last = model(input_ids=seq, position_ids=p, mm_encoder_outputs={"image": image}).logits[0, -1]
                assert int(last.argmax()) == int(ids[i, step])
                assert torch.allclose(last, logits[i, step], atol=1e-3)
                if int(ids[i, step]) == qwen.tokenizer.eos_token_id:
                    break
                seq = torch.cat([seq, ids[i, step:step + 1][None]], 1)
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


def test_llm_receives_the_same_rows_of_every_deepstack_feature(qwen, batch):
    """The decoder's deepstack input: feature l of the kept tokens, at the kept tokens' positions."""
    images, questions = batch
    vision = qwen.encode_images(images)
    px, grids = qwen.processed(images)
    with torch.inference_mode():
        own = qwen.model.model.get_image_features(px, grids).deepstack_features  # the model's, per layer, per image
    assert len(own) == 2
    seen = []
    lm = qwen.model.model.language_model
    handle = lm.register_forward_pre_hook(lambda mod, args, kw: seen.append(
        (kw["visual_pos_masks"], kw["deepstack_visual_embeds"])), with_kwargs=True)
    try:
        kept = _kept({"name": "cls", "k": 9, "layer": -1}, vision)
        qwen.generate([x.tokens for x in kept], questions, kept_indices=[x.indices for x in kept])
    finally:
        handle.remove()
    where, deep = seen[0]  # the prefill call
    assert int(where.sum()) == 4 * 9
    assert all(m is None and d is None for m, d in seen[1:])  # decoding steps add nothing
    for layer in range(2):
        expect = torch.cat([own[layer][i][x.indices] for i, x in enumerate(kept)])
        assert torch.equal(deep[layer], expect)
    for i, (x, q) in enumerate(zip(kept, questions)):
        before, after = qwen.prompt_ids(q)
        cols = where[i].nonzero().flatten()
        n = len(before) + 9 + len(after)
        assert cols.tolist() == list(range(where.shape[1] - n + len(before), where.shape[1] - n + len(before) + 9))


def test_deepstack_features_change_the_answer(qwen, batch):
    """Without its deepstack rows the LLM's logits move: the equality tests can see a misaligned row."""
    images, questions = batch
    vision = qwen.encode_images(images)
    kept = _kept({"name": "cls", "keep": 0.5, "layer": -1}, vision)
    logits = {}
    orig = qwen.model.generate
    for zeroed in (False, True):
        def spy(*a, **kw):
            if zeroed:
                image = kw["mm_encoder_outputs"]["image"]
                image.deepstack_features = [tuple(torch.zeros_like(t) for t in f) for f in image.deepstack_features]
            out = orig(*a, output_logits=True, return_dict_in_generate=True, **kw)
            logits[zeroed] = out.logits[0]
            return out.sequences

        qwen.model.generate = spy
        try:
            qwen.generate([k.tokens for k in kept], questions, kept_indices=[k.indices for k in kept])
        finally:
            qwen.model.generate = orig
    assert float((logits[True] - logits[False]).abs().max()) > 1e-2


def test_tokens_that_are_not_the_last_vision_passs_rows_are_refused(qwen, batch):
    from robust_atp.errors import UserError

    images, questions = batch
    vision = qwen.encode_images(images)
    kept = _kept({"name": "cls", "k": 5, "layer": -1}, vision)
    shuffled = [kept[1].tokens, kept[0].tokens] + [k.tokens for k in kept[2:]]
    with pytest.raises(UserError, match="not the kept rows of the last vision pass"):
        qwen.generate(shuffled, questions, kept_indices=[k.indices for k in kept])
    with pytest.raises(UserError, match="follows the vision pass of its own batch"):
        qwen.generate([k.tokens for k in kept[:2]], questions[:2], kept_indices=[k.indices for k in kept[:2]])


def test_received_attention_saliency_matches_eager_attention(tiny_qwen3_dir, batch):
    """The hooked saliency (under sdpa) equals the weights the eager kernel computes, per image."""
    from transformers.models.qwen3_vl import modeling_qwen3_vl as mq

    images, _ = batch
    adapter = _adapter(tiny_qwen3_dir, attn_implementation="eager")
    weights = []
    orig = mq.eager_attention_forward

    def keep(*a, **kw):
        out = orig(*a, **kw)
        weights.append(out[1][0].float())  # [H, n, n] of one image
        return out

    mq.eager_attention_forward = keep
    try:
        sal = adapter.encode_images(images).cls_attn  # [B, L, H, N]
    finally:
        mq.eager_attention_forward = orig
    vision_weights = [w for w in weights if w.shape[-1] == 100]  # the ViT's (10x10 patches an image)
    assert len(vision_weights) == 4 * 4  # layers x images, in that order
    ref = torch.stack([torch.stack([vision_weights[layer * 4 + b].mean(1) for layer in range(4)]) for b in range(4)])
    ref = ref.view(4, 4, 4, 25, 4).sum(-1)
    assert torch.allclose(sal, ref, atol=1e-5)
    assert float((sal[:, -1].amax(-1) - sal[:, -1].amin(-1)).min()) > 1e-3


def test_merging_methods_fastv_and_text_relevance_are_refused(qwen, batch):
    from robust_atp.errors import UserError
    from robust_atp.models.fastv import FastVSpec

    images, questions = batch
    vision = qwen.encode_images(images)
    merged = kept_tokens_of(validate_method(MethodCfg(name="tome_posthoc", keep=0.5)), vision, None, [""] * 4)
    with pytest.raises(UserError, match="merging method .* qwen3_vl places every visual token"):
        qwen.generate(merged, questions, kept_indices=[None] * 4)
    with pytest.raises(UserError, match="fastv is not supported on the qwen3_vl adapter"):
        qwen.generate(list(vision.tokens), questions, in_llm=FastVSpec(0, 4))
    with pytest.raises(UserError, match=r"^model.scorer: .*Qwen3-VL's tower is not in a CLIP space"):
        qwen.encode_texts(["what colour?"])


def test_images_of_different_sizes_ask_for_a_resolution(qwen):
    from PIL import Image

    from robust_atp.errors import UserError

    with pytest.raises(UserError, match=r"^perturbations.image.resolution: qwen3_vl gives"):
        qwen.encode_images([Image.new("RGB", (96, 96)), Image.new("RGB", (64, 32))])


@pytest.mark.slow
def test_qwen3_vl_through_the_engine(tmp_path, tiny_qwen3_dir):
    import json

    import yaml

    from robust_atp.prune.select import budget
    from robust_atp.run import main

    suite = {"name": "family", "dataset": {"loader": "shapes", "split": "val", "limit": 4},
             "model": {"adapter": "qwen3_vl", "checkpoint": str(tiny_qwen3_dir), "prompt": QWEN_PROMPT,
                       "generation": {"max_new_tokens": 3}},
             "methods": [{"name": "full"}, {"name": "atp", "keep": 0.25, "alpha": 0.0, "layer": -1},
                         {"name": "random", "keep": 0.25}],
             "perturbations": {"image": {"corruptions": ["fog"], "severities": [1], "resolution": 96}},
             "batch_size": 2}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    run = tmp_path / "run"
    assert main([str(tmp_path / "suite.yaml"), "--out", str(run), "--no-progress", "--no-report"]) == 0
    rows = {(r["condition"], r["method"]): r for r in json.loads((run / "results.json").read_text())["rows"]}
    assert len(rows) == 2 * 3
    for (_, method), r in rows.items():
        assert r["n"] == 4 and r["kept_tokens"] == (25 if method == "full" else budget(25, 0.25, None))
        assert r["flops_ratio"] == 1.0 if method == "full" else r["flops_ratio"] < 0.6
