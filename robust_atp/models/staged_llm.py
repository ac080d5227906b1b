"""A staged decoder-only LLM: greedy generation where tokens leave (or join) the sequence between
decoder layers, for the in-LLM pruning methods that remove tokens rather than mask them
(PyramidDrop, DART, SparseVLM: their decisions are `prune.staged` policies over the pure
functions of `prune/`; this module knows a policy by protocol only).

What runs where:
  - `staged_generate(decoder, lm_head, embed_tokens, embeds [B, T, d], attention_mask [B, T],
    policy, image_start=[B], image_count=N, ...)`: the prefill runs the decoder layers one by one
    with the model's own layer modules (so eager and sdpa attention both work), each given a 4-D
    additive mask built here (causal in the current sequence order, left pads masked as keys)
    and the rotary embeddings of the current position ids. After layer l, `policy.after_layer(
    LayerState)` may return a cut (attributes index [B, L'], image_count, positions, extra): per
    example, indices into the current sequence (from L on, into the new tokens `extra` [B, R, d],
    SparseVLM's recycled ones) giving the next layer's sequence, and its position ids (None:
    renumbered over the real tokens, as PyramidDrop and SparseVLM do; else given, as DART keeps
    the kept tokens' own). Examples may keep different tokens but equal counts, so the batch
    stays rectangular and the left pads stay on the left.
  - Positions: a decoding step's position in layer l is one past the largest position layer l saw
    in the prefill, plus the tokens generated before it. PyramidDrop and SparseVLM renumber, so it
    is that layer's sequence length and falls, stage by stage, by what was dropped before the layer
    (pdrop_forward subtracts each stage's drop from the decoding position_ids; SparseVLM's
    attention takes its layer's own cache length); DART keeps positions: the prompt's length in
    every layer.
  - Caches: each layer's KV cache holds exactly the tokens that layer saw in the prefill, then
    each generated token; a decoding step attends, in every layer, to that layer's cache (its
    pads masked). `LayerCaches` follows the Hugging Face cache protocol the attention modules
    call (`update`), one entry per layer; `layers[l].keys` are layer l's RoPE'd keys.
  - `LayerState` gives a policy the model's norms, q / k projections with RoPE and cached keys
    as methods, so policies hold no model code.
The prefill's FLOPs are the decoder layers over what each saw (`cost.staged_prefill_flops`),
the policies' own products (`cost.pdrop_rank_flops`, `cost.sparsevlm_score_flops`; DART reads
its keys from the cache and has none) and the LM head on the last position.
"""
from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field

import torch


# ----------------------------------------------------------------------------- caches, state, staged forward

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
class LayerState:
    """What a policy sees after decoder layer `layer` ran: its input and output [B, L, d], the
    position ids [B, L], valid [B, L] (False at left pads), the image span (start [B], count);
    and, through its methods, the model's own norms, projections, rotary embeddings and caches
    (so a policy needs no model code)."""

    layer: int
    inputs: torch.Tensor
    hidden: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    image_start: torch.Tensor
    image_count: int
    n_layers: int
    _decoder: object = field(repr=False)
    _rotary: tuple[torch.Tensor, torch.Tensor] = field(repr=False)
    _caches: LayerCaches = field(repr=False)

    def pads(self) -> list[int]:
        """Left pads per example: example i's real tokens are [pads[i], L)."""
        return (~self.valid).sum(1).tolist()

    def input_norm(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Decoder layer `layer`'s input_layernorm of x [..., d]."""
        return self._decoder.layers[layer].input_layernorm(x)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The model's final norm (before the LM head) of x [..., d]."""
        return self._decoder.norm(x)

    def query_key(self, layer: int, i: int, x: torch.Tensor, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """Example i's unpadded input of layer `layer` after its input_layernorm, x [L_i, d] ->
        (the queries of `rows` [H, R, hd], every key [H_kv, L_i, hd]), from that layer's q_proj /
        k_proj, RoPE at the example's current positions, as its attention computes them."""
        attn = self._decoder.layers[layer].self_attn
        p = self.valid.shape[1] - x.shape[0]
        cos, sin = (t[i, p:] for t in self._rotary)
        rows = torch.as_tensor(rows, dtype=torch.long, device=x.device)
        hd = attn.head_dim
        q = attn.q_proj(x[rows]).view(1, len(rows), -1, hd).transpose(1, 2)
        k = attn.k_proj(x).view(1, x.shape[0], -1, hd).transpose(1, 2)
        rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        q, _ = rope(q, q, cos[None, rows], sin[None, rows])
        _, k = rope(k, k, cos[None], sin[None])
        return q[0], k[0]

    def cached_keys(self, layer: int) -> torch.Tensor:
        """Layer `layer`'s keys over this prefill's tokens as its attention used them: RoPE
        applied, repeated over the KV groups, heads concatenated: [B, L, H hd]. No product."""
        keys = self._caches.layers[layer].keys  # [B, H_kv, L, hd]
        heads = self._decoder.layers[layer].self_attn.config.num_attention_heads
        keys = keys.repeat_interleave(heads // keys.shape[1], dim=1)  # as the model's repeat_kv
        return keys.transpose(1, 2).reshape(keys.shape[0], keys.shape[2], -1)


@dataclass
class StagedOutput:
    """tokens [B, T'] (greedy, pad after EOS), logits: one [B, V] float per step; per layer the
    prompt tokens it saw: seen[l] [B, L_l] (index in the padded prompt; -1: inserted) and
    image_tokens[l]; caches: each layer's own; next_positions[l] [B]: the position of the first
    generated token in layer l (each later one adds 1)."""

    tokens: torch.Tensor
    logits: list[torch.Tensor]
    seen: list[torch.Tensor]
    image_tokens: list[int]
    caches: LayerCaches
    next_positions: list[torch.Tensor] = field(default_factory=list)


@dataclass
class StagedSpec:
    """An in-LLM method that drops tokens between decoder layers, as an adapter's `in_llm`
    request (`generate(..., in_llm=spec)`): method: its name (for errors); policy: a
    `prune.staged` policy; seeds: one per example (SparseVLM's clustering jitter).
    Filled in by the adapter: kept, per example the image tokens that reach the last decoder
    layer (indices into the N image tokens, ascending; SparseVLM's recycled tokens are no single
    image token and are not among them), and image_tokens, per decoder layer the image tokens it
    ran on (recycled ones included; the same for every example)."""

    method: str
    policy: object
    seeds: list[int] | None = None
    kept: list[torch.Tensor] = field(default_factory=list)
    image_tokens: list[int] = field(default_factory=list)


def surviving_image_tokens(seen: torch.Tensor, image_start, image_count: int) -> list[torch.Tensor]:
    """seen [B, L] (a layer's `StagedOutput.seen`), the image span per example (padded
    coordinates) -> per example the original image tokens among them (indices into the span,
    ascending)."""
    out = []
    for row, start in zip(seen.tolist(), image_start):
        out.append(torch.tensor(sorted(v - int(start) for v in row if int(start) <= v < int(start) + image_count),
                                dtype=torch.long))
    return out


class KeepAll:
    """A policy that never cuts: the model's own forward, layer by layer."""

    def start(self, embeds, valid, image_start, image_count, seeds=None) -> None:
        pass

    def after_layer(self, state: LayerState):
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


def _last_position_only(layer, h: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, pe, caches,
                        index: int, kw: str) -> torch.Tensor:
    """The last decoder layer of a prefill where only the last position's output is read (the
    next token's logits): the keys and values of every other position, which the decoding steps
    attend to, from the layer's own input norm, k / v projections and rotary embedding, as its
    attention computes them; then the layer itself on the last position over all of them, as a
    decoding step runs. Skips that layer's queries, attention, output projection and MLP on the
    other T - 1 positions. -> its output [B, 1, d]."""
    attn = layer.self_attn
    x = layer.input_layernorm(h[:, :-1])
    b, t, _ = x.shape
    hd = attn.head_dim
    keys = attn.k_proj(x).view(b, t, -1, hd).transpose(1, 2)
    values = attn.v_proj(x).view(b, t, -1, hd).transpose(1, 2)
    cos, sin = pe
    rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    _, keys = rope(keys, keys, cos[:, :-1], sin[:, :-1])
    caches.update(keys, values, index)
    out = layer(h[:, -1:], attention_mask=mask[:, :, -1:, :], position_ids=positions[:, -1:],
                position_embeddings=(cos[:, -1:], sin[:, -1:]), use_cache=True, **{kw: caches})
    return out[0] if isinstance(out, tuple) else out


def staged_prefill(decoder, lm_head, embeds: torch.Tensor, attention_mask: torch.Tensor, policy,
                   image_start, image_count: int, seeds: list[int] | None = None, lean: bool = False,
                   past: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
    """The prefill: embeds [B, T, d], attention_mask [B, T] (1 real, 0 left pad), image_start [B]
    (padded coordinates), image_count N -> (logits of the last position [B, V] float, caches,
    per-layer valid masks, seen, image_tokens, next decoding positions per layer [B]).
    lean: the last layer runs only what the logits and the cache need (`_last_position_only`).
    past: per layer the (keys, values) [B, H_kv, P, hd] of P earlier tokens, all real, at
    positions 0..P-1 (a `kv_prefix.PrefixCache`; never written to): the T tokens continue them
    (their real ones at positions P.., as Hugging Face numbers a prompt continuing a cache); no
    policy may cut then."""
    _check(decoder)
    b, t, _ = embeds.shape
    dev = embeds.device
    valid = attention_mask.to(dev).bool()
    if bool((valid.long().diff(dim=1) < 0).any()):
        raise ValueError("attention_mask: padding must be on the left")
    image_start = torch.as_tensor(image_start, dtype=torch.long, device=dev).reshape(b)
    p = 0 if past is None else past[0][0].shape[2]
    positions = _renumber(valid)
    if p:
        positions = torch.where(valid, positions + p, positions)
    origin = torch.arange(t, device=dev)[None].expand(b, t)
    policy.start(embeds, valid, image_start, image_count, seeds)
    caches = LayerCaches(len(decoder.layers))
    if past is not None:
        if len(past) != len(decoder.layers):
            raise ValueError(f"past: {len(past)} layers of keys and values for a decoder of {len(decoder.layers)}")
        for kv, (keys, values) in zip(caches.layers, past):
            kv.keys, kv.values = keys, values
    kw = _cache_kwarg(decoder.layers[0])
    h = embeds
    pe = decoder.rotary_emb(h, positions)
    layer_valid, seen, image_tokens, next_positions = [], [], [], []
    mask = None  # the same for every layer until a cut changes the sequence
    for l, layer in enumerate(decoder.layers):
        n = h.shape[1]
        if mask is None:
            causal = torch.ones(n, n, dtype=torch.bool, device=dev).tril()
            # a pad sees itself: no query row is all masked (its softmax would be NaN in float64 eager,
            # whose float32 softmax turns finfo(float64).min into -inf, and NaN values leak through p v)
            eye = torch.eye(n, dtype=torch.bool, device=dev)
            allowed = (causal[None, None] & valid[:, None, None, :]) | eye
            keys_valid = valid
            if p:  # every earlier token is seen by every new one
                allowed = torch.cat([allowed.new_ones(b, 1, n, p), allowed], -1)
                keys_valid = torch.cat([valid.new_ones(b, p), valid], 1)
            mask = _additive(allowed, h.dtype)
            step_positions = positions.masked_fill(~valid, -1).max(1).values + 1
        layer_valid.append(keys_valid)
        seen.append(origin)
        image_tokens.append(image_count)
        next_positions.append(step_positions)
        if lean and l + 1 == len(decoder.layers) and n > 1:  # no policy reads the last layer's output
            h = _last_position_only(layer, h, mask, positions, pe, caches, l, kw)
            break
        out = layer(h, attention_mask=mask, position_ids=positions, position_embeddings=pe, use_cache=True,
                    **{kw: caches})
        out = out[0] if isinstance(out, tuple) else out
        state = LayerState(l, h, out, positions, valid, image_start, image_count, len(decoder.layers), decoder, pe,
                           caches)
        cut = policy.after_layer(state) if l + 1 < len(decoder.layers) else None
        h = out
        if cut is not None and p:
            raise ValueError("staged_prefill: a policy cut tokens of a prompt that continues a cache (past)")
        if cut is not None:
            mask = None
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
    logits = lm_head(decoder.norm(h[:, -1:]))[:, 0].float()
    return logits, caches, layer_valid, seen, image_tokens, next_positions


@torch.no_grad()
def staged_generate(decoder, lm_head, embed_tokens, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                    policy=None, *, image_start=None, image_count: int = 0, max_new_tokens: int = 16,
                    eos_token_ids=(), pad_token_id: int = 0, seeds: list[int] | None = None,
                    lean: bool = False, past: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> StagedOutput:
    """Greedy generation through a Hugging Face decoder (`model.layers`, `.norm`, `.rotary_emb`;
    Llama, Qwen2 without sliding windows) with its `lm_head` and token embedding module.
    inputs_embeds [B, T, d] left-padded with attention_mask [B, T]; the image span of each
    example at [image_start[b], image_start[b] + image_count) in padded coordinates; policy:
    `KeepAll()` (default) or a `prune.staged` policy (`PDropPolicy`, `DartPolicy`,
    `SparseVLMPolicy`). Stops at
    max_new_tokens or when every example has produced an EOS (later tokens: pad_token_id).
    seeds: one per example, handed to the policy (SparseVLM's clustering jitter).
    lean: the prefill's last layer on the last position only (`_last_position_only`); the same
    tokens (tests/test_lean_decode.py), about a quarter less prefill on a 4-layer decoder.
    past: per layer the keys and values of earlier tokens the prompt continues (`staged_prefill`)."""
    policy = policy if policy is not None else KeepAll()
    b = inputs_embeds.shape[0]
    dev = inputs_embeds.device
    if image_start is None:
        image_start = [0] * b
    logits, caches, layer_valid, seen, image_tokens, next_positions = staged_prefill(
        decoder, lm_head, inputs_embeds, attention_mask, policy, image_start, image_count, seeds, lean=lean, past=past)
    eos = torch.tensor(list(eos_token_ids), dtype=torch.long, device=dev)
    kw = _cache_kwarg(decoder.layers[0])
    # layers between two cuts saw the same tokens (one valid mask, one position): their step masks are one
    first = [next(j for j in range(l + 1) if layer_valid[j] is layer_valid[l]) for l in range(len(layer_valid))]
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
        masks, rotary = {}, {}
        for l, layer in enumerate(decoder.layers):
            j = first[l]
            if j == l:
                p = (next_positions[l] + step)[:, None]
                layer_valid[l] = torch.cat([layer_valid[l], layer_valid[l].new_ones(b, 1)], 1)
                masks[l] = _additive(layer_valid[l][:, None, None, :], h.dtype)
                rotary[l] = (p, decoder.rotary_emb(h, p))
            else:
                layer_valid[l] = layer_valid[j]
            p, pe = rotary[j]
            out = layer(h, attention_mask=masks[j], position_ids=p, position_embeddings=pe,
                        use_cache=True, **{kw: caches})
            h = out[0] if isinstance(out, tuple) else out
        logits = lm_head(decoder.norm(h))[:, 0].float()
    return StagedOutput(torch.stack(tokens, 1), steps, seen, image_tokens, caches, next_positions)
