"""Per-row measurements the engine stores in `Prediction.extra`: cost and object recall.

    prefill_flops  LLM prefill FLOPs for this row's prompt and visual tokens (see `cost`)
    llm_image_tokens  (PyramidDrop, DART, SparseVLM) the image tokens each decoder layer ran on
    vision_flops   the vision tower + projector (the same for every method but tome, whose own
                   merged tower pass it is, and visionzip and prumerge_plus, whose projector reads
                   their K tokens)
    scorer_flops   the method's own cost (CLIP text tower, similarity, merging; see `cost`)
    object_recall  share of the patches covering the objects the question names that the
                   method kept; None when the example has no boxes, the question names no
                   object, or the method merges tokens (a merged token has no single patch)

and, when a suite turns on `cost:`, the measured cost of a sample of batches per (condition,
method) (`measure_cost`: latency, peak memory, KV-cache bytes, counted FLOPs), stored apart
from the predictions.
"""
from __future__ import annotations

import statistics
from functools import lru_cache

from . import cost
from .models.fastv import FastVSpec
from .perturb.image import canonical_boxes
from .prune.coverage import object_recall, patch_mask
from .prune.select import budget
from .prune.visionzip import visionzip_counts



def row_measurements(method, adapter, vision, kept: list, questions: list[str], batch, n_llm: list[int],
                     fastv_cut: int | None = None, resolution: int | None = None,
                     source_sizes: list | None = None, staged=None) -> list[dict]:
    """One dict per example. kept: per example the kept indices [K] or None (merged);
    n_llm: visual tokens the LLM keeps (after FastV's cut when `fastv_cut` is set);
    staged: a method's filled-in `StagedSpec` (tokens dropped between decoder layers): each
    layer counted over the tokens it ran on, plus the policy's own scoring products;
    resolution: the canonical resolution the engine brought the images to (None: native), and
    source_sizes: per example the dataset image's (w, h) before it (the boxes' coordinates)."""
    n = vision.tokens.shape[1]
    cfgs = adapter.cost_configs()
    geometry = adapter.patch_geometry()
    # the same for every example of the batch (computed once: the engine calls this per row set)
    llm = cost.LayerShape.from_config(cfgs["llm"]) if cfgs else None
    tower_flops = adapter.vision_flops(n) if cfgs else None
    out = []
    for i, (ex, q) in enumerate(zip(batch, questions)):
        extra = {}
        if cfgs:
            text = adapter.prompt_length(q)
            # BLIP-2 hands the LLM its query tokens whatever the ViT tokens kept
            # (and LLaVA-NeXT the newlines of the rows its kept tokens touch, in this pass's layout)
            seen = adapter.llm_visual_tokens(n_llm[i], kept[i], n)
            if staged is not None:
                extra["prefill_flops"] = (cost.staged_prefill_flops(llm, text, staged.image_tokens)
                                          + staged.policy.scoring_flops(llm, i))
                extra["llm_image_tokens"] = list(staged.image_tokens)
            elif fastv_cut is None:
                extra["prefill_flops"] = cost.prefill_flops(llm, text + seen)
            else:
                extra["prefill_flops"] = cost.prefill_flops(llm, text + n, text + n_llm[i], fastv_cut)
            # towers that are not a CLIP ViT over N + 1 tokens (Qwen2-VL's merger, anyres crops) count themselves
            extra["vision_flops"] = tower_flops
            merge_cost = _official_merge_cost(method, vision, cfgs, n_llm[i], extra)
            extra.update(adapter.extra_flops(n, n_llm[i]))  # e.g. BLIP-2's Q-Former over the kept ViT tokens
            # CLIP text length: the encoded text's words plus BOS / EOS, an estimate (no tokenizer here);
            # `text: prompt` methods encode the whole prompt
            encoded = adapter.prompt(q) if method.settings.get("text") == "prompt" else q
            extra["scorer_flops"] = cost.scorer_flops(
                method.name, method.settings, n, n_llm[i], d=vision.tokens.shape[-1], c=vision.vit_features.shape[-1],
                text_cfg=cfgs.get("clip_text"), text_len=len(encoded.split()) + 2, proj=cfgs.get("clip_projection") or 0,
                **merge_cost)
        extra["object_recall"] = _recall(ex, kept[i], vision, geometry, i, resolution,
                                         source_sizes[i] if source_sizes else None)
        if ex.meta.get("group_id") is not None:  # MME image pairs, MMBench circular copies: a stats cluster
            extra["group_id"] = str(ex.meta["group_id"])
        out.append(extra)
    return out


def _official_merge_cost(method, vision, cfgs: dict, n_llm: int, extra: dict) -> dict:
    """ToMe inside the tower and VisionZip before the projector change the vision FLOPs (updated
    in `extra`): ToMe's own merged tower pass replaces the tower's, VisionZip's projector reads
    its K tokens. -> the keyword arguments `cost.scorer_flops` needs for their matching."""
    layer = vision.feature_layer
    if method.name == "cdpruner":  # its MAP loop runs for the requested picks (repeats past rank)
        return {"picks": budget(vision.tokens.shape[1], method.settings.get("keep"), method.settings.get("k"))}
    if layer is not None and method.name == "prumerge_plus":  # its projector reads its K' + 1 tokens
        extra["vision_flops"] += (cost.projector_flops(cfgs.get("projector"), n_llm)
                                  - cost.projector_flops(cfgs.get("projector"), layer.hidden.shape[2] - 1))
        return {}
    if layer is None or method.name not in ("tome", "visionzip"):
        return {}
    crops, patches = layer.hidden.shape[1], layer.hidden.shape[2] - 1
    vc = cfgs["vision"]
    out = {"head_dim": vc.hidden_size // vc.num_attention_heads, "crops": crops, "patches": patches}
    if method.tower is not None:
        schedule = method.tower.schedule(patches, cfgs["feature_blocks"])
        extra["vision_flops"] = crops * cost.tome_tower_flops(vc, patches, schedule, cfgs.get("projector"))
        return {**out, "schedule": schedule}
    split = visionzip_counts(budget(patches, method.settings.get("keep"), method.settings.get("k")),
                             method.settings.get("contextual"))
    extra["vision_flops"] += (cost.projector_flops(cfgs.get("projector"), n_llm)
                              - cost.projector_flops(cfgs.get("projector"), crops * patches))
    return {**out, "split": split}


@lru_cache(maxsize=4096)
def _mask(named: tuple, size: tuple, shortest_edge: int, crop: tuple, grid: tuple):
    """`patch_mask`, once per example and geometry: every method and condition of a question
    reads the same boxes on the same patch grid."""
    return patch_mask(list(named), size, shortest_edge, crop, grid)


def _recall(ex, kept, vision, geometry, i, resolution=None, source_size=None):
    boxes, targets = ex.meta.get("boxes"), ex.meta.get("targets")
    if kept is None or not boxes or not targets or geometry is None or vision.image_sizes is None:
        return None
    named = [boxes[t] for t in targets]
    size = vision.image_sizes[i]  # of the image the model saw (canonical when a resolution is set)
    if resolution is not None:
        named, _ = canonical_boxes(named, tuple(source_size), resolution)
    mask = _mask(tuple(tuple(b) for b in named), tuple(size), geometry["shortest_edge"], tuple(geometry["crop"]),
                 tuple(geometry["grid"]))
    r = object_recall(kept, mask)
    return None if r is None else round(r, 6)


# ----------------------------------------------------------------------------- measured cost

def measure_cost(methods: list, adapter, images: list, questions: list[str], texts: dict, keys: dict,
                 cfg) -> dict[str, dict]:
    """Measured cost of answering one batch with each method, per method label.

    images: the batch's images as the model sees them (this condition's); texts: per text kind
    (`question` / `prompt`) the strings the CLIP text tower encodes; keys: per method label its
    per-example seed keys; cfg: the suite's `cost` section. With `cfg.latency`, medians over
    `cfg.repeats` after `cfg.warmup` of: the vision pass (shared by all methods), the CLIP text
    pass, the method's scoring + selection (`Method.apply`), `generate`, the LLM prefill and a
    decoding step; peak memory over the timed `generate` calls. Always: the KV-cache bytes after
    each example's prefill and, with `cfg.flops`, its prefill FLOPs counted by FlopCounterMode
    beside the analytical count of the same computation (per-example means; batch of one, so no
    padding is counted; for FastV the computation as executed: masking saves nothing, so every
    layer over the whole prompt plus its ranking)."""
    clock = cost.Clock(adapter.device)
    runs = dict(clock=clock, repeats=cfg.repeats, warmup=cfg.warmup)
    vision = adapter.encode_images(images)
    n = vision.tokens.shape[1]
    steps = max(1, adapter.generation_config.max_new_tokens - 1)
    llm = cost.LayerShape.from_config(adapter.cost_configs()["llm"])
    shared = {}
    if cfg.latency:
        shared["vision"] = cost.median_seconds(lambda: adapter.encode_images(images), **runs)
    encoded = {}
    for m in methods:
        if m.needs_text:
            kind = m.settings.get("text", "question")
            if kind not in encoded:
                encoded[kind] = adapter.encode_texts(texts[kind])
                if cfg.latency:
                    shared["text", kind] = cost.median_seconds(lambda: adapter.encode_texts(texts[kind]), **runs)
    out = {}
    for m in methods:
        text = encoded[m.settings.get("text", "question")] if m.needs_text else None
        # a method merging inside the tower (ToMe) reads its own tower pass: its selection cost
        own = (lambda: m.apply(vision, text, keys[m.label])) if m.tower is None else (
            lambda: m.apply(adapter.encode_images_merged(images, m.tower), text, keys[m.label]))
        kept = own()
        tokens = [k.tokens for k in kept]
        spec = (lambda: None) if m.fastv_layer is None else (lambda: FastVSpec(m.fastv_layer, m.fastv_k(n)))
        inputs = adapter.generation_inputs(vision, None if m.fastv_layer is not None else [k.indices for k in kept])
        rec = {"batch": len(questions), "device": str(adapter.device)}
        # tokens the LLM reads before the kept ones (LLaVA's 'full' selection: the CLS token): the
        # batch's, or example i's
        prefix = inputs.get("prefix")
        lead = lambda i: {} if prefix is None else {"prefix": prefix if i is None else prefix[i:i + 1]}  # noqa: E731
        n_lead = 0 if prefix is None else prefix.shape[1]
        if cfg.latency:
            text_s = shared["text", m.settings.get("text", "question")] if m.needs_text else 0.0
            select_s = cost.median_seconds(own, **runs)
            with cost.PeakMemory(adapter.device) as peak:
                generate_s = cost.median_seconds(lambda: adapter.generate(tokens, questions, in_llm=spec(), **inputs), **runs)
            marks = [adapter.run_llm(tokens, questions, steps, in_llm=spec(), clock=clock, **lead(None))["marks"]
                     for _ in range(cfg.warmup + cfg.repeats)][cfg.warmup:]
            prefill_s = statistics.median(b - a for a, b, _ in marks)
            decode_s = statistics.median((c - b) / steps for _, b, c in marks)
            ms = lambda s: round(1e3 * s, 4)
            rec.update(vision_ms=ms(shared["vision"]), text_ms=ms(text_s), select_ms=ms(select_s),
                       generate_ms=ms(generate_s), prefill_ms=ms(prefill_s), decode_per_token_ms=ms(decode_s),
                       end_to_end_ms=ms(shared["vision"] + text_s + select_s + generate_s),
                       select_overhead=round((text_s + select_s) / shared["vision"], 6),
                       peak_mem_mb=round(peak.mb, 1), peak_mem_kind=peak.kind,
                       repeats=cfg.repeats, warmup=cfg.warmup, decode_steps=steps)
        kv, counted, analytic = [], [], []
        for i, (tok, q) in enumerate(zip(tokens, questions)):
            one = lambda: adapter.run_llm([tok], [q], 0, in_llm=spec(), **lead(i))
            kv.append(one()["kv_bytes"])
            if cfg.flops:
                counted.append(cost.counted_flops(one))
                # what runs: FastV masks its dropped tokens, so every layer sees the whole prompt,
                # and ranks them once
                seq = adapter.prompt_length(q) + len(tok) + n_lead
                analytic.append(cost.prefill_flops(llm, seq) + (0 if m.fastv_layer is None else
                                                                 cost.fastv_rank_flops(llm, seq)))
        rec["kv_cache_mb"] = round(statistics.mean(kv) / 2**20, 6)
        if counted:
            rec["counted_prefill_flops"] = statistics.mean(counted)
            rec["analytic_prefill_flops"] = statistics.mean(analytic)
        out[m.label] = rec
    return out


_LATENCY = ("vision", "text", "select", "prefill", "decode_per_token", "generate", "end_to_end")


def add_measured_cost(rows: list[dict], records: list[tuple[str, str, str, dict]]) -> None:
    """Adds the measured-cost columns to results rows (in place), from the store's cost records
    (condition, method, batch, record); nothing when the run measured none. Means over the
    sampled batches of each (condition, method):

        latency_ms        {vision, text, select, prefill, decode_per_token, generate, end_to_end}:
                          medians per batch of `latency_batch` examples; end_to_end = vision + text +
                          select + generate (answering the batch with this method alone)
        latency_ratio     {prefill, end_to_end} / the same for `full` under the same condition
        select_overhead   (CLIP text pass + scoring + selection) / vision pass
        peak_mem_mb       the largest over the batches (`peak_mem_kind`: cuda_max_allocated or
                          process_peak_rss), kv_cache_mb: KV cache after the prefill, per example
        counted_prefill_tflops, analytic_prefill_tflops, flops_error (counted / analytic - 1)
    """
    if not records:
        return
    by: dict[tuple[str, str], list[dict]] = {}
    for cond, method, _, rec in records:
        by.setdefault((cond, method), []).append(rec)
    mean = lambda xs: sum(xs) / len(xs) if xs else None
    for r in rows:
        recs = by.get((r["condition"], r["method"]), [])
        timed = [x for x in recs if "prefill_ms" in x]
        r["cost_batches"] = len(recs)
        r["latency_batch"] = mean([x["batch"] for x in timed])
        r["latency_ms"] = {k: round(mean([x[k + "_ms"] for x in timed]), 4) for k in _LATENCY} if timed else None
        r["select_overhead"] = _round(mean([x["select_overhead"] for x in timed]))
        r["peak_mem_mb"] = max((x["peak_mem_mb"] for x in timed), default=None)
        r["peak_mem_kind"] = timed[0]["peak_mem_kind"] if timed else None
        r["kv_cache_mb"] = _round(mean([x["kv_cache_mb"] for x in recs if "kv_cache_mb" in x]))
        counted = [x for x in recs if "counted_prefill_flops" in x]
        c = mean([x["counted_prefill_flops"] for x in counted])
        a = mean([x["analytic_prefill_flops"] for x in counted])
        r["counted_prefill_tflops"] = None if c is None else round(c / 1e12, 9)
        r["analytic_prefill_tflops"] = None if a is None else round(a / 1e12, 9)
        r["flops_error"] = None if c is None or not a else round(c / a - 1, 6)
    full = {r["condition"]: r["latency_ms"] for r in rows if r["method"] == "full" and r.get("latency_ms")}
    for r in rows:
        ref, own = full.get(r["condition"]), r["latency_ms"]
        r["latency_ratio"] = None if not ref or not own else {
            k: round(own[k] / ref[k], 6) for k in ("prefill", "end_to_end") if ref[k]}


def _round(x, digits: int = 6):
    return None if x is None else round(x, digits)
