"""The BLIP-2 adapter against `Blip2ForConditionalGeneration` itself, on a tiny random model:
ViT tokens are pruned before the Q-Former; the LLM always reads the query tokens."""
import pytest
import torch

from robust_atp.prune.methods import validate_method
from robust_atp.suite import MethodCfg, ModelCfg
from tiny_families import BLIP2_PROMPT


@pytest.fixture(scope="module")
def blip(tiny_blip2_dir):
    from robust_atp.models.base import load_adapter

    return load_adapter(ModelCfg(adapter="blip2", checkpoint=str(tiny_blip2_dir), prompt=BLIP2_PROMPT,
                                 generation={"max_new_tokens": 6}))


@pytest.fixture(scope="module")
def batch(shapes_examples):
    exs = shapes_examples[:4]
    return [e.image() for e in exs], [e.question for e in exs]


def _kept(cfg, vision):
    return validate_method(MethodCfg(**cfg)).apply(vision, None, [""] * len(vision))


def test_full_matches_hf_generate_token_for_token(blip, batch):
    images, questions = batch
    ref = blip.reference_inputs(images, questions)
    with torch.inference_mode():
        out = blip.model.generate(**ref, max_new_tokens=6, do_sample=False)
    ref_ids = out[:, ref["input_ids"].shape[1]:]  # the model's generate returns the prompt too
    vision = blip.encode_images(images)
    captured = {}
    orig = blip.model.language_model.generate

    def spy(*a, **kw):
        out = orig(*a, **kw)
        captured["out"] = out[:, kw["input_ids"].shape[1]:]  # the prompt ids, then the new ones
        return out

    blip.model.language_model.generate = spy
    try:
        texts = blip.generate([k.tokens for k in _kept({"name": "full"}, vision)], questions)
    finally:
        blip.model.language_model.generate = orig
    assert captured["out"].shape == ref_ids.shape == (4, 6)
    assert torch.equal(captured["out"], ref_ids)
    assert texts == [t.strip() for t in blip.tokenizer.batch_decode(ref_ids, skip_special_tokens=True)]


def _qformer_inputs(blip, fn):
    seen = []
    handle = blip.model.qformer.register_forward_pre_hook(
        lambda mod, args, kw: seen.append((kw["encoder_hidden_states"].clone(), kw["encoder_attention_mask"].clone())),
        with_kwargs=True)
    try:
        fn()
    finally:
        handle.remove()
    return seen


def test_qformer_receives_the_cls_and_exactly_the_kept_tokens(blip, batch):
    images, questions = batch
    vision = blip.encode_images(images)
    with torch.inference_mode():
        hidden = blip.model.vision_model(blip.pixel_values(images)).last_hidden_state
    assert torch.equal(vision.tokens, hidden[:, 1:])
    lm_lengths = []
    handle = blip.model.language_model.model.decoder.register_forward_pre_hook(
        lambda mod, args, kw: lm_lengths.append(int(kw["attention_mask"].sum(1).max())), with_kwargs=True)
    try:
        for k in (1, 5, 12):
            lm_lengths.clear()
            kept = _kept({"name": "cls", "k": k}, vision)
            seen = _qformer_inputs(blip, lambda: blip.generate([x.tokens for x in kept], questions))
            keys, mask = seen[0]
            assert keys.shape[1] == 1 + k and bool(mask.all())
            for i, x in enumerate(kept):
                assert torch.equal(keys[i], torch.cat([hidden[i, :1], hidden[i, 1:][x.indices]]))
            # the LLM's prompt is the query tokens and the text, whatever k
            assert lm_lengths[0] == 8 + max(blip.prompt_length(q) for q in questions)
    finally:
        handle.remove()


def test_uneven_budgets_are_masked_in_the_qformer(blip, batch):
    """Adaptive budgets keep different counts per example: each example's queries attend to its
    own tokens only (padded keys masked), so its query tokens equal those of a batch of one."""
    images, questions = batch
    vision = blip.encode_images(images)
    tokens = [vision.tokens[i, :n] for i, n in enumerate((3, 16, 7, 1))]
    together = blip.query_tokens(tokens)
    for i in range(4):
        blip.encode_images(images[i:i + 1])
        assert torch.allclose(blip.query_tokens(tokens[i:i + 1])[0], together[i], atol=1e-5)


def test_keeping_every_token_is_full(blip, batch):
    images, questions = batch
    vision = blip.encode_images(images)
    full = _kept({"name": "full"}, vision)
    for cfg in ({"name": "cls", "keep": 1.0}, {"name": "random", "k": 16}):
        kept = _kept(cfg, vision)
        assert all(torch.equal(a.tokens, f.tokens) for a, f in zip(kept, full))
    answers = blip.generate([k.tokens for k in full], questions)
    assert blip.generate([k.tokens for k in _kept({"name": "cls", "keep": 1.0}, vision)], questions) == answers
    pruned = blip.query_tokens([k.tokens for k in _kept({"name": "cls", "keep": 0.25}, vision)])
    assert not torch.allclose(pruned, blip.query_tokens([k.tokens for k in full]))  # pruning reaches the LLM


def test_batch_size_does_not_change_answers(blip, batch):
    images, questions = batch
    method = {"name": "cls", "keep": 0.25}
    batched = blip.generate([k.tokens for k in _kept(method, blip.encode_images(images))], questions)
    single = []
    for i in range(4):
        v = blip.encode_images(images[i:i + 1])
        single += blip.generate([k.tokens for k in _kept(method, v)], questions[i:i + 1])
    assert single == batched


def test_hooked_cls_attention_equals_eager_attention(blip, batch, tiny_blip2_dir):
    from robust_atp.models.base import load_adapter

    images, _ = batch
    eager = load_adapter(ModelCfg(adapter="blip2", checkpoint=str(tiny_blip2_dir), prompt=BLIP2_PROMPT,
                                  attn_implementation="eager"))
    with torch.inference_mode():
        out = eager.model.vision_model(eager.pixel_values(images), output_attentions=True)
    ref = torch.stack([a[:, :, 0, 1:] for a in out.attentions], 1)
    assert torch.allclose(blip.encode_images(images).cls_attn, ref, atol=1e-6)


def test_costs_say_the_llm_prefill_is_unchanged(blip, batch):
    from robust_atp.models.blip2 import qformer_flops

    assert blip.llm_visual_tokens(4) == blip.llm_visual_tokens(16) == 8
    full, pruned = blip.extra_flops(16, 16), blip.extra_flops(16, 4)
    assert pruned["qformer_flops"] < full["qformer_flops"]
    assert full["vision_flops"] - pruned["vision_flops"] == full["qformer_flops"] - pruned["qformer_flops"]
    # 2 layers, both with cross-attention: the keys' K / V projections and the scores scale with the keys
    mc = blip.model.config
    assert qformer_flops(mc, 17) - qformer_flops(mc, 5) == 2 * 2 * (2 * 12 * 32 * 32 + 2 * 8 * 12 * 32)
