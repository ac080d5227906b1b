"""The method registry: each pruning method is a settings schema plus a `select` closure.

A method sees the shared vision pass as plain tensors, duck-typed (this package imports no
model code):

    vision.tokens        [B, N, D]     LLM-side visual tokens
    vision.cls_attn      [B, L, H, N]  CLS -> patch attention of every ViT layer
    vision.clip_patches  [B, N, P]     patches in the CLIP joint space
    text                 [B, P]        CLIP text embeddings (only for methods with needs_text)
    keys                 B strings     per-example seed keys (suite seed, example id, label)

A selection method returns, per example, the kept indices into the N tokens (unique,
ascending); a merging method returns, per example, a `Kept` (new tokens + the number of
tokens each stands for). `Method.apply` gives both as `Kept`. FastV (`fastv_layer`) and the
staged in-LLM methods (`staged`: PyramidDrop, DART, SparseVLM) keep every token here and ask the
adapter to drop tokens inside the LLM. `downsample` (`resize`) prunes nothing: it keeps every
token of the adapter's pass over the image resized to about K tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import SuiteError
from ..seeding import stable_seed
from ..validation import describe_validation_error
from .merge import Kept
from .scores import atp_scores, clip_relevance, cls_attention, minmax
from .select import budget, group_budgets, select_adaptive, select_topk

Selector = Callable[[object, "torch.Tensor | None", list[str]], list[torch.Tensor]]
Merger = Callable[[object, "torch.Tensor | None", list[str]], list[Kept]]


@dataclass(frozen=True)
class Method:
    """`select` (indices) for selection methods, `merge` (Kept) for merging ones; `fastv_layer`
    is set for a method that prunes inside the LLM after that decoder layer; `tower` for one
    that merges inside the vision tower (its `merge` then reads the merged pass the engine asks
    the adapter for, not the shared one); `staged` for one that drops tokens between the LLM's
    decoder layers: (N image tokens, decoder layers) -> its `prune.staged` policy (ValueError
    naming the setting when the model cannot run it); `resize` for one that runs the model on a
    smaller image (`Downsample`: its `select` reads the adapter's pass over the resized images,
    which the engine asks for, not the shared one)."""

    name: str
    label: str
    needs_text: bool
    select: Selector | None
    settings: dict
    merge: Merger | None = None
    fastv_layer: int | None = None
    tower: object | None = None  # a `tome.ToMeTower`: the adapter merges inside its vision tower
    staged: Callable[[int, int], object] | None = None
    resize: object | None = None  # a `Downsample`: the adapter encodes the images resized to its budget

    @property
    def merges(self) -> bool:
        return self.merge is not None

    def apply(self, vision, text, keys) -> list[Kept]:
        """The tokens handed to the LLM, per example."""
        if self.merge is not None:
            return self.merge(vision, text, keys)
        return [Kept.select(vision.tokens[i], idx) for i, idx in enumerate(self.select(vision, text, keys))]

    def fastv_k(self, n: int) -> int:
        """Visual tokens FastV keeps after `fastv_layer`, out of n."""
        return budget(n, self.settings.get("keep"), self.settings.get("k"))


_REGISTRY: dict[str, tuple[type[BaseModel], Callable, str]] = {}


def register_method(name: str, params: type[BaseModel], kind: str = "select"):
    """kind: 'select' (factory returns (select, needs_text)), 'merge' (returns (merge,
    needs_text)), 'llm' (returns (select, needs_text); the params carry `layer`), 'tower'
    (returns (merge, needs_text, tower spec)), 'staged' (returns (select, needs_text, policy
    factory (N, decoder layers) -> a `prune.staged` policy)) or 'resize' (returns (select,
    needs_text, a `Downsample`))."""
    def deco(factory):
        _REGISTRY[name] = (params, factory, kind)
        return factory
    return deco


def method_names() -> list[str]:
    return sorted(_REGISTRY)


# ----------------------------------------------------------------------------- settings

class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    label: str | None = None


class Budget(Params):
    """Exactly one of: keep (a ratio of the tokens), k (a count), mass (adaptive)."""

    keep: float | None = None
    k: int | None = Field(default=None, gt=0)
    mass: float | None = None
    k_min: int = Field(default=1, gt=0)
    k_max: int | None = Field(default=None, gt=0)

    @field_validator("keep", "mass")
    @classmethod
    def _unit(cls, v):
        if v is not None and not (0 < v <= 1):
            raise ValueError(f"must be in (0, 1], got {v}")
        return v

    @model_validator(mode="after")
    def _one_budget(self):
        given = [n for n in ("keep", "k", "mass") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one budget: 'keep' (ratio), 'k' (count) or 'mass' (adaptive)")
        if self.k_max is not None and self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) is below k_min ({self.k_min})")
        return self

    def budget_tag(self) -> str:
        if self.keep is not None:
            return f"{self.keep:g}"
        if self.k is not None:
            return f"k{self.k}"
        return f"mass{self.mass:g}"

    def pick(self, scores: torch.Tensor, groups: torch.Tensor | None = None) -> list[torch.Tensor]:
        """scores [B, N] -> B index tensors. groups [N] (crop ids): the budget applies per group."""
        if groups is not None:
            return self._pick_per_group(scores, groups)
        n = scores.shape[-1]
        if self.mass is not None:
            return select_adaptive(scores, self.mass, self.k_min, self.k_max)
        return list(select_topk(scores, budget(n, self.keep, self.k)))

    def _pick_per_group(self, scores: torch.Tensor, groups: torch.Tensor) -> list[torch.Tensor]:
        members = [(groups == g).nonzero().flatten().to(scores.device) for g in torch.unique(groups)]
        ks = group_budgets([len(m) for m in members], self.keep, self.k)
        parts = []
        for m, k in zip(members, ks):
            sub = scores[:, m]
            if self.mass is not None:
                picked = select_adaptive(sub, self.mass, self.k_min, self.k_max)
            else:
                picked = list(select_topk(sub, k))
            parts.append([m[i] for i in picked])
        return [torch.cat([p[b] for p in parts]).sort().values for b in range(scores.shape[0])]


class FullParams(Params):
    pass


class SaliencyKnobs(BaseModel):
    layer: int = -2
    heads: Literal["mean", "max"] = "mean"


class ATPParams(Budget, SaliencyKnobs):
    alpha: float = 0.5
    normalizer: Literal["minmax", "zscore", "rank"] = "minmax"
    relevance_sign: Literal[1, -1] = 1
    text: Literal["question", "prompt"] = "question"

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v):
        if not (0 <= v <= 1):
            raise ValueError(f"must be in [0, 1], got {v}")
        return v


class ClsParams(Budget, SaliencyKnobs):
    pass


class ClipParams(Budget):
    relevance_sign: Literal[1, -1] = 1
    text: Literal["question", "prompt"] = "question"


class RandomParams(Budget):
    pass


# ----------------------------------------------------------------------------- methods

@register_method("full", FullParams)
def _full(p: FullParams):
    def select(vision, text, keys):
        n = vision.tokens.shape[1]
        return [torch.arange(n, device=vision.tokens.device) for _ in keys]
    return select, False


def _atp_selector(p, alpha: float, normalizer: str, sign: int):
    def select(vision, text, keys):
        sal = cls_attention(vision.cls_attn, p.layer, p.heads) if alpha < 1 else None
        rel = clip_relevance(vision.clip_patches, text, sign) if alpha > 0 else None
        return p.pick(atp_scores(sal, rel, alpha, normalizer), getattr(vision, "crop_ids", None))
    return select


@register_method("atp", ATPParams)
def _atp(p: ATPParams):
    return _atp_selector(p, p.alpha, p.normalizer, p.relevance_sign), p.alpha > 0


@register_method("cls", ClsParams)
def _cls(p: ClsParams):
    """ATP with alpha = 0: CLS attention alone."""
    return _atp_selector(p, 0.0, "minmax", 1), False


@register_method("clip", ClipParams)
def _clip(p: ClipParams):
    """ATP with alpha = 1: CLIP text-patch relevance alone, min-max normalised (the order is the
    cosine's; a `mass` budget is a share of the normalised scores, as for ATP)."""
    def select(vision, text, keys):
        rel = minmax(clip_relevance(vision.clip_patches, text, p.relevance_sign))
        return p.pick(rel, getattr(vision, "crop_ids", None))
    return select, True


@register_method("random", RandomParams)
def _random(p: RandomParams):
    """Uniformly random tokens, seeded per example (and per method label): the same subset in
    every condition, so clean and corrupted runs of an example are paired."""
    def select(vision, text, keys):
        n = vision.tokens.shape[1]
        out = []
        for key in keys:
            g = torch.Generator().manual_seed(stable_seed("random", key))
            scores = torch.rand(n, generator=g).unsqueeze(0)
            out.append(p.pick(scores, getattr(vision, "crop_ids", None))[0].to(vision.tokens.device))
        return out
    return select, False


# ----------------------------------------------------------------------------- building

def _label(name: str, params: BaseModel) -> str:
    if params.label:
        return params.label
    if not isinstance(params, Budget):
        return name
    extras = []
    for field, info in type(params).model_fields.items():
        if field in ("label", "keep", "k", "mass", "k_min", "k_max"):
            continue
        value = getattr(params, field)
        if value != info.default:
            extras.append(f"{field}={value:g}" if isinstance(value, float) else f"{field}={value}")
    if params.mass is not None and (params.k_min != 1 or params.k_max is not None):
        extras.append(f"k_min={params.k_min}")
        if params.k_max is not None:
            extras.append(f"k_max={params.k_max}")
    tag = f"{name}@{params.budget_tag()}"
    return tag + (f"[{','.join(extras)}]" if extras else "")


def validate_method(cfg) -> Method:
    """A suite's method entry (name + settings) -> a ready `Method`, or SuiteError('.<field>: msg')."""
    raw = cfg.model_dump(exclude_none=True) if hasattr(cfg, "model_dump") else dict(cfg)
    name = raw.pop("name", None)
    if name not in _REGISTRY:
        import difflib
        near = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise SuiteError(f".name: unknown method {name!r}{hint}; known: {', '.join(method_names())}")
    schema, factory, kind = _REGISTRY[name]
    try:
        params = schema.model_validate(raw)
    except ValidationError as e:
        where, msg = describe_validation_error(e, schema)
        raise SuiteError(f": {msg}" if where == "<root>" else f".{where}: {msg}") from None
    fn, needs_text, *more = factory(params)
    merges = kind in ("merge", "tower")
    return Method(name=name, label=_label(name, params), needs_text=needs_text,
                  select=None if merges else fn, settings=params.model_dump(),
                  merge=fn if merges else None, fastv_layer=params.layer if kind == "llm" else None,
                  tower=more[0] if kind == "tower" else None, staged=more[0] if kind == "staged" else None,
                  resize=more[0] if kind == "resize" else None)


from . import peers  # noqa: E402,F401  (registers the peer methods)
