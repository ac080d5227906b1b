"""Peer methods: uniform grid, grid pooling, ToMe, VisionZip, DivPrune, FastV.

Each is a registered method with a fixed budget (`keep` ratio or `k` count; no adaptive mass:
these methods have no score to hold a share of). Merging methods (pool, tome, visionzip)
average post-projector tokens (`vision.tokens`, what the LLM reads) and match on the ViT
features the projector reads (`vision.vit_features`).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from .merge import Kept, bipartite_merge, contextual_merge, grid_groups, merge_groups
from .methods import Budget, SaliencyKnobs, register_method
from .scores import cls_attention
from .select import budget, select_diverse, select_grid, select_topk


class FixedBudget(Budget):
    @model_validator(mode="after")
    def _no_mass(self):
        if self.mass is not None:
            raise ValueError("this method has no score to hold a mass of: give 'keep' or 'k'")
        return self

    def count(self, n: int) -> int:
        return budget(n, self.keep, self.k)


class UniformParams(FixedBudget):
    pass


class PoolParams(FixedBudget):
    pass


class ToMeParams(FixedBudget):
    pass


class VisionZipParams(FixedBudget, SaliencyKnobs):
    # share of the budget given to merged contextual tokens (VisionZip: 10 of 64)
    contextual: float = 0.15625

    @field_validator("contextual")
    @classmethod
    def _share(cls, v):
        if not (0 <= v < 1):
            raise ValueError(f"must be in [0, 1), got {v}")
        return v


class DivPruneParams(FixedBudget):
    pass


class FastVParams(FixedBudget):
    # rank by the last prompt token's attention at decoder layer `layer` (0-based) and drop the
    # rest from layer + 1 on; FastV's K = 2 is layer 1
    layer: int = Field(default=1, ge=0)
    heads: Literal["mean"] = "mean"


@register_method("uniform", UniformParams)
def _uniform(p: UniformParams):
    """K patches spread evenly over the patch grid (a spatial subsample)."""
    def select(vision, text, keys):
        n = vision.tokens.shape[1]
        idx = select_grid(vision.grid, p.count(n)).to(vision.tokens.device)
        return [idx for _ in keys]
    return select, False


@register_method("pool", PoolParams, kind="merge")
def _pool(p: PoolParams):
    """Average pooling of the patch grid into about K rectangular cells (a partition)."""
    def merge(vision, text, keys):
        n = vision.tokens.shape[1]
        group, g = grid_groups(vision.grid, p.count(n))
        group = group.to(vision.tokens.device)
        ones = torch.ones(n, dtype=torch.long, device=vision.tokens.device)
        out = []
        for x in vision.tokens:
            tokens, sizes = merge_groups(x, ones, group, g)
            out.append(Kept(None, tokens, sizes))
        return out
    return merge, False


@register_method("tome", ToMeParams, kind="merge")
def _tome(p: ToMeParams):
    """ToMe bipartite soft matching down to K tokens, size-weighted."""
    def merge(vision, text, keys):
        n = vision.tokens.shape[1]
        out = []
        for x, metric in zip(vision.tokens, vision.vit_features):
            tokens, sizes, _ = bipartite_merge(metric, x, p.count(n))
            out.append(Kept(None, tokens, sizes))
        return out
    return merge, False


@register_method("visionzip", VisionZipParams, kind="merge")
def _visionzip(p: VisionZipParams):
    """VisionZip: the K_d tokens with the most CLS attention, then K_c contextual tokens merged
    from the rest (K_c = round(contextual * K), at least 1 when anything is left, so every token
    is represented; contextual 0 makes it a pure CLS-attention selection)."""
    def merge(vision, text, keys):
        n = vision.tokens.shape[1]
        k = p.count(n)
        k_ctx = min(max(1, int(p.contextual * k + 0.5)), k) if k < n and p.contextual > 0 else 0
        dominant = select_topk(cls_attention(vision.cls_attn, p.layer, p.heads), k - k_ctx)
        out = []
        for x, metric, dom in zip(vision.tokens, vision.vit_features, dominant):
            kept = Kept.select(x, dom)
            if k_ctx:
                rest = torch.ones(n, dtype=torch.bool, device=x.device)
                rest[dom] = False
                ctx, sizes = contextual_merge(metric[rest], x[rest], k_ctx)
                kept = Kept(None, torch.cat([kept.tokens, ctx]), torch.cat([kept.sizes, sizes]))
            out.append(kept)
        return out
    return merge, False


@register_method("divprune", DivPruneParams)
def _divprune(p: DivPruneParams):
    """DivPrune: greedy max-min diversity selection on the visual tokens (cosine distance)."""
    def select(vision, text, keys):
        n = vision.tokens.shape[1]
        return list(select_diverse(vision.tokens, p.count(n)))
    return select, False


@register_method("fastv", FastVParams, kind="llm")
def _fastv(p: FastVParams):
    """FastV: every token enters the LLM; the adapter drops all but K visual tokens after
    decoder layer `layer`, ranked by the last prompt token's attention there."""
    def select(vision, text, keys):
        n = vision.tokens.shape[1]
        return [torch.arange(n, device=vision.tokens.device) for _ in keys]
    return select, False
