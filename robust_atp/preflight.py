"""Checks that need the loaded model, run once it is loaded and before any unit of work (so a
failure writes nothing): a `downsample` method has an adapter whose token count follows the
image size, every budget fits the visual tokens the model gives an image, every
question fits the language model's context beside them, every method's `layer` exists, and the
adapter can do what the methods and the suite's `cost:` ask of it.
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
    limit = getattr(adapter.cost_configs().get("llm"), "max_position_embeddings", None)
    if not limit:
        return
    room = limit - n_visual - max_new_tokens
    for ex in examples:
        n = adapter.prompt_length(ex.question)
        if n > room:
            raise UserError(f"{suite_path}: dataset: example {ex.id}: the question and prompt are {n} tokens; with "
                            f"{n_visual} visual tokens and up to {max_new_tokens} new ones that exceeds the "
                            f"language model's {limit} positions")


def check_downsample(methods, adapter, suite_path: Path) -> None:
    """Resizing the image changes the token count only on adapters declaring
    `token_count_follows_image`; elsewhere `downsample` would run the full model under a pruned
    label: refused, naming the method's field and its nearest equivalent."""
    if not adapter.token_count_follows_image:
        refuse_downsample(methods, adapter.token_count_refusal(), suite_path)


def refuse_downsample(methods, reason: str, suite_path: Path) -> None:
    """The one-line refusal of the first `downsample` method, on an adapter whose token count is
    fixed for `reason` (also `--check`'s, which knows the adapter's class only)."""
    for i, m in enumerate(methods):
        if m.resize is not None:
            raise UserError(f"{suite_path}: methods[{i}].name: {m.name} needs an adapter whose token count follows "
                            f"the image size ({reason}); use pool, its nearest equivalent")


def checked_adapter(load, methods, examples, suite, suite_path: Path):
    """An adapter factory that runs the checks on the adapter it loads."""
    def factory():
        adapter = load()
        check_downsample(methods, adapter, suite_path)
        if adapter.num_visual_tokens is None:
            # any-resolution adapters (LLaVA-NeXT, Qwen2-VL): the count depends on the image and
            # is known only after its vision pass; a larger `k` keeps every token (`select.budget`)
            return adapter
        n_visual = int(adapter.num_visual_tokens)
        check_budgets(methods, n_visual, suite_path)
        # the LLM's own visual tokens: BLIP-2's Q-Former hands it query tokens, not patches
        n_llm = int(adapter.llm_visual_tokens(n_visual))
        check_questions(adapter, examples, n_llm, suite.model.generation.max_new_tokens, suite_path)
        return adapter
    return factory


def check_method_layers(methods, adapter) -> None:
    """Each method's `layer` setting exists in this model, or one UserError line naming it
    (checked once the model is loaded, before any work: the suite alone cannot know the depth).
    ViT layers index the CLS attention of every layer (negative counts from the end); FastV's
    LLM layer must leave a layer after it to prune for, as must PyramidDrop's, DART's and
    SparseVLM's (their policies built at this depth; on an adapter that can run them)."""
    cfgs = adapter.cost_configs()
    n_vit = getattr(cfgs.get("vision"), "num_hidden_layers", None)
    n_llm = getattr(cfgs.get("llm"), "num_hidden_layers", None)
    for m in methods:
        if m.staged is not None:  # PyramidDrop, DART, SparseVLM: their layers and counts at this depth
            if n_llm is not None and adapter.num_visual_tokens and getattr(adapter, "in_llm_pruning", False):
                try:
                    m.staged(int(adapter.num_visual_tokens), n_llm)
                except ValueError as e:
                    raise UserError(f"method {m.label!r}: {e}") from None
            continue
        layer = m.settings.get("layer")
        if layer is None:
            continue
        if m.fastv_layer is not None:
            if n_llm is not None and not 0 <= layer < n_llm - 1:
                raise UserError(f"method {m.label!r}: layer {layer} leaves no LLM layer to prune in: the model has "
                                f"{n_llm} decoder layers, so layer must be in 0..{n_llm - 2}")
        elif n_vit is not None and not -n_vit <= layer < n_vit:
            raise UserError(f"method {m.label!r}: layer {layer} is outside the vision tower's {n_vit} layers "
                            f"(use {-n_vit}..{n_vit - 1})")


def check_tower_methods(methods, adapter) -> None:
    """A method that merges inside the vision tower (ToMe) needs an adapter that can run its
    tower so: one UserError line naming the method otherwise (before any work)."""
    for m in methods:
        if m.tower is not None and not adapter.merges_in_tower:
            raise UserError(f"method {m.label!r}: {m.name} merges tokens inside the vision tower, which the "
                            f"{type(adapter).__name__} cannot do (use tome_posthoc, which merges after the tower)")


def check_in_llm_methods(methods, adapter) -> None:
    """A method that drops tokens between the LLM's decoder layers (PyramidDrop, DART,
    SparseVLM) needs an adapter with in-LLM pruning: one UserError line naming the method and
    why not otherwise (before any work)."""
    for m in methods:
        if m.staged is not None and not getattr(adapter, "in_llm_pruning", False):
            raise UserError(f"method {m.label!r}: {m.name} prunes inside the LLM, which the {adapter.name} adapter "
                            f"cannot do{getattr(adapter, 'in_llm_refusal', '')}")


def check_cost(adapter, methods=()) -> None:
    """Measured latency and counted FLOPs time the prefill and a decoding step apart: that needs
    the adapter's own timed LLM passes over the visual tokens exactly as it lays them out (which
    the staged decoder of PyramidDrop, DART and SparseVLM does not have yet)."""
    for m in methods:
        if m.staged is not None:
            raise UserError(f"cost: measured latency and counted FLOPs of {m.label!r} are not supported (its staged "
                            f"decoder has no timed LLM passes); remove the method or the suite's cost section")
    if not adapter.timed_llm_passes:
        # (LLaVA-NeXT's newlines, Qwen2-VL's positions are not in that loop)
        raise UserError(f"cost: measured latency and counted FLOPs need the llava adapter's timed LLM passes; "
                        f"{type(adapter).__name__} has none (remove the suite's cost section)")


def check_loaded(methods, adapter, measuring: bool = False) -> None:
    """The engine's checks on a loaded adapter, in order: method layers, in-tower merging,
    in-LLM dropping, cost."""
    check_method_layers(methods, adapter)
    check_tower_methods(methods, adapter)
    check_in_llm_methods(methods, adapter)
    if measuring:
        check_cost(adapter, methods)
