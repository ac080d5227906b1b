"""What the engine's shared work and its optimisations save, on the demo suite.

    python benchmarks/bench_engine.py [--suite suites/demo.yaml] [--limit 10] [--repeats 3] [--quick]

Rows, each a full pass of the suite's first --limit questions (one batch) through the same
adapter, examples and conditions in this process:
  naive loop      for every method and condition: corrupt the images, run the vision pass,
                  select, generate (what the engine's shared vision pass and corruptions save);
  engine, none    `run_engine` with every optimisation of `speedups.Speedups` off: one vision
                  pass and one set of corrupted images per (batch, image condition), one
                  `generate` per method;
  + fuse, + reuse_prefix, + lean, + prefetch   one optimisation alone (prefetch even beside torch
                  threads on every core, which the default avoids: `Speedups.prefetch_always`);
  engine, all     the default (`Speedups()`): all four, prefetch only where a core is free;
  all, 1 thread less   the default with torch on one thread fewer (so prefetch on the freed core),
                  when torch has more than one;
  all, N processes     what `run --procs N` does with N = torch's threads (when more than one):
                  the questions split into N batches, one per worker process, each running the
                  default engine on one torch thread; the time is from the parent's "go" to the
                  last worker's answers (the workers load the model and warm up before, untimed).
The rounds alternate between the rows, --repeats times after an untimed warm-up run of the
engine on one question; the table gives each row's median wall time, its ratio to "engine,
none" and the model calls it made. No row reads the corruption cache (each computes every
corrupted image: the prefetch row in its worker process). Every row's predictions must equal
the naive loop's (asserted). --quick: 2 questions, 1 corruption at severity 1, 1 text
perturbation, 1 repeat (a smoke test).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from robust_atp.data.base import iter_batches  # noqa: E402
from robust_atp.distributed import combine_stats  # noqa: E402
from robust_atp.conditions import condition_name, condition_plan  # noqa: E402
from robust_atp.engine import clip_texts, run_engine, seed_keys  # noqa: E402
from robust_atp.models.fastv import FastVSpec  # noqa: E402
from robust_atp.perturb.cache import CorruptionCache  # noqa: E402
from robust_atp.perturb.image import canonicalize, condition_seed, resolve_image_conditions  # noqa: E402
from robust_atp.perturb.text import perturb_text, resolve_text_conditions  # noqa: E402
from robust_atp.prune.methods import validate_method  # noqa: E402
from robust_atp.speedups import Speedups  # noqa: E402
from robust_atp.threads import torch_threads  # noqa: E402
from robust_atp.store import RunStore  # noqa: E402
from robust_atp.suite import load_suite  # noqa: E402


def naive_loop(adapter, examples, methods, plan, seed: int, batch_size: int, resolution) -> dict:
    """Every (method, condition, batch) on its own: corrupt, encode, perturb, select, generate.
    Returns {(example id, condition, method): answer}."""
    no_cache = CorruptionCache(enabled=False)  # computes every image, reads and writes nothing
    out = {}
    for m in methods:
        for image_cond, text_conds in plan:
            for text_cond in text_conds:
                cname = condition_name(image_cond, text_cond)
                for batch in iter_batches(examples, batch_size):
                    images = [ex.image() for ex in batch]
                    if image_cond is None:
                        imgs = [canonicalize(im, resolution) for im in images]
                    else:
                        imgs = [no_cache.get(im, image_cond, condition_seed(seed, ex.id, image_cond.name),
                                             resolution)[0] for im, ex in zip(images, batch)]
                    vision = adapter.encode_images(imgs)
                    questions = [ex.question if text_cond is None else
                                 perturb_text(ex.question, text_cond, condition_seed(seed, ex.id, text_cond.name))
                                 for ex in batch]
                    text = (adapter.encode_texts(clip_texts(adapter, questions, m.settings.get("text", "question")))
                            if m.needs_text else None)
                    tokens = [k.tokens for k in m.apply(vision, text, seed_keys(seed, batch, m))]
                    fastv = (None if m.fastv_layer is None else
                             FastVSpec(m.fastv_layer, m.fastv_k(vision.tokens.shape[1])))
                    for ex, ans in zip(batch, adapter.generate(tokens, questions, in_llm=fastv)):
                        out[ex.id, cname, m.label] = ans
    return out


def load_slice(suite_path: str, overrides: dict):
    """The suite with the bench's overrides, its examples (torch seeded by the suite), methods
    and image and text conditions."""
    from robust_atp.data.dataset import load_dataset

    suite = load_suite(suite_path, overrides)
    torch.manual_seed(suite.seed)
    examples = load_dataset(suite.dataset, Path(suite_path))
    return (suite, examples, [validate_method(m) for m in suite.methods],
            resolve_image_conditions(suite.perturbations.image), resolve_text_conditions(suite.perturbations.text))


def _rank_worker(conn, suite_path: str, overrides: dict, rank: int, world: int) -> None:
    """One process of the "all, N processes" row: its share of the questions (the r-th of N
    contiguous batches), the default engine on one torch thread, run on each "go" from the
    parent; sends back (predictions, engine stats)."""
    import os

    os.environ["LOCAL_WORLD_SIZE"] = str(world)  # as `run --procs` sets it: no prefetch worker beside the ranks
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    from robust_atp.models.base import load_adapter

    hf_logging.disable_progress_bar()
    suite, examples, methods, image_conds, text_conds = load_slice(suite_path, overrides)
    size = -(-len(examples) // world)
    mine = examples[rank * size:(rank + 1) * size]
    adapter = load_adapter(suite.model)
    engine_run(adapter, mine[:1], methods, image_conds, text_conds, suite, 1, Speedups())  # warm-up
    conn.send("ready")
    while conn.recv() is not None:
        conn.send(engine_run(adapter, mine, methods, image_conds, text_conds, suite, max(1, len(mine)), Speedups())
                  if mine else ({}, None))
    conn.close()


class RankPool:
    """N worker processes (`_rank_worker`) that each run their share when told to."""

    def __init__(self, suite_path: str, overrides: dict, world: int):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for r in range(world):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_rank_worker, args=(child, suite_path, overrides, r, world), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for c in self.conns:
            assert c.recv() == "ready"

    def run(self) -> tuple[dict, object]:
        for c in self.conns:
            c.send("go")
        parts = [c.recv() for c in self.conns]
        preds = {k: v for p, _ in parts for k, v in p.items()}
        return preds, combine_stats([st for _, st in parts if st is not None])

    def close(self) -> None:
        for c in self.conns:
            c.send(None)
        for p in self.procs:
            p.join(timeout=30)


def engine_run(adapter, examples, methods, image_conds, text_conds, suite, batch_size: int,
               speedups: Speedups) -> tuple[dict, object]:
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(Path(tmp) / "predictions.sqlite")
        stats = run_engine(examples=examples, methods=methods, image_conditions=image_conds,
                           adapter_factory=lambda: adapter, store=store, seed=suite.seed, metrics=suite.metrics,
                           batch_size=batch_size, include_clean=suite.include_clean, progress=False,
                           text_conditions=text_conds, cross=suite.perturbations.cross,
                           resolution=suite.perturbations.image.resolution if suite.perturbations.image else None,
                           cache=CorruptionCache(enabled=False), speedups=speedups)
        preds = {(p.example_id, p.condition, p.method): p.prediction for p in store.rows()}
        store.close()
    assert stats.corruption_hits == 0
    return preds, stats


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default=str(ROOT / "suites" / "demo.yaml"))
    ap.add_argument("--limit", type=int, default=10, help="questions of the suite (one batch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default=None)
    ap.add_argument("--quick", action="store_true", help="a smoke test: a small slice, 1 repeat")
    ap.add_argument("--no-naive", action="store_true",
                    help="leave out the naive loop (every row is then checked against engine, none)")
    a = ap.parse_args(argv)
    from transformers.utils import logging as hf_logging

    from robust_atp.models.base import load_adapter

    hf_logging.disable_progress_bar()
    overrides = {"dataset.limit": 2 if a.quick else a.limit}
    if a.device:
        overrides["model.device"] = a.device
    if a.quick:
        overrides["perturbations.image"] = {"corruptions": ["gaussian_noise"], "severities": [1]}
        overrides["perturbations.text"] = {"perturbations": ["keyboard"], "severities": [1]}
    suite, examples, methods, image_conds, text_conds = load_slice(a.suite, overrides)
    repeats = 1 if a.quick else a.repeats
    plan = condition_plan(image_conds, text_conds, suite.include_clean, suite.perturbations.cross)
    n_cond = sum(len(t) for _, t in plan)
    resolution = suite.perturbations.image.resolution if suite.perturbations.image else None
    adapter = load_adapter(suite.model)
    batch_size = len(examples)
    off = Speedups.off()
    variants = {"engine, none": off, "+ fuse": dataclasses.replace(off, fuse=True),
                "+ reuse_prefix": dataclasses.replace(off, reuse_prefix=True),
                "+ lean": dataclasses.replace(off, lean=True),
                "+ prefetch": dataclasses.replace(off, prefetch=Speedups().prefetch, prefetch_always=True),
                "engine, all": Speedups()}
    threads = {label: torch.get_num_threads() for label in variants}
    if torch.get_num_threads() > 1:  # torch on one core fewer, the prefetch worker on the freed one
        variants["all, 1 thread less"] = Speedups()
        threads["all, 1 thread less"] = torch.get_num_threads() - 1
    pool, world = None, torch.get_num_threads()
    if world > 1:  # `run --procs N`: N processes of one thread each, a batch each
        pool = RankPool(a.suite, overrides, world)
        threads[f"all, {world} processes"] = 1
    times = {label: [] for label in [*([] if a.no_naive else ["naive loop"]), *variants, *([f"all, {world} processes"] if pool else [])]}
    stats = {}
    # warm-up (untimed): lazy imports and first-call costs (nlpaug, imagecorruptions, kernels)
    engine_run(adapter, examples[:1], methods, image_conds, text_conds, suite, 1, Speedups())
    for _ in range(repeats):
        naive = None
        if not a.no_naive:
            t = time.perf_counter()
            naive = naive_loop(adapter, examples, methods, plan, suite.seed, batch_size, resolution)
            times["naive loop"].append(time.perf_counter() - t)
        for label, speedups in variants.items():
            with torch_threads(threads[label]):
                t = time.perf_counter()
                preds, stats[label] = engine_run(adapter, examples, methods, image_conds, text_conds, suite,
                                                 batch_size, speedups)
                times[label].append(time.perf_counter() - t)
            naive = preds if naive is None else naive  # the first row's, without the naive loop
            assert preds == naive, f"{label}: its predictions differ from the reference's"
        if pool is not None:
            label = f"all, {world} processes"
            t = time.perf_counter()
            preds, stats[label] = pool.run()
            times[label].append(time.perf_counter() - t)
            assert preds == naive, f"{label}: its predictions differ from the reference's"
    if pool is not None:
        pool.close()
    print(f"suite {Path(a.suite).name}{' (QUICK slice)' if a.quick else ''}: {len(examples)} questions (one batch) x "
          f"{n_cond} conditions x {len(methods)} methods = {len(naive)} answers, identical in every row; "
          f"device {adapter.device} ({torch.get_num_threads()} threads), median of {repeats}; no corruption cache")
    # the naive loop corrupts again for every method and every text condition on a corrupted image
    n_naive_img = sum(len(tcs) for ic, tcs in plan if ic is not None) * len(examples) * len(methods)
    print(f"{'row':<22}{'threads':>8}{'vision':>8}{'corrupted':>11}{'generate':>10}{'prefixes':>10}{'seconds':>10}"
          f"{'vs none':>9}")
    base = statistics.median(times["engine, none"])
    for label, ts in times.items():
        s = statistics.median(ts)
        if label == "naive loop":
            cells = (n_cond * len(methods), n_naive_img, n_cond * len(methods), 0)
        else:
            st = stats[label]
            cells = (st.vision_passes, st.corruption_computed, st.generate_calls, st.prefixes_computed)
        n = threads.get(label, torch.get_num_threads())
        print(f"{label:<22}{n:>8}{cells[0]:>8}{cells[1]:>11}{cells[2]:>10}{cells[3]:>10}{s:>10.2f}{base / s:>8.2f}x")
    print("threads = torch's threads (per process); vision = vision passes; corrupted = corrupted images computed; generate = generate calls; "
          "prefixes = prompt prefixes computed for reuse; vs none = engine, none's seconds / the row's")
    all_s = statistics.median(times["engine, all"])
    print(f"speedup (engine, all vs engine, none): {base / all_s:.2f}x"
          + ("" if pool is None else
             f"; (all, {world} processes vs engine, none): {base / statistics.median(times[f'all, {world} processes']):.2f}x")
          + ("" if a.no_naive else f"; (naive / engine, all): {statistics.median(times['naive loop']) / all_s:.2f}x"))

if __name__ == "__main__":
    main()
