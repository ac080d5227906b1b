"""The BLIP-2 adapter against `Blip2ForConditionalGeneration` itself, on a tiny random model:
ViT tokens are pruned before the Q-Former; the LLM always reads the query tokens."""
import pytest
import torch

from robust_atp.prune.methods import validate_method
from robust_atp.suite import MethodCfg, ModelCfg
from tests.helpers.tiny_families import BLIP2_PROMPT


@pytest.fixture(scope="module")
def batch(shapes_examples):
    exs = shapes_examples[:4]
    return [e.image() for e in exs], [e.question for e in exs]


def _kept(cfg, vision):
    return validate_method(MethodCfg(**cfg)).apply(vision, None, [""] * len(vision))


def _answer(blip, vision, kept, questions):
    return blip.generate([k.tokens for k in kept], questions, **blip.generation_inputs(vision, [k.indices for k in kept]))


def _cls(blip, vision):
    return blip.generation_inputs(vision, None)["cls_tokens"]


def test_the_llm_reads_the_query_tokens_whatever_is_kept(blip, batch):
    images, questions = batch
    vision = blip.encode_images(images)
    lm_lengths = []
    handle = blip.model.language_model.model.decoder.register_forward_pre_hook(
        lambda mod, args, kw: lm_lengths.append(int(kw["attention_mask"].sum(1).max())), with_kwargs=True)
    try:
        for k in (1, 5, 12):
            lm_lengths.clear()
            _answer(blip, vision, _kept({"name": "cls", "k": k}, vision), questions)
            assert lm_lengths[0] == 8 + max(blip.prompt_length(q) for q in questions)
    finally:
        handle.remove()


def test_uneven_budgets_are_masked_in_the_qformer(blip, batch):
    """Adaptive budgets keep different counts per example: each example's queries attend to its
    own tokens only (padded keys masked), so its query tokens equal those of a batch of one."""
    images, questions = batch
    vision = blip.encode_images(images)
    tokens = [vision.tokens[i, :n] for i, n in enumerate((3, 16, 7, 1))]
    together = blip.query_tokens(tokens, _cls(blip, vision))
    for i in range(4):
        one = blip.encode_images(images[i:i + 1])
        assert torch.allclose(blip.query_tokens(tokens[i:i + 1], _cls(blip, one))[0], together[i], atol=1e-5)


def test_pruning_reaches_the_llm(blip, batch):
    images, _ = batch
    vision = blip.encode_images(images)
    full = _kept({"name": "full"}, vision)
    pruned = blip.query_tokens([k.tokens for k in _kept({"name": "cls", "keep": 0.25}, vision)], _cls(blip, vision))
    assert not torch.allclose(pruned, blip.query_tokens([k.tokens for k in full], _cls(blip, vision)))


def test_no_state_is_kept_between_batches(blip, batch):
    """The CLS tokens come with the batch's own vision pass: encoding another batch in between
    changes nothing, and generate refuses to guess them."""
    images, questions = batch
    vision = blip.encode_images(images[:2])
    kept = _kept({"name": "cls", "keep": 0.5}, vision)
    first = _answer(blip, vision, kept, questions[:2])
    blip.encode_images(images[2:])
    assert _answer(blip, vision, kept, questions[:2]) == first
    with pytest.raises(ValueError, match="CLS tokens"):
        blip.generate([k.tokens for k in kept], questions[:2])


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
