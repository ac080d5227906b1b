"""VisionZip, as dvlab-research/VisionZip's code does it.

Reference: dvlab-research/VisionZip @ 3151f6df4fca36a4cd1c985e5956e725b1f9ad02,
`visionzip/clip_encoder.py` (CLIPVisionTower_VisionZip.forward: dominant and contextual
tokens), `visionzip/utils.py` (CLIPAttention_forward: the keys averaged over heads are the
matching metric; apply_info: the metric is layer -2's), `visionzip/main.py` (visionzip(model,
dominant, contextual): `dominant` counts the CLS token), `visionzip/llava_arch.py`
(restore_image_features_sorted: the any-resolution layout). Pure tensor code.

On the ViT layer the projector reads (LLaVA: -2), with that layer's hidden states including
CLS, its CLS attention and its keys averaged over heads:
  - dominant: the CLS token plus the `dominant - 1` patches with the most CLS attention summed
    over heads (torch.topk), in their original order;
  - contextual: the other tokens, their keys L2-normalised; `contextual` targets at positions
    arange(0, M, M // contextual)[:contextual] among them; every other token joins its most
    similar target (argmax: the first on ties); a contextual token is the target's hidden state
    **plus** the mean of the tokens that joined it (just the target when none did);
  - out: [dominant..., contextual...], then the projector (merging happens before it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# the paper's splits of a budget (CLS inside the dominant count)
PAPER_SPLITS = {64: (54, 10), 128: (108, 20), 192: (162, 30)}
PAPER_SHARE = 10 / 64  # = 20 / 128 = 30 / 192


def visionzip_counts(k: int, contextual: float | None = None) -> tuple[int, int]:
    """A budget of k tokens (CLS included) -> (dominant incl. CLS, contextual). The paper's
    splits for 64 / 128 / 192 when `contextual` (a share of k) is not given, else
    round(contextual * k) contextual tokens (half up); at least the CLS token is dominant."""
    if contextual is None and k in PAPER_SPLITS:
        return PAPER_SPLITS[k]
    share = PAPER_SHARE if contextual is None else contextual
    ctx = min(int(share * k + 0.5), k - 1) if k > 1 else 0
    return k - ctx, ctx


def _cls_scores(cls_attn: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """The CLS row [B, H, N+1] | [B, H, N] | [B, N+1] | [B, N] (or the whole attention
    [B, H, N+1, N+1], whose row 0 it takes) -> patch scores [B, N], heads summed (as the
    reference sums them) when present, the CLS column dropped when present."""
    a = cls_attn[:, :, 0] if cls_attn.dim() == 4 else cls_attn
    a = a.sum(dim=1) if a.dim() == 3 else a
    return a[:, 1:] if a.shape[-1] == n_tokens else a


def _head_mean(keys: torch.Tensor) -> torch.Tensor:
    """Keys [B, N+1, Ck] (averaged over heads) or [B, H, N+1, hd] (per head, averaged here as
    the reference's raw_key_states.mean(1))."""
    return keys.mean(1) if keys.dim() == 4 else keys


@dataclass(frozen=True)
class VisionZipPlan:
    """Which tokens VisionZip keeps and merges, for B images of N + 1 tokens (CLS at 0).

    dominant:  [B, D] the kept tokens' indices, CLS (0) first, then topk's order
    rest:      [B, M] the other tokens' indices, ascending (M = N + 1 - D)
    targets:   [c]    positions among `rest` of the contextual targets
    assign:    [B, M - c] for each non-target token of `rest` (in order) the target it joins
    """

    dominant: torch.Tensor
    rest: torch.Tensor
    targets: torch.Tensor
    assign: torch.Tensor

    def sizes(self) -> torch.Tensor:
        """[B, D + c] how many tokens each output token stands for (a contextual token: its
        target and the tokens that joined it)."""
        b, d = self.dominant.shape
        c = len(self.targets)
        joined = torch.zeros(b, c, dtype=torch.long, device=self.assign.device)
        joined.scatter_add_(1, self.assign, torch.ones_like(self.assign))
        return torch.cat([torch.ones(b, d, dtype=torch.long, device=joined.device), 1 + joined], 1)


def visionzip_plan(cls_attn: torch.Tensor, keys: torch.Tensor, dominant: int, contextual: int) -> VisionZipPlan:
    """cls_attn (see `_cls_scores`), keys [B, N+1, Ck] (averaged over heads, CLS first; or
    per head [B, H, N+1, hd]), dominant (incl. CLS, >= 1), contextual (>= 0) -> the plan."""
    keys = _head_mean(keys)
    b, t, _ = keys.shape
    scores = _cls_scores(cls_attn, t)
    top = scores.topk(dominant - 1, dim=1).indices + 1
    kept = torch.cat([torch.zeros(b, 1, dtype=top.dtype, device=top.device), top], dim=1)
    free = torch.ones(b, t, dtype=torch.bool, device=keys.device).scatter_(1, kept, False)
    rest = free.nonzero()[:, 1].view(b, t - dominant)
    m = rest.shape[1]
    contextual = min(contextual, m)
    if contextual == 0:
        empty = torch.zeros(b, 0, dtype=torch.long, device=keys.device)
        return VisionZipPlan(kept, rest, torch.zeros(0, dtype=torch.long, device=keys.device), empty)
    metric = keys[free].view(b, m, keys.shape[2])
    metric = metric / metric.norm(dim=-1, keepdim=True)
    targets = torch.arange(0, m, max(1, m // contextual), device=keys.device)[:contextual]
    others = ~torch.isin(torch.arange(m, device=keys.device), targets)
    sim = torch.bmm(metric[:, others], metric[:, targets].transpose(1, 2))  # [B, M - c, c]
    return VisionZipPlan(kept, rest, targets, sim.argmax(dim=2))


def visionzip(hidden: torch.Tensor, cls_attn: torch.Tensor, keys: torch.Tensor, dominant: int,
              contextual: int) -> torch.Tensor:
    """VisionZip's tokens, before the projector.

    hidden [B, N+1, C] (CLS first), cls_attn [B, H, N+1] | [B, H, N] | [B, N+1] | [B, N] (the
    CLS row of the same layer; heads are summed; or its whole attention [B, H, N+1, N+1]), keys
    [B, N+1, Ck] (that layer's keys averaged over heads; or per head [B, H, N+1, hd]), dominant
    (tokens kept, CLS included: the official `visionzip(model, dominant=54, contextual=10)`
    keeps 53 patches + CLS), contextual (merged tokens) ->
    [B, dominant + contextual, C]: the CLS token and the dominant patches in their original
    order, then the contextual tokens in target order.
    """
    return visionzip_apply(visionzip_plan(cls_attn, keys, dominant, contextual), hidden)


def visionzip_apply(plan: VisionZipPlan, hidden: torch.Tensor) -> torch.Tensor:
    """A plan on hidden [B, N+1, C] -> [B, D + c, C] (see `visionzip`)."""
    b, _, width = hidden.shape
    keep = torch.zeros(hidden.shape[:2], dtype=torch.bool, device=hidden.device).scatter_(1, plan.dominant, True)
    dominant = hidden[keep].view(b, -1, width)  # original order, CLS first
    c = len(plan.targets)
    if c == 0:
        return dominant
    rest = hidden[~keep].view(b, -1, width)
    others = ~torch.isin(torch.arange(rest.shape[1], device=hidden.device), plan.targets)
    onehot = torch.zeros(b, plan.assign.shape[1], c, dtype=hidden.dtype, device=hidden.device)
    onehot.scatter_(2, plan.assign.unsqueeze(-1), 1)
    counts = onehot.sum(dim=1).clamp(min=1).unsqueeze(-1)
    joined = torch.bmm(onehot.transpose(1, 2), rest[:, others]) / counts
    return torch.cat([dominant, rest[:, plan.targets] + joined], dim=1)


def anyres_layout(per_crop: torch.Tensor, plan: VisionZipPlan, mosaic: tuple[int, int]) -> torch.Tensor:
    """LLaVA-NeXT: per-crop VisionZip tokens [R, D + c, X] (crop 0 the base, then the mosaic's
    crops row-major) -> the official any-resolution sequence [R (D + c), X]: the base crop's
    tokens as they are; then the mosaic crops' dominant patches in row-major order over the
    whole (rows * side) x (cols * side) mosaic (not unpadded, no newlines); then the mosaic
    crops' CLS tokens; then their contextual tokens, crop by crop.

    plan: the per-crop plan (B = R); mosaic: (rows, cols) of the crops after the base.
    """
    n_crops, _, width = per_crop.shape
    d = plan.dominant.shape[1]
    side = int(round((plan.dominant.shape[1] + plan.rest.shape[1] - 1) ** 0.5))
    rows, cols = mosaic
    if n_crops == 1:
        return per_crop[0]
    kept = plan.dominant[1:].sort(dim=1).values[:, 1:] - 1  # [R-1, D-1] patch indices, ascending
    grid = torch.zeros(rows, cols, side, side, dtype=torch.bool, device=per_crop.device)
    grid.view(rows * cols, side * side).scatter_(1, kept, True)
    values = torch.zeros(rows, cols, side, side, width, dtype=per_crop.dtype, device=per_crop.device)
    values.view(rows * cols, side * side, width)[grid.view(rows * cols, -1)] = per_crop[1:, 1:d].reshape(-1, width)
    order = lambda g: g.permute(0, 2, 1, 3, *range(4, g.dim())).reshape(rows * side * cols * side, *g.shape[4:])
    mosaic_dominant = order(values)[order(grid)]
    return torch.cat([per_crop[0], mosaic_dominant, per_crop[1:, 0], per_crop[1:, d:].reshape(-1, width)])
