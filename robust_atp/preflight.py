"""Checks that need the loaded model, run once it is loaded and before any unit of work (so a
failure writes nothing): every budget fits the visual tokens the model gives an image, and
every question fits the language model's context beside them.
"""
from __future__ import annotations

from pathlib import Path

from .errors import UserError


def check_budgets(methods, n_visual: int, suite_path: Path) -> None:
    """A count `k` (or `k_min`) above the N visual tokens would silently keep all N under a
    pruned label: refused, naming the method's field."""
    for i, m in enumerate(methods):
        for key in ("k", "k_min"):
            value = m.settings.get(key)
            if value is not None and value > n_visual:
                raise UserError(f"{suite_path}: methods[{i}].{key}: {value} is more than the {n_visual} visual "
                                f"tokens this model gives an image")


def check_questions(adapter, examples, n_visual: int, max_new_tokens: int, suite_path: Path) -> None:
    """The prompt around each (clean) question, the visual tokens and the answer must fit the
    language model's positions; a longer question is refused, naming the example."""
    cfgs = adapter.cost_configs() if hasattr(adapter, "cost_configs") else {}
    limit = getattr(cfgs.get("llm"), "max_position_embeddings", None)
    if not limit or not hasattr(adapter, "prompt_length"):
        return
    room = limit - n_visual - max_new_tokens
    for ex in examples:
        n = adapter.prompt_length(ex.question)
        if n > room:
            raise UserError(f"{suite_path}: dataset: example {ex.id}: the question and prompt are {n} tokens; with "
                            f"{n_visual} visual tokens and up to {max_new_tokens} new ones that exceeds the "
                            f"language model's {limit} positions")


def checked_adapter(load, methods, examples, suite, suite_path: Path):
    """An adapter factory that runs the checks on the adapter it loads."""
    def factory():
        adapter = load()
        if adapter.num_visual_tokens is None:
            # any-resolution adapters (LLaVA-NeXT, Qwen2-VL): the count depends on the image and
            # is known only after its vision pass; a larger `k` keeps every token (`select.budget`)
            return adapter
        n_visual = int(adapter.num_visual_tokens)
        check_budgets(methods, n_visual, suite_path)
        # the LLM's own visual tokens: BLIP-2's Q-Former hands it query tokens, not patches
        n_llm = int(getattr(adapter, "num_query_tokens", None) or n_visual)
        check_questions(adapter, examples, n_llm, suite.model.generation.max_new_tokens, suite_path)
        return adapter
    return factory
