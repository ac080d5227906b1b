"""Fill the corruption cache for a suite in parallel, before (or instead of) running it:

    python -m robust_atp.perturb.precompute SUITE [--limit N] [--workers N] [--no-progress]

Every (example, image condition) of the suite is corrupted once into the content-addressed
cache (`$ROBUST_ATP_CACHE`, else ~/.cache/robust_atp/corruptions); a later run of the suite,
or of any suite with the same images, seed, conditions and resolution, reads them from there.
Images already cached are not recomputed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from ..errors import UserError


def _corrupt_example(ex, conditions, seed: int, resolution, root: str) -> tuple[int, int]:
    from .cache import CorruptionCache
    from .image import condition_seed

    cache = CorruptionCache(Path(root))
    img = ex.image()
    for cond in conditions:
        cache.get(img, cond, condition_seed(seed, ex.id, cond.name), resolution)
    return cache.hits, cache.computed


def precompute(suite, suite_path: Path, workers: int, progress: bool = True) -> tuple[int, int, Path]:
    """(hits, computed, cache root) after corrupting every (example, image condition)."""
    from tqdm import tqdm

    from ..data.dataset import load_dataset
    from .cache import default_root
    from .image import resolve_image_conditions

    image_cfg = suite.perturbations.image
    conditions = resolve_image_conditions(image_cfg)
    resolution = image_cfg.resolution if image_cfg else None
    examples = load_dataset(suite.dataset, suite_path)
    root = default_root()
    hits = computed = 0
    if not conditions or not examples:
        return hits, computed, root
    bar = tqdm(total=len(examples) * len(conditions), desc="corrupting", unit="img", disable=not progress,
               dynamic_ncols=True)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_corrupt_example, ex, conditions, suite.seed, resolution, str(root)) for ex in examples]
        for fut in as_completed(futures):
            h, c = fut.result()
            hits, computed = hits + h, computed + c
            bar.update(h + c)
    bar.close()
    return hits, computed, root


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m robust_atp.perturb.precompute",
                                 description="Corrupt a suite's images into the shared corruption cache.")
    ap.add_argument("suite", help="suite YAML file")
    ap.add_argument("--limit", type=int, help="only the first N examples")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count(), help="worker processes (default: the usable CPU cores)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        from ..suite import load_suite

        for flag in ("limit", "workers"):
            value = getattr(args, flag)
            if value is not None and value <= 0:
                raise UserError(f"--{flag}: must be a positive integer, got {value}")
        suite = load_suite(args.suite, {"dataset.limit": args.limit} if args.limit else None)
        t0 = time.perf_counter()
        hits, computed, root = precompute(suite, Path(args.suite), args.workers, progress=not args.no_progress)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{suite.name}: {hits + computed} corrupted images in {root}: {computed} computed now, "
          f"{hits} already cached ({time.perf_counter() - t0:.1f}s, {args.workers} workers)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
