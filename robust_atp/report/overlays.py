"""Kept-token overlays: the images a run saw, regenerated through its dataset loader and the seeded
corruption exactly as the engine made them, with the patches a method kept left bright."""
from __future__ import annotations

import math
import textwrap

import numpy as np

from ..errors import UserError
from ..conditions import CLEAN, parse_condition


def overlay_panels(run, analysis, n_examples: int = 2):
    """(figure, caption) or (None, reason). Per example: its question and reference answers on top,
    then a row per condition (clean, and the highest severity of the first image corruption) with a
    panel per method, each method's answer under its panel."""
    import matplotlib.pyplot as plt

    kept = {(s["example_id"], s["condition"], s["method"]): s["kept_indices"]
            for s in run.samples if s.get("kept_indices") is not None}
    if not kept:
        return None, "samples.jsonl has no kept_indices"
    if not any(k[2] != run.reference for k in kept):
        return None, "no pruned method records kept_indices"
    conds = [CLEAN] + _worst_image_condition(run.conditions)
    by = {(s["example_id"], s["condition"], s["method"]): s for s in run.samples}
    ids = _examples_to_show(run, by, conds, n_examples)
    if not ids:
        return None, "no example has every method's answer on the clean images"
    try:
        examples = _load_examples(run, set(ids))
    except (UserError, OSError, ValueError, KeyError, TypeError) as e:
        return None, f"cannot regenerate the images ({e})"
    n_tokens = _n_tokens(run)
    grid = _grid(run.manifest.get("grid"), n_tokens)
    if grid is None:
        return None, f"cannot infer the patch grid of {n_tokens} visual tokens"
    seed = int(run.manifest.get("seed", 0))
    image_cfg = ((run.manifest.get("config") or {}).get("perturbations") or {}).get("image") or {}
    resolution = image_cfg.get("resolution")
    methods = run.methods
    width = min(7.3, 0.5 + 1.25 * len(methods))
    panel = (width - 0.5) / len(methods)
    height_per = 0.45 + len(conds) * (panel + 0.3)
    fig = plt.figure(figsize=(width, height_per * len(ids)), layout="constrained")
    subfigs = fig.subfigures(len(ids), 1, squeeze=False)[:, 0]
    chars = int(width * 15)
    for sub, ex_id in zip(subfigs, ids):
        ex = examples[ex_id]
        first = by[ex_id, CLEAN, methods[0]]
        question = first.get("question") or ex.question
        answers = ", ".join(dict.fromkeys(str(a) for a in (first.get("answers") or ex.answers)))
        sub.suptitle(textwrap.fill(f"Q: {question}", chars) + "\n" + textwrap.fill(f"answers: {answers}", chars),
                     fontsize=7, x=0.01, ha="left")
        axes = sub.subplots(len(conds), len(methods), squeeze=False)
        clean_img = ex.image()
        for i, cond in enumerate(conds):
            img = _image_under(clean_img, ex_id, cond, seed, resolution)
            for j, m in enumerate(methods):
                ax = axes[i, j]
                idx = kept.get((ex_id, cond, m))
                ax.imshow(_shade(img, idx, grid) if idx is not None else _shade(img, range(grid[0] * grid[1]), grid))
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(textwrap.fill(m, 16), fontsize=7)
                if j == 0:
                    ax.set_ylabel(cond.replace("image:", ""), fontsize=6)
                s = by.get((ex_id, cond, m))
                ax.set_xlabel(_answer_label(s, m == run.reference or idx is not None), fontsize=6,
                              color="#0072B2" if s and s["score"] >= 1 else "#D55E00")
    caption = (f"Bright patches are the visual tokens each method kept ({grid[0]}x{grid[1]} patch grid; "
               f"{run.reference or 'the reference'} keeps all); under each panel its answer, blue and ✓ when scored "
               f"right, vermillion and ✗ when wrong. Rows: clean, then "
               f"{conds[1] if len(conds) > 1 else 'no image corruption in this run'}.")
    return fig, caption


def _worst_image_condition(conditions: list[str]) -> list[str]:
    """The highest severity of the first image corruption (none when the run has no image corruption)."""
    image = [c for c in conditions if parse_condition(c).kind == "image"]
    if not image:
        return []
    fam = parse_condition(image[0]).family
    return [max((c for c in image if parse_condition(c).family == fam), key=lambda c: parse_condition(c).severity)]


def _examples_to_show(run, by: dict, conds: list[str], n: int) -> list[str]:
    """Examples answered by every method under every shown condition, those where the methods'
    answers differ most first (ties in dataset order)."""
    order = list(dict.fromkeys(s["example_id"] for s in run.samples))
    ranked = []
    for pos, ex in enumerate(order):
        rows = [by.get((ex, c, m)) for c in conds for m in run.methods]
        if any(r is None for r in rows):
            continue
        distinct = len({str(r.get("prediction")).strip() for r in rows})
        ranked.append((-distinct, pos, ex))
    return [ex for _, _, ex in sorted(ranked)[:n]]


def _answer_label(sample, drawn: bool) -> str:
    if sample is None:
        return "(no answer)"
    mark = "✓" if sample["score"] >= 1 else "✗"
    text = textwrap.shorten(str(sample.get("prediction", "")), 40, placeholder="…") or "(empty)"
    label = textwrap.fill(f"{mark} {text}", 16)
    if sample.get("truncated"):
        label += "\n(cut at the token limit)"
    if not drawn:
        label += "\n(kept set not recorded)"
    return label


def _load_examples(run, ids: set[str]) -> dict:
    from ..data.base import load_examples

    d = (run.manifest.get("config") or {}).get("dataset")
    if not d:
        raise KeyError("the manifest has no dataset config")
    kwargs = dict(d.get("options") or {})
    kwargs.update(split=d.get("split", "test"), limit=d.get("limit"))
    if d.get("source") is not None:
        kwargs["source"] = d["source"]
    found = {ex.id: ex for ex in load_examples(d["loader"], **kwargs) if ex.id in ids}
    missing = ids - found.keys()
    if missing:
        raise KeyError(f"examples not in the dataset: {sorted(missing)[:3]}")
    return found


def _image_under(img, example_id: str, cond: str, seed: int, resolution: int | None = None):
    """The image the engine fed the model under `cond` (text perturbations leave the image alone),
    at the suite's canonical resolution when it sets one."""
    from ..perturb.image import ImageCondition, canonicalize, condition_seed, corrupt

    p = parse_condition(cond)
    if p.image is None:
        return canonicalize(img, resolution)
    ic = ImageCondition(*p.image)
    return corrupt(img, ic, condition_seed(seed, example_id, ic.name), resolution)


def _n_tokens(run) -> int | None:
    full = [s["kept_tokens"] for s in run.samples if s["method"] == run.reference and s.get("kept_tokens")]
    if full:
        return int(full[0])
    idx = [max(s["kept_indices"]) for s in run.samples if s.get("kept_indices")]
    return max(idx) + 1 if idx else None


def _grid(declared, n_tokens: int | None) -> tuple[int, int] | None:
    """(rows, cols) of the patch grid: the manifest's `grid` when given, else a square of n tokens."""
    if isinstance(declared, int):
        return declared, declared
    if isinstance(declared, (list, tuple)) and len(declared) == 2:
        return int(declared[0]), int(declared[1])
    if isinstance(declared, dict) and {"rows", "cols"} <= declared.keys():
        return int(declared["rows"]), int(declared["cols"])
    side = math.isqrt(n_tokens) if n_tokens else 0
    return (side, side) if side and side * side == n_tokens else None


def _shade(img, kept_indices, grid: tuple[int, int]) -> np.ndarray:
    """The image (resized to the square the vision tower sees) with pruned patches darkened."""
    rows, cols = grid
    side = 32 * max(rows, cols) if max(img.size) < 32 * max(rows, cols) else max(img.size)
    arr = np.asarray(img.convert("RGB").resize((side, side)), dtype=np.float32) / 255.0
    mask = np.zeros(rows * cols, dtype=bool)
    mask[[i for i in kept_indices if 0 <= i < rows * cols]] = True
    mask = mask.reshape(rows, cols)
    ph, pw = side / rows, side / cols
    yy = (np.arange(side) / ph).astype(int).clip(0, rows - 1)
    xx = (np.arange(side) / pw).astype(int).clip(0, cols - 1)
    keep = mask[yy][:, xx]
    return np.where(keep[..., None], arr, arr * 0.25)
