"""Kept-token overlays: the images a run saw, regenerated through its dataset loader and the seeded
corruption exactly as the engine made them, with the patches a method kept left bright."""
from __future__ import annotations

import math

import numpy as np

from ..errors import UserError
from ..conditions import CLEAN, parse_condition


def overlay_panels(run, analysis, n_examples: int = 3, n_conditions: int = 3):
    """(figure, caption) or (None, reason). Rows: examples; columns: clean, then corrupted conditions
    (the highest severity of the first few image corruptions)."""
    kept = {(s["example_id"], s["condition"], s["method"]): s["kept_indices"]
            for s in run.samples if s.get("kept_indices") is not None}
    if not kept:
        return None, "samples.jsonl has no kept_indices"
    method = next((m for m in run.methods if m != run.reference and any(k[2] == m for k in kept)), None)
    if method is None:
        return None, "no pruned method records kept_indices"
    image_conds = [c for c in run.conditions if parse_condition(c).kind == "image"]
    top = {}
    for c in image_conds:
        p = parse_condition(c)
        if p.severity >= top.get(p.family, (0, None))[0]:
            top[p.family] = (p.severity, c)
    conds = [CLEAN] + [c for _, c in list(top.values())[:n_conditions]]
    ids = [ex for ex in dict.fromkeys(k[0] for k in kept if k[2] == method)
           if all((ex, c, method) in kept for c in conds)][:n_examples]
    if not ids:
        return None, f"no example has kept_indices for {method} on clean and corrupted images"
    try:
        examples = _load_examples(run, set(ids))
    except (UserError, OSError, ValueError, KeyError, TypeError) as e:
        return None, f"cannot regenerate the images ({e})"
    n_tokens = _n_tokens(run)
    grid = _grid(run.manifest.get("grid"), n_tokens)
    if grid is None:
        return None, f"cannot infer the patch grid of {n_tokens} visual tokens"
    import matplotlib.pyplot as plt

    seed = int(run.manifest.get("seed", 0))
    image_cfg = ((run.manifest.get("config") or {}).get("perturbations") or {}).get("image") or {}
    resolution = image_cfg.get("resolution")
    fig, axes = plt.subplots(len(ids), len(conds), figsize=(2.0 * len(conds), 2.2 * len(ids)), squeeze=False)
    for i, ex_id in enumerate(ids):
        ex = examples[ex_id]
        clean_img = ex.image()
        for j, cond in enumerate(conds):
            img = _image_under(clean_img, ex_id, cond, seed, resolution)
            ax = axes[i, j]
            ax.imshow(_shade(img, kept[(ex_id, cond, method)], grid))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cond.replace("image:", ""), fontsize=7)
            if j == 0:
                ax.set_ylabel(_short(ex.question), fontsize=6)
    fig.suptitle(f"{method}: kept tokens (bright) on the input images", fontsize=8)
    fig.tight_layout()
    return fig, (f"{method}: bright patches are the kept visual tokens ({grid[0]}x{grid[1]} patch grid); rows are "
                 f"examples (question at the left), columns clean then corrupted.")


def _short(text: str, n: int = 38) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


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
