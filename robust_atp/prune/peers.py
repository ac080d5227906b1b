"""Peer methods: uniform grid, grid pooling, ToMe, VisionZip, DivPrune, FastV.

Each is a registered method with a fixed budget (`keep` ratio or `k` count; no adaptive mass:
these methods have no score to hold a share of). `tome` and `visionzip` are the official
algorithms (`tome.py`, `visionzip.py`): ToMe merges inside the vision tower (an adapter
capability), VisionZip merges the projector's ViT layer before the projector. `pool`,
`tome_posthoc` and `visionzip_mean` average post-projector tokens (`vision.tokens`, what the
LLM reads) size-weighted, matching on the ViT features the projector reads (`vision.vit_features`).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from ..errors import UserError
from .merge import Kept, bipartite_merge, contextual_merge, grid_groups, merge_groups
from .methods import Budget, SaliencyKnobs, register_method
from .scores import cls_attention
from .select import budget, select_diverse, select_grid, select_topk
from .tome import ToMeTower
from .visionzip import anyres_layout, visionzip_apply, visionzip_counts, visionzip_plan


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
    # ToMe's proportional attention (log size on the attention logits), its default off the shelf
    prop_attn: bool = True


class ToMePosthocParams(FixedBudget):
    pass


def _share(v):
    if v is not None and not (0 <= v < 1):
        raise ValueError(f"must be in [0, 1), got {v}")
    return v


class VisionZipParams(FixedBudget):
    # share of the budget given to contextual tokens; unset: the paper's splits (64 = 54 + 10,
    # 128 = 108 + 20, 192 = 162 + 30) and 10/64 of any other budget
    contextual: float | None = None

    @field_validator("contextual")
    @classmethod
    def _contextual(cls, v):
        return _share(v)


class VisionZipMeanParams(FixedBudget, SaliencyKnobs):
    # share of the budget given to merged contextual tokens (VisionZip: 10 of 64)
    contextual: float = 0.15625

    @field_validator("contextual")
    @classmethod
    def _contextual(cls, v):
        return _share(v)


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


@register_method("tome", ToMeParams, kind="tower")
def _tome(p: ToMeParams):
    """ToMe inside the vision tower (facebookresearch/ToMe): r tokens merged in every block up to
    the projector's layer, ending at K patch tokens; the engine runs the adapter's merged pass
    and this reads its tokens and sizes."""
    def merge(vision, text, keys):
        if vision.token_sizes is None:
            raise RuntimeError("tome reads the adapter's merged tower pass (encode_images_merged)")
        return [Kept(None, x, s.round().long()) for x, s in zip(vision.tokens, vision.token_sizes)]
    return merge, False, ToMeTower(keep=p.keep, k=p.k, prop_attn=p.prop_attn)


@register_method("tome_posthoc", ToMePosthocParams, kind="merge")
def _tome_posthoc(p: ToMePosthocParams):
    """ToMe's bipartite soft matching after the tower, repeated down to K tokens: cosine on the
    projector's ViT features, merging the post-projector tokens size-weighted, in position order."""
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
    """VisionZip (dvlab-research/VisionZip): on the projector's ViT layer, the CLS token and the
    patches with the most CLS attention, then contextual tokens (target + mean of the tokens
    matched to it on the keys), before the projector. K counts the CLS token; on any-resolution
    adapters every crop gets K (of its S patches) and the official any-resolution layout."""
    def merge(vision, text, keys):
        layer = vision.feature_layer
        if layer is None:
            raise UserError("methods: visionzip needs the ViT's CLS token and the keys of the layer the projector "
                            "reads; this adapter's tower has no CLS token")
        crops, patches = layer.hidden.shape[1], layer.hidden.shape[2] - 1
        dominant, contextual = visionzip_counts(p.count(patches), p.contextual)
        out = []
        for hidden, attn, k in zip(layer.hidden, layer.cls_attn, layer.keys):  # one image: [R, 1 + S, .]
            plan = visionzip_plan(attn, k, dominant, contextual)
            with torch.inference_mode():  # the adapter's projector: no autograd graph
                tokens = layer.project(visionzip_apply(plan, hidden))  # [R, D + c, D_llm]
            sizes = plan.sizes()
            if crops > 1:
                tokens = anyres_layout(tokens, plan, layer.mosaic)
                sizes = anyres_layout(sizes[..., None], plan, layer.mosaic)[:, 0]
            else:
                tokens, sizes = tokens[0], sizes[0]
            if layer.cls_prepended:
                tokens, sizes = tokens[1:], sizes[1:]
            out.append(Kept(None, tokens, sizes))
        return out
    return merge, False


@register_method("visionzip_mean", VisionZipMeanParams, kind="merge")
def _visionzip_mean(p: VisionZipMeanParams):
    """A VisionZip variant on the post-projector tokens: the K_d patches with the most CLS
    attention, then K_c contextual tokens merged from the rest (K_c = round(contextual * K), at
    least 1 when anything is left, so every token is represented; contextual 0 makes it a pure
    CLS-attention selection), each the size-weighted mean of its group, matched on the
    projector's ViT features. No CLS token; K counts patches."""
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
