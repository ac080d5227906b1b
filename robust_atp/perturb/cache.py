"""A content-addressed on-disk cache of corrupted images, shared by every run and method.

A corrupted image is a function of (source pixels, corruption, severity, seed, resolution):
its key is the sha256 of those (the source as its RGB bytes and size), plus the versions of
this cache's format and of `imagecorruptions`, whose outputs could change between releases.
Files are lossless PNGs at `<root>/<key[:2]>/<key>.png`, written to a temporary name and
renamed into place (`os.replace`), so readers never see half a file and concurrent writers
of the same key are harmless.

The root is `$ROBUST_ATP_CACHE`, else `~/.cache/robust_atp/corruptions`. Delete it at any
time: it only saves work.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

from ..data.images import to_rgb
from .image import ImageCondition, corrupt

FORMAT = 1
ENV = "ROBUST_ATP_CACHE"


def default_root() -> Path:
    return Path(os.environ.get(ENV) or Path.home() / ".cache" / "robust_atp" / "corruptions")


# what a corrupted image's pixels depend on besides the key's own fields: the corruption code
# and the numeric libraries it draws on (resizing, filters, noise); an upgrade starts afresh
_LIBRARIES = ("imagecorruptions-imaug", "imagecorruptions", "numpy", "scipy", "scikit-image", "pillow",
              "opencv-python", "opencv-python-headless", "numba", "wand")


@lru_cache(maxsize=1)
def _library_version() -> str:
    from importlib import metadata

    versions = []
    for dist in _LIBRARIES:
        try:
            versions.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return ",".join(versions) or "unknown"


def cache_key(img: Image.Image, cond: ImageCondition, seed: int, resolution: int | None) -> str:
    rgb = to_rgb(img)
    h = hashlib.sha256()
    h.update(f"robust_atp-corruption/{FORMAT}/{_library_version()}/{rgb.size[0]}x{rgb.size[1]}\n".encode())
    h.update(rgb.tobytes())
    h.update(f"\n{cond.corruption}/{cond.severity}/{seed}/{resolution}".encode())
    return h.hexdigest()


@dataclass
class CorruptionCache:
    """`get(img, cond, seed, resolution)` -> (corrupted image, whether it came from disk)."""

    root: Path | None = None
    enabled: bool = True  # False: compute every image, read and write nothing
    hits: int = 0
    computed: int = 0

    def __post_init__(self):
        self.root = Path(self.root) if self.root is not None else default_root()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.png"

    def get(self, img: Image.Image, cond: ImageCondition, seed: int,
            resolution: int | None = None) -> tuple[Image.Image, bool]:
        if not self.enabled:
            self.computed += 1
            return corrupt(img, cond, seed, resolution), False
        path = self.path(cache_key(img, cond, seed, resolution))
        cached = _read(path)
        if cached is not None:
            self.hits += 1
            return cached, True
        out = corrupt(img, cond, seed, resolution)
        self.computed += 1
        _write_atomic(path, out)
        return out, False


def _read(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as im:
            im.load()
            return im if im.mode == "RGB" else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, SyntaxError):  # a damaged file is recomputed and replaced
        return None


def _write_atomic(path: Path, img: Image.Image) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem[:8]}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                img.save(f, format="PNG", compress_level=1)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is meant to be shared
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:  # an unwritable cache costs time, never a result
        global _WARNED
        if not _WARNED:
            warnings.warn(f"corruption cache {path.parent.parent}: cannot write ({e}); computing without it")
            _WARNED = True


_WARNED = False
