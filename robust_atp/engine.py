"""The evaluation loop. Knows adapters, methods and perturbations by protocol only.

    for each batch of examples:
      for each image condition (clean, corruption x severity) with rows still missing:
        images_c = perturb(images, c)                 seeded by (suite seed, example id, condition);
                                                      read from the corruption cache when there
        vision = adapter.encode_images(images_c)      ONCE, shared by every method and text condition
        for each text condition t on this image (clean question, perturbation x severity):
          questions_t = perturb(questions, t)         seeded by (suite seed, example id, t)
          for each method m with rows still missing:
            keep = m.select(vision, text)  ->  answers = adapter.generate(kept tokens, questions_t)
                                                      (`downsample` reads its own pass over the images
                                                      resized to its budget, once per budget)
          with a suite's `cost:` on, for the first `cost.batches` batches:
            measure_cost(methods, ...)                latency, memory, KV cache, counted FLOPs (after
                                                      the answers, which it never changes)
        store.put(rows)                               one transaction: the resume point

A unit of work is (batch, image condition) with all its text conditions. Batches are formed
from the example order alone, so a resumed run recomputes a missing unit on exactly the
examples an uninterrupted run would have used.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .conditions import CLEAN, condition_name, condition_plan
from .data.base import Example, batch_key, iter_batches
from .errors import UserError
from .measure import measure_cost, row_measurements
from .metrics import score_all
from .models.fastv import FastVSpec
from .models.staged_llm import StagedSpec
from .perturb.cache import CorruptionCache
from .perturb.image import ImageCondition, canonicalize, condition_seed
from .perturb.text import TextCondition, perturb_text
from .preflight import check_loaded
from .progress import Progress
from .seeding import stable_seed
from .speedups import Selection, Speedups, fused_inputs, generation_groups
from .store import Prediction, RunStore
from .threads import local_ranks, usable_cores

@dataclass
class EngineStats:
    units_total: int = 0
    units_run: int = 0
    vision_passes: int = 0
    merged_tower_passes: int = 0  # extra tower passes of methods that merge inside it (ToMe)
    downsampled_passes: int = 0  # extra tower passes over images resized to a `downsample` budget
    generations: int = 0  # answers generated (examples x methods)
    generate_calls: int = 0  # `adapter.generate` calls (fewer than methods x units when fused)
    prefixes_computed: int = 0  # prompt-prefix KV caches computed (`Speedups.reuse_prefix`)
    prefixes_reused: int = 0  # generations that continued a prefix computed for another text condition
    corruption_hits: int = 0  # corrupted images read from the cache
    corruption_computed: int = 0  # corrupted images computed now
    seconds: float = 0.0
    timings: dict = field(default_factory=lambda: {"load": 0.0, "perturb": 0.0, "vision": 0.0, "text": 0.0,
                                                   "select": 0.0, "generate": 0.0, "cost": 0.0})
    cost_measured: int = 0  # (condition, method, batch) cost records measured now


def run_engine(*, examples: list[Example], methods: list, image_conditions: list[ImageCondition],
               adapter_factory: Callable[[], object], store: RunStore, seed: int, metrics: list[str],
               batch_size: int, include_clean: bool = True, progress: bool = True,
               text_conditions: list[TextCondition] = (), cross: bool = False, resolution: int | None = None,
               cache: CorruptionCache | None = None, shard: tuple[int, int] = (0, 1),
               done: set | None = None, cost=None, cost_done: set | None = None,
               speedups: Speedups | None = None) -> EngineStats:
    """`speedups`: the optimisations used where the adapter allows them (`speedups.Speedups`;
    default all), which change the number of model calls and never an answer.
    `shard` (rank, world): evaluate only the batches b with b % world == rank (a data-parallel
    rank; batches are the single process's); `done` / `cost_done`: prediction / cost keys already
    computed (default: the store's).
    cost: the suite's `cost` section; when enabled, the first `cost.batches` batches of every
    condition are also measured (`measure.measure_cost`) into the store's cost table, after
    their predictions (a finished run whose cost is missing gets only the measurements)."""
    t0 = time.perf_counter()
    stats = EngineStats()
    speedups = Speedups() if speedups is None else speedups
    conds = condition_plan(image_conditions, text_conditions, include_clean, cross)
    done = store.done() if done is None else set(done)
    batches = list(iter_batches(examples, batch_size))
    mine = range(shard[0], len(batches), shard[1])

    def missing(batch, cname):
        return [m for m in methods if any((ex.id, cname, m.label) not in done for ex in batch)]

    measuring = cost is not None and cost.enabled
    cost_done = (store.cost_done() if cost_done is None else set(cost_done)) if measuring else set()

    def cost_missing(b, cname):
        if not measuring or b >= cost.batches:
            return []
        return [m for m in methods if (cname, m.label, batch_key(batches[b])) not in cost_done]

    plan = [(b, c) for b in mine for c in conds
            if any(missing(batches[b], cname) or cost_missing(b, cname)
                   for cname in (condition_name(c[0], tc) for tc in c[1]))]
    stats.units_total = len(mine) * len(conds)
    if not plan:
        stats.seconds = time.perf_counter() - t0
        return stats

    steps = sum(len(missing(batches[b], condition_name(c[0], tc))) for b, c in plan for tc in c[1])
    bar = Progress(steps, enabled=progress)  # shown from the start: loading the model comes first
    try:
        adapter = adapter_factory()
        check_loaded(methods, adapter, measuring)
    except BaseException:
        bar.close()
        raise
    cache = cache if cache is not None else CorruptionCache()
    text_kinds = sorted({m.settings.get("text", "question") for m in methods if m.needs_text})
    by_batch: dict[int, list] = {}
    for b, c in plan:
        by_batch.setdefault(b, []).append(c)
    tm = stats.timings
    loaded: dict[int, list] = {}  # batch index -> its source images (the batch at hand, and the prefetch's)

    def load(b):
        if b not in loaded:
            t = time.perf_counter()
            loaded[b] = [_load_image(ex) for ex in batches[b]]
            tm["load"] += time.perf_counter() - t
        return loaded[b]

    prefetch = corruption_prefetch(by_batch, batches, seed, load, cache, resolution, speedups, adapter)
    job = 0  # the next prefetched unit
    try:
        for b, todo in by_batch.items():
            batch = batches[b]
            for old in [k for k in loaded if k != b]:
                del loaded[old]
            images = load(b)
            text_cache: dict = {}  # (text condition, kind) -> CLIP text embeddings of this batch
            for image_cond, text_conds in todo:
                t = time.perf_counter()
                iname = CLEAN if image_cond is None else image_cond.name
                if image_cond is None:
                    imgs = [canonicalize(im, resolution) for im in images]
                elif prefetch is not None:
                    imgs, from_disk = prefetch.take(job)
                    job += 1
                    cache.hits += sum(from_disk)
                    cache.computed += len(imgs) - sum(from_disk)
                    stats.corruption_hits += sum(from_disk)
                    stats.corruption_computed += len(imgs) - sum(from_disk)
                else:
                    hits = cache.hits
                    imgs = [cache.get(im, image_cond, condition_seed(seed, ex.id, iname), resolution)[0]
                            for im, ex in zip(images, batch)]
                    stats.corruption_hits += cache.hits - hits
                    stats.corruption_computed += len(imgs) - (cache.hits - hits)
                tm["perturb"] += time.perf_counter() - t
                t = time.perf_counter()
                vision = adapter.encode_images(imgs)
                tm["vision"] += time.perf_counter() - t
                stats.vision_passes += 1
                merged: dict[str, object] = {}  # method label -> its own tower pass on these images (merged, resized)
                resized: dict[int, object] = {}  # token budget -> the pass over these images resized to it
                prefixes: dict[str, object] = {}  # method label -> its prompt prefix's KV cache on these images
                reusing = speedups.reuse_prefix and adapter.reuses_prefix and len(text_conds) > 1
                rows, cost_rows = [], []
                for text_cond in text_conds:
                    cname = condition_name(image_cond, text_cond)
                    todo_methods = missing(batch, cname)
                    to_measure = cost_missing(b, cname)
                    if not todo_methods and not to_measure:
                        continue
                    t = time.perf_counter()
                    questions = [ex.question if text_cond is None else
                                 perturb_text(ex.question, text_cond, condition_seed(seed, ex.id, text_cond.name))
                                 for ex in batch]
                    tm["perturb"] += time.perf_counter() - t
                    t = time.perf_counter()
                    for kind in text_kinds:
                        if (text_cond, kind) not in text_cache:
                            text_cache[text_cond, kind] = adapter.encode_texts(clip_texts(adapter, questions, kind))
                    tm["text"] += time.perf_counter() - t
                    selections = []
                    for m in todo_methods:
                        bar.working_on(cname, m.label)
                        text = text_cache[text_cond, m.settings.get("text", "question")] if m.needs_text else None
                        if m.tower is not None and m.label not in merged:  # once per image condition
                            t = time.perf_counter()
                            merged[m.label] = adapter.encode_images_merged(imgs, m.tower)
                            tm["vision"] += time.perf_counter() - t
                            stats.merged_tower_passes += 1
                        if m.resize is not None and m.label not in merged:  # once per image condition and budget
                            target = m.resize.target(vision.tokens.shape[1])
                            if target not in resized:
                                t = time.perf_counter()
                                resized[target] = adapter.encode_images_downsampled(imgs, target)
                                tm["vision"] += time.perf_counter() - t
                                stats.downsampled_passes += 1
                            merged[m.label] = resized[target]
                        selections.append(_select(m, adapter, vision, text, batch, seed, stats, merged.get(m.label)))
                    if reusing:
                        _attach_prefixes(selections, adapter, questions, prefixes, stats)
                    for group in generation_groups(selections, adapter, speedups):
                        _generate(group, adapter, questions, stats, speedups)
                    for sel in selections:
                        seen = merged[sel.method.label] if sel.method.resize is not None else vision  # its tokens' pass
                        rows += _rows(sel, adapter, seen, questions, batch, cname, metrics, done, resolution,
                                      [im.size for im in images])
                        bar.step()
                    if to_measure:  # after the answers: measuring never changes them
                        t = time.perf_counter()
                        texts = {kind: clip_texts(adapter, questions, kind) for kind in text_kinds}
                        measured = measure_cost(to_measure, adapter, imgs, questions, texts,
                                                {m.label: seed_keys(seed, batch, m) for m in to_measure}, cost)
                        cost_rows += [(cname, label, batch_key(batch), rec) for label, rec in measured.items()]
                        tm["cost"] += time.perf_counter() - t
                store.put(rows)
                if cost_rows:
                    store.put_cost(cost_rows)
                    cost_done.update((c, m, k) for c, m, k, _ in cost_rows)
                    stats.cost_measured += len(cost_rows)
                done.update((r.example_id, r.condition, r.method) for r in rows)
                stats.units_run += 1
                bar.unit_done()
    finally:
        if prefetch is not None:
            prefetch.close()
    bar.close()
    stats.seconds = time.perf_counter() - t0
    return stats


def _on_cpu(adapter) -> bool:
    device = getattr(adapter, "device", None)
    return device is None or torch.device(device).type == "cpu"


def corruption_prefetch(by_batch: dict, batches: list, seed: int, load, cache: CorruptionCache, resolution,
                        speedups: Speedups, adapter):
    """A `Prefetch` of the run's corrupted units in the order the loop visits them, or None: off,
    fewer than two such units (nothing to overlap), or a model on the CPU whose threads already
    take every core, counting the threads of the other data-parallel ranks on this node (a worker
    beside them slows the run: torch's threads wait on each other when a core is taken from
    them; measured in benchmarks/bench_engine.py)."""
    jobs = [(b, cond, [condition_seed(seed, ex.id, cond.name) for ex in batches[b]])
            for b, todo in by_batch.items() for cond, _ in todo if cond is not None]
    if speedups.prefetch < 1 or len(jobs) < 2:
        return None
    if not speedups.prefetch_always and _on_cpu(adapter) and torch.get_num_threads() * local_ranks() >= usable_cores():
        return None
    from .perturb.prefetch import Prefetch

    return Prefetch(jobs, load, cache, resolution, ahead=speedups.prefetch)


@dataclass
class RunOutcome:
    """What a finished run wrote, for its caller to print: results rows, method labels and
    budgets, the engine counters and the corruption cache used."""

    rows: list[dict]
    labels: list[str]
    budgets: dict[str, str]
    stats: EngineStats
    cache: CorruptionCache
    published: dict | None = None  # results.json's `published` section, when the suite names one
    subsets: dict = field(default_factory=dict)  # results.json's `subsets` sections (robust_atp.subsets)


def evaluate(suite, run_dir: Path, suite_path: Path, fresh: bool = False, progress: bool = True,
             use_cache: bool = True, log: Callable[[str], None] | None = None,
             finish: Callable[[RunOutcome], None] | None = None) -> RunOutcome | None:
    """Run a suite into run_dir, in one process or as one rank of a data-parallel run
    (torchrun / accelerate launch: see `distributed`): data, perturbations, methods, the model
    and the store composed here; results.json and samples.jsonl written (`results`).
    `finish(outcome)` runs on rank 0 while the run directory is still held (the summary and the
    report); returns the outcome on rank 0, None on the other ranks."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one progress bar: the run's

    from . import distributed
    from .beside_published import beside_published
    from .conditions import condition_names
    from .data.dataset import load_dataset
    from .data.validate import with_image_checks
    from .measure import add_measured_cost
    from .models.base import load_adapter
    from .models.hf_base import device_problem
    from .perturb.image import MIN_SIDE, resolve_image_conditions
    from .perturb.text import resolve_text_conditions
    from .preflight import checked_adapter
    from .prune.methods import validate_method
    from .results import (STORE, build_manifest, rescored, samples, slice_note, summarize, this_runs_cost,
                          write_results)
    from .rundir import open_run
    from .store import read_cost_done, read_done
    from .subsets import subset_sections
    from .summary import method_budgets

    log = log or (lambda line: print(line, file=sys.stderr))
    ranks = distributed.from_env()
    device = distributed.rank_device(suite.model.device, ranks)
    if device != suite.model.device:
        suite = suite.model_copy(update={"model": suite.model.model_copy(update={"device": device})})
    if (problem := device_problem(device)) is not None:  # before the run directory is touched
        raise UserError(f"{suite_path}: model.device: {problem}")
    torch.manual_seed(suite.seed)
    methods = [validate_method(m) for m in suite.methods]
    image_conditions = resolve_image_conditions(suite.perturbations.image)
    text_conditions = resolve_text_conditions(suite.perturbations.text)
    cross = suite.perturbations.cross
    resolution = suite.perturbations.image.resolution if suite.perturbations.image else None
    cache = CorruptionCache(enabled=use_cache)
    examples = with_image_checks(load_dataset(suite.dataset, suite_path), suite_path,
                                 MIN_SIDE if image_conditions and resolution is None else None)
    conditions = condition_names(image_conditions, suite.include_clean, text_conditions, cross)
    distributed.start(ranks)
    lock = store = None
    try:
        # rank 0 takes the run directory (lock, --fresh, config check, shards an earlier run
        # left) before any rank starts; the others wait for its word
        if ranks.rank == 0:
            failure = None
            try:
                lock, store = open_run(run_dir, fresh, suite, log)
            except UserError as e:
                failure = e
            distributed.broadcast(None if failure is None else str(failure), ranks)
            if failure is not None:
                raise failure
        elif distributed.broadcast(None, ranks) is not None:
            raise distributed.PeerFailed("rank 0 stopped")
        if progress and ranks.rank == 0:
            procs = f" on {ranks.world} processes" if ranks.parallel else ""
            log(f"{suite.name}: {len(examples)} examples x {len(conditions)} conditions "
                f"x {len(methods)} methods -> {run_dir}{procs}")
        failure, stats, target, done, cost_done = None, None, store, None, None
        try:  # a user error on one rank reaches the others through the gather below
            if ranks.parallel:  # each rank writes its own shard; what is done is the merged store's
                done = read_done(run_dir / STORE)
                cost_done = read_cost_done(run_dir / STORE)
                target = RunStore(distributed.shard_path(run_dir, ranks.rank))
                target.claim(suite.name, suite.config_hash())
            stats = run_engine(examples=examples, methods=methods, image_conditions=image_conditions,
                               adapter_factory=checked_adapter(lambda: load_adapter(suite.model), methods, examples,
                                                               suite, suite_path), store=target, seed=suite.seed,
                               metrics=suite.metrics, batch_size=suite.batch_size,
                               include_clean=suite.include_clean, progress=progress and ranks.rank == 0,
                               text_conditions=text_conditions, cross=cross, resolution=resolution, cache=cache,
                               shard=(ranks.rank, ranks.world), done=done, cost=suite.cost,
                               cost_done=cost_done)
        except UserError as e:
            failure = e
        finally:
            if target is not store:  # a shard
                target.close()
        outcomes = distributed.gather((None if failure is None else str(failure), stats), ranks)
        if failure is not None:
            raise failure
        if ranks.rank != 0:
            return None
        if any(msg is not None for msg, _ in outcomes):
            raise distributed.PeerFailed("another rank stopped")
        stats = distributed.combine_stats([s for _, s in outcomes])
        distributed.merge_shards(store, run_dir)
        labels = [m.label for m in methods]
        by_key = {(p.example_id, p.condition, p.method): p for p in store.rows()}  # read the store once
        sliced = slice_note({k[0] for k in by_key}, examples, suite.dataset.limit)
        if sliced is not None:
            log(f"{run_dir}: {sliced['note']}")
        by_key = rescored(by_key, examples, suite.metrics)
        cost_records = this_runs_cost(store.cost_rows(), examples, suite)
        store.close()
        store = None
        rows = summarize(by_key, examples, conditions, labels, suite.metrics)
        add_measured_cost(rows, cost_records)
        manifest = build_manifest(suite, suite_path, examples, conditions, methods, stats, cache)
        manifest["processes"] = ranks.world
        if sliced is not None:
            manifest["slice"] = sliced
        published = beside_published(manifest["config"], rows, manifest["methods"], manifest["metric_sources"])
        sample_rows = list(samples(by_key, examples, conditions, labels))
        subsets = subset_sections(run_dir, manifest, sample_rows, lambda ids: summarize(
            by_key, [ex for ex in examples if ex.id in ids], conditions, labels, suite.metrics))
        write_results(run_dir, manifest, rows, sample_rows, published, subsets)
        outcome = RunOutcome(rows, labels, method_budgets(methods), stats, cache, published, subsets)
        if finish is not None:
            finish(outcome)
        return outcome
    finally:
        if store is not None:
            store.close()
        if lock is not None:
            lock.release()
        distributed.stop()


def _select(m, adapter, vision, text, batch, seed, stats, merged_vision=None) -> Selection:
    """One method on one batch under one condition, up to what the LLM is handed: its kept (or
    merged) tokens and any in-LLM request. merged_vision: the method's own merged tower pass
    (ToMe), or its pass over the resized images (downsample), which it reads instead of `vision`
    (a resized pass also gives the generation inputs: its own grid)."""
    t = time.perf_counter()
    keys = seed_keys(seed, batch, m)
    kept = m.apply(vision if merged_vision is None else merged_vision, text, keys)
    stats.timings["select"] += time.perf_counter() - t
    if m.fastv_layer is not None:  # pruned inside the LLM: the adapter reports what it kept
        return Selection(m, kept, FastVSpec(m.fastv_layer, m.fastv_k(vision.tokens.shape[1])),
                         adapter.generation_inputs(vision, None))
    if m.staged is not None:  # dropped between decoder layers: the adapter reports what each layer saw
        return Selection(m, kept, staged_spec(m, adapter, vision.tokens.shape[1], keys),
                         adapter.generation_inputs(vision, None))
    # e.g. the kept indices for adapters that place tokens by grid (Qwen2-VL, LLaVA-NeXT)
    source = merged_vision if m.resize is not None else vision
    return Selection(m, kept, None, adapter.generation_inputs(source, [k.indices for k in kept]))


def _attach_prefixes(selections: list[Selection], adapter, questions, prefixes: dict, stats) -> None:
    """Give each question-independent selection the KV cache of its prompt prefix: the one an
    earlier text condition of this image computed when it still fits, else a new one."""
    t = time.perf_counter()
    for sel in selections:
        if not sel.question_independent:
            continue
        label = sel.method.label
        before = prefixes.get(label)
        sel.kv_prefix = adapter.kv_prefix(sel.tokens, questions, sel.inputs.get("prefix"), reuse=before)
        if sel.kv_prefix is None:
            continue
        if sel.kv_prefix is before:
            stats.prefixes_reused += 1
        else:
            prefixes[label] = sel.kv_prefix
            stats.prefixes_computed += 1
    stats.timings["generate"] += time.perf_counter() - t


def _generate(group: list[Selection], adapter, questions: list[str], stats, speedups: Speedups) -> None:
    """One `generate` call for a group of selections (one, or several fused along the batch:
    `speedups.generation_groups`); fills in each one's answers and truncation flags."""
    t = time.perf_counter()
    n = len(questions)
    extra = {}
    if group[0].kv_prefix is not None:
        extra["kv_prefix"] = group[0].kv_prefix if len(group) == 1 else type(group[0].kv_prefix).cat(
            [s.kv_prefix for s in group])
    adapter.last_truncated = None  # filled in by this call's generate (a generation path without it: unknown)
    if group[0].in_llm is not None:  # passed only when set: an adapter without in-LLM pruning need not take it
        extra["in_llm"] = group[0].in_llm
    elif speedups.lean and getattr(adapter, "lean_decoding", False):
        extra["lean"] = True
    if len(group) == 1:
        answers = adapter.generate(group[0].tokens, questions, **group[0].inputs, **extra)
    else:
        answers = adapter.generate([t for s in group for t in s.tokens], questions * len(group),
                                   **fused_inputs([s.inputs for s in group]), **extra)
    cut = getattr(adapter, "last_truncated", None) or [None] * len(answers)  # stopped at max_new_tokens
    for i, s in enumerate(group):
        s.answers, s.truncated = answers[i * n:(i + 1) * n], cut[i * n:(i + 1) * n]
    stats.timings["generate"] += time.perf_counter() - t
    stats.generate_calls += 1
    stats.generations += len(answers)


def _rows(sel: Selection, adapter, vision, questions, batch, cname, metrics, done,
          resolution: int | None = None, source_sizes: list | None = None) -> list[Prediction]:
    """A generated selection as prediction rows: scored, measured (tokens the LLM saw, FLOPs)."""
    m, kept, staged = sel.method, sel.kept, None
    if isinstance(sel.in_llm, StagedSpec):
        staged, indices = sel.in_llm, sel.in_llm.kept
    elif sel.in_llm is not None:
        indices = sel.in_llm.kept
    else:
        indices = [k.indices for k in kept]
    n_llm = [len(i) if i is not None else len(k) for i, k in zip(indices, kept)]
    if staged is not None:  # the last decoder layer's image tokens (SparseVLM's recycled ones too)
        n_llm = [staged.image_tokens[-1]] * len(batch)
    extras = row_measurements(m, adapter, vision, indices, questions, batch, n_llm, m.fastv_layer, resolution,
                              source_sizes, staged=staged)
    rows = []
    for ex, ans, idx, n, extra, q, c in zip(batch, sel.answers, indices, n_llm, extras, questions, sel.truncated):
        if (ex.id, cname, m.label) in done:
            continue
        if c is not None:
            extra = {**extra, "truncated": bool(c)}
        if q != ex.question:  # a text condition: keep the question the model was asked
            extra = {**extra, "question_asked": q}
        scores = score_all(metrics, ans, ex.answers)
        rows.append(Prediction(ex.id, cname, m.label, ans, scores[metrics[0]], scores, n,
                               kept_indices=None if idx is None else tuple(idx.tolist()), extra=extra))
    return rows


def seed_keys(seed: int, batch, m) -> list[str]:
    """Per-example seed keys of a method (random pruning draws from them)."""
    return [f"{seed}/{ex.id}/{m.label}" for ex in batch]


def staged_spec(m, adapter, n_image: int, keys: list[str]) -> StagedSpec:
    """The in_llm request of a method that drops tokens between decoder layers: its policy at
    this model's depth, and per example a seed from its seed key (SparseVLM's jitter)."""
    layers = adapter.cost_configs()["llm"].num_hidden_layers
    return StagedSpec(m.name, m.staged(n_image, layers), [stable_seed(m.name, k) for k in keys])


def clip_texts(adapter, questions: list[str], kind: str) -> list[str]:
    """What the CLIP text tower encodes for a method's `text` setting: the question, or the prompt around it."""
    if kind == "question":
        return questions
    return [adapter.prompt(q).replace("<image>", " ").strip() for q in questions]


def _load_image(ex: Example):
    try:
        return ex.image()
    except (OSError, ValueError) as e:
        raise UserError(f"example {ex.id}: cannot read its image ({e})") from None


@torch.inference_mode()
def kept_tokens_of(method, vision, text, keys) -> list[torch.Tensor]:
    """The visual tokens a method hands the LLM: per example [K_i, D] (selected or merged)."""
    return [k.tokens for k in method.apply(vision, text, keys)]
