"""Peer methods: uniform grid, grid pooling, ToMe, VisionZip, PruMerge+, CDPruner, DivPrune, FastV,
PyramidDrop, DART, SparseVLM inside the LLM, and image downsampling.

Each is a registered method with a fixed budget (`keep` ratio or `k` count; no adaptive mass:
these methods have no score to hold a share of; `prumerge_plus` without a budget is its own
IQR-adaptive count). `tome`, `visionzip`, `prumerge_plus` and `cdpruner` are the official
algorithms (`tome.py`, `visionzip.py`, `prumerge.py`, `cdpruner.py`): ToMe merges inside the
vision tower (an adapter capability), VisionZip and PruMerge+ merge the projector's ViT layer
before the projector, CDPruner selects the projector's outputs by a conditional DPP. `pool`,
`tome_posthoc` and `visionzip_mean` average post-projector tokens (`vision.tokens`, what the
LLM reads) size-weighted, matching on the ViT features the projector reads (`vision.vit_features`).
`fastv` masks tokens inside the LLM after one decoder layer; `pdrop`, `dart` and `sparsevlm`
drop them between decoder layers (`prune/staged.py` policies, run by the adapter's staged
decoder, `models/staged_llm.py`), their budget K read in each one's own terms (below).
`downsample` (VTC-Bench, arXiv 2510.07143) prunes nothing: the adapter resizes the image so its
tower yields about K tokens, and the LLM reads all of them (only where the token count follows
the image size: `token_count_follows_image`; `pool` is its nearest equivalent on fixed towers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from ..errors import UserError
from . import dart, pdrop
from .cdpruner import cdpruner
from .merge import Kept, bipartite_merge, contextual_merge, grid_groups, merge_groups
from .methods import Budget, SaliencyKnobs, register_method
from .prumerge import fixed_ratio, prumerge_cls_attention, prumerge_plus_apply, prumerge_plus_plan
from .scores import cls_attention
from .select import budget, select_diverse, select_grid, select_topk
from .staged import DartPolicy, PDropPolicy, SparseVLMPolicy, budget_lambda, budget_schedule, scaled_pruning_layers
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


class DownsampleParams(FixedBudget):
    pass


@dataclass(frozen=True)
class Downsample:
    """What the engine hands an adapter to resize a batch's images (model code imports nothing
    from here): the budget, K tokens out of the N the full image gives (methods whose budgets
    give the same K share one resized pass)."""

    keep: float | None = None
    k: int | None = None

    def target(self, n: int) -> int:
        return budget(n, self.keep, self.k)


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


class PruMergePlusParams(FixedBudget):
    """No budget: the reference's own IQR-adaptive count (its eval path); `keep` / `k`: its
    fixed-ratio path with reduction_ratio = K / 2N (K / 2 outliers, about K / 2 spatial extras and
    the extra token: K + 1 tokens at keep 0.25)."""

    @model_validator(mode="after")
    def _one_budget(self):
        if self.mass is not None:
            raise ValueError("prumerge_plus has no score to hold a mass of: give 'keep', 'k' or no budget (IQR)")
        if self.keep is not None and self.k is not None:
            raise ValueError("give at most one budget: 'keep' (ratio) or 'k' (count); none is the IQR-adaptive count")
        return self

    def budget_tag(self) -> str:
        return "iqr" if self.keep is None and self.k is None else super().budget_tag()

    @property
    def adaptive(self) -> bool:
        return self.keep is None and self.k is None


class CDPrunerParams(FixedBudget):
    pass


class FastVParams(FixedBudget):
    # rank by the last prompt token's attention at decoder layer `layer` (0-based) and drop the
    # rest from layer + 1 on; FastV's K = 2 is layer 1
    layer: int = Field(default=1, ge=0)
    heads: Literal["mean"] = "mean"


def _layer_list(v, lowest: int, why: str):
    """A suite's list of decoder layers: non-empty, strictly increasing, from `lowest` on."""
    if v is not None and (not v or any(b <= a for a, b in zip(v, v[1:]))):
        raise ValueError(f"must be a non-empty, strictly increasing list of layers, got {list(v)}")
    if v is not None and min(v) < lowest:
        raise ValueError(f"layers must be >= {lowest} ({why}), got {list(v)}")
    return v


class PDropParams(FixedBudget):
    """K (from `keep` / `k`): the image tokens PyramidDrop's decoder layers run on, on average;
    `lam` unset: the lambda of 0.01 .. 1 whose stages average nearest K (`PDropPolicy.for_budget`);
    set: that lambda (the budget then only names the row)."""

    # stage boundaries: image tokens dropped before each of these decoder layers; unset: the
    # reference's 8, 16, 24 of 32 at the model's depth (`pdrop.scaled_layers`)
    layers: tuple[int, ...] | None = None
    lam: float | None = None  # the ratio between stages: stage s keeps N lam^s

    @field_validator("layers")
    @classmethod
    def _layers(cls, v):
        return _layer_list(v, 1, "a drop comes after a layer")

    @field_validator("lam")
    @classmethod
    def _lam(cls, v):
        if v is not None and not (0 < v <= 1):
            raise ValueError(f"must be in (0, 1], got {v}")
        return v


class DartParams(FixedBudget):
    """K: DART's max_num_trunction (TOKEN_TOPK = ceil(K // pivots) tokens per pivot, so the
    reference's 128 keeps 4 + 8 x 16 = 132 image tokens; `DartPolicy.topk` caps it at N)."""

    layer: int | None = Field(default=None, ge=1)  # the first decoder layer without the pruned tokens; unset: 2
    pivot_image: int = Field(default=dart.DEFAULT_PIVOTS[0], ge=1)
    pivot_text: int = Field(default=dart.DEFAULT_PIVOTS[1], ge=0)


class SparseVLMParams(FixedBudget):
    """K: SparseVLM's RETAIN_TOKN (`budget_schedule`: the reference schedule nearest K of 576,
    scaled by K over its RETAIN_TOKN); `schedule` set: those counts (the budget then only names
    the row)."""

    schedule: tuple[int, ...] | None = None  # image tokens kept at each pruning layer (before recycling)
    # the decoder layers (0-based) whose attention scores and after which it cuts; unset: the
    # reference's 2, 6, 15 of 32 at the model's depth (`staged.scaled_pruning_layers`)
    layers: tuple[int, ...] | None = None

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v):
        if v is not None and (not v or min(v) < 1):
            raise ValueError(f"must be a non-empty list of counts >= 1, got {list(v)}")
        return v

    @field_validator("layers")
    @classmethod
    def _layers(cls, v):
        return _layer_list(v, 0, "0-based")


def _below(method: str, what: str, layers, top: int, n_layers: int) -> None:
    if max(layers) > top:
        shown = layers[0] if what == "layer" else list(layers)
        raise ValueError(f"{method}: {what} {shown} must leave a decoder layer after each cut: the model has "
                         f"{n_layers} decoder layers, so at most {top}")


def _all_tokens(vision, text, keys):
    n = vision.tokens.shape[1]
    return [torch.arange(n, device=vision.tokens.device) for _ in keys]


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


@register_method("downsample", DownsampleParams, kind="resize")
def _downsample(p: DownsampleParams):
    """Every token of the adapter's pass over the image resized to about K tokens (the engine
    runs that pass and hands it here in place of the shared one)."""
    return _all_tokens, False, Downsample(keep=p.keep, k=p.k)


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


def _single_crop_layer(vision, method: str, needs: str):
    """The vision pass's projector layer when it has what `method` reads (one crop), else one UserError."""
    layer = vision.feature_layer
    if layer is None or getattr(layer, needs) is None:
        what = {"last_keys": "the last ViT layer's CLS query and keys (the llava adapter gives them)",
                "clip_project": "the projector's ViT layer in the CLIP joint space (the llava adapter with a "
                                "suite's `clip` model)"}[needs]
        raise UserError(f"methods: {method} needs {what}; this adapter's vision pass has none")
    if layer.hidden.shape[1] > 1:
        raise UserError(f"methods: {method} follows its reference code on LLaVA-1.5 (one crop per image); "
                        "this adapter cuts the image into crops")
    return layer


@register_method("prumerge_plus", PruMergePlusParams, kind="merge")
def _prumerge_plus(p: PruMergePlusParams):
    """PruMerge+ (42Shawn/LLaVA-PruMerge): CLS-attention outliers (IQR) plus spatially uniform
    extras, each merged with its 32 most key-similar tokens weighted by CLS attention, plus one
    token for everything pruned, on the projector's ViT layer before the projector."""
    def merge(vision, text, keys):
        layer = _single_crop_layer(vision, "prumerge_plus", "last_keys")
        n = layer.hidden.shape[2] - 1
        ratio = None if p.adaptive else fixed_ratio(n, p.count(n))
        out = []
        for hidden, q, k in zip(layer.hidden[:, 0], layer.last_query[:, 0], layer.last_keys[:, 0]):
            attn = prumerge_cls_attention(q[None], k[None])[0]
            plan = (prumerge_plus_plan(attn, k) if ratio is None else
                    prumerge_plus_plan(attn, k, adaptive=False, reduction_ratio=ratio))
            with torch.inference_mode():  # the adapter's projector: no autograd graph
                tokens = layer.project(prumerge_plus_apply(plan, attn, hidden[1:]))
            sizes = torch.ones(len(tokens), dtype=torch.long, device=tokens.device)
            sizes[-1] = len(plan.pruned)  # the extra token sums every pruned patch
            out.append(Kept(None, tokens, sizes))
        return out
    return merge, False


@register_method("cdpruner", CDPrunerParams)
def _cdpruner(p: CDPrunerParams):
    """CDPruner (Theia-4869/CDPruner): greedy MAP of a DPP whose kernel is the cosine of the
    projector's outputs scaled by each token's (negative) CLIP relevance to the question."""
    def select(vision, text, keys):
        layer = _single_crop_layer(vision, "cdpruner", "clip_project")
        n = vision.tokens.shape[1]
        with torch.inference_mode():
            embeds = layer.clip_project(layer.hidden[:, 0, 1:]).float()  # [B, N, P]
        # one image at a time, as the reference runs (its relevance min-max spans its batch)
        return [torch.unique(cdpruner(vision.tokens[i:i + 1], embeds[i:i + 1], text[i:i + 1].float(), p.count(n))[0])
                for i in range(len(vision.tokens))]
    return select, True


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
    return _all_tokens, False


@register_method("pdrop", PDropParams, kind="staged")
def _pdrop(p: PDropParams):
    """PyramidDrop: every token enters the LLM; at each stage boundary the image tokens the last
    prompt token attends least leave the sequence (`PDropPolicy`)."""
    def policy(n_image: int, n_layers: int) -> PDropPolicy:
        layers = list(p.layers) if p.layers is not None else pdrop.scaled_layers(n_layers)
        _below("pdrop", "layers", layers, n_layers - 1, n_layers)
        lam = p.lam if p.lam is not None else budget_lambda(n_image, n_layers, p.count(n_image), layers)
        ratios = pdrop.stage_ratios(lam, len(layers))
        if min(pdrop.stage_counts(n_image, ratios)) < 1:
            raise ValueError(f"pdrop: lam {lam:g} leaves no image token of {n_image} in the last stage")
        return PDropPolicy(layers, ratios)
    return _all_tokens, False, policy


@register_method("dart", DartParams, kind="staged")
def _dart(p: DartParams):
    """DART: every token enters the LLM; before decoder layer `layer` the image tokens least
    similar to its pivots stay, the rest leave (positions kept; `DartPolicy`)."""
    def policy(n_image: int, n_layers: int) -> DartPolicy:
        layer = p.layer if p.layer is not None else min(dart.DEFAULT_LAYER, n_layers - 1)
        _below("dart", "layer", [layer], n_layers - 1, n_layers)
        if p.pivot_image >= n_image:
            raise ValueError(f"dart: pivot_image {p.pivot_image} needs more than that many of the {n_image} image tokens")
        return DartPolicy(layer, p.count(n_image), p.pivot_image, p.pivot_text)
    return _all_tokens, False, policy


@register_method("sparsevlm", SparseVLMParams, kind="staged")
def _sparsevlm(p: SparseVLMParams):
    """SparseVLM: every token enters the LLM; at each pruning layer its text raters' attention
    keeps the schedule's image tokens and recycles the best deleted ones as merged tokens
    (`SparseVLMPolicy`). A model with fewer pruning layers than the schedule has counts takes
    the schedule's first ones."""
    def policy(n_image: int, n_layers: int) -> SparseVLMPolicy:
        layers = tuple(p.layers) if p.layers is not None else scaled_pruning_layers(n_layers)
        _below("sparsevlm", "layers", layers, n_layers - 2, n_layers)
        if p.schedule is not None:
            schedule = tuple(p.schedule)
            if len(schedule) != len(layers):
                raise ValueError(f"sparsevlm: schedule {list(schedule)} has {len(schedule)} counts for the "
                                 f"{len(layers)} pruning layers {list(layers)}")
        else:
            schedule = budget_schedule(n_image, p.count(n_image))[:len(layers)]
        return SparseVLMPolicy(schedule, layers)
    return _all_tokens, False, policy
