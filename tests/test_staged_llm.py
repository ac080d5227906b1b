"""The staged decoder (models/staged_llm.py) and its policies (prune/staged.py) on tiny random
Llama / Qwen2 LMs built from configs: keep-all equals Hugging Face's own greedy `generate`; with
drops it equals a cache-free reference that recomputes the whole staged forward for every new
token, one unpadded example at a time, calling the prune/ functions directly (which tokens each
layer sees, too); the counts per layer are the official ones; batch sizes 1 and 4 agree; counted
prefill FLOPs equal the analytical ones."""

import pytest
import torch

from robust_atp import cost
from robust_atp.models.staged_llm import KeepAll, staged_generate, staged_prefill
from robust_atp.prune import dart, pdrop, sparsevlm
from robust_atp.prune.staged import (Cut, DartPolicy, PDropPolicy, SparseVLMPolicy, budget_lambda,
                                     budget_schedule, scaled_pruning_layers)

from tests.helpers.tiny_lm import D, IMAGE, LAYERS, PADS, PREFIX, STEPS, T, VOCAB
from tests.helpers.tiny_lm import padded_prompts as _prompts
from tests.helpers.tiny_lm import tiny_lm as _lm


def _generate(lm, emb, mask, starts, policy, eos=(), steps=STEPS, seeds=None):
    return staged_generate(lm.model, lm.lm_head, lm.model.embed_tokens, emb, mask, policy, image_start=starts,
                           image_count=IMAGE, max_new_tokens=steps, eos_token_ids=eos, pad_token_id=0, seeds=seeds)


class IdentityCuts:
    """Cuts after layers 1 and 3 that keep every token in order (renumbered: the same positions)."""

    def start(self, *args, **kwargs):
        pass

    def after_layer(self, state):
        if state.layer not in (1, 3):
            return None
        index = torch.arange(state.hidden.shape[1])[None].expand(state.hidden.shape[0], -1)
        return Cut(index, state.image_count)


def _policies():
    return {
        "pdrop": lambda: PDropPolicy(pdrop.scaled_layers(LAYERS), pdrop.stage_ratios(0.5)),
        "dart": lambda: DartPolicy(layer=2, max_num_trunction=16),
        "sparsevlm": lambda: SparseVLMPolicy.for_budget(IMAGE, LAYERS, 10, seed=7),
    }


# ----------------------------------------------------------------------------- keep-all = Hugging Face

@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("policy", [KeepAll, IdentityCuts])
def test_keep_all_equals_hf_generate_token_for_token_and_logits(attn, family, policy):
    lm = _lm(attn, family=family)
    emb, mask, starts = _prompts()
    gen = dict(inputs_embeds=emb, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0,
               output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        first = lm.generate(**gen, eos_token_id=None)
    eos = int(first.sequences[0, 2])  # a token example 0 produces: EOS handling is exercised
    with torch.no_grad():
        ref = lm.generate(**gen, eos_token_id=eos)
    out = _generate(lm, emb, mask, starts, policy(), eos=[eos], steps=8)
    assert bool((ref.sequences == 0).any()), "no example finished early: the EOS path is not exercised"
    assert out.tokens.tolist() == ref.sequences.tolist()
    assert len(out.logits) == len(ref.logits)
    for mine, theirs in zip(out.logits, ref.logits):
        torch.testing.assert_close(mine, theirs.float(), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- cache-free reference

def _qk(model, layer, x, pos, rows):
    """One layer's queries of `rows` [H, R, hd] and every key [H_kv, L, hd] of x [L, d] (after
    input_layernorm), RoPE at positions pos [L]."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = layer.self_attn
    hd = attn.head_dim
    cos, sin = model.rotary_emb(x[None], pos[None])
    q = attn.q_proj(x[rows]).view(1, len(rows), -1, hd).transpose(1, 2)
    k = attn.k_proj(x).view(1, len(x), -1, hd).transpose(1, 2)
    q, _ = apply_rotary_pos_emb(q, q, cos[:, rows], sin[:, rows])
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    return q[0], k[0]


def _reference_forward(lm, x, prompt, kind, policy, seed):
    """The whole staged forward of one unpadded sequence x [L, d] (a prompt of `prompt` tokens,
    then the generated ones), no cache, the drops decided on the prompt's tokens by the prune/
    functions. -> (last logits [V], per layer the prompt indices it saw, -1 for recycled)."""
    model = lm.model
    h = x[None]
    pos = torch.arange(len(x))
    origin = torch.arange(len(x))
    start, v = PREFIX, IMAGE
    gen = torch.Generator().manual_seed(seed)
    raters = sparsevlm.raters(x[start:start + v], x[start + v:prompt]) if kind == "sparsevlm" else None
    seen = []
    for l, layer in enumerate(model.layers):
        seen.append(origin.clone())
        n = h.shape[1]
        mask = torch.full((n, n), float("-inf"), dtype=h.dtype).triu(1)[None, None]
        out = layer(h, attention_mask=mask, position_embeddings=model.rotary_emb(h, pos[None]))
        prompt_end = n - (len(x) - prompt)  # the prompt's tokens at this layer (then the generated ones)
        keep = None
        if kind == "pdrop" and l + 1 in policy.layers:
            s = policy.layers.index(l + 1)
            counts = pdrop.stage_counts(IMAGE, policy.ratios)
            nxt = model.layers[l + 1]
            q, k = _qk(model, nxt, nxt.input_layernorm(out[0, :prompt_end]), pos[:prompt_end], [prompt_end - 1])
            kept = pdrop.pdrop_keep(pdrop.last_token_attention(q[:, 0], k), start, v, counts[s + 1])
            keep = torch.cat([torch.arange(start), kept, torch.arange(start + v, n)])
            new = pdrop.pdrop_drop(out[0], start, v, kept)
            assert torch.equal(new, out[0, keep])
            h, origin, pos, v = new[None], origin[keep], torch.arange(len(keep)), counts[s + 1]
        elif kind == "dart" and l == policy.layer - 1:
            attn = layer.self_attn
            _, k = _qk(model, layer, layer.input_layernorm(h[0, :prompt_end]), pos[:prompt_end], [0])
            k = k.repeat_interleave(attn.config.num_attention_heads // k.shape[0], 0)  # as repeat_kv
            k = k.transpose(0, 1).reshape(prompt_end, -1)  # heads concatenated
            got = dart.dart_retained(model.norm(out[0, :prompt_end]), k, start, v, policy.topk(v))
            keep = torch.cat([dart.dart_keep(prompt_end, start, v, got), torch.arange(prompt_end, n)])
            h, origin, pos, v = out[:, keep], origin[keep], pos[keep], len(got)
        elif kind == "sparsevlm" and l in policy.layers and v > 1:
            s = policy.layers.index(l)
            rows = raters + start + v
            q, k = _qk(model, layer, layer.input_layernorm(h[0, :prompt_end]), pos[:prompt_end], rows)
            scores = sparsevlm.image_scores(sparsevlm.rater_attention(q, k, rows), start, v)
            keep_n = sparsevlm.keep_count(policy.schedule, s, v)
            new, kept, v_new = sparsevlm.sparsevlm_step(out[0], start, v, scores, keep_n, gen)
            origin = torch.cat([origin[:start], origin[start + kept], torch.full((v_new - keep_n,), -1),
                                origin[start + v:]])
            h, pos, v = new[None], torch.arange(new.shape[0]), v_new
        else:
            h = out
    logits = lm.lm_head(model.norm(h[:, -1]))[0]
    return logits, seen


def _reference_generate(lm, x, kind, policy, seed, steps=STEPS):
    """Greedy tokens and logits of one unpadded prompt x [P, d], every step a fresh cache-free
    forward; and the prompt indices each layer saw."""
    prompt = len(x)
    tokens, steps_logits, seen0 = [], [], None
    for _ in range(steps):
        ids = torch.tensor(tokens, dtype=torch.long)
        seq = torch.cat([x, lm.model.embed_tokens(ids).to(x.dtype)]) if tokens else x
        logits, seen = _reference_forward(lm, seq, prompt, kind, policy, seed)
        seen0 = seen0 if seen0 is not None else seen
        tokens.append(int(logits.argmax()))
        steps_logits.append(logits)
    return tokens, steps_logits, seen0


@pytest.mark.slow
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["pdrop", "dart", "sparsevlm"])
def test_drops_equal_a_cache_free_reference_token_for_token(kind, attn):
    lm = _lm(attn, torch.float64)
    emb, mask, starts = _prompts(torch.float64)
    policy = _policies()[kind]()
    with torch.no_grad():
        out = _generate(lm, emb, mask, starts, policy, seeds=[7] * len(PADS))
        for i, p in enumerate(PADS):
            tokens, logits, seen = _reference_generate(lm, emb[i, p:], kind, policy, seed=7)
            assert out.tokens[i].tolist() == tokens, f"example {i}"
            for step, (mine, theirs) in enumerate(zip(out.logits, logits)):  # float64: the caches and the
                # decoding positions, not only the argmax
                torch.testing.assert_close(mine[i], theirs.float(), atol=1e-6, rtol=0, msg=f"example {i} step {step}")
            for l in range(LAYERS):  # which prompt tokens each layer saw (the pads, masked, left out)
                mine = out.seen[l][i]
                mine = torch.where(mine >= 0, mine - p, mine)[p:]
                assert mine.tolist() == seen[l].tolist(), f"example {i} layer {l}"
    # each layer's cache holds what it saw in the prefill, then each generated token but the last
    for l in range(LAYERS):
        assert out.caches.layers[l].keys.shape[2] == out.seen[l].shape[1] + out.tokens.shape[1] - 1


# ----------------------------------------------------------------------------- counts per layer

def test_each_layer_sees_the_official_image_token_counts():
    lm = _lm()
    emb, mask, starts = _prompts()
    expected = {
        # PyramidDrop's 576 -> 288 -> 144 -> 72 at N = 40 and 6 layers: [1.0, 0.5, 0.25, 0.125] floored
        "pdrop": [40, 40, 20, 10, 10, 5],
        # DART: 4 image pivots + 8 pivots x TOKEN_TOPK (16 // 8 = 2) from layer 2 on
        "dart": [40, 40, 20, 20, 20, 20],
        # SparseVLM, schedule (24, 9, 3) at layers 0, 1, 2: kept + int(int(0.3 deleted) + 1) / 10) + 1 recycled
        "sparsevlm": [40, 25, 10, 4, 4, 4],
    }
    with torch.no_grad():
        for kind, make in _policies().items():
            policy = make()
            out = _generate(lm, emb, mask, starts, policy, steps=1)
            assert out.image_tokens == expected[kind] == policy.layer_image_tokens(IMAGE, LAYERS), kind
            for l, seen in enumerate(out.seen):
                real = [row[p + PREFIX:p + PREFIX + out.image_tokens[l]] for row, p in zip(out.seen[l], PADS)]
                for row, p in zip(real, PADS):  # the image span holds image tokens (or recycled: -1) only
                    assert bool(((row == -1) | ((row >= p + PREFIX) & (row < p + PREFIX + IMAGE))).all()), (kind, l)
                assert seen.shape[1] == T - IMAGE + out.image_tokens[l], (kind, l)
            # the first generated token's position in each layer: renumbered methods fall by what
            # was dropped before the layer (pdrop_forward; SparseVLM's own cache length), DART keeps
            real = torch.tensor([T - p for p in PADS])
            for l, n in enumerate(out.next_positions):
                dropped = 0 if kind == "dart" else IMAGE - out.image_tokens[l]
                assert n.tolist() == (real - dropped).tolist(), (kind, l)
    assert pdrop.layer_image_tokens(576, 32) == PDropPolicy().layer_image_tokens(576, 32)
    default = SparseVLMPolicy().layer_image_tokens(576, 32)
    assert default == sparsevlm.layer_image_tokens(576, 32, sparsevlm.SCHEDULES[192])


def test_budget_mappings_give_the_references_own_settings_at_their_budgets():
    # PyramidDrop: lambda 0.5 at [8, 16, 24] averages 576 (1 + 1/2 + 1/4 + 1/8) / 4 = 270 image tokens
    p = PDropPolicy.for_budget(576, 32, 270)
    assert p.layers == [8, 16, 24] and p.ratios == pdrop.stage_ratios(0.5)
    def gap(lam, k):
        if min(pdrop.stage_counts(576, pdrop.stage_ratios(lam))) < 1:
            return float("inf")  # a stage with no image token left is not a candidate
        per_layer = pdrop.layer_image_tokens(576, 32, [8, 16, 24], pdrop.stage_ratios(lam))
        return abs(sum(per_layer) / 32 - k)

    for k in (288, 200, 160):  # the chosen lambda is closer than its neighbours on the grid
        lam = budget_lambda(576, 32, k, [8, 16, 24])
        assert 0 < lam < 1 and gap(lam, k) <= min(gap(lam - 0.01, k), gap(lam + 0.01, k))
    assert budget_lambda(576, 32, 288, [8, 16, 24]) > 0.5 > budget_lambda(576, 32, 200, [8, 16, 24])
    # DART: the scripts' 128-token runs keep 4 + 8 x 16 = 132
    d = DartPolicy.for_budget(576, 32, 128)
    assert d.layer == 2 and d.retained(576) == 132
    # SparseVLM: the reference's four schedules at N = 576, scaled otherwise
    for k, schedule in sparsevlm.SCHEDULES.items():
        assert budget_schedule(576, k) == schedule
    assert budget_schedule(576, 288) == (450, 300, 165)  # 192's, x 1.5
    assert budget_schedule(144, 48) == (75, 50, 28)  # 48 of 144 is 192 of 576: x 1/4, rounded
    assert SparseVLMPolicy.for_budget(576, 32, 192).layers == sparsevlm.PRUNING_LAYERS
    assert scaled_pruning_layers(6) == (0, 1, 2) and scaled_pruning_layers(4) == (0, 1, 2)
    assert scaled_pruning_layers(64) == (5, 13, 31)  # the cuts before layers 6, 14, 32 of 64


# ----------------------------------------------------------------------------- batch invariance

@pytest.mark.parametrize("kind", ["pdrop", "dart", "sparsevlm"])
def test_batch_sizes_1_and_4_give_identical_answers(kind):
    lm = _lm("sdpa")
    emb, mask, starts = _prompts()
    make = _policies()[kind]
    with torch.no_grad():
        batch = _generate(lm, emb, mask, starts, make(), seeds=[3, 4, 5, 6])
        for i, p in enumerate(PADS):
            one = _generate(lm, emb[i:i + 1, p:], mask[i:i + 1, p:], [PREFIX], make(), seeds=[3 + i])
            assert one.tokens[0].tolist() == batch.tokens[i].tolist(), f"example {i}"
            for l in range(LAYERS):
                row = batch.seen[l][i]
                assert torch.where(row >= 0, row - p, row)[p:].tolist() == one.seen[l][0].tolist()
            assert [int(n[0]) for n in one.next_positions] == [int(n[i]) for n in batch.next_positions]


# ----------------------------------------------------------------------------- FLOPs

@pytest.mark.parametrize("kind", ["full", "pdrop", "dart", "sparsevlm"])
def test_counted_prefill_flops_equal_the_analytical(kind):
    lm = _lm("eager")  # torch's counter has formulas for eager attention's matmuls
    emb, mask, starts = _prompts()
    i, p = 0, PADS[0]
    x, m = emb[i:i + 1, p:], mask[i:i + 1, p:]
    policy = KeepAll() if kind == "full" else _policies()[kind]()
    s = cost.LayerShape.from_config(lm.config)
    counted = cost.counted_flops(lambda: staged_prefill(lm.model, lm.lm_head, x, m, policy, [PREFIX], IMAGE))
    text = x.shape[1] - IMAGE
    per_layer = [IMAGE] * LAYERS if kind == "full" else policy.layer_image_tokens(IMAGE, LAYERS)
    analytical = cost.staged_prefill_flops(s, text, per_layer) + 2 * D * VOCAB  # + the LM head on the last token
    if kind == "full":
        assert analytical - 2 * D * VOCAB == cost.prefill_flops(s, x.shape[1])
    if kind == "pdrop":
        at = [text + per_layer[b - 1] for b in policy.layers]  # each ranking over the tokens before the drop
        assert policy.tokens_at_ranks == at
        analytical += cost.pdrop_rank_flops(s, at)
    if kind == "sparsevlm":
        at = [text + per_layer[l] for l in policy.layers]
        assert policy.tokens_at_pruning == at
        n_text = text - PREFIX
        analytical += cost.sparsevlm_score_flops(s, IMAGE, n_text, len(policy.raters[0]), at)
    assert counted == analytical


# ----------------------------------------------------------------------------- bad input

def test_bad_settings_and_inputs_fail_with_one_clear_message():
    lm = _lm()
    emb, mask, starts = _prompts()
    with pytest.raises(ValueError, match="padding must be on the left"):
        _generate(lm, emb, mask.flip(1), starts, KeepAll())
    with pytest.raises(ValueError, match="pdrop: 3 ratios for 3 stage layers"):
        PDropPolicy([2, 3, 5], [1.0, 0.5, 0.25])
    with pytest.raises(ValueError, match="sparsevlm: 2 schedule counts for 3 pruning layers"):
        SparseVLMPolicy((10, 5), (1, 2, 3))
    with pytest.raises(ValueError, match="dart: layer must be >= 1"):
        DartPolicy(layer=0)
    short = [T - IMAGE - 2] * len(PADS)  # the image ends 2 tokens before the prompt does
    with pytest.raises(ValueError, match="dart: example 0 has 2 tokens after the image, fewer than its 4 text pivots"):
        _generate(lm, emb, mask, short, DartPolicy(layer=2, max_num_trunction=16), steps=1)
