"""Where real benchmark data comes from: a local root of official files, or `hf:<dataset id>`.

Every path read from a data file is resolved inside its dataset root (no `../` escapes), a
missing root or file is one `DataMissing` line naming what is missing, where it was looked
for and where the official release is downloaded from, and images are opened lazily.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from PIL import Image


class DataMissing(FileNotFoundError):
    """A dataset root or file is not there; the message is one line for the user."""


class DataError(ValueError):
    """A data file is there but malformed."""


def is_hf(source: str | None) -> bool:
    return bool(source) and source.startswith("hf:")


def hf_id(source: str) -> str:
    ref = source[3:].strip()
    if not ref:
        raise DataError(f"{source!r}: give a dataset id after 'hf:', e.g. 'hf:lmms-lab/VQAv2'")
    return ref


def local_root(source: str | None, download: str) -> Path:
    if not source:
        raise DataMissing(f"no dataset root given (set dataset.source); download from {download}")
    root = Path(source).expanduser()
    if not root.is_dir():
        raise DataMissing(f"{source!r}: missing dataset root (looked in {root.resolve()}); download from {download}")
    return root


def require(root: Path, source: str, candidates, download: str, configured: bool = False) -> Path:
    """The first of `candidates` that exists, or one DataMissing line.

    Candidates are names inside root; a `configured` one comes from the suite (an option such as
    `image_dir`), not from a data file, so it may also be absolute or lead elsewhere (COCO images
    kept once and shared by several datasets)."""
    candidates = [candidates] if isinstance(candidates, str) else list(candidates)
    for rel in candidates:
        if configured:
            p = Path(str(rel)).expanduser()
            p = p if p.is_absolute() else root / p
        else:
            p = inside(root, rel)
        if p.exists():
            return p
    names = " or ".join(candidates)
    return _missing(source, names, root, download)


def _missing(source, names, where, download):
    raise DataMissing(f"{source!r}: missing {names} (looked in {Path(where).resolve()}); download from {download}")


def inside(root: Path, rel: str) -> Path:
    """root/rel for a name read from a data file, refused when it is absolute or climbs out of
    root with '..'. The check is on the name, not on the resolved path: a root whose folders are
    symlinks (COCO images linked in) is the user's own layout, and a data file cannot make links."""
    name = str(rel)
    norm = os.path.normpath(name)
    if os.path.isabs(name) or norm == os.pardir or norm.startswith(os.pardir + os.sep):
        raise DataError(f"{name!r}: path leaves the dataset root {root}")
    return root / norm


def read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


class ImageUnreadable(DataError):
    """An image file that is missing, empty, truncated or not an image; names the file."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def open_image(path: str) -> Image.Image:
    """The decoded image (any mode; the adapter and the corruptions convert to RGB), or
    ImageUnreadable naming the file and what is wrong with it."""
    try:
        if os.path.getsize(path) == 0:
            raise ImageUnreadable(path, "an empty (zero-byte) file")
        with Image.open(path) as im:
            im.load()
            return im
    except FileNotFoundError:
        raise ImageUnreadable(path, "no such image file") from None
    except Image.UnidentifiedImageError:
        raise ImageUnreadable(path, "not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, ImageUnreadable):
            raise
        raise ImageUnreadable(path, f"a damaged image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def lazy_image(path: Path):
    return functools.partial(open_image, str(path))


def hf_dataset(source: str, split: str, config: str | None = None):
    """`datasets.load_dataset` for `hf:<id>`. A local directory in the hub's parquet layout
    works too (<dir>/<config or data>/<split>-*.parquet), e.g. a `huggingface-cli download`."""
    import datasets

    ref = hf_id(source)
    local = Path(ref).expanduser()
    try:
        if local.is_dir():
            pattern = local / (config or "data") / f"{split}-*.parquet"
            if not any(pattern.parent.glob(pattern.name)):
                raise DataMissing(f"{source!r}: missing {pattern.relative_to(local)} (looked in {local.resolve()}); "
                                  f"download from https://huggingface.co/datasets/{local.name}")
            return datasets.load_dataset("parquet", data_files={split: str(pattern)}, split=split)
        return datasets.load_dataset(ref, config, split=split)
    except DataMissing:
        raise
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataMissing(f"{source!r}: cannot load split {split!r}"
                          f"{f' of config {config!r}' if config else ''} ({msg}); "
                          f"download from https://huggingface.co/datasets/{ref}") from None


def _hf_row_image(ds, index: int) -> Image.Image:
    return ds[index]["image"]


def hf_image(ds, index: int):
    """A zero-argument callable decoding row `index`'s image only when called."""
    return functools.partial(_hf_row_image, ds, index)


def take(items: list, limit: int | None) -> list:
    return items if limit is None else items[: int(limit)]
