"""Per-row measurements the engine stores in `Prediction.extra`: cost and object recall.

    prefill_flops  LLM prefill FLOPs for this row's prompt and visual tokens (see `cost`)
    vision_flops   the vision tower + projector (the same for every method)
    scorer_flops   the method's own cost (CLIP text tower, similarity, merging; see `cost`)
    object_recall  share of the patches covering the objects the question names that the
                   method kept; None when the example has no boxes, the question names no
                   object, or the method merges tokens (a merged token has no single patch)
"""
from __future__ import annotations

from . import cost
from .perturb.image import canonical_boxes
from .prune.coverage import object_recall, patch_mask



def row_measurements(method, adapter, vision, kept: list, questions: list[str], batch, n_llm: list[int],
                     fastv_cut: int | None = None, resolution: int | None = None,
                     source_sizes: list | None = None) -> list[dict]:
    """One dict per example. kept: per example the kept indices [K] or None (merged);
    n_llm: visual tokens the LLM keeps (after FastV's cut when `fastv_cut` is set);
    resolution: the canonical resolution the engine brought the images to (None: native), and
    source_sizes: per example the dataset image's (w, h) before it (the boxes' coordinates)."""
    n = vision.tokens.shape[1]
    cfgs = adapter.cost_configs() if hasattr(adapter, "cost_configs") else None
    geometry = adapter.patch_geometry() if hasattr(adapter, "patch_geometry") else None
    out = []
    for i, (ex, q) in enumerate(zip(batch, questions)):
        extra = {}
        if cfgs is not None:
            llm = cost.LayerShape.from_config(cfgs["llm"])
            text = adapter.prompt_length(q)
            # BLIP-2 hands the LLM its query tokens whatever the ViT tokens kept
            # (and LLaVA-NeXT the newlines of the rows its kept tokens touch)
            seen = adapter.llm_visual_tokens(n_llm[i], kept[i]) if hasattr(adapter, "llm_visual_tokens") else n_llm[i]
            if fastv_cut is None:
                extra["prefill_flops"] = cost.prefill_flops(llm, text + seen)
            else:
                extra["prefill_flops"] = cost.prefill_flops(llm, text + n, text + n_llm[i], fastv_cut)
            # towers that are not a CLIP ViT over N + 1 tokens (Qwen2-VL's merger, anyres crops) count themselves
            extra["vision_flops"] = (adapter.vision_flops(n) if hasattr(adapter, "vision_flops") else
                                     cost.vision_flops(cfgs["vision"], n, cfgs.get("projector")))
            if hasattr(adapter, "extra_flops"):  # e.g. BLIP-2's Q-Former over the kept ViT tokens
                extra.update(adapter.extra_flops(n, n_llm[i]))
            # CLIP text length: the encoded text's words plus BOS / EOS, an estimate (no tokenizer here);
            # `text: prompt` methods encode the whole prompt
            encoded = adapter.prompt(q) if method.settings.get("text") == "prompt" else q
            extra["scorer_flops"] = cost.scorer_flops(
                method.name, method.settings, n, n_llm[i], d=vision.tokens.shape[-1], c=vision.vit_features.shape[-1],
                text_cfg=cfgs.get("clip_text"), text_len=len(encoded.split()) + 2, proj=cfgs.get("clip_projection") or 0)
        extra["object_recall"] = _recall(ex, kept[i], vision, geometry, i, resolution,
                                         source_sizes[i] if source_sizes else None)
        out.append(extra)
    return out


def _recall(ex, kept, vision, geometry, i, resolution=None, source_size=None):
    boxes, targets = ex.meta.get("boxes"), ex.meta.get("targets")
    if kept is None or not boxes or not targets or geometry is None or vision.image_sizes is None:
        return None
    named = [boxes[t] for t in targets]
    size = vision.image_sizes[i]  # of the image the model saw (canonical when a resolution is set)
    if resolution is not None:
        named, _ = canonical_boxes(named, tuple(source_size), resolution)
    mask = patch_mask(named, size, geometry["shortest_edge"], geometry["crop"], geometry["grid"])
    r = object_recall(kept, mask)
    return None if r is None else round(r, 6)
