"""FastV inside a decoder-only LLM, as an adapter capability (hooks, no model edits).

At decoder layer L (0-based), the last prompt token's attention over the visual tokens is
recomputed from q and k (RoPE applied as the model does, GQA keys repeated, mean over heads),
so it works under sdpa / flash attention. From layer L + 1 on, the visual tokens outside the
top K are masked out as attention keys, in the prefill and in every decoding step; the kept
tokens keep their original positions, as in FastV. Masking does not save compute in this
implementation: the cost model counts FLOPs as if the dropped tokens were removed.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import ClassVar

import torch


@dataclass
class FastVSpec:
    """layer: decoder layer whose attention ranks the visual tokens; k: visual tokens kept after it.
    kept: filled in by the adapter, per example the kept visual indices (ascending)."""

    method: ClassVar[str] = "fastv"

    layer: int
    k: int
    kept: list[torch.Tensor] = field(default_factory=list)


class FastVHooks:
    """Context manager: hooks on the decoder layers for one `generate` call.

    spans: per example (start, n) of its visual tokens in the (left-padded) input sequence.
    pads:  per example the number of left pads (keys the last token must not see).
    """

    def __init__(self, layers: list, spec: FastVSpec, spans: list[tuple[int, int]], pads: list[int]):
        if not 0 <= spec.layer < len(layers):
            raise ValueError(f"fastv layer {spec.layer} outside the LLM's {len(layers)} decoder layers")
        self.layers, self.spec, self.spans, self.pads = layers, spec, spans, pads
        self.drop: torch.Tensor | None = None  # [B, T0] keys masked from layer L + 1 on
        self.handles = []

    def __enter__(self):
        self.spec.kept = []
        self.handles.append(self.layers[self.spec.layer].self_attn.register_forward_pre_hook(self._rank, with_kwargs=True))
        for layer in self.layers[self.spec.layer + 1:]:
            self.handles.append(layer.self_attn.register_forward_pre_hook(self._mask, with_kwargs=True))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _rank(self, attn, args, kwargs):
        if self.drop is not None:  # decoding steps: the ranking is the prefill's
            return None
        h = kwargs["hidden_states"]  # [B, T, d], after input_layernorm
        cos, sin = kwargs["position_embeddings"]
        rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        b, t, _ = h.shape
        hd = attn.head_dim
        q = attn.q_proj(h[:, -1:]).view(b, 1, -1, hd).transpose(1, 2)  # [B, H, 1, hd]
        k = attn.k_proj(h).view(b, t, -1, hd).transpose(1, 2)  # [B, Hkv, T, hd]
        q, _ = rope(q, q, cos[:, -1:], sin[:, -1:])
        k, _ = rope(k, k, cos, sin)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        logits = (q.float() @ k.float().transpose(-1, -2)).squeeze(2) * attn.scaling  # [B, H, T]
        pad = torch.arange(t, device=h.device)[None, :] < torch.tensor(self.pads, device=h.device)[:, None]
        att = logits.masked_fill(pad[:, None], float("-inf")).softmax(-1).mean(1)  # [B, T]
        drop = torch.zeros(b, t, dtype=torch.bool, device=h.device)
        for i, (start, n) in enumerate(self.spans):
            s = att[i, start:start + n]
            order = torch.sort(s, descending=True, stable=True).indices  # ties to the lower index
            kept = order[: min(self.spec.k, n)].sort().values
            self.spec.kept.append(kept.cpu())
            drop[i, start:start + n] = True
            drop[i, start + kept] = False
        self.drop = drop if bool(drop.any()) else torch.zeros(b, 0, dtype=torch.bool, device=h.device)
        return None

    def _mask(self, attn, args, kwargs):
        if self.drop is None or self.drop.shape[1] == 0:  # nothing dropped: the model's own path
            return None
        h = kwargs["hidden_states"]
        b, q = h.shape[:2]
        mask = kwargs.get("attention_mask")
        kv = q if mask is None else mask.shape[-1]
        if mask is None:  # sdpa's is_causal shortcut: build the causal mask it stands for
            # the KV cache argument: `cache` in transformers 5, `past_key_values` before
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            kv = q + (cache.get_seq_length(attn.layer_idx) if cache is not None else 0)
            qpos = torch.arange(kv - q, kv, device=h.device)
            mask = (torch.arange(kv, device=h.device)[None, :] <= qpos[:, None])[None, None].expand(b, 1, q, kv)
        drop = torch.zeros(b, kv, dtype=torch.bool, device=h.device)
        drop[:, : self.drop.shape[1]] = self.drop
        drop = drop[:, None, None, :]
        if mask.dtype == torch.bool:
            mask = mask & ~drop
        else:  # an additive float mask (eager)
            mask = mask.masked_fill(drop, torch.finfo(mask.dtype).min)
        kwargs["attention_mask"] = mask
        return args, kwargs
