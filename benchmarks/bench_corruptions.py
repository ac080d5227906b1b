"""Corruption throughput: images/s per corruption, cold (computing and writing the cache) and
cached (read back from it), medians over repeats.

    python benchmarks/bench_corruptions.py [--size 224] [--images 4] [--repeats 3] [--severity 3]
        [--corruptions fog,snow]

Sources are scikit-image's bundled photos (astronaut, coffee, chelsea, rocket) brought to
size x size by the suite's canonical resolution (resize + centre crop). Each corruption is
run once untimed first (numba compiles glass_blur, frost loads its pictures); every cold
repeat uses a fresh cache directory and new seeds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image  # noqa: E402

from robust_atp.perturb.cache import CorruptionCache  # noqa: E402
from robust_atp.perturb.image import ImageCondition, canonicalize, corruption_names  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def sources(n: int, size: int) -> list[Image.Image]:
    import skimage.data

    photos = [Image.fromarray(getattr(skimage.data, name)()) for name in PHOTOS]
    return [canonicalize(photos[i % len(photos)], size) for i in range(n)]


def rate(fn, images) -> float:
    t = time.perf_counter()
    for i, img in enumerate(images):
        fn(i, img)
    return len(images) / (time.perf_counter() - t)


def bench(name: str, images, severity: int, repeats: int, size: int) -> tuple[float, float]:
    cond = ImageCondition(name, severity)
    cold, cached = [], []
    with tempfile.TemporaryDirectory() as tmp:
        CorruptionCache(Path(tmp) / "warmup").get(images[0], cond, 10**6, size)
        for r in range(repeats):
            cache = CorruptionCache(Path(tmp) / f"r{r}")
            cold.append(rate(lambda i, img: cache.get(img, cond, r * 1000 + i, size), images))
            cached.append(rate(lambda i, img: cache.get(img, cond, r * 1000 + i, size), images))
            assert cache.computed == cache.hits == len(images)
    return statistics.median(cold), statistics.median(cached)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--severity", type=int, default=3, choices=range(1, 6))
    ap.add_argument("--corruptions", help="comma-separated names (default: all 20)")
    args = ap.parse_args(argv)
    names = args.corruptions.split(",") if args.corruptions else corruption_names("all")
    images = sources(args.images, args.size)
    print(f"{args.size}x{args.size} px, severity {args.severity}, {args.images} images x {args.repeats} repeats "
          f"(medians); cold = corrupt + write PNG, cached = read PNG")
    head = f"{'corruption':<18} {'cold img/s':>10} {'cached img/s':>12} {'speed-up':>9}"
    print(head + "\n" + "-" * len(head))
    colds, cacheds = [], []
    for name in names:
        cold, cached = bench(name, images, args.severity, args.repeats, args.size)
        colds.append(cold)
        cacheds.append(cached)
        print(f"{name:<18} {cold:>10.1f} {cached:>12.1f} {cached / cold:>8.0f}x", flush=True)
    if len(names) > 1:
        hm = lambda xs: len(xs) / sum(1 / x for x in xs)  # images/s over a set that runs each once
        print("-" * len(head))
        print(f"{'all (harmonic)':<18} {hm(colds):>10.1f} {hm(cacheds):>12.1f} {hm(cacheds) / hm(colds):>8.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
