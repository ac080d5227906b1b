"""ToMe: token merging inside the ViT's blocks, as facebookresearch/ToMe does it.

Reference: facebookresearch/ToMe @ af95e4b1befa172dadccd8c81e223b10090f9579,
`tome/merge.py` (bipartite_soft_matching, merge_wavg), `tome/patch/timm.py` (ToMeBlock.forward:
merge between attention and MLP; ToMeAttention.forward: proportional attention and the keys
averaged over heads as the matching metric), `tome/utils.py` (parse_r). Pure tensor code; the
adapter runs its own tower and calls these functions between each block's attention and MLP.

Shapes: B images, T tokens (CLS first when `class_token`), C channels, r tokens removed.
The reductions (max, argsort, gather, scatter_reduce) are the same torch calls the reference
makes, so ties break as they break there: `max` takes the first maximal B token, and the
edge order is torch's (unstable) descending argsort.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

Merge = Callable[..., torch.Tensor]


def _identity(x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
    return x


def bipartite_soft_matching(metric: torch.Tensor, r: int, class_token: bool = False,
                            distill_token: bool = False) -> tuple[Merge, Merge]:
    """metric [B, T, C] (a block's keys averaged over heads) -> (merge, unmerge) closures that
    remove r tokens (at most half of the unprotected ones).

    Tokens alternate into A (even positions) and B (odd); each A token links to its most
    cosine-similar B token; the r best-linked A tokens are merged into their partners.
    merge(x [B, T, D], mode) -> [B, T - r, D]: the A tokens left unmerged (ascending position
    when `class_token`, so the CLS token stays first; else in link order), then every B token
    (scatter-reduced with `mode`: 'mean', 'sum', 'amax', ...). unmerge(x [B, T - r, D]) ->
    [B, T, D] copies each merged token back to the positions it came from.
    """
    protected = int(class_token) + int(distill_token)
    r = min(r, (metric.shape[1] - protected) // 2)
    if r <= 0:
        return _identity, _identity

    with torch.no_grad():
        unit = metric / metric.norm(dim=-1, keepdim=True)
        sim = unit[..., ::2, :] @ unit[..., 1::2, :].transpose(-1, -2)  # [B, |A|, |B|]
        if class_token:
            sim[..., 0, :] = -math.inf  # the CLS token (A's first) is never merged away
        if distill_token:
            sim[..., :, 0] = -math.inf
        best, partner = sim.max(dim=-1)  # [B, |A|]
        ranked = best.argsort(dim=-1, descending=True)[..., None]  # [B, |A|, 1]
        kept_a, moved_a = ranked[..., r:, :], ranked[..., :r, :]
        target_b = partner[..., None].gather(dim=-2, index=moved_a)
        if class_token:
            kept_a = kept_a.sort(dim=1)[0]

    def merge(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        a, b = x[..., ::2, :], x[..., 1::2, :]
        batch, n_a, width = a.shape
        stay = a.gather(dim=-2, index=kept_a.expand(batch, n_a - r, width))
        moved = a.gather(dim=-2, index=moved_a.expand(batch, r, width))
        b = b.scatter_reduce(-2, target_b.expand(batch, r, width), moved, reduce=mode)
        if distill_token:
            return torch.cat([stay[:, :1], b[:, :1], stay[:, 1:], b[:, 1:]], dim=1)
        return torch.cat([stay, b], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        n_stay = kept_a.shape[1]
        stay, b = x[..., :n_stay, :], x[..., n_stay:, :]
        batch, _, width = stay.shape
        out = torch.zeros(batch, metric.shape[1], width, device=x.device, dtype=x.dtype)
        out[..., 1::2, :] = b
        out.scatter_(dim=-2, index=(2 * kept_a).expand(batch, n_stay, width), src=stay)
        out.scatter_(dim=-2, index=(2 * moved_a).expand(batch, r, width),
                     src=b.gather(dim=-2, index=target_b.expand(batch, r, width)))
        return out

    return merge, unmerge


def merge_wavg(merge: Merge, x: torch.Tensor, size: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted merge: x [B, T, D], size [B, T, 1] (None: ones) -> (x [B, T', D], size [B, T', 1]).
    A merged token is the size-weighted mean of what it absorbed; its size is their sum."""
    if size is None:
        size = torch.ones_like(x[..., 0, None])
    total = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return total / size, size


def merge_source(merge: Merge, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
    """Which input tokens each merged token covers: source [B, T0, T0] (None: the identity over
    x's T0 tokens) -> [B, T', T0] 0/1, merged with 'amax' as the tokens are."""
    if source is None:
        b, t, _ = x.shape
        source = torch.eye(t, device=x.device)[None, ...].expand(b, t, t)
    return merge(source, mode="amax")


def proportional_attention_bias(size: torch.Tensor) -> torch.Tensor:
    """size [B, T, 1] -> an additive attention bias [B, 1, 1, T] = log(size) on every key, so a
    token standing for s patches gets the attention s copies of it would (ToMe's proportional
    attention)."""
    return size.log()[:, None, None, :, 0]


def parse_r(num_layers: int, r) -> list[int]:
    """ToMe's schedule forms -> r per layer: an int (constant), (r, inflection) with inflection
    in [-1, 1] (-1: decreasing, +1: increasing), or an explicit list (padded with zeros)."""
    if isinstance(r, list):
        return list(r) + [0] * max(0, num_layers - len(r))
    inflect = 0.0
    if isinstance(r, tuple):
        r, inflect = r
    lo = int(r * (1.0 - inflect))
    hi = 2 * r - lo
    step = (hi - lo) / (num_layers - 1) if num_layers > 1 else 0.0
    return [int(lo + step * i) for i in range(num_layers)]


def schedule_to_k(n_patches: int, k: int, layers: int) -> list[int]:
    """r per block that takes n_patches (+ a protected CLS token) down to k patches after
    `layers` blocks: ToMe's constant r where it can be, n_patches - k in all.

    A block can remove at most half of its unprotected tokens (p patches in, ceil(p / 2) out at
    least): built from the last block back, each block takes an even share of what is left
    (rounded down, so earlier blocks take the remainder) capped at what it leaves behind. A k
    below what the blocks can reach (n_patches halved `layers` times, rounded up) becomes that.
    """
    k = max(1, min(k, n_patches))
    floor = n_patches
    for _ in range(layers):
        floor = (floor + 1) // 2
    k = max(k, floor)
    left = n_patches - k
    after = k
    out = [0] * layers
    for i in reversed(range(layers)):
        r = min(after, left // (i + 1)) if i else min(after, left)
        out[i] = r
        after += r
        left -= r
    return out


@dataclass(frozen=True)
class ToMeTower:
    """What an adapter needs to run its tower with ToMe merging (the engine hands it over, so
    model code imports nothing from here): the target, the schedule, the matching and the merge.

    keep / k: the budget of patch tokens per crop after the tower; prop_attn: add log(size) to
    the attention logits (ToMe's default for off-the-shelf models)."""

    keep: float | None = None
    k: int | None = None
    prop_attn: bool = True

    def target(self, n_patches: int) -> int:
        from .select import budget

        return budget(n_patches, self.keep, self.k)

    def schedule(self, n_patches: int, layers: int) -> list[int]:
        return schedule_to_k(n_patches, self.target(n_patches), layers)

    match = staticmethod(bipartite_soft_matching)
    merge_wavg = staticmethod(merge_wavg)
    attention_bias = staticmethod(proportional_attention_bias)
