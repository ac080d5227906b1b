"""ImageNet-C-style image corruptions, seeded per (suite seed, example, condition).

All 19 corruptions of the `imagecorruptions` module (from the imagecorruptions-imaug
distribution: the 15 common ones and the 4 extra speckle_noise, gaussian_blur, spatter,
saturate) plus `occlusion` (grey squares covering a graded share of the image), at
severities 1-5.

Determinism: the module draws most of its noise from NumPy's global generator; glass_blur
draws inside numba (its own generator, seeded from `seed=`) and impulse_noise builds a fresh
unseeded generator unless given `seed=`. So each call runs under `seeded_global_rngs` (one
lock, the global generators seeded from the condition's seed, then restored) and `seed=` is
passed where the function takes it: the output depends on (image, condition, seed, resolution)
only, never on call order, batch or process.

Resolution: blur radii and noise grains are in absolute pixels, so a severity means more on a
small image than on a large one. `resolution: R` resizes the shorter side to R (bicubic) and
centre-crops R x R before corrupting (the clean image too), as ImageNet-C fixed its images at
224; `None` keeps the native size, which must be at least 32 px a side.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ..data.images import to_rgb
from ..errors import SuiteError
from ..seeding import seeded_global_rngs, stable_seed

PRESET_DIR = Path(__file__).resolve().parents[2] / "corruptions"
MIN_SIDE = 32  # the library's floor: its kernels assume at least this many pixels
OCCLUSION_SHARE = (0.05, 0.10, 0.20, 0.30, 0.40)  # of the pixels, per severity
OCCLUSION_GREY = 128


def corruption_names(subset: str = "all") -> list[str]:
    """"common" (the 15 of ImageNet-C), "extra" (its 4 held-out ones), "occlusion", or "all"."""
    from imagecorruptions import get_corruption_names
    if subset == "all":
        return get_corruption_names("all") + ["occlusion"]
    if subset == "extra":
        return get_corruption_names("validation")
    if subset == "occlusion":
        return ["occlusion"]
    return get_corruption_names(subset)


@dataclass(frozen=True, order=True)
class ImageCondition:
    corruption: str
    severity: int

    @property
    def name(self) -> str:
        return f"image:{self.corruption}@{self.severity}"


def load_preset(name: str, key: str = "corruptions") -> dict:
    """A preset by name (corruptions/<name>.yaml) or by path; `key` names the list it must hold."""
    path = Path(name)
    if not path.suffix:
        path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise SuiteError(f".preset: unknown preset {name!r}; known: {', '.join(known)}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SuiteError(f".preset: {path}: malformed YAML ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise SuiteError(f".preset: {path}: must be a mapping with a '{key}' list")
    return data


def resolve_image_conditions(cfg) -> list[ImageCondition]:
    """The suite's image conditions (corruption x severity), in preset order then severity."""
    if cfg is None:
        return []
    names = load_preset(cfg.preset)["corruptions"] if cfg.preset else list(cfg.corruptions)
    known = set(corruption_names("all"))
    for i, c in enumerate(names):
        if c not in known:
            import difflib
            near = difflib.get_close_matches(str(c), sorted(known), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            where = ".preset" if cfg.preset else f".corruptions[{i}]"
            raise SuiteError(f"{where}: unknown corruption {c!r}{hint}")
        if c in names[:i]:  # a repeated condition would be generated and reported twice
            where = ".preset" if cfg.preset else f".corruptions[{i}]"
            raise SuiteError(f"{where}: {c!r} is listed twice")
    return [ImageCondition(c, s) for c in names for s in cfg.severities]


def condition_seed(suite_seed: int, example_id: str, condition: str) -> int:
    return stable_seed(suite_seed, example_id, condition)


def canonicalize(img: Image.Image, resolution: int | None) -> Image.Image:
    """RGB; with a resolution, the shorter side resized to it (bicubic) and the centre cropped
    to resolution x resolution."""
    rgb = to_rgb(img)
    if resolution is None or rgb.size == (resolution, resolution):
        return rgb
    w, h = rgb.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    rgb = rgb.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    return rgb.crop((left, top, left + resolution, top + resolution))


def canonical_boxes(boxes: list, size: tuple[int, int], resolution: int | None) -> tuple[list, tuple[int, int]]:
    """Boxes (x0, y0, x1, y1) of an image of `size` (w, h) in the coordinates of its
    `canonicalize`d version, and that version's size (boxes may reach outside it)."""
    w, h = size
    if resolution is None or size == (resolution, resolution):
        return boxes, size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    sx, sy = nw / w, nh / h
    out = [(x0 * sx - left, y0 * sy - top, x1 * sx - left, y1 * sy - top) for x0, y0, x1, y1 in boxes]
    return out, (resolution, resolution)


def occlusion(img: Image.Image, severity: int, seed: int) -> np.ndarray:
    """Grey squares (side: an eighth of the shorter side) dropped uniformly at random until
    they cover OCCLUSION_SHARE[severity - 1] of the pixels (overshooting by under one square)."""
    arr = np.array(img, dtype=np.uint8)
    h, w = arr.shape[:2]
    side = max(2, round(min(h, w) / 8))
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), dtype=bool)
    target = OCCLUSION_SHARE[severity - 1] * h * w
    while mask.sum() < target:
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        mask[y:y + side, x:x + side] = True
    arr[mask] = OCCLUSION_GREY
    return arr


_TAKES_SEED: dict[str, bool] = {}


def corrupt(img: Image.Image, cond: ImageCondition, seed: int, resolution: int | None = None) -> Image.Image:
    """The corrupted RGB image; depends on (image, condition, seed, resolution) only."""
    rgb = canonicalize(img, resolution)
    if min(rgb.size) < MIN_SIDE:
        raise ValueError(f"image is {rgb.size[0]}x{rgb.size[1]} px; corruptions need at least {MIN_SIDE} px a side "
                         f"(or set perturbations.image.resolution to resize every image first)")
    if cond.corruption == "occlusion":
        return Image.fromarray(occlusion(rgb, cond.severity, seed), "RGB")
    from imagecorruptions import corruption_dict

    fn = corruption_dict[cond.corruption]
    if cond.corruption not in _TAKES_SEED:
        _TAKES_SEED[cond.corruption] = "seed" in inspect.signature(fn).parameters
    kwargs = {"seed": seed % 2**32} if _TAKES_SEED[cond.corruption] else {}
    with seeded_global_rngs(seed):
        out = fn(rgb, cond.severity, **kwargs)
    arr = np.asarray(out)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    # the library returns floats in [0, 255] for most corruptions and uint8 for some
    return Image.fromarray(np.uint8(np.clip(arr, 0, 255)), "RGB")
