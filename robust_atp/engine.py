"""The evaluation loop. Knows adapters, methods and perturbations by protocol only.

    for each batch of examples:
      for each image condition (clean, corruption x severity) with rows still missing:
        images_c = perturb(images, c)                 seeded by (suite seed, example id, condition)
        vision = adapter.encode_images(images_c)      ONCE, shared by every method
        for each method m with rows still missing:
          keep = m.select(vision, text)  ->  answers = adapter.generate(kept tokens, questions)
        store.put(rows)                               one transaction: the resume point

A unit of work is (batch, image condition). Batches are formed from the example order
alone, so a resumed run recomputes a missing unit on exactly the examples an uninterrupted
run would have used.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

from .data.base import Example, iter_batches
from .errors import UserError
from .metrics import score_all
from .perturb.image import ImageCondition, condition_seed, corrupt
from .store import Prediction, RunStore

CLEAN = "clean"


@dataclass
class EngineStats:
    units_total: int = 0
    units_run: int = 0
    vision_passes: int = 0
    generations: int = 0
    seconds: float = 0.0
    timings: dict = field(default_factory=lambda: {"load": 0.0, "perturb": 0.0, "vision": 0.0, "text": 0.0,
                                                   "select": 0.0, "generate": 0.0})


def condition_names(image_conditions: list[ImageCondition], include_clean: bool = True) -> list[str]:
    return ([CLEAN] if include_clean else []) + [c.name for c in image_conditions]


def run_engine(*, examples: list[Example], methods: list, image_conditions: list[ImageCondition],
               adapter_factory: Callable[[], object], store: RunStore, seed: int, metrics: list[str],
               batch_size: int, include_clean: bool = True, progress: bool = True) -> EngineStats:
    t0 = time.perf_counter()
    stats = EngineStats()
    conds: list[ImageCondition | None] = ([None] if include_clean else []) + list(image_conditions)
    done = store.done()
    batches = list(iter_batches(examples, batch_size))

    def missing(batch, cname):
        return [m for m in methods if any((ex.id, cname, m.label) not in done for ex in batch)]

    plan = [(b, c) for b in range(len(batches)) for c in conds if missing(batches[b], _cname(c))]
    stats.units_total = len(batches) * len(conds)
    if not plan:
        stats.seconds = time.perf_counter() - t0
        return stats

    adapter = adapter_factory()
    text_kinds = {m.settings.get("text", "question") for m in methods if m.needs_text}
    bar = tqdm(total=len(plan), desc="evaluating", unit="unit", disable=not progress, dynamic_ncols=True)
    by_batch: dict[int, list] = {}
    for b, c in plan:
        by_batch.setdefault(b, []).append(c)
    tm = stats.timings
    for b, todo in by_batch.items():
        batch = batches[b]
        t = time.perf_counter()
        images = [_load_image(ex) for ex in batch]
        questions = [ex.question for ex in batch]
        tm["load"] += time.perf_counter() - t
        t = time.perf_counter()
        texts = {kind: adapter.encode_texts(_texts(adapter, questions, kind)) for kind in sorted(text_kinds)}
        tm["text"] += time.perf_counter() - t
        for cond in todo:
            cname = _cname(cond)
            t = time.perf_counter()
            imgs = images if cond is None else [
                corrupt(im, cond, condition_seed(seed, ex.id, cname)) for im, ex in zip(images, batch)]
            tm["perturb"] += time.perf_counter() - t
            t = time.perf_counter()
            vision = adapter.encode_images(imgs)
            tm["vision"] += time.perf_counter() - t
            stats.vision_passes += 1
            rows = []
            for m in missing(batch, cname):
                t = time.perf_counter()
                keys = [f"{seed}/{ex.id}/{m.label}" for ex in batch]
                text = texts.get(m.settings.get("text", "question")) if m.needs_text else None
                tokens = kept_tokens_of(m, vision, text, keys)
                tm["select"] += time.perf_counter() - t
                t = time.perf_counter()
                answers = adapter.generate(tokens, questions)
                tm["generate"] += time.perf_counter() - t
                stats.generations += len(batch)
                for ex, ans, toks in zip(batch, answers, tokens):
                    if (ex.id, cname, m.label) in done:
                        continue
                    scores = score_all(metrics, ans, ex.answers)
                    rows.append(Prediction(ex.id, cname, m.label, ans, scores[metrics[0]], scores, len(toks)))
            store.put(rows)
            done.update((r.example_id, r.condition, r.method) for r in rows)
            stats.units_run += 1
            bar.update(1)
    bar.close()
    stats.seconds = time.perf_counter() - t0
    return stats


def _cname(cond: ImageCondition | None) -> str:
    return CLEAN if cond is None else cond.name


def _texts(adapter, questions: list[str], kind: str) -> list[str]:
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
    """The visual tokens a method hands the LLM: per example [K_i, D]."""
    keep = method.select(vision, text, keys)
    return [vision.tokens[i, idx] for i, idx in enumerate(keep)]
