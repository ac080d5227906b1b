"""FastV inside the LLM: nothing dropped is exactly `full`; dropping equals an explicit eager
reference (ranking from the eager attention weights, keys masked from layer L + 1 on) for the
prefill and every decoding step; it runs through the engine."""
import pytest
import torch

from robust_atp.engine import kept_tokens_of
from robust_atp.models.fastv import FastVSpec
from robust_atp.prune.methods import validate_method
from robust_atp.suite import MethodCfg


def _spy_generate(adapter, tokens, questions, **kw):
    """The adapter's answers plus what its LLM saw: per forward call the language model's
    kwargs, and the LM head's logits."""
    calls, logits = [], []
    lm = adapter.model.model.language_model
    h1 = lm.register_forward_pre_hook(lambda mod, args, k: calls.append(dict(k)), with_kwargs=True)
    h2 = adapter.model.lm_head.register_forward_hook(lambda mod, args, out: logits.append(out[:, -1].clone()))
    try:
        texts = adapter.generate(tokens, questions, **kw)
    finally:
        h1.remove()
        h2.remove()
    return texts, calls, logits


@pytest.mark.parametrize("name", ["tiny_adapter", "demo_adapter"])
def test_fastv_dropping_nothing_is_full_token_for_token(name, request, shapes_examples):
    adapter = request.getfixturevalue(name)
    exs = shapes_examples[:6]
    questions = [e.question for e in exs]
    vision = adapter.encode_images([e.image() for e in exs])
    tokens = kept_tokens_of(validate_method(MethodCfg(name="full")), vision, None, [""] * 6)
    n = adapter.num_visual_tokens
    full, _, full_logits = _spy_generate(adapter, tokens, questions)
    for layer in (0, 1):
        spec = FastVSpec(layer, n)
        texts, _, logits = _spy_generate(adapter, tokens, questions, in_llm=spec)
        assert texts == full
        assert all(torch.equal(a, b) for a, b in zip(logits, full_logits))
        assert [t.tolist() for t in spec.kept] == [list(range(n))] * 6


def _reference_logits(eager, calls, spans, layer, k):
    """Eager layer-by-layer recomputation over the whole generated sequence, no cache: layers up
    to `layer` see every token; the last prompt token's attention there (mean over heads) keeps
    the top k visual tokens; later layers mask the rest as keys. -> (logits [B, S, V], kept)."""
    lm = eager.model.model.language_model
    h = torch.cat([c["inputs_embeds"] for c in calls], 1)
    b, s, _ = h.shape
    pos, past = [], 0
    for c in calls:
        t = c["inputs_embeds"].shape[1]
        pos.append(c["position_ids"] if c.get("position_ids") is not None else torch.arange(past, past + t)[None])
        past += t
    pos = torch.cat(pos, 1)
    pad = calls[-1]["attention_mask"].bool()  # [B, S]
    allowed = (torch.arange(s)[None, :] <= torch.arange(s)[:, None])[None] & pad[:, None, :]  # [B, S, S]
    prompt_len = calls[0]["inputs_embeds"].shape[1]
    pe = lm.rotary_emb(h, pos)
    kept = []
    for i, dec in enumerate(lm.layers):
        mask = torch.zeros(b, 1, s, s).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
        out, weights = dec.self_attn(hidden_states=dec.input_layernorm(h), position_embeddings=pe, attention_mask=mask)
        if i == layer:
            att = weights[:, :, prompt_len - 1].mean(1)  # [B, S]
            drop = torch.zeros(b, s, dtype=torch.bool)
            for j, (start, n) in enumerate(spans):
                order = torch.sort(att[j, start:start + n], descending=True, stable=True).indices
                kept.append(order[:k].sort().values)
                drop[j, start:start + n] = True
                drop[j, start + kept[-1]] = False
        h = h + out
        h = h + dec.mlp(dec.post_attention_layernorm(h))
        if i == layer:
            allowed = allowed & ~drop[:, None, :]
    return eager.model.lm_head(lm.norm(h)), kept


@pytest.mark.parametrize("layer, k", [(0, 9), (0, 1), (1, 3)])
def test_fastv_equals_an_explicit_eager_reference(tiny_eager_adapter, tiny_adapter, shapes_examples, layer, k):
    eager = tiny_eager_adapter
    exs = shapes_examples[:4]
    questions = [e.question for e in exs]
    vision = tiny_adapter.encode_images([e.image() for e in exs])
    tokens = [vision.tokens[i] for i in range(4)]
    spec = FastVSpec(layer, k)
    with torch.inference_mode():
        texts, calls, logits = _spy_generate(tiny_adapter, tokens, questions, in_llm=spec)
        full_texts, _, full_logits = _spy_generate(tiny_adapter, tokens, questions)
        length = calls[0]["inputs_embeds"].shape[1]
        pads = [length - int(m.sum()) for m in calls[0]["attention_mask"]]
        spans = [(p + len(tiny_adapter.prompt_ids(q)[0]), len(t)) for p, q, t in zip(pads, questions, tokens)]
        ref, ref_kept = _reference_logits(eager, calls, spans, layer, k)
    assert [t.tolist() for t in spec.kept] == [t.tolist() for t in ref_kept]
    assert all(len(t) == k for t in spec.kept)
    # the prefill's last position, then one position per decoding step
    for step, got in enumerate(logits):
        assert (got - ref[:, length - 1 + step]).abs().max().item() < 1e-4
    if layer < len(tiny_adapter.model.model.language_model.layers) - 1:  # dropping changed the answer's logits
        assert not torch.allclose(logits[0], full_logits[0], atol=1e-3)
    else:  # a cut after the last layer drops nothing the LM head reads
        assert all(torch.equal(a, b) for a, b in zip(logits, full_logits)) and texts == full_texts


def test_fastv_one_example_alone_is_its_answer_in_a_batch(tiny_adapter, shapes_examples):
    """Batch size 1 has no padding, so sdpa takes its causal shortcut (no mask) and the hooks build
    the mask from the KV cache's length: they read the cache under transformers 5's name (`cache`),
    which a decoding step of a lone example crashed on when only `past_key_values` was read."""
    exs = shapes_examples[:3]
    questions = [e.question for e in exs]
    vision = tiny_adapter.encode_images([e.image() for e in exs])
    tokens = [vision.tokens[i] for i in range(3)]
    spec = FastVSpec(0, 5)
    batched = tiny_adapter.generate(tokens, questions, in_llm=spec)
    kept = [t.tolist() for t in spec.kept]
    for i in range(3):
        alone = FastVSpec(0, 5)
        assert tiny_adapter.generate(tokens[i:i + 1], questions[i:i + 1], in_llm=alone) == batched[i:i + 1]
        assert alone.kept[0].tolist() == kept[i]
