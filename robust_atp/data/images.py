"""Image modes: every PIL image as the 8-bit RGB that processors and corruptions read."""
from __future__ import annotations

import numpy as np
from PIL import Image


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (1, L, LA, La, P, PA, RGBA, RGBa, CMYK, YCbCr, LAB, HSV, I, I;16*, F) as 8-bit
    RGB; alpha is composited on white. Integer images above 255 are scaled by their maximum;
    float (F) images in [0, 1] are scaled to [0, 255], and NaN pixels become 0."""
    if img.mode == "RGB":
        return img
    if img.mode == "La":  # premultiplied alpha: PIL converts it only to LA
        img = img.convert("LA")
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        hi = arr.max() if arr.size else 1.0
        if img.mode == "F" and 0 < hi <= 1.0:
            arr = arr * 255.0
        elif hi > 255:
            arr = arr / hi * 255.0
        return Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")
