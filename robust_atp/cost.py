"""Analytical cost: FLOPs of the LLM prefill, the vision tower and a pruning method's scorer.

Counting convention: a multiply-accumulate (MAC) is 2 FLOPs, and only matrix products are
counted (projections, attention scores and mixing, FFN); norms, softmax, RoPE and activations
are left out, which is what `torch.utils.flop_counter.FlopCounterMode` does too. Per decoder
layer over n tokens, in MACs:

    attention projections  n d (2 H hd + 2 Hkv hd)      (= 4 n d^2 with H hd = d, no GQA)
    scores and mixing      2 n^2 H hd                   (= 2 n^2 d; the full square, as sdpa counts it)
    FFN                    3 n d m  (gated: Llama, Vicuna, Qwen)   or   2 n d m  (plain MLP)

"Prefill" is the decoder layers over the prompt (text + visual tokens); the LM head is left
out (under `generate` it runs on the last position only: d x vocab MACs, the same for every
method). FastV's masked tokens are counted as removed from the layers after its cut.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerShape:
    """One transformer stack: layers, width d, FFN width m, heads, key/value heads, head dim."""

    layers: int
    d: int
    m: int
    heads: int
    kv_heads: int
    head_dim: int
    gated: bool

    @classmethod
    def from_config(cls, cfg, gated: bool | None = None) -> "LayerShape":
        """A Hugging Face text or vision config (duck-typed). Gated FFN unless the config is CLIP-like."""
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        if gated is None:
            gated = getattr(cfg, "model_type", "") not in ("clip_vision_model", "clip_text_model", "siglip_vision_model",
                                                           "opt")
        return cls(layers=cfg.num_hidden_layers, d=cfg.hidden_size, m=cfg.intermediate_size, heads=heads,
                   kv_heads=getattr(cfg, "num_key_value_heads", None) or heads, head_dim=head_dim, gated=gated)

    @property
    def ffn(self) -> str:
        return "gated FFN: 3ndm" if self.gated else "plain FFN: 2ndm"


def layer_macs(s: LayerShape, n: int) -> int:
    """MACs of one layer over n tokens (all attending each other)."""
    proj = n * s.d * (2 * s.heads * s.head_dim + 2 * s.kv_heads * s.head_dim)
    attn = 2 * n * n * s.heads * s.head_dim
    ffn = (3 if s.gated else 2) * n * s.d * s.m
    return proj + attn + ffn


def prefill_flops(s: LayerShape, n: int, n_after: int | None = None, cut: int | None = None) -> int:
    """FLOPs of the decoder layers over n prompt tokens; with FastV, layers after `cut` (0-based)
    see n_after tokens."""
    if cut is None or n_after is None:
        return 2 * s.layers * layer_macs(s, n)
    cut = min(cut, s.layers - 1)
    return 2 * ((cut + 1) * layer_macs(s, n) + (s.layers - cut - 1) * layer_macs(s, n_after))


def vision_flops(vision_cfg, n_patches: int, projector: dict | None = None) -> int:
    """CLIP-style ViT over n_patches + CLS: patch embedding, layers, and the LLaVA projector
    (`{'in', 'out', 'layers'}`: an MLP of that depth) on the n_patches tokens."""
    s = LayerShape.from_config(vision_cfg, gated=False)
    p = vision_cfg.patch_size
    macs = n_patches * vision_cfg.num_channels * p * p * s.d + s.layers * layer_macs(s, n_patches + 1)
    if projector:
        macs += n_patches * (projector["in"] * projector["out"] + (projector["layers"] - 1) * projector["out"] ** 2)
    return 2 * macs


def scorer_flops(method: str, settings: dict, n: int, k: int, *, d: int, c: int, text_cfg=None,
                 text_len: int = 0, proj: int = 0) -> int:
    """A method's own cost on top of the vision tower, per example (FLOPs).

    n tokens of LLM width d and ViT width c, k kept. CLIP relevance: the text tower over
    text_len tokens, the patches' post-norm projection (n c proj) and the similarity (n proj).
    Merging: the similarity matrices and the weighted sums. CLS attention comes from the
    vision pass (the CLS row only: n c). Selection sorts are not counted.
    """
    macs = 0
    alpha = settings.get("alpha", 1.0 if method == "clip" else 0.0)
    if method in ("atp", "clip") and alpha > 0:
        if text_cfg is not None:
            t = LayerShape.from_config(text_cfg, gated=False)
            macs += t.layers * layer_macs(t, text_len) + t.d * proj
        macs += n * c * proj + n * proj
    if method in ("atp", "cls", "visionzip") and alpha < 1:
        macs += n * c
    if method == "tome":
        m = n
        while m > k:  # each round: |A| x |B| similarities, then the merge sums
            a, b = (m + 1) // 2, m // 2
            macs += a * b * c + m * (c + d)
            m -= min(m - k, a)
    elif method == "visionzip":
        share = settings.get("contextual", 0.15625)
        k_ctx = min(max(1, int(share * k + 0.5)), k) if k < n and share > 0 else 0
        macs += (n - k + k_ctx) * k_ctx * c + (n - k + k_ctx) * d
    elif method == "divprune":
        macs += n * n * d + k * n
    elif method == "pool":
        macs += n * d
    return 2 * macs
