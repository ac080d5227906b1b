"""PyramidDrop, DART and SparseVLM as their official code does them, on fixed tensors worked out by
hand (Cooperx521/PyramidDrop @ 6444f30 modeling_llama_pdrop.py; xqy1111111/DART @ d6a5af6
modeling_llama_self.py; Gumpest/SparseVLMs @ 26a5f48 modelling_sparse_llama.py, score.py, utils.py),
and their prefill FLOPs: each method driven through a tiny random Llama's decoder layers with
these functions, counted by torch, equals the analytical count."""
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from robust_atp import cost
from robust_atp.prune import dart, pdrop, sparsevlm

D64 = torch.float64


# ----------------------------------------------------------------------------- PyramidDrop

def test_pdrop_stages_floor_their_counts_and_start_after_their_layer():
    ratios = pdrop.stage_ratios(0.5)
    assert ratios == [1.0, 0.5, 0.25, 0.125] and pdrop.stage_counts(576, ratios) == [576, 288, 144, 72]
    assert pdrop.stage_counts(100, [1.0, 0.29]) == [100, 28]  # int(100 * 0.29) = int(28.999...)
    per_layer = pdrop.layer_image_tokens(576, 32)
    assert per_layer[:8] == [576] * 8 and per_layer[8:16] == [288] * 8 and per_layer[24:] == [72] * 8
    assert pdrop.scaled_layers(32) == [8, 16, 24] and pdrop.scaled_layers(4) == [1, 2, 3]
    assert pdrop.layer_image_tokens(144, 4, [1, 2, 3]) == [144, 72, 36, 18]


def test_pdrop_ranks_by_the_last_tokens_head_mean_attention():
    q = torch.tensor([[1.0], [0.0]], dtype=D64)  # two heads, head_dim 1
    keys = torch.tensor([[[0.0], [math.log(2)], [0.0]]], dtype=D64)  # one KV head, shared (GQA)
    # head 0: softmax(0, ln 2, 0) = (1/4, 1/2, 1/4); head 1: uniform; mean: (7, 10, 7) / 24
    att = pdrop.last_token_attention(q, keys)
    assert torch.allclose(att, torch.tensor([7, 10, 7], dtype=D64) / 24)
    att = torch.tensor([9, 0.1, 0.5, 0.2, 0.4, 0.3, 9], dtype=D64)  # image span [1, 6)
    kept = pdrop.pdrop_keep(att, 1, 5, 2)
    assert kept.tolist() == [2, 4]  # the two largest of the span, back in position order
    hidden = torch.arange(7, dtype=D64)[:, None]
    assert pdrop.pdrop_drop(hidden, 1, 5, kept)[:, 0].tolist() == [0, 2, 4, 6]


# ----------------------------------------------------------------------------- DART

def test_dart_budget_arithmetic_is_the_references():
    assert dart.token_topk(576) == 16 and dart.retained_count(576, 16) == 132  # the scripts' "128"
    assert dart.token_topk(576, None, 0.778) == 15  # ceil(127.87 // 8) = 15
    assert dart.token_topk(576, 64) == 8 and dart.retained_count(576, 8) == 68
    assert dart.layer_image_tokens(576, 4, 132) == [576, 576, 132, 132]


def _angles(degrees):
    rad = torch.tensor(degrees, dtype=D64) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], 1)


def test_dart_pivots_take_their_least_similar_tokens_in_set_order():
    # position 0: prefix; 1..10: image; 11..13: text. Key L1 norms pick image pivot 4 and text pivot 12
    keys = torch.ones(14, 2, dtype=D64)
    keys[4], keys[12] = 5, 5
    hidden = _angles([0, 180, 170, 90, 0, 85, 10, 20, 270, 5, 45, 30, 90, 60])
    # Python's set {4, 12} iterates 4 first: 4 (at 0 deg) takes 1 (180) and 2 (170); then 12 (at
    # 90 deg) takes 8 (270: cos -1) and 9 (5 deg: cos 0.087, the least similar of the rest)
    assert list({4, 12}) == [4, 12]
    got = dart.dart_retained(hidden, keys, 1, 10, topk=2, pivot_image=1, pivot_text=1)
    assert sorted(got) == [1, 2, 4, 8, 9]
    assert dart.dart_keep(14, 1, 10, got).tolist() == [0, 1, 2, 4, 8, 9, 11, 12, 13]


# ----------------------------------------------------------------------------- SparseVLM

def test_sparsevlm_raters_are_the_text_tokens_above_the_mean_share():
    visual = torch.ones(2, 1, dtype=D64)
    text = torch.tensor([[0.0], [math.log(2)], [0.0]], dtype=D64)
    # each image token's softmax over the text is (1/4, 1/2, 1/4); the mean is 1/3
    assert sparsevlm.raters(visual, text).tolist() == [1]


def test_sparsevlm_scores_are_causal_rater_rows_averaged_over_heads_and_raters():
    q = torch.ones(1, 2, 1, dtype=D64)  # one head, raters at positions 1 and 3
    k = torch.tensor([[[0.0], [0.0], [math.log(3)], [0.0]]], dtype=D64)
    rows = sparsevlm.rater_attention(q, k, torch.tensor([1, 3]))
    # row 1 sees keys 0, 1: (1/2, 1/2, 0, 0); row 3 sees all: (1, 1, 3, 1) / 6
    assert torch.allclose(rows, torch.tensor([[0.5, 0.5, 0, 0], [1 / 6, 1 / 6, 0.5, 1 / 6]], dtype=D64))
    assert torch.allclose(sparsevlm.image_scores(rows, 1, 2), torch.tensor([1 / 3, 0.25], dtype=D64))


def test_sparsevlm_schedule_and_recycling_counts():
    assert sparsevlm.keep_count(sparsevlm.SCHEDULES[192], 0, 576) == 300
    assert sparsevlm.keep_count(sparsevlm.SCHEDULES[192], 0, 50) == 49
    assert sparsevlm.recycle_counts(276) == (83, 9) and sparsevlm.recycle_counts(109) == (33, 4)
    per_layer = sparsevlm.layer_image_tokens(576, 32, sparsevlm.SCHEDULES[192])
    assert per_layer == [576] * 3 + [309] * 4 + [204] * 9 + [113] * 16
    assert sorted(set(sparsevlm.layer_image_tokens(576, 32, sparsevlm.SCHEDULES[64]))) == [18, 32, 82, 576]


def test_dpc_knn_merges_two_far_groups_into_their_near_sums():
    x = torch.tensor([[0.0], [0.1], [5.0], [5.2]], dtype=D64)
    g = torch.Generator().manual_seed(0)
    merged = sparsevlm.dpc_knn_merge(x, 2, g)
    # centres: the densest of {0, 0.1} (no denser token: the largest distance), then the denser of
    # {5, 5.2}; each cluster's value is its sum over (2 + 1e-6), the first centre first
    assert torch.allclose(merged, torch.tensor([[0.1], [10.2]], dtype=D64) / (2 + 1e-6))


def test_sparsevlm_step_keeps_the_top_image_tokens_then_the_recycled_before_the_text():
    hidden = torch.arange(6, dtype=D64)[:, None] * 10  # prefix 0, image 1..4, text 5
    scores = torch.tensor([0.4, 0.1, 0.3, 0.2], dtype=D64)
    out, kept, v = sparsevlm.sparsevlm_step(hidden, 1, 4, scores, 2, torch.Generator().manual_seed(0))
    # kept image 0 and 2 (positions 1, 3); deleted 1 and 3: int(0.6) + 1 = 1 recycled, the
    # better-scored (image 3, position 4), as one cluster of one: 40 / (1 + 1e-6)
    assert kept.tolist() == [0, 2] and v == 3
    assert torch.allclose(out[:, 0], torch.tensor([0, 10, 30, 40 / (1 + 1e-6), 50], dtype=D64))


def test_staged_prefill_is_sparsevlms_own_flop_counter():
    # modelling_sparse_llama: all_FLOPs += 4 n d^2 + 2 n^2 d + 3 n d m per layer (MACs, in our terms)
    s = cost.LayerShape(layers=32, d=4096, m=11008, heads=32, kv_heads=32, head_dim=128, gated=True)
    per_layer = sparsevlm.layer_image_tokens(576, 32, sparsevlm.SCHEDULES[192])
    theirs = sum(4 * (65 + v) * 4096 ** 2 + 2 * (65 + v) ** 2 * 4096 + 3 * (65 + v) * 4096 * 11008 for v in per_layer)
    assert cost.staged_prefill_flops(s, 65, per_layer) == 2 * theirs
    with pytest.raises(ValueError, match="3 layer counts for 32"):
        cost.staged_prefill_flops(s, 65, [1, 2, 3])


# ----------------------------------------------------------------------------- counted FLOPs

PREFIX, IMAGE, TEXT = 3, 24, 5


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=6, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    cfg._attn_implementation = "eager"  # torch's counter has no formula for the CPU sdpa kernel
    torch.manual_seed(0)
    lm = LlamaModel(cfg).eval()
    n = PREFIX + IMAGE + TEXT
    with torch.inference_mode():
        h = torch.randn(1, n, 32)
        cos, sin = lm.rotary_emb(h, torch.arange(n)[None])  # outside the counter: RoPE tables, not the method
    return lm, h, cos, sin


def _layer(lm, layer, h, pos, cos, sin):
    n = h.shape[1]
    mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
    return layer(h, attention_mask=mask, position_embeddings=(cos[:, pos], sin[:, pos]))


def _qk(layer, x, pos, cos, sin, query_rows):
    """q of `query_rows` and every k of one layer, RoPE applied: [H, R, hd], [H_kv, L, hd]."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    attn = layer.self_attn
    hd = attn.head_dim
    q = attn.q_proj(x[:, query_rows]).view(1, len(query_rows), -1, hd).transpose(1, 2)
    k = attn.k_proj(x).view(1, x.shape[1], -1, hd).transpose(1, 2)
    q, _ = apply_rotary_pos_emb(q, q, cos[:, pos[query_rows]], sin[:, pos[query_rows]])
    _, k = apply_rotary_pos_emb(k, k, cos[:, pos], sin[:, pos])
    return q[0], k[0]


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        fn()
    return int(fc.get_total_flops())


def _shape(lm):
    return cost.LayerShape.from_config(lm.config)


def test_pdrop_prefill_counted_equals_analytical(llama):
    lm, h0, cos, sin = llama
    bounds = pdrop.scaled_layers(6)
    counts = pdrop.stage_counts(IMAGE, pdrop.stage_ratios(0.5))
    at_ranks = []

    def run():
        h = h0
        for l, layer in enumerate(lm.layers):
            h = _layer(lm, layer, h, torch.arange(h.shape[1]), cos, sin)
            if l + 1 in bounds:
                stage = bounds.index(l + 1)
                nxt = lm.layers[l + 1]
                pos = torch.arange(h.shape[1])  # renumbered after every drop
                q, k = _qk(nxt, nxt.input_layernorm(h), pos, cos, sin, pos[-1:])
                att = pdrop.last_token_attention(q[:, 0], k)
                kept = pdrop.pdrop_keep(att, PREFIX, counts[stage], counts[stage + 1])
                at_ranks.append(h.shape[1])
                h = pdrop.pdrop_drop(h[0], PREFIX, counts[stage], kept)[None]

    counted = _counted(run)
    s = _shape(lm)
    per_layer = pdrop.layer_image_tokens(IMAGE, 6, bounds, pdrop.stage_ratios(0.5))
    assert bounds == [2, 3, 5] and per_layer == [24, 24, 12, 6, 6, 3]
    assert counted == cost.staged_prefill_flops(s, PREFIX + TEXT, per_layer) + cost.pdrop_rank_flops(s, at_ranks)


def test_sparsevlm_prefill_counted_equals_analytical(llama):
    lm, h0, cos, sin = llama
    layers, schedule = (1, 2, 4), (12, 8, 4)  # a schedule for the 6-layer model
    seen = []

    def run():
        rows = sparsevlm.raters(h0[0, PREFIX:PREFIX + IMAGE], h0[0, PREFIX + IMAGE:])
        seen.append(len(rows))
        h, v = h0, IMAGE
        g = torch.Generator().manual_seed(0)
        for l, layer in enumerate(lm.layers):
            pos = torch.arange(h.shape[1])
            out = _layer(lm, layer, h, pos, cos, sin)
            if l in layers:
                at = rows + PREFIX + v
                q, k = _qk(layer, layer.input_layernorm(h), pos, cos, sin, at)
                scores = sparsevlm.image_scores(sparsevlm.rater_attention(q, k, at), PREFIX, v)
                seen.append(h.shape[1])
                out, _, v = sparsevlm.sparsevlm_step(out[0], PREFIX, v, scores,
                                                     sparsevlm.keep_count(schedule, layers.index(l), v), g)
                out = out[None]
            h = out

    counted = _counted(run)
    s = _shape(lm)
    per_layer = sparsevlm.layer_image_tokens(IMAGE, 6, schedule, layers)
    assert per_layer == [24, 24, 13, 9, 9, 5]  # 12 + 1 recycled, 8 + 1, 4 + 1
    raters, at_pruning = seen[0], seen[1:]
    assert counted == (cost.staged_prefill_flops(s, PREFIX + TEXT, per_layer)
                       + cost.sparsevlm_score_flops(s, IMAGE, TEXT, raters, at_pruning))


def test_dart_prefill_counted_equals_analytical(llama):
    lm, h0, cos, sin = llama
    topk = dart.token_topk(IMAGE, 8)  # 1 per pivot: 4 + 8 image tokens from layer 2 on
    captured = {}
    hook = lm.layers[1].self_attn.k_proj.register_forward_hook(lambda m, a, out: captured.__setitem__("k", out))

    def run():
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        h, pos = h0, torch.arange(h0.shape[1])
        for l, layer in enumerate(lm.layers):
            if l == dart.DEFAULT_LAYER:
                hd = layer.self_attn.head_dim
                k = captured["k"].view(1, h.shape[1], -1, hd).transpose(1, 2)
                _, k = apply_rotary_pos_emb(k, k, cos[:, pos], sin[:, pos])
                k = k.repeat_interleave(4 // k.shape[1], dim=1)  # as the model's repeat_kv
                flat = k.permute(0, 2, 1, 3).reshape(h.shape[1], -1)
                kept = dart.dart_retained(lm.norm(h)[0], flat, PREFIX, IMAGE, topk)
                pos = dart.dart_keep(h.shape[1], PREFIX, IMAGE, kept)
                h = h[:, pos]  # the kept tokens keep their positions
            h = _layer(lm, layer, h, pos, cos, sin)

    try:
        counted = _counted(run)
    finally:
        hook.remove()
    per_layer = dart.layer_image_tokens(IMAGE, 6, dart.retained_count(IMAGE, topk))
    assert per_layer == [24, 24, 12, 12, 12, 12]
    assert counted == cost.staged_prefill_flops(_shape(lm), PREFIX + TEXT, per_layer)
