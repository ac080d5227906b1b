"""A staged decoder-only LLM: greedy generation where tokens leave (or join) the sequence between
decoder layers, for the in-LLM pruning methods that remove tokens rather than mask them
(PyramidDrop, DART, SparseVLM; their algorithms are pure tensor code in `prune/`).

What runs where:
  - `staged_generate(decoder, lm_head, embeds [B, T, d], attention_mask [B, T], policy, ...)`:
    the prefill runs the decoder layers one by one with the model's own layer modules (so eager
    and sdpa attention both work), each given a 4-D additive mask built here (causal in the
    current sequence order, left pads masked as keys) and the rotary embeddings of the current
    position ids. After layer l the policy may return a `Cut`: per example, indices into the
    current sequence (plus, for SparseVLM's recycling, new tokens `extra` [B, R, d] addressed
    as indices L..L+R-1) giving the next layer's sequence, and its position ids (None:
    renumbered, arange over the real tokens as PyramidDrop and SparseVLM do; else given, as
    DART keeps the kept tokens' own). Examples may keep different tokens but equal counts, so
    the batch stays rectangular and the left pads stay on the left.
  - Positions: a decoding step's position is one past the largest position the last layer saw
    (PyramidDrop, SparseVLM: the real tokens left, so it falls by what was dropped; DART: the
    prompt's own length), the same for every layer, as one position id is per token.
  - Caches: each layer's KV cache holds exactly the tokens that layer saw in the prefill, then
    each generated token; a decoding step attends, in every layer, to that layer's cache (its
    pads masked). `LayerCaches` follows the Hugging Face cache protocol the attention modules
    call (`update`), one entry per layer, and `layers[l].keys` are layer l's RoPE'd keys.
  - Policies (`PDropPolicy`, `DartPolicy`, `SparseVLMPolicy`) call the pure functions of
    `prune.pdrop`, `prune.dart`, `prune.sparsevlm` per example on its unpadded slice, so
    their choices are the reference's batch-1 choices and independent of the batch.
The prefill's FLOPs are the decoder layers over what each saw (`cost.staged_prefill_flops`),
the policies' own products (`cost.pdrop_rank_flops`, `cost.sparsevlm_score_flops`; DART reads
its keys from the cache and has none) and the LM head on the last position.
"""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field

import torch

from robust_atp.prune import dart, pdrop, sparsevlm


# ----------------------------------------------------------------------------- engine

class _LayerKV:
    def __init__(self):
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None


class LayerCaches:
    """Per-layer KV caches of different lengths: layers[l].keys / .values [B, H_kv, L_l, hd]."""

    def __init__(self, n_layers: int):
        self.layers = [_LayerKV() for _ in range(n_layers)]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        kv = self.layers[layer_idx]
        if kv.keys is None:
            kv.keys, kv.values = key_states, value_states
        else:
            kv.keys = torch.cat([kv.keys, key_states], dim=-2)
            kv.values = torch.cat([kv.values, value_states], dim=-2)
        return kv.keys, kv.values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        keys = self.layers[layer_idx].keys
        return 0 if keys is None else keys.shape[-2]


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


@dataclass
class LayerState:
    """What a policy sees after decoder layer `layer` ran: its input and output [B, L, d], the
    position ids [B, L] and their rotary embeddings (cos, sin [B, L, hd]), valid [B, L] (False
    at left pads), the image span (start [B], count), the caches so far."""

    layer: int
    inputs: torch.Tensor
    hidden: torch.Tensor
    positions: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    valid: torch.Tensor
    image_start: torch.Tensor
    image_count: int
    caches: LayerCaches

    def pads(self) -> list[int]:
        return (~self.valid).sum(1).tolist()


@dataclass
class StagedOutput:
    """tokens [B, T'] (greedy, pad after EOS), logits: one [B, V] float per step; per layer the
    prompt tokens it saw: seen[l] [B, L_l] (index in the padded prompt; -1: inserted) and
    image_tokens[l]; caches: each layer's own."""

    tokens: torch.Tensor
    logits: list[torch.Tensor]
    seen: list[torch.Tensor]
    image_tokens: list[int]
    caches: LayerCaches
    next_position: torch.Tensor = field(default=None)


class KeepAll:
    """A policy that never cuts: the model's own forward, layer by layer."""

    def start(self, decoder, embeds, valid, image_start, image_count, seeds=None) -> None:
        pass

    def after_layer(self, decoder, state: LayerState) -> Cut | None:
        return None


def _additive(allowed: torch.Tensor, dtype) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _renumber(valid: torch.Tensor) -> torch.Tensor:
    # as Hugging Face's generate numbers a left-padded prompt: real tokens 0.., pads 1
    return (valid.long().cumsum(1) - 1).masked_fill(~valid, 1)


def _cache_kwarg(layer) -> str:
    params = inspect.signature(layer.forward).parameters
    for name in ("cache", "past_key_values", "past_key_value"):
        if name in params:
            return name
    raise TypeError(f"{type(layer).__name__}.forward takes no KV cache argument")


def _check(decoder) -> None:
    for layer in decoder.layers:
        if getattr(layer.self_attn, "sliding_window", None):
            raise ValueError("staged generation does not build sliding-window masks; the LLM has sliding layers")


def staged_prefill(decoder, lm_head, embeds: torch.Tensor, attention_mask: torch.Tensor, policy,
                   image_start, image_count: int, seeds: list[int] | None = None):
    """The prefill: embeds [B, T, d], attention_mask [B, T] (1 real, 0 left pad), image_start [B]
    (padded coordinates), image_count N -> (logits of the last position [B, V] float, caches,
    per-layer valid masks, seen, image_tokens, next decoding position [B])."""
    _check(decoder)
    b, t, _ = embeds.shape
    dev = embeds.device
    valid = attention_mask.to(dev).bool()
    if bool((valid.long().diff(dim=1) < 0).any()):
        raise ValueError("attention_mask: padding must be on the left")
    image_start = torch.as_tensor(image_start, dtype=torch.long, device=dev).reshape(b)
    positions = _renumber(valid)
    origin = torch.arange(t, device=dev)[None].expand(b, t)
    policy.start(decoder, embeds, valid, image_start, image_count, seeds)
    caches = LayerCaches(len(decoder.layers))
    kw = _cache_kwarg(decoder.layers[0])
    h = embeds
    pe = decoder.rotary_emb(h, positions)
    layer_valid, seen, image_tokens = [], [], []
    for l, layer in enumerate(decoder.layers):
        n = h.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
        # a pad sees itself: no query row is all masked (its softmax would be NaN in float64 eager,
        # whose float32 softmax turns finfo(float64).min into -inf, and NaN values leak through p v)
        eye = torch.eye(n, dtype=torch.bool, device=dev)
        mask = _additive((causal[None, None] & valid[:, None, None, :]) | eye, h.dtype)
        layer_valid.append(valid)
        seen.append(origin)
        image_tokens.append(image_count)
        out = layer(h, attention_mask=mask, position_ids=positions, position_embeddings=pe, use_cache=True,
                    **{kw: caches})
        out = out[0] if isinstance(out, tuple) else out
        state = LayerState(l, h, out, positions, pe, valid, image_start, image_count, caches)
        cut = policy.after_layer(decoder, state) if l + 1 < len(decoder.layers) else None
        h = out
        if cut is not None:
            index = cut.index.to(dev)
            bank, bank_valid, bank_origin = h, valid, origin
            if cut.extra is not None:
                r = cut.extra.shape[1]
                bank = torch.cat([h, cut.extra.to(h.dtype)], 1)
                bank_valid = torch.cat([valid, valid.new_ones(b, r)], 1)
                bank_origin = torch.cat([origin, origin.new_full((b, r), -1)], 1)
            h = bank.gather(1, index[..., None].expand(-1, -1, bank.shape[-1]))
            valid = bank_valid.gather(1, index)
            origin = bank_origin.gather(1, index)
            if cut.positions is None:
                positions = _renumber(valid)
            else:
                positions = cut.positions.to(dev)
            image_count = cut.image_count
            pe = decoder.rotary_emb(h, positions)
    next_position = positions.masked_fill(~valid, -1).max(1).values + 1
    logits = lm_head(decoder.norm(h[:, -1:]))[:, 0].float()
    return logits, caches, layer_valid, seen, image_tokens, next_position


@torch.no_grad()
def staged_generate(decoder, lm_head, embed_tokens, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                    policy=None, *, image_start=None, image_count: int = 0, max_new_tokens: int = 16,
                    eos_token_ids=(), pad_token_id: int = 0, seeds: list[int] | None = None) -> StagedOutput:
    """Greedy generation through a Hugging Face decoder (`model.layers`, `.norm`, `.rotary_emb`;
    Llama, Qwen2 without sliding windows) with its `lm_head` and token embedding module.
    inputs_embeds [B, T, d] left-padded with attention_mask [B, T]; the image span of each
    example at [image_start[b], image_start[b] + image_count) in padded coordinates; policy:
    `KeepAll()` (default), `PDropPolicy`, `DartPolicy`, `SparseVLMPolicy`. Stops at
    max_new_tokens or when every example has produced an EOS (later tokens: pad_token_id)."""
    policy = policy if policy is not None else KeepAll()
    b = inputs_embeds.shape[0]
    dev = inputs_embeds.device
    if image_start is None:
        image_start = [0] * b
    logits, caches, layer_valid, seen, image_tokens, pos = staged_prefill(
        decoder, lm_head, inputs_embeds, attention_mask, policy, image_start, image_count, seeds)
    eos = torch.tensor(list(eos_token_ids), dtype=torch.long, device=dev)
    kw = _cache_kwarg(decoder.layers[0])
    unfinished = torch.ones(b, dtype=torch.bool, device=dev)
    tokens, steps = [], []
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1)
        nxt = torch.where(unfinished, nxt, torch.full_like(nxt, pad_token_id))
        tokens.append(nxt)
        steps.append(logits)
        unfinished = unfinished & ~torch.isin(nxt, eos)
        if step + 1 == max_new_tokens or not bool(unfinished.any()):
            break
        h = embed_tokens(nxt[:, None]).to(inputs_embeds.dtype)
        p = (pos + step)[:, None]
        pe = decoder.rotary_emb(h, p)
        for l, layer in enumerate(decoder.layers):
            layer_valid[l] = torch.cat([layer_valid[l], layer_valid[l].new_ones(b, 1)], 1)
            mask = _additive(layer_valid[l][:, None, None, :], h.dtype)
            out = layer(h, attention_mask=mask, position_ids=p, position_embeddings=pe, use_cache=True,
                        **{kw: caches})
            h = out[0] if isinstance(out, tuple) else out
        logits = lm_head(decoder.norm(h))[:, 0].float()
    return StagedOutput(torch.stack(tokens, 1), steps, seen, image_tokens, caches, pos)


# ----------------------------------------------------------------------------- policies

def _rope(attn):
    return sys.modules[type(attn).__module__].apply_rotary_pos_emb


def _project(attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rows: torch.Tensor):
    """One example's unpadded layer input x [L, d] (after input_layernorm), its rotary tables
    [L, hd] -> the queries of `rows` [H, R, hd] and every key [H_kv, L, hd], RoPE applied."""
    hd = attn.head_dim
    q = attn.q_proj(x[rows]).view(1, len(rows), -1, hd).transpose(1, 2)
    k = attn.k_proj(x).view(1, x.shape[0], -1, hd).transpose(1, 2)
    rope = _rope(attn)
    q, _ = rope(q, q, cos[None, rows], sin[None, rows])
    _, k = rope(k, k, cos[None], sin[None])
    return q[0], k[0]


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

    def start(self, decoder, embeds, valid, image_start, image_count, seeds=None) -> None:
        self.n_image = image_count
        self.tokens_at_ranks = []

    def after_layer(self, decoder, state: LayerState) -> Cut | None:
        if state.layer + 1 not in self.layers:
            return None
        s = self.layers.index(state.layer + 1)
        counts = pdrop.stage_counts(self.n_image, self.ratios)
        n_cur, keep = state.image_count, counts[s + 1]
        nxt = decoder.layers[state.layer + 1]
        x = nxt.input_layernorm(state.hidden)
        cos, sin = state.position_embeddings
        length = x.shape[1]
        rows = []
        for i, p in enumerate(state.pads()):
            q, k = _project(nxt.self_attn, x[i, p:], cos[i, p:], sin[i, p:], torch.tensor([length - p - 1]))
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

    def start(self, decoder, embeds, valid, image_start, image_count, seeds=None) -> None:
        self.n_image = image_count

    def after_layer(self, decoder, state: LayerState) -> Cut | None:
        if state.layer != self.layer - 1:
            return None
        n = state.image_count
        keys = state.caches.layers[state.layer].keys  # [B, H_kv, L, hd], RoPE'd
        heads = decoder.layers[state.layer].self_attn.config.num_attention_heads
        keys = keys.repeat_interleave(heads // keys.shape[1], dim=1)
        b, _, length, hd = keys.shape
        keys = keys.transpose(1, 2).reshape(b, length, -1)
        normed = decoder.norm(state.hidden)
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
        reference's own), at the pruning layers 2, 6, 15 scaled to the depth."""
        return cls(budget_schedule(n_image, k), tuple(pdrop.scaled_layers(n_layers, sparsevlm.PRUNING_LAYERS)), seed)

    def layer_image_tokens(self, n_image: int, n_layers: int) -> list[int]:
        return sparsevlm.layer_image_tokens(n_image, n_layers, self.schedule, self.layers)

    def start(self, decoder, embeds, valid, image_start, image_count, seeds=None) -> None:
        b = embeds.shape[0]
        seeds = list(seeds) if seeds is not None else [self.seed] * b
        self.generators = [torch.Generator(device=embeds.device).manual_seed(int(s)) for s in seeds]
        self.raters = []
        for i in range(b):
            start = int(image_start[i])
            self.raters.append(sparsevlm.raters(embeds[i, start:start + image_count], embeds[i, start + image_count:]))
        self.tokens_at_pruning: list[int] = []

    def after_layer(self, decoder, state: LayerState) -> Cut | None:
        if state.layer not in self.layers or state.image_count <= 1:
            return None
        s = self.layers.index(state.layer)
        v = state.image_count
        layer = decoder.layers[state.layer]
        x = layer.input_layernorm(state.inputs)
        cos, sin = state.position_embeddings
        length = x.shape[1]
        keep = sparsevlm.keep_count(self.schedule, s, v)
        rows, extras = [], []
        for i, p in enumerate(state.pads()):
            start = int(state.image_start[i]) - p
            raters = self.raters[i].to(x.device) + start + v
            q, k = _project(layer.self_attn, x[i, p:], cos[i, p:], sin[i, p:], raters)
            scores = sparsevlm.image_scores(sparsevlm.rater_attention(q, k, raters), start, v)
            out, kept, v_new = sparsevlm.sparsevlm_step(state.hidden[i, p:], start, v, scores, keep, self.generators[i])
            extras.append(out[start + keep:start + v_new])  # the recycled tokens
            inserted = torch.arange(length, length + v_new - keep, device=x.device)
            rows.append(_splice(start + p, v, length, torch.cat([kept + start + p, inserted])))
            self.tokens_at_pruning.append(length - p)
        return Cut(torch.stack(rows), v_new, extra=torch.stack(extras))


def budget_schedule(n_image: int, k: int) -> tuple[int, ...]:
    """SparseVLM's schedule for k of n_image tokens (see `SparseVLMPolicy.for_budget`)."""
    target = k * 576 / n_image
    base = min(sparsevlm.SCHEDULES, key=lambda r: (abs(r - target), -r))
    return tuple(max(1, int(c * k / base + 0.5)) for c in sparsevlm.SCHEDULES[base])
