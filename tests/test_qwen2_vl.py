"""The Qwen2-VL adapter against `Qwen2VLForConditionalGeneration` itself, on a tiny random model:
`full` is the model's own generate, kept tokens keep their M-RoPE positions, decoding stays
consistent after pruning."""
import pytest
import torch

from robust_atp.engine import kept_tokens_of
from robust_atp.prune.methods import validate_method
from robust_atp.suite import MethodCfg, ModelCfg
from tests.helpers.tiny_families import QWEN_PROMPT


def _adapter(path, **kw):
    from robust_atp.models.base import load_adapter

    return load_adapter(ModelCfg(adapter="qwen2_vl", checkpoint=str(path), prompt=QWEN_PROMPT,
                                 generation={"max_new_tokens": 8}, **kw))


@pytest.fixture(scope="module")
def batch(shapes_examples):
    exs = shapes_examples[:4]
    return [e.image() for e in exs], [e.question for e in exs]


def _kept(method_cfg, vision, text=None):
    m = validate_method(MethodCfg(**method_cfg))
    return m.apply(vision, text, [""] * len(vision))


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


def test_positions_are_the_models_own_rope_index_on_the_kept_tokens(qwen, batch):
    images, questions = batch
    vision = qwen.encode_images(images)
    ref, pos, deltas = _full_rope_index(qwen, images, questions)
    kept = _kept({"name": "random", "k": 5}, vision)
    kept = [k.indices for k in kept]
    mine, my_deltas = qwen.positions(kept, questions)
    for i in range(4):
        expect = _kept_columns(ref, pos, i, kept[i].cpu())
        assert torch.equal(mine[1:, i, mine.shape[2] - expect.shape[1]:].cpu(), expect.cpu())
        assert int(mine[1:, i, :mine.shape[2] - expect.shape[1]].abs().sum()) == 0  # pads at 0, as the model puts them
        # 11 dropped tokens shift the decoding delta by 11: the question and the answer keep their positions
        assert int(my_deltas[i]) == int(deltas[i]) + 16 - 5 == int(expect.max()) + 1 - expect.shape[1]
    full, full_deltas = qwen.positions([torch.arange(16)] * 4, questions)
    assert torch.equal(full_deltas.cpu(), deltas.cpu())
    assert torch.equal(full[1:].cpu(), pos.cpu())


def _greedy_reference(qwen, embeds, positions, steps):
    """Greedy decoding by hand, one example, no cache: the whole sequence each step, every new
    token one position after the last (on all three M-RoPE axes). Returns (tokens, logits)."""
    model, embed = qwen.model, qwen.model.get_input_embeddings()
    seq, pos, out, logits = embeds[None], positions[:, None], [], []
    with torch.inference_mode():
        for _ in range(steps):
            last = model(inputs_embeds=seq, position_ids=pos).logits[0, -1]
            nxt = int(last.argmax())
            out.append(nxt)
            logits.append(last)
            if nxt == qwen.tokenizer.eos_token_id:
                break
            seq = torch.cat([seq, embed(torch.tensor([[nxt]]))], 1)
            pos = torch.cat([pos, pos[:, :, -1:] + 1], 2)
    return out, torch.stack(logits)


def test_pruned_decoding_follows_the_kept_tokens_rope_positions(qwen, batch):
    """8 tokens decoded after pruning half the tokens: the same tokens and the same logits at
    every step as feeding the kept tokens at the positions the model's own get_rope_index gives
    them in the full image (the logits tell a wrong rope delta apart even when greedy tokens agree)."""
    images, questions = batch
    vision = qwen.encode_images(images)
    ref, pos, _ = _full_rope_index(qwen, images, questions)
    kept = _kept({"name": "cls", "keep": 0.5}, vision)
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
    ids = captured["out"].sequences[:, captured["prompt"]:]  # after the prompt ids
    logits = torch.stack(captured["out"].logits, 1)  # [B, steps, V]
    assert ids.shape[1] >= 8
    embed = qwen.model.get_input_embeddings()
    for i, (k, q) in enumerate(zip(kept, questions)):
        before, after = qwen.prompt_ids(q)
        with torch.inference_mode():
            embeds = torch.cat([embed(before), k.tokens, embed(after)])
        expect, expect_logits = _greedy_reference(qwen, embeds, _kept_columns(ref, pos, i, k.indices.cpu()), 8)
        assert ids[i, :len(expect)].tolist() == expect
        assert torch.allclose(logits[i, :len(expect)], expect_logits, atol=1e-3)


def test_feature_norm_saliency_is_the_pooled_norm_of_each_layer(tiny_qwen_dir, batch):
    images, _ = batch
    adapter = _adapter(tiny_qwen_dir, saliency="feature_norm")
    sal = adapter.encode_images(images).cls_attn
    assert sal.shape == (4, 3, 1, 16)
    px, grids = adapter.processed(images)
    with torch.inference_mode():
        hs = adapter.visual(px, grid_thw=grids, output_hidden_states=True).hidden_states
    ref = torch.stack([h.float().norm(dim=-1).view(4, 16, 4).mean(-1) for h in hs[-3:]], 1)
    assert torch.allclose(sal[:, :, 0], ref, atol=1e-6)


def test_received_attention_saliency_matches_eager_attention(tiny_qwen_dir, batch):
    """The hooked attention (under sdpa) equals the weights the eager kernel computes, per image."""
    from transformers.models.qwen2_vl import modeling_qwen2_vl as mq

    images, _ = batch
    adapter = _adapter(tiny_qwen_dir, attn_implementation="eager")
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
    assert len(weights) == 3 * 4  # layers x images, in that order
    ref = torch.stack([torch.stack([weights[layer * 4 + b].mean(1) for layer in range(3)]) for b in range(4)])
    ref = ref.view(4, 3, 4, 16, 4).sum(-1)
    assert torch.allclose(sal, ref, atol=1e-5)


def test_merging_methods_and_fastv_are_refused(qwen, batch):
    from robust_atp.errors import UserError
    from robust_atp.models.fastv import FastVSpec

    images, questions = batch
    vision = qwen.encode_images(images)
    merged = kept_tokens_of(validate_method(MethodCfg(name="tome_posthoc", keep=0.5)), vision, None, [""] * 4)
    with pytest.raises(UserError, match="merging method"):
        qwen.generate(merged, questions, kept_indices=[None] * 4)
    with pytest.raises(UserError, match="fastv is not supported"):
        qwen.generate(list(vision.tokens), questions, in_llm=FastVSpec(0, 4))


def test_images_of_different_sizes_ask_for_a_resolution(qwen):
    from PIL import Image

    from robust_atp.errors import UserError

    with pytest.raises(UserError, match=r"^perturbations.image.resolution: qwen2_vl gives"):
        qwen.encode_images([Image.new("RGB", (96, 96)), Image.new("RGB", (64, 32))])
