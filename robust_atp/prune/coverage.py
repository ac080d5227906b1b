"""Object recall: which patches cover the objects a question names, and how many a method kept.

Pure tensor code. Boxes are (x0, y0, x1, y1) in image pixels, exclusive end. The image reaches
the patch grid as a CLIP processor sends it: shortest edge resized to S, centre crop (h, w),
cut into a rows x cols grid (row-major patch index).
"""
from __future__ import annotations

import torch


def patch_mask(boxes: list, image_size: tuple[int, int], shortest_edge: int, crop: tuple[int, int],
               grid: tuple[int, int]) -> torch.Tensor:
    """Patches any box overlaps (positive area), after resize and crop. -> [rows * cols] bool."""
    w, h = image_size
    ch, cw = crop
    # as transformers' CLIP processor: the short side becomes S, the long side int(S * long / short)
    # (truncated), then the centre is cropped
    rw, rh = (shortest_edge, int(shortest_edge * h / w)) if w <= h else (int(shortest_edge * w / h), shortest_edge)
    ox, oy = (rw - cw) // 2, (rh - ch) // 2
    rows, cols = grid
    ph, pw = ch / rows, cw / cols
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        a0, a1 = x0 * rw / w - ox, x1 * rw / w - ox
        b0, b1 = y0 * rh / h - oy, y1 * rh / h - oy
        c0, c1 = max(0, int(a0 // pw)), min(cols, int(-(-a1 // pw)))
        r0, r1 = max(0, int(b0 // ph)), min(rows, int(-(-b1 // ph)))
        if c1 > c0 and r1 > r0:
            mask[r0:r1, c0:c1] = True
    return mask.flatten()


def object_recall(kept: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Share of the object patches (mask [N] bool) among kept indices [K]; None without objects."""
    total = int(mask.sum())
    if total == 0:
        return None
    return int(mask[kept.cpu()].sum()) / total
