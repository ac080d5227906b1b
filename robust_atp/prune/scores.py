"""Token scores: ViT CLS attention (saliency), CLIP text-patch relevance, normalisers.

Pure tensor code. Shapes: B examples, L ViT layers, H heads, N patch tokens, P CLIP dim.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cls_attention(attn: torch.Tensor, layer: int = -2, heads: str = "mean") -> torch.Tensor:
    """CLS -> patch attention of one layer, reduced over heads.

    attn: [B, L, H, N] (the CLS row of every layer, CLS column dropped) -> [B, N].
    The paper's "sum over j of Attention_ij" is a softmax row (always 1); the CLS row is
    what carries saliency.
    """
    a = attn[:, layer].float()
    if heads == "mean":
        return a.mean(1)
    if heads == "max":
        return a.amax(1)
    raise ValueError(f"heads must be 'mean' or 'max', got {heads!r}")


def clip_relevance(patches: torch.Tensor, text: torch.Tensor, sign: int = 1) -> torch.Tensor:
    """Cosine similarity of each projected patch with the text embedding.

    patches: [B, N, P], text: [B, P] -> [B, N], multiplied by `sign` (+1 or -1).
    """
    sim = torch.einsum("bnp,bp->bn", F.normalize(patches.float(), dim=-1), F.normalize(text.float(), dim=-1))
    return sim * sign


# NaN scores (a degenerate attention map, an all-zero embedding) stay NaN through the
# normalisers without spoiling the rest of their row, and selection ranks them last.

def minmax(x: torch.Tensor) -> torch.Tensor:
    """[B, N] -> [B, N] in [0, 1]; a constant row maps to zeros; NaN stays NaN."""
    nan = x.isnan()
    lo = x.masked_fill(nan, float("inf")).amin(-1, keepdim=True)
    hi = x.masked_fill(nan, float("-inf")).amax(-1, keepdim=True)
    span = hi - lo
    out = torch.where(span > 0, (x - lo) / span.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))
    return out.masked_fill(nan, float("nan"))


def zscore(x: torch.Tensor) -> torch.Tensor:
    """[B, N] -> [B, N], zero mean and unit (population) std per row over its finite values; a
    constant row maps to zeros; NaN stays NaN."""
    nan = x.isnan()
    n = (~nan).sum(-1, keepdim=True).clamp_min(1)
    mu = x.masked_fill(nan, 0).sum(-1, keepdim=True) / n
    sd = ((x - mu).masked_fill(nan, 0) ** 2).sum(-1, keepdim=True).div(n).sqrt()
    out = torch.where(sd > 0, (x - mu) / sd.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(x))
    return out.masked_fill(nan, float("nan"))


def rank(x: torch.Tensor) -> torch.Tensor:
    """[B, N] -> [B, N] in [0, 1]: average ranks (tied values share the mean of their ranks, as
    scipy.stats.rankdata's default), min-max scaled, so a constant row maps to zeros and ties
    stay ties (selection then breaks them toward the lower index). NaN ranks lowest."""
    n = x.shape[-1]
    v = x.masked_fill(x.isnan(), float("-inf"))
    order = torch.sort(v, dim=-1, stable=True).indices
    ranked = torch.gather(v, -1, order)
    starts = torch.ones_like(ranked, dtype=torch.bool)
    starts[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    run = starts.long().cumsum(-1) - 1  # which run of equal values each sorted position is in
    pos = torch.arange(n, device=x.device, dtype=torch.float64).expand(x.shape[0], n)
    first = torch.full(x.shape, float(n), dtype=torch.float64, device=x.device).scatter_reduce(-1, run, pos, "amin")
    last = torch.zeros(x.shape, dtype=torch.float64, device=x.device).scatter_reduce(-1, run, pos, "amax")
    mean_rank = torch.gather((first + last) / 2, -1, run)
    out = torch.empty_like(mean_rank).scatter_(-1, order, mean_rank)
    return minmax(out).to(x.dtype)


NORMALIZERS = {"minmax": minmax, "zscore": zscore, "rank": rank}


def atp_scores(saliency: torch.Tensor | None, relevance: torch.Tensor | None, alpha: float,
               normalizer: str = "minmax") -> torch.Tensor:
    """S = alpha * N(relevance) + (1 - alpha) * N(saliency), both [B, N] -> [B, N].

    alpha multiplies the CLIP term, as in the paper; a term with zero weight may be None.
    """
    norm = NORMALIZERS[normalizer]
    out = 0.0
    if alpha > 0:
        out = out + alpha * norm(relevance)
    if alpha < 1:
        out = out + (1 - alpha) * norm(saliency)
    return out
