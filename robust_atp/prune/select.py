"""Budgets and selection: from scores to kept indices, unique and in original order."""
from __future__ import annotations

import math

import torch


def budget(n: int, keep: float | None = None, k: int | None = None) -> int:
    """Tokens to keep out of n: a ratio (rounded half up, at least 1) or a count (at most n)."""
    if k is not None:
        return max(1, min(int(k), n))
    if keep is None:
        return n
    return max(1, min(n, math.floor(keep * n + 0.5)))


def group_budgets(sizes: list[int], keep: float | None = None, k: int | None = None) -> list[int]:
    """A budget split over groups of tokens (crops): a ratio applies to each group; a count is
    shared in proportion to the groups' sizes (largest remainder, so the shares sum to k)."""
    if k is None:
        return [budget(n, keep) if n else 0 for n in sizes]
    total = sum(sizes)
    k = max(1, min(int(k), total))
    exact = [k * n / total for n in sizes]
    out = [math.floor(e) for e in exact]
    for i in sorted(range(len(sizes)), key=lambda i: (out[i] - exact[i], i))[:k - sum(out)]:
        out[i] += 1
    return out


def _rank_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices by descending score; ties by ascending index; NaN ranks last. [B, N] -> [B, N]."""
    s = torch.nan_to_num(scores.float(), nan=float("-inf"))
    return torch.sort(s, dim=-1, descending=True, stable=True).indices


def select_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The k best tokens per row, returned in original (ascending) order. [B, N] -> [B, k]."""
    return _rank_order(scores)[:, :k].sort(dim=-1).values


def select_adaptive(scores: torch.Tensor, mass: float, k_min: int = 1, k_max: int | None = None) -> list[torch.Tensor]:
    """Per row, the smallest top set whose scores hold `mass` of the row's total, clamped to
    [k_min, k_max]. scores: [B, N] (normalised); NaN holds no mass.

    A row with negative scores (z-scored terms) is measured from its minimum (s - min s), so the
    mass is a share of the whole row, not of its positive part; a non-negative row as it is.
    Sums are float64 and the total is the running sum's own end, so `mass: 1.0` always reaches
    it (the last token with any mass) instead of falling short by rounding. A row without mass
    keeps k_min. Returns B index tensors of varying length, each in original order.
    """
    n = scores.shape[-1]
    k_max = n if k_max is None else min(k_max, n)
    order = _rank_order(scores)
    s = scores.double()
    nan = s.isnan()
    low = s.masked_fill(nan, float("inf")).amin(-1, keepdim=True).clamp(max=0)
    s = (s - low).masked_fill(nan, 0.0)
    cum = torch.gather(s, -1, order).cumsum(-1)
    total = cum[:, -1:]
    reached = cum >= mass * total  # mass <= 1: true at the end at the latest
    k = torch.where(total[:, 0] > 0, reached.int().argmax(-1) + 1, torch.full_like(total[:, 0], k_min).long())
    k = k.clamp(min=k_min, max=k_max)
    return [order[b, : int(k[b])].sort().values for b in range(scores.shape[0])]


def select_grid(grid: tuple[int, int], k: int) -> torch.Tensor:
    """k patches spread evenly over a rows x cols grid: ceil(sqrt(k * rows / cols)) evenly spaced
    rows, each holding an even share of the k patches at evenly spaced columns (cell centres).
    Returns [k] row-major indices, ascending, unique."""
    rows, cols = grid
    k = max(1, min(k, rows * cols))
    r = min(rows, math.ceil(math.sqrt(k * rows / cols)))
    out = []
    for t in range(r):
        row = (2 * t + 1) * rows // (2 * r)
        c = (t + 1) * k // r - t * k // r  # this row's share; the shares sum to k
        out += [row * cols + (2 * j + 1) * cols // (2 * c) for j in range(c)]
    return torch.tensor(out, dtype=torch.long)


def select_diverse(features: torch.Tensor, k: int) -> torch.Tensor:
    """DivPrune's greedy max-min diversity on cosine distance. features [B, N, C] -> [B, k] ascending.

    Starts from the token farthest from its nearest neighbour, then repeatedly adds the token
    whose distance to the kept set is largest; ties go to the lower index.
    """
    b, n, _ = features.shape
    k = max(1, min(k, n))
    f = torch.nn.functional.normalize(features.float(), dim=-1)
    dist = 1 - f @ f.transpose(1, 2)  # [B, N, N]
    eye = torch.eye(n, dtype=torch.bool, device=f.device)
    rows = torch.arange(b, device=f.device)
    nxt = dist.masked_fill(eye, float("inf")).amin(-1).argmax(-1)  # [B]; argmax: first maximum
    chosen = torch.zeros(b, n, dtype=torch.bool, device=f.device)
    to_set = torch.full((b, n), float("inf"), device=f.device)  # each token's distance to the kept set
    for _ in range(k):
        chosen[rows, nxt] = True
        to_set = torch.minimum(to_set, dist[rows, nxt]).masked_fill(chosen, -float("inf"))
        nxt = to_set.argmax(-1)
    return chosen.nonzero()[:, 1].view(b, k)
