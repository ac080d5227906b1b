"""Lean greedy decoding (`Speedups.lean`, `LlavaAdapter.generate_lean`): the staged decoder with
no policy, its prefill's last layer on the last position only, gives the tokens of Hugging
Face's `generate` on the same prompt embeddings: on the demo model, on a tiny random LLaVA, on
tiny random Llama / Qwen2 decoders under eager and sdpa attention, with left pads and early EOS;
a suite setting a repetition penalty falls back to `generate`."""
import pytest
import torch

from robust_atp.models.staged_llm import KeepAll, staged_generate, staged_prefill
from tests.helpers.tiny_lm import padded_prompts as _prompts
from tests.helpers.tiny_lm import tiny_lm as _lm

STEPS = 6


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_lean_prefill_gives_the_last_logits_and_every_layer_cache_of_the_full_one(attn, family):
    lm = _lm(attn, family=family)
    emb, mask, starts = _prompts()
    with torch.no_grad():
        full = staged_prefill(lm.model, lm.lm_head, emb, mask, KeepAll(), starts, 0)
        lean = staged_prefill(lm.model, lm.lm_head, emb, mask, KeepAll(), starts, 0, lean=True)
    torch.testing.assert_close(lean[0], full[0], atol=1e-5, rtol=0)
    for a, b in zip(lean[1].layers, full[1].layers):  # every layer's keys and values, the last one's too
        assert a.keys.shape == b.keys.shape
        torch.testing.assert_close(a.keys, b.keys, atol=1e-6, rtol=0)
        torch.testing.assert_close(a.values, b.values, atol=1e-6, rtol=0)
    assert [v.tolist() for v in lean[2]] == [v.tolist() for v in full[2]]
    assert [p.tolist() for p in lean[5]] == [p.tolist() for p in full[5]]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_lean_generate_equals_hf_generate_token_for_token(attn, family):
    lm = _lm(attn, family=family)
    emb, mask, _ = _prompts()
    gen = dict(inputs_embeds=emb, attention_mask=mask, max_new_tokens=STEPS, do_sample=False, pad_token_id=0,
               output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        eos = int(lm.generate(**gen, eos_token_id=None).sequences[0, 2])  # example 0 stops early
        ref = lm.generate(**gen, eos_token_id=eos)
        out = staged_generate(lm.model, lm.lm_head, lm.model.embed_tokens, emb, mask, max_new_tokens=STEPS,
                              eos_token_ids=[eos], pad_token_id=0, lean=True)
    assert bool((ref.sequences == 0).any()), "no example finished early: the EOS path is not exercised"
    assert out.tokens.tolist() == ref.sequences.tolist()
    for mine, theirs in zip(out.logits, ref.logits):
        torch.testing.assert_close(mine, theirs.float(), atol=1e-5, rtol=0)


def _batch(adapter, examples, seed=0):
    """Visual tokens of several counts and questions of several lengths (left pads), as the
    engine hands `generate`: every example's full 144 tokens, and a random quarter of them."""
    vision = adapter.encode_images([ex.image() for ex in examples])
    g = torch.Generator().manual_seed(seed)
    full = [t for t in vision.tokens]
    quarter = [t[torch.randperm(len(t), generator=g)[: len(t) // 4].sort().values] for t in vision.tokens]
    questions = [ex.question + " and what else" * (i % 3) for i, ex in enumerate(examples)]
    return [(full, questions), (quarter, questions)]


def _check(adapter, examples):
    assert adapter.lean_decoding and adapter.lean_supported()
    for tokens, questions in _batch(adapter, examples):
        ref = adapter.generate(tokens, questions)
        ref_cut = list(adapter.last_truncated)
        got = adapter.generate(tokens, questions, lean=True)
        assert got == ref and adapter.last_truncated == ref_cut
        for n in (1, 3):  # batch-size independent
            assert [a for i in range(0, len(tokens), n)
                    for a in adapter.generate(tokens[i:i + n], questions[i:i + n], lean=True)] == ref


def test_lean_generate_equals_generate_on_the_demo_model(demo_adapter, shapes_examples):
    _check(demo_adapter, shapes_examples[:12])


def test_lean_generate_equals_generate_on_a_tiny_llava(tiny_adapter, shapes_examples):
    _check(tiny_adapter, shapes_examples[:6])


def test_a_repetition_penalty_falls_back_to_hf_generate(tiny_dir, make_adapter, shapes_examples, monkeypatch):
    adapter = make_adapter(tiny_dir / "llava", tiny_dir / "clip")
    adapter.generation_config.repetition_penalty = 1.3
    assert not adapter.lean_supported()
    calls = []
    import robust_atp.models.llava as llava

    monkeypatch.setattr(llava, "staged_generate", lambda *a, **k: calls.append(1))
    tokens, questions = _batch(adapter, shapes_examples[:3])[0]
    assert adapter.generate(tokens, questions, lean=True) == adapter.generate(tokens, questions)
    assert calls == []


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_lean_generate_continuing_a_cache_equals_hf_generate_over_the_whole_prompt(attn, family):
    """A prefix of P real tokens run once (its keys and values), then tails with left pads between
    prefix and tail: the tokens and logits of HF's generate continuing the same cache."""
    from transformers import DynamicCache

    lm = _lm(attn, family=family)
    emb, mask, _ = _prompts()
    p = 7
    prefix = emb[:, -1:].expand(-1, p, -1).clone() + torch.linspace(0, 1, p)[None, :, None]  # all real
    with torch.no_grad():
        out = lm.model(inputs_embeds=prefix, attention_mask=torch.ones(len(emb), p, dtype=torch.long),
                       position_ids=torch.arange(p).expand(len(emb), -1), use_cache=True)
        layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        whole = torch.cat([torch.ones(len(emb), p, dtype=torch.long), mask], 1)
        before = [(k.clone(), v.clone()) for k, v in layers]

        def hf(eos):
            return lm.generate(inputs_embeds=torch.cat([prefix, emb], 1), attention_mask=whole,
                               cache=DynamicCache(list(layers)), max_new_tokens=STEPS, do_sample=False, pad_token_id=0,
                               eos_token_id=eos, output_logits=True, return_dict_in_generate=True)

        eos = int(hf(None).sequences[0, -STEPS + 2])  # example 0 stops early
        ref = hf(eos)
        got = staged_generate(lm.model, lm.lm_head, lm.model.embed_tokens, emb, mask, max_new_tokens=STEPS,
                              eos_token_ids=[eos], pad_token_id=0, lean=True, past=layers)
    new = ref.sequences[:, -len(ref.logits):]
    assert bool((new == 0).any()), "no example finished early: the EOS path is not exercised"
    assert got.tokens.tolist() == new.tolist()
    for mine, theirs in zip(got.logits, ref.logits):
        torch.testing.assert_close(mine, theirs.float(), atol=1e-5, rtol=0)
    assert all(torch.equal(k, k0) and torch.equal(v, v0) for (k, v), (k0, v0) in zip(layers, before))  # not written to
