"""The in-LLM pruning methods as policies of the staged decoder (models/staged_llm.py): after a
decoder layer, which tokens go on, in what order, at which positions, and which new ones join.

A policy has `start(embeds [B, T, d], valid [B, T], image_start [B], image_count, seeds)` (once
per prompt batch) and `after_layer(state) -> Cut | None`; `state` (the staged decoder's
`LayerState`) carries the layer's input and output, positions, pads, the image span and the
model's own norms, q / k projections with RoPE (`query_key`) and cached keys: the policies here
reach the model only through it, and call the pure functions of `pdrop`, `dart`, `sparsevlm` per
example on its unpadded slice (the reference's batch-1 computation; independent of the batch).

Budgets from a suite's k image tokens of N (`for_budget`), each the reference's own at its
default setting:
  - PyramidDrop: the reference's stage layers [8, 16, 24] scaled to the depth, and the lambda of
    0.01 .. 1.00 whose layer-average image-token count is closest to k, among those that keep at
    least one image token in every stage (lambda 0.5 averages 576 x 1.875 / 4 = 270 of 576; the
    first stage runs on all N, so averages below about N x 8 / 32 cannot be reached);
  - DART: max_num_trunction = k at layer 2 (its scripts' 128-token runs pass 128 and keep
    4 + 8 x 16 = 132); TOKEN_TOPK is capped so that every pivot finds its share;
  - SparseVLM: the reference schedule whose RETAIN_TOKN is nearest k x 576 / N, each count scaled
    by k / RETAIN_TOKN (N = 576 and k in {192, 128, 96, 64}: the reference's own), at the pruning
    layers 2, 6, 15 scaled to the depth (the cuts after them placed as PyramidDrop's are).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from robust_atp import cost
from robust_atp.prune import dart, pdrop, sparsevlm


@dataclass
class Cut:
    """A policy's decision after a layer. index [B, L']: per example the next sequence, indices
    into the current one (L tokens) or, from L on, into `extra` [B, R, d] (new tokens).
    positions [B, L'] or None (renumber the real tokens 0, 1, ...). image_count: the image
    tokens (inserted ones included) of the new sequence, from the same image start."""

    index: torch.Tensor
    image_count: int
    positions: torch.Tensor | None = None
    extra: torch.Tensor | None = None


def _splice(start: int, span: int, length: int, middle: torch.Tensor) -> torch.Tensor:
    dev = middle.device
    return torch.cat([torch.arange(start, device=dev), middle.to(dev),
                      torch.arange(start + span, length, device=dev)])


class PDropPolicy:
    """PyramidDrop (Cooperx521/PyramidDrop): after layer b - 1 for each b in `layers`, the next
    layer's input_layernorm / q_proj / k_proj (RoPE at the current positions) rank the image span
    by the last prompt token's head-mean attention (`pdrop.last_token_attention`); the image span
    keeps int(N * ratios[s + 1]) (`pdrop.pdrop_keep`); positions are renumbered.
    ratios: with the leading 1.0 (`pdrop.stage_ratios(lam)`)."""

    def __init__(self, layers=pdrop.DEFAULT_LAYERS, ratios=None):
        self.layers = list(layers)
        self.ratios = list(ratios) if ratios is not None else pdrop.stage_ratios(0.5, len(self.layers))
        if len(self.ratios) != len(self.layers) + 1:
            raise ValueError(f"pdrop: {len(self.ratios)} ratios for {len(self.layers)} stage layers (needs one more)")
        self.tokens_at_ranks: list[int] = []

    @classmethod
    def for_budget(cls, n_image: int, n_layers: int, k: int, stages: int = 3) -> "PDropPolicy":
        """The reference's stage layers scaled to the depth, and the lambda of 0.01 .. 1.00 whose
        layer-average image-token count is closest to k (ties: the larger lambda), among those
        that keep at least one image token in every stage."""
        layers = pdrop.scaled_layers(n_layers, pdrop.DEFAULT_LAYERS[:stages])
        return cls(layers, pdrop.stage_ratios(budget_lambda(n_image, n_layers, k, layers), len(layers)))

    def layer_image_tokens(self, n_image: int, n_layers: int) -> list[int]:
        return pdrop.layer_image_tokens(n_image, n_layers, self.layers, self.ratios)

    def start(self, embeds, valid, image_start, image_count, seeds=None) -> None:
        self.n_image = image_count
        self.batch = embeds.shape[0]
        self.tokens_at_ranks = []

    def scoring_flops(self, s: cost.LayerShape, i: int) -> int:
        """FLOPs of the last prompt batch's rankings for its example i (`cost.pdrop_rank_flops`
        over the tokens it had at each stage boundary)."""
        return cost.pdrop_rank_flops(s, self.tokens_at_ranks[i::self.batch])

    def after_layer(self, state) -> Cut | None:
        if state.layer + 1 not in self.layers:
            return None
        s = self.layers.index(state.layer + 1)
        counts = pdrop.stage_counts(self.n_image, self.ratios)
        n_cur, keep = state.image_count, counts[s + 1]
        nxt = state.layer + 1
        x = state.input_norm(nxt, state.hidden)
        length = x.shape[1]
        rows = []
        for i, p in enumerate(state.pads()):
            q, k = state.query_key(nxt, i, x[i, p:], [length - p - 1])
            att = pdrop.last_token_attention(q[:, 0], k)
            start = int(state.image_start[i]) - p
            kept = pdrop.pdrop_keep(att, start, n_cur, keep) + p
            rows.append(_splice(start + p, n_cur, length, kept))
            self.tokens_at_ranks.append(length - p)
        return Cut(torch.stack(rows), keep)


def budget_lambda(n_image: int, n_layers: int, k: int, layers) -> float:
    """PyramidDrop's lambda for a budget of k image tokens on average over the layers."""
    best, best_gap = 1.0, float("inf")
    for step in range(100, 0, -1):
        lam = step / 100
        ratios = pdrop.stage_ratios(lam, len(layers))
        if min(pdrop.stage_counts(n_image, ratios)) < 1:
            continue
        per_layer = pdrop.layer_image_tokens(n_image, n_layers, layers, ratios)
        gap = abs(sum(per_layer) / n_layers - k)
        if gap < best_gap - 1e-12:
            best, best_gap = lam, gap
    return best


class DartPolicy:
    """DART (ZichenWen1/DART): before layer K, from layer K - 1's output through the final norm
    and its keys (its cache: RoPE'd, repeated over KV groups, heads concatenated), the pivots and
    their least similar image tokens (`dart.dart_retained`); kept tokens keep their positions.
    max_num_trunction: the reference's budget knob, TOKEN_TOPK = ceil(M // 8) per pivot."""

    def __init__(self, layer: int = dart.DEFAULT_LAYER, max_num_trunction: int = dart.DEFAULT_TRUNCATION,
                 pivot_image: int = dart.DEFAULT_PIVOTS[0], pivot_text: int = dart.DEFAULT_PIVOTS[1]):
        if layer < 1:
            raise ValueError(f"dart: layer must be >= 1 (it reads layer K - 1), got {layer}")
        self.layer, self.max_num_trunction = layer, max_num_trunction
        self.pivot_image, self.pivot_text = pivot_image, pivot_text

    @classmethod
    def for_budget(cls, n_image: int, n_layers: int, k: int) -> "DartPolicy":
        """max_num_trunction = k (the scripts' 128-token runs pass 128), at layer 2 (the paper's)."""
        return cls(layer=min(dart.DEFAULT_LAYER, n_layers - 1), max_num_trunction=k)

    def topk(self, n_image: int) -> int:
        pivots = self.pivot_image + self.pivot_text
        t = dart.token_topk(n_image, self.max_num_trunction, pivot_image=self.pivot_image, pivot_text=self.pivot_text)
        return max(0, min(t, (n_image - self.pivot_image) // pivots))  # every pivot must find its share

    def retained(self, n_image: int) -> int:
        return dart.retained_count(n_image, self.topk(n_image), self.pivot_image, self.pivot_text)

    def layer_image_tokens(self, n_image: int, n_layers: int) -> list[int]:
        return dart.layer_image_tokens(n_image, n_layers, self.retained(n_image), self.layer)

    def start(self, embeds, valid, image_start, image_count, seeds=None) -> None:
        self.n_image = image_count

    def scoring_flops(self, s: cost.LayerShape, i: int) -> int:
        """None: its keys come from the cache, its L1 norms and cosines are elementwise."""
        return 0

    def after_layer(self, state) -> Cut | None:
        if state.layer != self.layer - 1:
            return None
        n = state.image_count
        keys = state.cached_keys(state.layer)  # [B, L, H hd]: no product
        length = keys.shape[1]
        normed = state.final_norm(state.hidden)
        topk = self.topk(n)
        rows = []
        for i, p in enumerate(state.pads()):
            start = int(state.image_start[i]) - p
            if length - p - start - n < self.pivot_text:
                raise ValueError(f"dart: example {i} has {length - p - start - n} tokens after the image, "
                                 f"fewer than its {self.pivot_text} text pivots")
            got = dart.dart_retained(normed[i, p:], keys[i, p:], start, n, topk, self.pivot_image, self.pivot_text)
            keep = dart.dart_keep(length - p, start, n, got).to(keys.device) + p
            rows.append(torch.cat([torch.arange(p, device=keys.device), keep]))
        index = torch.stack(rows)
        return Cut(index, self.retained(n), positions=state.positions.gather(1, index))


class SparseVLMPolicy:
    """SparseVLM (Gumpest/SparseVLMs, v1.0): raters from the input embeddings; at each pruning
    layer the raters' head-mean causal attention from its own q / k (its input after
    input_layernorm, RoPE at the current positions) scores the image tokens, its output keeps
    the schedule's top ones and recycles the deleted by DPC-kNN (`sparsevlm.sparsevlm_step`),
    placed after the kept; positions renumbered. seeds: one generator seed per example for the
    clustering's jitter (default `seed` for every example)."""

    def __init__(self, schedule=sparsevlm.SCHEDULES[192], layers=sparsevlm.PRUNING_LAYERS, seed: int = 0):
        self.schedule, self.layers, self.seed = tuple(schedule), tuple(layers), seed
        if len(self.schedule) != len(self.layers):
            raise ValueError(f"sparsevlm: {len(self.schedule)} schedule counts for {len(self.layers)} pruning layers")

    @classmethod
    def for_budget(cls, n_image: int, n_layers: int, k: int, seed: int = 0) -> "SparseVLMPolicy":
        """The reference schedule whose RETAIN_TOKN is nearest k * 576 / N (ties: the larger),
        each count scaled by k / RETAIN_TOKN (so N = 576 and k in {192, 128, 96, 64} give the
        reference's own), at the pruning layers 2, 6, 15 scaled to the depth
        (`scaled_pruning_layers`)."""
        return cls(budget_schedule(n_image, k), scaled_pruning_layers(n_layers), seed)

    def layer_image_tokens(self, n_image: int, n_layers: int) -> list[int]:
        return sparsevlm.layer_image_tokens(n_image, n_layers, self.schedule, self.layers)

    def start(self, embeds, valid, image_start, image_count, seeds=None) -> None:
        b = embeds.shape[0]
        seeds = list(seeds) if seeds is not None else [self.seed] * b
        self.generators = [torch.Generator(device=embeds.device).manual_seed(int(s)) for s in seeds]
        self.raters = []
        for i in range(b):
            start = int(image_start[i])
            self.raters.append(sparsevlm.raters(embeds[i, start:start + image_count], embeds[i, start + image_count:]))
        self.n_image, self.batch = image_count, b
        self.n_text = [embeds.shape[1] - int(image_start[i]) - image_count for i in range(b)]
        self.tokens_at_pruning: list[int] = []

    def scoring_flops(self, s: cost.LayerShape, i: int) -> int:
        """FLOPs of the last prompt batch's scoring for its example i (`cost.sparsevlm_score_flops`:
        its raters over its text after the image, and the tokens at each pruning layer)."""
        return cost.sparsevlm_score_flops(s, self.n_image, self.n_text[i], len(self.raters[i]),
                                          self.tokens_at_pruning[i::self.batch])

    def after_layer(self, state) -> Cut | None:
        if state.layer not in self.layers or state.image_count <= 1:
            return None
        s = self.layers.index(state.layer)
        v = state.image_count
        x = state.input_norm(state.layer, state.inputs)
        length = x.shape[1]
        keep = sparsevlm.keep_count(self.schedule, s, v)
        rows, extras = [], []
        for i, p in enumerate(state.pads()):
            start = int(state.image_start[i]) - p
            raters = self.raters[i].to(x.device) + start + v
            q, k = state.query_key(state.layer, i, x[i, p:], raters)
            scores = sparsevlm.image_scores(sparsevlm.rater_attention(q, k, raters), start, v)
            out, kept, v_new = sparsevlm.sparsevlm_step(state.hidden[i, p:], start, v, scores, keep, self.generators[i])
            extras.append(out[start + keep:start + v_new])  # the recycled tokens
            inserted = torch.arange(length, length + v_new - keep, device=x.device)
            rows.append(_splice(start + p, v, length, torch.cat([kept + start + p, inserted])))
            self.tokens_at_pruning.append(length - p)
        return Cut(torch.stack(rows), v_new, extra=torch.stack(extras))


def scaled_pruning_layers(n_layers: int) -> tuple[int, ...]:
    """SparseVLM's pruning layers 2, 6, 15 of 32 at another depth: the cuts after them (before
    layers 3, 7, 16) scaled as PyramidDrop's stage layers are (`pdrop.scaled_layers`), so every
    cut has a layer after it; 32 layers give the reference's own."""
    return tuple(b - 1 for b in pdrop.scaled_layers(n_layers, [l + 1 for l in sparsevlm.PRUNING_LAYERS]))


def budget_schedule(n_image: int, k: int) -> tuple[int, ...]:
    """SparseVLM's schedule for k of n_image tokens (see `SparseVLMPolicy.for_budget`)."""
    target = k * 576 / n_image
    base = min(sparsevlm.SCHEDULES, key=lambda r: (abs(r - target), -r))
    return tuple(max(1, int(c * k / base + 0.5)) for c in sparsevlm.SCHEDULES[base])
