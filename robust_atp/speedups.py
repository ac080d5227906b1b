"""The engine's optimisations that change how many model calls a unit makes, never an answer.

    fuse          within a unit (batch x image condition x text condition), the methods that hand
                  the LLM the same number of visual tokens per example, with no in-LLM pruning,
                  share one `generate` call: their batches concatenated (the same questions, so
                  the same padding). Only on adapters declaring `fuses_generation`.
    reuse_prefix  for a method that does not read the question (`needs_text` False, no in-LLM
                  pruning), the KV cache of [prompt head + visual tokens] is computed once per
                  (batch, image condition, method) and every text condition continues from it.
                  Only on adapters declaring `reuses_prefix`.
    lean          a generation with no in-LLM pruning (from a reused prefix or not) decodes greedily
                  through the adapter's own loop (`models.staged_llm`, no policy): the prefill's last
                  decoder layer runs on the last position only (the others' keys and values from its
                  own projections), and none of Hugging Face's per-call set-up. Only on adapters
                  declaring `lean_decoding`, and there only for plain greedy decoding.
    prefetch      the corrupted images of the next `prefetch` units (batch x image condition) are
                  computed ahead in one worker process while the model works on the current one
                  (`perturb.prefetch`); the same images, bytes and order. 0: in the engine's process.
                  Used when the model is on an accelerator, or on the CPU with a core its threads
                  leave free (`--threads`); `prefetch_always` uses it beside threads on every core
                  too (which slows a CPU run: benchmarks/bench_engine.py).

Each is exact by construction and by test (tests/test_fused.py, tests/test_prefetch.py,
tests/test_lean_decode.py): the answers are those of one Hugging Face `generate` per method over
the whole prompt, on images computed in the engine's own process.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Speedups:
    """Which optimisations a run may use (each only where the adapter declares it safe)."""

    fuse: bool = True
    reuse_prefix: bool = True
    lean: bool = True
    prefetch: int = 4
    prefetch_always: bool = False

    @classmethod
    def off(cls) -> "Speedups":
        return cls(fuse=False, reuse_prefix=False, lean=False, prefetch=0)


@dataclass
class Selection:
    """One method's choice on a unit's batch: what `generate` is handed and, after it, the answers.

    kept: per example the method's `Kept` (tokens [K_i, D], indices or None when merged);
    in_llm: a FastV / staged spec (the LLM prunes further), or None; inputs: the adapter's
    `generation_inputs`; kv_prefix: the cached prompt prefix it continues, or None."""

    method: object
    kept: list
    in_llm: object = None
    inputs: dict = field(default_factory=dict)
    kv_prefix: object = None
    answers: list[str] | None = None
    truncated: list | None = None

    @property
    def tokens(self) -> list[torch.Tensor]:
        return [k.tokens for k in self.kept]

    @property
    def question_independent(self) -> bool:
        """The tokens the LLM reads do not depend on the question (its prefix can be reused)."""
        return not self.method.needs_text and self.in_llm is None


def generation_groups(selections: list[Selection], adapter, speedups: Speedups) -> list[list[Selection]]:
    """The `generate` calls of a unit: selections that may share one call grouped (in the order
    of their first member), every other one alone."""
    if not (speedups.fuse and adapter.fuses_generation):
        return [[s] for s in selections]
    groups: dict = {}
    for i, s in enumerate(selections):
        key = i if s.in_llm is not None else (tuple(len(t) for t in s.tokens), s.kv_prefix is not None,
                                              tuple(sorted(s.inputs)))
        groups.setdefault(key, []).append(s)
    return list(groups.values())


def fused_inputs(parts: list[dict]) -> dict:
    """Several selections' `generation_inputs` as one batch's: tensors concatenated along the
    batch, lists joined."""
    out = {}
    for key in parts[0]:
        values = [p[key] for p in parts]
        if all(v is None for v in values):
            out[key] = None
        elif isinstance(values[0], torch.Tensor):
            out[key] = torch.cat(values)
        else:
            out[key] = [x for v in values for x in v]
    return out
