"""LLaVA-PruMerge+, as 42Shawn/LLaVA-PruMerge's code does it.

Reference: 42Shawn/LLaVA-PruMerge @ 097c04116a58465e4bcb58cec44a94018a68ff1a,
`llava/model/multimodal_encoder/clip_encoder.py`: `CLIPVisionTower.token_prune_merge_advanced_plus`
(what `forward` runs, with if_adaptive=True), `outlier_dectection`, `complement_idx`.
Pure tensor code; the adapter supplies the tensors, the projector runs afterwards.

What it computes for LLaVA-1.5 (ViT-L/14-336: N = 576 patches, C = 1024), per image:
  - CLS attention: q and k are the last ViT layer's q_proj / k_proj outputs (`layers[23]`, all
    heads concatenated, one [N+1, C] matrix each), attn = softmax(q k^T * C^-0.5) as ONE head,
    its CLS row without the CLS column: cls_attn [N];
  - adaptive ratio (IQR): r = #{a > Q3 + 1.5 (Q3 - Q1)} / N, quartiles by `np.percentile`
    (linear interpolation) over the float32 attention;
  - outliers: `torch.topk(cls_attn, int(N * r))` (descending attention);
  - spatial extras: `arange(0, 575, int(int(1 / r) / 3))`, those not already outliers, appended
    in ascending order (575 = N - 1 is hard-coded: the last patch is never an extra);
    without if_adaptive (the training path) `arange(int(s / 2), 575, s)`, s = int(1 / r), is
    appended unfiltered (duplicates stay);
  - merging, for each kept token i in that order: its key (layer 23's, without CLS, L2-normalised)
    against every other token's (the other kept ones first, then the pruned ones ascending);
    `torch.topk(.., 32)` most similar; kept_i + sum over them of cls_attn_j * x_j (a weighted sum,
    not a mean; x: the projector's layer -2 features, unmerged values);
  - one extra token: sum over the pruned tokens of cls_attn_j * x_j, appended last;
  - out: [K' + 1, C] in that order (outliers, extras, the extra token), then the projector.
The hidden states x are layer -2's (what the projector reads); q and k are layer 23's, whose
input that is. Generalised here: N - 1 for 575, the last ViT layer for layer 23, at most N - 1
neighbours for 32. Where the reference fails (no outlier: 1 / 0; r > 1 / 3: a zero arange step)
the top patch counts as the one outlier and the step is 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

NEIGHBOURS = 32  # the reference's topk(k=32) per kept token


def prumerge_cls_attention(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """The reference's one-head CLS attention: queries [B, N+1, C] (the last ViT layer's q_proj
    output, heads concatenated, CLS first; or the CLS query alone [B, C]), keys [B, N+1, C]
    (that layer's keys) -> [B, N] softmax(q k^T * C^-0.5) over all N + 1 keys, CLS row, CLS
    column dropped. Given every query, the whole matrix is computed and its row 0 taken, as the
    reference does: the CLS row alone can differ from it in the last bit."""
    q = queries if queries.dim() == 3 else queries[:, None]
    logits = (q @ keys.transpose(-2, -1)) * keys.shape[-1] ** -0.5  # [B, N+1 | 1, N+1]
    return F.softmax(logits, dim=-1)[:, 0, 1:]


def iqr_outlier_ratio(cls_attn: torch.Tensor) -> float:
    """Share of values above Q3 + 1.5 IQR (the reference's `outlier_dectection`), over every
    value of cls_attn (the reference flattens its whole batch; one image here)."""
    a = cls_attn.to(dtype=torch.float32).cpu().numpy().flatten()
    q1, q3 = np.percentile(a, 25), np.percentile(a, 75)
    upper = q3 + 1.5 * (q3 - q1)
    return len(np.where(a > upper)[0]) / len(a)


def complement(idx: torch.Tensor, n: int) -> torch.Tensor:
    """The reference's `complement_idx` for one image: idx [K] -> [n - K], the indices not in idx,
    ascending. Zeroing idx's positions, sorting and dropping K values: with duplicates in idx
    the smallest indices of the complement are dropped too, as there."""
    a = torch.arange(n, device=idx.device).scatter(0, idx, 0)
    return a.sort().values[len(idx):]


def prumerge_plus_indices(cls_attn: torch.Tensor, adaptive: bool = True, reduction_ratio: float = 1 / 8) -> torch.Tensor:
    """One image's cls_attn [N] -> the kept indices [K'] in the reference's order: the outliers
    (topk order), then the spatial extras (ascending)."""
    n = cls_attn.shape[0]
    ratio = iqr_outlier_ratio(cls_attn) if adaptive else reduction_ratio
    if ratio == 0:  # the reference divides by zero here
        ratio = 1 / n
    top = torch.topk(cls_attn[None], int(n * ratio), dim=1, largest=True).indices[0]
    step = int(1 / ratio)
    if adaptive:
        grid = torch.arange(0, n - 1, max(1, int(step / 3)), device=cls_attn.device)
        extras = grid[~torch.isin(grid, top)]
    else:
        extras = torch.arange(int(step / 2), n - 1, max(1, step), device=cls_attn.device)
    return torch.cat([top, extras])


@dataclass(frozen=True)
class PruMergePlan:
    """Which tokens PruMerge+ keeps and merges for one image of N patches.

    kept:    [K'] indices into the N patches, the output's order
    pruned:  [N - K'] the rest (as `complement` gives them: ascending)
    members: [K', m] for each kept token, its m most key-similar other tokens, as indices into
             the N patches (m = min(32, N - 1))
    """

    kept: torch.Tensor
    pruned: torch.Tensor
    members: torch.Tensor


def prumerge_plus_plan(cls_attn: torch.Tensor, keys: torch.Tensor, adaptive: bool = True,
                       reduction_ratio: float = 1 / 8) -> PruMergePlan:
    """One image: cls_attn [N], keys [N+1, Ck] (CLS first; the reference's layer-23 keys) -> the plan."""
    n = cls_attn.shape[0]
    kept = prumerge_plus_indices(cls_attn, adaptive, reduction_ratio)
    pruned = complement(kept, n)
    unit = F.normalize(keys[1:], p=2, dim=-1)
    kept_unit, pruned_unit = unit[kept], unit[pruned]
    order = torch.cat([kept, pruned])  # the candidates of token i: this without position i
    m = min(NEIGHBOURS, len(order) - 1)
    members = []
    for i in range(len(kept)):
        rest = torch.cat([kept_unit[:i], kept_unit[i + 1:], pruned_unit])[None]  # [1, M, Ck]
        sim = torch.bmm(kept_unit[i][None, None], rest.transpose(1, 2))  # [1, 1, M]
        near = torch.topk(sim, k=m, dim=2, largest=True).indices[0, 0]
        members.append(torch.cat([order[:i], order[i + 1:]])[near])
    empty = torch.zeros(0, m, dtype=torch.long, device=keys.device)
    return PruMergePlan(kept, pruned, torch.stack(members) if members else empty)


def prumerge_plus_apply(plan: PruMergePlan, cls_attn: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """A plan on one image's patch features [N, C] (layer -2, CLS dropped) -> [K' + 1, C]:
    each kept token plus its neighbours weighted by their CLS attention, then the pruned
    tokens' attention-weighted sum."""
    out = torch.empty(len(plan.kept) + 1, features.shape[1], dtype=features.dtype, device=features.device)
    for i, (k, near) in enumerate(zip(plan.kept, plan.members)):
        weighted = torch.sum(features[near][None] * cls_attn[near][None, :, None], dim=1)  # [1, C]
        out[i] = features[k] + weighted[0]
    pruned = features[plan.pruned][None]
    out[-1] = torch.sum(pruned * cls_attn[plan.pruned][None, :, None], dim=1)[0]
    return out


def prumerge_plus(cls_attn: torch.Tensor, keys: torch.Tensor, hidden: torch.Tensor, adaptive: bool = True,
                  reduction_ratio: float = 1 / 8) -> torch.Tensor:
    """PruMerge+'s tokens, before the projector.

    cls_attn [B, N] (`prumerge_cls_attention`), keys [B, N+1, Ck] (the last ViT layer's keys,
    heads concatenated, CLS first), hidden [B, N+1, C] (the projector's layer, CLS first; the
    CLS row is not used) -> [B, K' + 1, C]. adaptive: the IQR ratio (the reference's eval path);
    else `reduction_ratio` (its training path). Each image is planned on its own (the reference
    runs one image at a time); images whose K' differ cannot be stacked (ValueError).
    """
    outs = [prumerge_plus_apply(prumerge_plus_plan(a, k, adaptive, reduction_ratio), a, h[1:])
            for a, k, h in zip(cls_attn, keys, hidden)]
    if len({len(o) for o in outs}) > 1:
        raise ValueError("prumerge_plus: the images keep different numbers of tokens; plan them one at a time")
    return torch.stack(outs)


def fixed_ratio(n: int, k: int) -> float:
    """A budget of k tokens out of n -> the reference's `reduction_ratio` for its fixed path
    (k / 2 outliers and about as many spatial extras: keep 0.25 is the reference's 1/8)."""
    return k / (2 * n)
