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
method). FastV's masked tokens are counted as removed from the layers after its cut; the
in-LLM methods that drop between layers (PyramidDrop, SparseVLM, DART) count each layer over the
tokens it runs on (`staged_prefill_flops`) plus their own ranking products (DART's are none: its
L1 norms and cosines are elementwise).

Measured cost (the second half of this module): a device-synchronised clock, medians of
repeats after warm-up, peak memory, KV-cache bytes and FLOPs counted by torch's
`FlopCounterMode` (with the CPU sdpa kernel given the formula torch already has for the
other sdpa kernels, so counting works under sdpa as well as eager attention).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


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


def fastv_rank_flops(s: LayerShape, n: int) -> int:
    """FLOPs of FastV's ranking at its layer over n prompt tokens: the last token's query
    (d x H hd), every token's key (n d x Hkv hd) and the scores (H n hd)."""
    return 2 * (s.d * s.heads * s.head_dim + n * s.d * s.kv_heads * s.head_dim + s.heads * n * s.head_dim)


def staged_prefill_flops(s: LayerShape, text: int, image_per_layer: list[int]) -> int:
    """FLOPs of the decoder layers when layer l sees text + image_per_layer[l] tokens: the
    in-LLM methods that drop image tokens between layers (PyramidDrop, SparseVLM, DART; their
    `layer_image_tokens` give the counts), each layer over what it actually runs on."""
    if len(image_per_layer) != s.layers:
        raise ValueError(f"{len(image_per_layer)} layer counts for {s.layers} decoder layers")
    return 2 * sum(layer_macs(s, text + v) for v in image_per_layer)


def pdrop_rank_flops(s: LayerShape, tokens_at_ranks: list[int]) -> int:
    """PyramidDrop's rankings, one per stage boundary over the tokens there: the next layer's
    query of the last instruction token and every token's key, and the scores (FastV's count;
    the reference also projects every token's query and value there, which is not needed)."""
    return sum(fastv_rank_flops(s, n) for n in tokens_at_ranks)


def sparsevlm_score_flops(s: LayerShape, n_image: int, n_text: int, raters: int, tokens_at_pruning: list[int]) -> int:
    """SparseVLM's own matrix products: choosing the raters (image x text embeddings: V T d) and,
    at each pruning layer over n tokens, the raters' queries, every key and the R x n scores.
    Its recycling (DPC-kNN over distances, index sums) has no matrix product: not counted."""
    macs = n_image * n_text * s.d
    for n in tokens_at_pruning:
        macs += raters * s.d * s.heads * s.head_dim + n * s.d * s.kv_heads * s.head_dim + s.heads * raters * n * s.head_dim
    return 2 * macs


def vision_flops(vision_cfg, n_patches: int, projector: dict | None = None) -> int:
    """CLIP-style ViT over n_patches + CLS: patch embedding, layers, and the LLaVA projector
    (`{'in', 'out', 'layers'}`: an MLP of that depth) on the n_patches tokens."""
    s = LayerShape.from_config(vision_cfg, gated=False)
    p = vision_cfg.patch_size
    macs = n_patches * vision_cfg.num_channels * p * p * s.d + s.layers * layer_macs(s, n_patches + 1)
    return 2 * macs + projector_flops(projector, n_patches)


def projector_flops(projector: dict | None, n: int) -> int:
    """The LLaVA projector (`{'in', 'out', 'layers'}`: an MLP of that depth) over n tokens."""
    if not projector:
        return 0
    return 2 * n * (projector["in"] * projector["out"] + (projector["layers"] - 1) * projector["out"] ** 2)


def tome_tower_flops(vision_cfg, n_patches: int, schedule: list[int], projector: dict | None = None) -> int:
    """A CLIP-style ViT run with ToMe merging (one crop): the patch embedding, then block l over
    t_l tokens (CLS included) for its attention and t_l - r_l for its MLP (ToMe merges between
    them), for the len(schedule) blocks the projector reads; the projector over what is left."""
    s = LayerShape.from_config(vision_cfg, gated=False)
    p = vision_cfg.patch_size
    macs = n_patches * vision_cfg.num_channels * p * p * s.d
    ffn = lambda n: 2 * n * s.d * s.m  # a plain MLP, as in layer_macs
    t = n_patches + 1
    for r in schedule:
        macs += layer_macs(s, t) - ffn(t) + ffn(t - r)
        t -= r
    return 2 * macs + projector_flops(projector, t - 1)


def scorer_flops(method: str, settings: dict, n: int, k: int, *, d: int, c: int, text_cfg=None,
                 text_len: int = 0, proj: int = 0, head_dim: int = 0, crops: int = 1, patches: int | None = None,
                 schedule: list[int] | None = None, split: tuple[int, int] | None = None,
                 picks: int | None = None) -> int:
    """A method's own cost on top of the vision tower, per example (FLOPs).

    n tokens of LLM width d and ViT width c, k kept. CLIP relevance: the text tower over
    text_len tokens, the patches' post-norm projection (n c proj) and the similarity (n proj).
    Merging: the similarity matrices and the weighted sums. CLS attention comes from the
    vision pass (the CLS row only: n c). Selection sorts are not counted.
    In-tower and official merges (per crop of `patches` patches, `crops` crops): `tome` the
    matching in each block of `schedule` (|A| x |B| cosines of head_dim keys); `visionzip` with
    `split` (dominant incl. CLS, contextual) the key cosines to the targets and the one-hot sums.
    `prumerge_plus` (k = its K' + 1 tokens): the last ViT layer's whole one-head attention matrix
    ((n + 1)^2 c) and each kept token's key cosines to the n - 1 others (its attention-weighted
    sums are elementwise products, which this convention leaves out). `cdpruner` (picks: the tokens
    its MAP loop picks): the CLIP projection of the n patches (n c proj), their relevance to the
    text, the n x n cosine kernel of the LLM-side tokens (n^2 d) and the MAP updates (pick i
    reads i earlier rows of n: n picks (picks - 1) / 2).
    """
    macs = 0
    alpha = settings.get("alpha", 1.0 if method == "clip" else 0.0)
    if method == "cdpruner" or (method in ("atp", "clip") and alpha > 0):
        if text_cfg is not None:
            t = LayerShape.from_config(text_cfg, gated=False)
            macs += t.layers * layer_macs(t, text_len) + t.d * proj
        macs += n * c * proj + n * proj
    if method in ("atp", "cls", "visionzip", "visionzip_mean") and alpha < 1:
        macs += n * c
    if method == "tome" and schedule is not None:
        t = (patches if patches is not None else n) + 1
        for r in schedule:
            if r > 0:
                macs += crops * (((t + 1) // 2) * (t // 2) * head_dim + t * c)
            t -= r
    elif method == "tome_posthoc":
        m = n
        while m > k:  # each round: |A| x |B| similarities, then the merge sums
            a, b = (m + 1) // 2, m // 2
            macs += a * b * c + m * (c + d)
            m -= min(m - k, a)
    elif method == "visionzip" and split is not None:
        rest = (patches if patches is not None else n) + 1 - split[0]
        ctx = min(split[1], rest)
        macs += crops * ((rest - ctx) * ctx * (head_dim + c))
    elif method == "visionzip_mean":
        share = settings.get("contextual", 0.15625)
        k_ctx = min(max(1, int(share * k + 0.5)), k) if k < n and share > 0 else 0
        macs += (n - k + k_ctx) * k_ctx * c + (n - k + k_ctx) * d
    elif method == "prumerge_plus":
        macs += (n + 1) ** 2 * c + (k - 1) * (n - 1) * c
    elif method == "cdpruner":
        t = picks if picks is not None else k
        macs += n * n * d + n * t * (t - 1) // 2
    elif method == "divprune":
        macs += n * n * d + k * n
    elif method == "pool":
        macs += n * d
    return 2 * macs


# ----------------------------------------------------------------------------- measured cost

class Clock:
    """Seconds since an arbitrary origin, after waiting for the device's queued work (cuda)."""

    def __init__(self, device):
        self.device = torch.device(device)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter()


def median_seconds(fn: Callable[[], object], clock: Clock, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn() over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs torch's FlopCounterMode counts while fn() runs (matrix products, 2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    aten = torch.ops.aten
    # the CPU sdpa kernel has no formula in torch; it computes what the other sdpa kernels do
    extra = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        formula = flop_registry[aten._scaled_dot_product_flash_attention]
        extra[aten._scaled_dot_product_flash_attention_for_cpu] = _raw(formula)
    with FlopCounterMode(display=False, custom_mapping=extra) as fc, torch.inference_mode():
        fn()
    return int(fc.get_total_flops())


def _raw(formula):
    """A registry entry already takes raw tensors (it is shape-wrapped): a copy marked so, or
    FlopCounterMode would wrap it twice (torch's own entry is left untouched)."""
    def f(*args, **kwargs):
        return formula(*args, **kwargs)
    f._get_raw = True
    return f


def kv_cache_bytes(cache) -> int:
    """Bytes of the key and value tensors a Hugging Face cache holds (legacy tuples too)."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        pairs = [(getattr(l, "keys", None), getattr(l, "values", None)) for l in layers]
    else:
        pairs = list(cache)
    return sum(t.numel() * t.element_size() for pair in pairs for t in pair[:2] if isinstance(t, torch.Tensor))


def kv_cache_bytes_expected(s: LayerShape, seq: int, dtype_bytes: int, batch: int = 1) -> int:
    """2 (key, value) x layers x kv heads x head dim x sequence x bytes per element."""
    return 2 * s.layers * s.kv_heads * s.head_dim * seq * dtype_bytes * batch


class PeakMemory:
    """Context manager: peak memory in MB over its block. cuda: max allocated by torch on the
    device (reset at entry); elsewhere the process's peak resident set size, a high-water mark
    of the whole process since it started (`kind` says which)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.kind = "cuda_max_allocated" if self.device.type == "cuda" else "process_peak_rss"
        self.mb: float | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mb = _peak_rss_mb()


def _peak_rss_mb() -> float:
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux, bytes on macOS
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    except ImportError:  # no getrusage (Windows): the current resident set
        import psutil

        return psutil.Process().memory_info().rss / 2**20
