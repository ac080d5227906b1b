"""A CLIP-style ViT run with ToMe merging inside its blocks (an adapter capability, like FastV
inside the LLM).

As facebookresearch/ToMe's ToMeBlock (tome/patch/timm.py @ af95e4b): in every block up to the
one the projector reads, attention runs with proportional attention (log of each token's size
added to the logits, once any token stands for more than one patch), then r tokens are merged
on that block's keys averaged over heads (CLS protected), size-weighted, then the MLP runs on
the merged tokens. The matching, the merge and the schedule come from the engine (`spec`, a
`prune.tome.ToMeTower`): this module runs the tower and nothing else.
"""
from __future__ import annotations

import torch


def blocks_read(n_layers: int, feature_layer: int) -> int:
    """How many blocks the projector's input has been through: hidden_states[feature_layer]
    of a tower with n_layers blocks (index 0 is the embeddings)."""
    return n_layers + 1 + feature_layer if feature_layer < 0 else feature_layer


class _Keys:
    """Forward hook on a k_proj: keeps the keys of the call in flight."""

    def __init__(self, k_proj):
        self.out = None
        self.handle = k_proj.register_forward_hook(self._keep)

    def _keep(self, module, args, out):
        self.out = out

    def remove(self):
        self.handle.remove()


@torch.inference_mode()
def merged_tower(tower, pixel_values: torch.Tensor, spec, feature_layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """pixel_values [B, 3, S, S] -> (hidden [B, 1 + K, C]: the feature layer's tokens, CLS
    first, then ToMe's order; size [B, 1 + K]: the patches each token stands for, float).

    tower: a CLIPVisionModel (embeddings, pre_layrnorm, encoder.layers of CLIPEncoderLayer);
    spec: schedule(n_patches, blocks) -> r per block, match(metric, r, class_token) -> merge,
    merge_wavg(merge, x, size), attention_bias(size) -> additive bias, prop_attn."""
    inner = getattr(tower, "vision_model", tower)
    h = inner.pre_layrnorm(inner.embeddings(pixel_values))
    blocks = list(inner.encoder.layers)[:blocks_read(len(inner.encoder.layers), feature_layer)]
    schedule = spec.schedule(h.shape[1] - 1, len(blocks))
    size = None  # [B, T, 1] float32 once anything merged; None: every token is one patch
    for block, r in zip(blocks, schedule):
        attn = block.self_attn
        bias = spec.attention_bias(size).to(h.dtype) if spec.prop_attn and size is not None else None
        keys = _Keys(attn.k_proj)
        try:
            out, _ = attn(hidden_states=block.layer_norm1(h), attention_mask=bias)
        finally:
            keys.remove()
        h = h + out
        if r > 0:
            b, t, _ = h.shape
            metric = keys.out.view(b, t, attn.num_heads, attn.head_dim).mean(2)  # keys averaged over heads
            merge, _ = spec.match(metric, r, class_token=True)
            if size is None:
                size = torch.ones(b, t, 1, dtype=torch.float32, device=h.device)
            merged, size = spec.merge_wavg(merge, h.float() if h.dtype != torch.float32 else h, size)
            h = merged.to(h.dtype)
        h = h + block.mlp(block.layer_norm2(h))
    if size is None:
        size = torch.ones(h.shape[0], h.shape[1], 1, dtype=torch.float32, device=h.device)
    return h, size[..., 0]
