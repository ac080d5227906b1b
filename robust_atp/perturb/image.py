"""ImageNet-C-style image corruptions, seeded per (suite seed, example, condition).

The `imagecorruptions` module (from the imagecorruptions-imaug distribution) draws most of
its noise from NumPy's global generator; glass_blur draws inside numba and impulse_noise
builds its own generator unless given `seed=`. So each call runs under one lock, with the
global generator reseeded from the condition's seed and `seed=` passed where the function
takes it: the output depends on (seed, example, condition) only, never on call order.
"""
from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from ..errors import SuiteError
from ..seeding import stable_seed

PRESET_DIR = Path(__file__).resolve().parents[2] / "corruptions"
_LOCK = threading.Lock()
MIN_SIDE = 32  # the library's floor: its kernels assume at least this many pixels


def corruption_names(subset: str = "all") -> list[str]:
    from imagecorruptions import get_corruption_names
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
    return [ImageCondition(c, s) for c in names for s in cfg.severities]


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, RGBA, P, CMYK, I;16, ...) as 8-bit RGB; alpha is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        arr = arr / (hi if hi > 255 else 255.0) * 255.0
        return Image.fromarray(arr.round().astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")


def condition_seed(suite_seed: int, example_id: str, condition: str) -> int:
    return stable_seed(suite_seed, example_id, condition)


_TAKES_SEED: dict[str, bool] = {}


def corrupt(img: Image.Image, cond: ImageCondition, seed: int) -> Image.Image:
    """The corrupted RGB image; depends on (image, condition, seed) only."""
    from imagecorruptions import corruption_dict

    rgb = to_rgb(img)
    if min(rgb.size) < MIN_SIDE:
        raise ValueError(f"image is {rgb.size[0]}x{rgb.size[1]} px; corruptions need at least {MIN_SIDE} px a side")
    fn = corruption_dict[cond.corruption]
    if cond.corruption not in _TAKES_SEED:
        _TAKES_SEED[cond.corruption] = "seed" in inspect.signature(fn).parameters
    kwargs = {"seed": seed % 2**32} if _TAKES_SEED[cond.corruption] else {}
    with _LOCK:
        np.random.seed(seed % 2**32)
        out = fn(rgb, cond.severity, **kwargs)
    arr = np.asarray(out)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    # the library returns floats in [0, 255] for most corruptions and uint8 for some
    return Image.fromarray(np.uint8(np.clip(arr, 0, 255)), "RGB")
