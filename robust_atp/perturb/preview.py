"""A contact sheet of what each corruption does at each severity:

    python -m robust_atp.perturb.preview --corruption NAME|all --image PATH [--out PNG]
        [--resolution R] [--seed S]

writes a PNG grid, one row per corruption and one column per severity (the clean image first),
each cell the corrupted image scaled to CELL pixels (nearest neighbour, so noise stays visible).
Without --image, a shapes test scene is used.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..errors import UserError

CELL = 128
LABEL_W, HEAD_H, PAD = 120, 18, 4


def contact_sheet(img: Image.Image, corruptions: list[str], seed: int = 0, resolution: int | None = None) -> Image.Image:
    from .image import ImageCondition, canonicalize, condition_seed, corrupt

    clean = canonicalize(img, resolution)
    cols = ["clean"] + [f"severity {s}" for s in range(1, 6)]
    sheet = Image.new("RGB", (LABEL_W + len(cols) * (CELL + PAD), HEAD_H + len(corruptions) * (CELL + PAD)), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for j, name in enumerate(cols):
        draw.text((LABEL_W + j * (CELL + PAD) + 4, 3), name, fill="black", font=font)
    for i, c in enumerate(corruptions):
        y = HEAD_H + i * (CELL + PAD)
        draw.text((4, y + CELL // 2 - 6), c, fill="black", font=font)
        cells = [clean] + [corrupt(img, ImageCondition(c, s), condition_seed(seed, "preview", f"image:{c}@{s}"),
                                   resolution) for s in range(1, 6)]
        for j, cell in enumerate(cells):
            sheet.paste(_fit(cell), (LABEL_W + j * (CELL + PAD), y))
    return sheet


def _fit(img: Image.Image) -> Image.Image:
    scale = CELL / max(img.size)
    size = (max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale)))
    return img.resize(size, Image.NEAREST if scale >= 1 else Image.BICUBIC)


def main(argv=None) -> int:
    from .image import corruption_names

    ap = argparse.ArgumentParser(prog="python -m robust_atp.perturb.preview",
                                 description="Write a corruption x severity contact sheet (PNG).")
    ap.add_argument("--corruption", required=True, help="a corruption name, or 'all'")
    ap.add_argument("--image", type=Path, help="source image (default: a shapes test scene)")
    ap.add_argument("--out", type=Path, help="output PNG (default: preview_<corruption>.png)")
    ap.add_argument("--resolution", type=int, help="canonical resolution: resize + centre crop first")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        known = corruption_names("all")
        if args.corruption != "all" and args.corruption not in known:
            import difflib
            near = difflib.get_close_matches(args.corruption, known, n=1)
            raise UserError(f"--corruption: unknown corruption {args.corruption!r}"
                            + (f" (did you mean '{near[0]}'?)" if near else f"; known: all, {', '.join(known)}"))
        if args.resolution is not None and args.resolution < 32:
            raise UserError(f"--resolution: must be at least 32, got {args.resolution}")
        img = _load(args.image)
        names = known if args.corruption == "all" else [args.corruption]
        try:
            sheet = contact_sheet(img, names, args.seed, args.resolution)
        except ValueError as e:
            raise UserError(f"{args.image}: {e}") from None
        out = args.out or Path(f"preview_{args.corruption}.png")
        try:
            sheet.save(out)
        except OSError as e:
            raise UserError(f"{out}: cannot write ({e})") from None
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({len(names)} corruptions x clean + 5 severities)")
    return 0


def _load(path: Path | None) -> Image.Image:
    if path is None:
        from ..data import shapes
        return shapes.render_image(0, "test", 0)
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except FileNotFoundError:
        raise UserError(f"--image: no such file {path}") from None
    except OSError as e:
        raise UserError(f"--image: {path}: cannot read the image ({e})") from None


if __name__ == "__main__":
    raise SystemExit(main())
