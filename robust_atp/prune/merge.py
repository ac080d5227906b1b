"""What a method hands the LLM (`Kept`), and the post-hoc merging operators of `tome_posthoc`
(bipartite soft matching repeated down to k), `pool` (grid cells) and `visionzip_mean` (a
contextual merge); the official ToMe and VisionZip are `tome.py` and `visionzip.py`.

Pure tensor code, one example at a time. Shapes: N tokens, D LLM-side width, C metric width.
Merging happens in the space the LLM reads (post-projector `vision.tokens`): the LLM then sees
exactly the size-weighted mean of the tokens each merged token stands for. Similarity is
measured on a separate `metric` (the ViT features the projector reads), as ToMe matches on
keys rather than on what it averages.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Kept:
    """One example's visual tokens for the LLM.

    indices: [K] ascending indices into the N tokens, or None when tokens were merged
    tokens:  [K, D] what the LLM sees
    sizes:   [K] how many original tokens each stands for (ones for a selection)
    """

    indices: torch.Tensor | None
    tokens: torch.Tensor
    sizes: torch.Tensor

    @classmethod
    def select(cls, tokens: torch.Tensor, idx: torch.Tensor) -> "Kept":
        """tokens [N, D], idx [K] -> the selected tokens, sizes 1."""
        return cls(idx, tokens[idx], torch.ones(len(idx), dtype=torch.long, device=tokens.device))

    def __len__(self) -> int:
        return self.tokens.shape[0]


def merge_groups(x: torch.Tensor, size: torch.Tensor, group: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted means of x [N, C] over a partition `group` [N] into k non-empty groups.

    Returns (means [k, C], sizes [k]); sum(sizes * means) == sum(size * x) by construction.
    A one-hot matmul rather than index_add_: deterministic, and far faster on a busy CPU.
    """
    onehot = F.one_hot(group, k).T  # [k, N]
    sizes = onehot @ size
    sums = onehot.to(x.dtype) @ (x * size.to(x.dtype)[:, None])
    return sums / sizes.to(x.dtype)[:, None], sizes


def bipartite_merge(metric: torch.Tensor, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ToMe bipartite soft matching, repeated until k tokens remain.

    metric [N, C] (matched by cosine), x [N, D] (averaged) -> (x [k, D], sizes [k], pos [k]).
    Each round splits the tokens alternately into A and B, links every A token to its most
    similar B token, and merges the r = min(n - k, |A|) best-linked A tokens into their
    partners (size-weighted, as ToMe's proportional attention assumes). `pos` is the original
    index of each surviving token; the output is in that order. Ties go to the lower index.
    """
    n = x.shape[0]
    k = max(1, min(k, n))
    size = torch.ones(n, dtype=torch.long, device=x.device)
    pos = torch.arange(n, device=x.device)
    m = metric.float()
    while x.shape[0] > k:
        n = x.shape[0]
        a, b = torch.arange(0, n, 2, device=x.device), torch.arange(1, n, 2, device=x.device)
        r = min(n - k, len(a))
        sim = F.normalize(m[a], dim=-1) @ F.normalize(m[b], dim=-1).T  # [Na, Nb]
        best, dst = sim.max(-1)  # first maximum: ties to the lower B index
        order = torch.sort(-best, stable=True).indices  # best-linked first, ties to the lower A index
        src, stay = a[order[:r]], a[order[r:]]
        # groups: B tokens are 0..Nb-1, merged A tokens join their partner, the rest follow
        group = torch.empty(n, dtype=torch.long, device=x.device)
        group[b] = torch.arange(len(b), device=x.device)
        group[src] = dst[order[:r]]
        group[stay] = len(b) + torch.arange(len(stay), device=x.device)
        g = len(b) + len(stay)
        new_pos = torch.cat([pos[b], pos[stay]])
        x, _ = merge_groups(x, size, group, g)
        m, size = merge_groups(m, size, group, g)
        order = torch.argsort(new_pos)
        x, m, size, pos = x[order], m[order], size[order], new_pos[order]
    return x, size, pos


def grid_groups(grid: tuple[int, int], k: int) -> tuple[torch.Tensor, int]:
    """A rows x cols patch grid partitioned into about k rectangular cells of near-equal size.

    Returns (group [N] row-major cell id per patch, number of cells). Cells partition the grid
    (no overlap, unlike adaptive average pooling), so pooled means keep the total mass.
    """
    rows, cols = grid
    k = max(1, min(k, rows * cols))
    r = max(1, min(rows, math.floor(rows * math.sqrt(k / (rows * cols)) + 0.5)))
    c = max(1, min(cols, math.floor(k / r + 0.5)))
    ri = torch.arange(rows) * r // rows
    ci = torch.arange(cols) * c // cols
    return (ri[:, None] * c + ci[None, :]).flatten(), r * c


def contextual_merge(metric: torch.Tensor, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip's contextual tokens: k evenly spaced targets among the given tokens; every
    other token joins its most similar target (cosine on metric), size-weighted.

    metric [M, C], x [M, D] -> (x [k, D], sizes [k]); the tokens' order is their original order.
    """
    n = x.shape[0]
    k = max(1, min(k, n))
    targets = torch.floor((torch.arange(k, dtype=torch.float64) + 0.5) * n / k).long().to(x.device)
    sim = F.normalize(metric.float(), dim=-1) @ F.normalize(metric[targets].float(), dim=-1).T  # [M, k]
    group = sim.argmax(-1)  # first maximum: ties to the earlier target
    group[targets] = torch.arange(k, device=x.device)  # a target stays in its own group
    ones = torch.ones(n, dtype=torch.long, device=x.device)
    return merge_groups(x, ones, group, k)
