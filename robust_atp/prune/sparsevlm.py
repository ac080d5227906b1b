"""SparseVLM: text-guided visual-token sparsification inside the LLM, with token recycling, as
Gumpest/SparseVLMs's code does it (its default `USE_VERSION=1_0`).

Reference: Gumpest/SparseVLMs @ 26a5f48813c46cd1c7364160354e7fdd3febaa67,
`llava/model/language_model/modelling_sparse_llama.py` (`LlamaDynamicvitModel.forward`: raters,
pruning layers, recycling, positions; `LlamaDynamicvitSdpaAttention.forward` with
`scaled_dot_product_attention` from `utils.py`: the attention it scores with),
`llava/model/language_model/score.py` (`attn_postprocess_topk`, the schedules `sparse_token_dict`,
`layer_dict`), `llava/model/language_model/utils.py` (`cluster_and_merge`, `index_points`).
Pure tensor code.

What it computes for LLaVA-1.5 (image tokens at [v0, v0 + 576), 32 decoder layers), per prompt:
  - raters (once, on the input embeddings): m = softmax over the T text tokens after the image
    of (visual embeds @ text embeds^T) [576, T], averaged over the visual tokens; the raters are
    the text tokens with m > mean(m);
  - pruning layers 2, 6, 15 (0-based; `pruning_loc`): the layer runs on every token and returns
    its attention probabilities (causal softmax(q k^T / sqrt(hd)) in the model's dtype); the
    score of image token j = mean over heads, then over the raters' rows, of column j;
  - keep k = min(schedule[layer], V - 1) image tokens by `topk` (V: the image tokens this layer
    saw); schedules for RETAIN_TOKN 192: [300, 200, 110], 128: [303, 110, 36], 96: [238, 48, 26],
    64: [66, 30, 17];
  - recycling, on the layer's OUTPUT hidden states of the deleted image tokens (ascending): the
    int(0.3 P) + 1 with the highest scores (topk order) are clustered by DPC-kNN into
    int(n / 10) + 1 clusters (`cluster_and_merge`: kNN density with a 1e-6 uniform jitter, parent
    distance, centres by score, each token to its nearest centre; a cluster's value is its sum
    over (size + 1e-6), the centres in topk-of-score order);
  - the next layer's sequence: [prefix, kept image tokens (ascending), recycled tokens, text];
    position ids become arange over it (not preserved); the recycled tokens count as image
    tokens at the next pruning layer (they are scored and can be deleted or recycled again);
  - RETAIN_TOKN 192: layers 0-2 see 576 image tokens, 3-6 300 + 9 recycled, 7-15 200 + 4,
    16-31 110 + 3 (`layer_image_tokens`).
The jitter comes from the global RNG there (`torch.rand`); here from a generator the caller
seeds (None: the global RNG, as there).

Wired as the suite method `sparsevlm` (`prune/peers.py`): `prune/staged.py`'s `SparseVLMPolicy` on the
LLaVA adapter's staged decoder (`models/staged_llm.py`).
"""
from __future__ import annotations

import math

import torch

PRUNING_LAYERS = (2, 6, 15)  # LlamaDynamicvitModel(pruning_loc=[2, 6, 15])
SCHEDULES = {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)}  # score.py, 1_0
RECYCLE_SHARE = 0.3  # "Top 30%" of the deleted tokens are recycled
CLUSTER_SHARE = 10  # one cluster per 10 recycled tokens (+ 1)


def raters(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """visual [V, d], text [T, d] (the input embeddings of the image tokens and of the text after
    them) -> the raters' indices into the T text tokens, ascending."""
    m = (visual[None] @ text[None].transpose(1, 2)).softmax(2).mean(1)  # [1, T]
    return torch.where(m > m.mean())[1]


def rater_attention(q_rows: torch.Tensor, k: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The head-mean attention of the raters' rows: q_rows [H, R, hd] (the raters' queries) and
    k [H_kv, L, hd] (every key; RoPE applied to both), rows [R] the raters' positions -> [R, L]
    the causal softmax(q k^T / sqrt(hd)) in q's dtype (as the reference's own attention, whose
    rows these are), heads averaged."""
    h, _, hd = q_rows.shape
    length = k.shape[1]
    k = k.repeat_interleave(h // k.shape[0], dim=0)
    logits = q_rows @ k.transpose(-2, -1) * (1 / math.sqrt(hd))  # [H, R, L], scaled as there
    future = torch.arange(length, device=k.device)[None, :] > rows[:, None].to(k.device)
    logits = logits.masked_fill(future[None], float("-inf"))
    return torch.softmax(logits, dim=-1).mean(0)


def image_scores(rows: torch.Tensor, v_start: int, v_num: int) -> torch.Tensor:
    """rows [R, L] (`rater_attention`) -> [V] each image token's mean over the raters."""
    return rows[:, v_start:v_start + v_num].mean(0)


def keep_count(schedule: tuple[int, ...], stage: int, v_num: int) -> int:
    """Image tokens the `stage`-th pruning layer keeps: min(schedule[stage], V - 1)."""
    return min(schedule[stage], v_num - 1)


def recycle_counts(n_deleted: int) -> tuple[int, int]:
    """Deleted tokens -> (recycled: int(0.3 P) + 1, clusters: int(recycled / 10) + 1)."""
    recycled = int(n_deleted * RECYCLE_SHARE) + 1
    return recycled, int(recycled / CLUSTER_SHARE) + 1


def dpc_knn_merge(x: torch.Tensor, clusters: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """The reference's `cluster_and_merge` on one prompt's tokens x [N, C] -> [clusters, C].

    Distances ||x_i - x_j|| / sqrt(C); density exp(-mean of the squared distances to the
    `clusters` nearest (self included)) + U(0, 1e-6); each token's parent distance: the nearest
    denser token (the largest distance when none is denser); centres: the `clusters` largest
    density * parent distance (topk order); every token joins its nearest centre (the first on
    ties), centres themselves; a cluster's value: its sum divided by (its size + 1e-6)."""
    n, c = x.shape
    dist = (x[:, None, :] - x[None, :, :]).norm(dim=-1, p=2)[None] / (c ** 0.5)  # [1, N, N]
    nearest, _ = torch.topk(dist, k=clusters, dim=-1, largest=False)
    density = (-(nearest ** 2).mean(dim=-1)).exp()
    density = density + torch.rand(density.shape, device=density.device, dtype=density.dtype,
                                    generator=generator) * 1e-6
    denser = (density[:, None, :] > density[:, :, None]).type(x.dtype)
    dist_max = dist.flatten(1).max(dim=-1)[0][:, None, None]
    parent, _ = (dist * denser + dist_max * (1 - denser)).min(dim=-1)
    centres = torch.topk(parent * density, k=clusters, dim=-1).indices  # [1, clusters]
    assign = dist[0, centres[0]].argmin(dim=0)  # [N]: each token's nearest centre
    assign[centres[0]] = torch.arange(clusters, device=x.device)
    weight = x.new_zeros(clusters, 1).index_add_(0, assign, x.new_ones(n, 1)) + 1e-6
    return x.new_zeros(clusters, c).index_add_(0, assign, (x * (x.new_ones(n, 1) / weight[assign])).type(x.dtype))


def recycle(deleted: torch.Tensor, scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The deleted image tokens' layer outputs [P, d] (ascending positions) and their scores [P]
    -> the recycled tokens [clusters, d]: DPC-kNN over the int(0.3 P) + 1 best-scored."""
    n, clusters = recycle_counts(len(deleted))
    best = scores.topk(n)[1]
    return dpc_knn_merge(deleted[best], clusters, generator)


def sparsevlm_step(hidden: torch.Tensor, v_start: int, v_num: int, scores: torch.Tensor, keep: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pruning layer on one prompt: its output hidden [L, d], the image span [v_start, v_start
    + v_num), scores [V] -> (the next layer's input [L', d], the kept image indices into the span
    (ascending), V' = keep + clusters). Positions for the next layers: arange(L')."""
    top = torch.topk(scores[None], keep, dim=1).indices[0]
    kept_mask = torch.zeros(v_num, dtype=torch.bool, device=hidden.device)
    kept_mask[top] = True
    kept = kept_mask.nonzero()[:, 0]
    span = hidden[v_start:v_start + v_num]
    merged = recycle(span[~kept_mask], scores[~kept_mask], generator)
    out = torch.cat([hidden[:v_start], span[kept], merged, hidden[v_start + v_num:]])
    return out, kept, keep + len(merged)


def layer_image_tokens(n_image: int, n_layers: int, schedule: tuple[int, ...],
                       layers: tuple[int, ...] = PRUNING_LAYERS) -> list[int]:
    """Image tokens (kept + recycled) each decoder layer sees: a pruning layer runs on what it
    gets and prunes its output."""
    out, v = [], n_image
    stages = {layer: s for s, layer in enumerate(layers)}
    for layer in range(n_layers):
        out.append(v)
        if layer in stages and v > 1:
            keep = keep_count(schedule, stages[layer], v)
            v = keep + recycle_counts(v - keep)[1]
    return out
