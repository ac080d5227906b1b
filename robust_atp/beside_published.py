"""A run's clean figures beside the published ones (`published/`), for a suite that names them:
`published: {model: llava-1.5-7b, benchmark: pope}`.

Which figure: the one the source prints, read from the run's rows under an explicit map
(`READINGS`): POPE's F1 (the mean over the splits, as `pope_f1`), MME's perception + cognition
and perception scores (the sums in `breakdown.mme_*`), accuracies in percent. A suite whose
metrics give none of a benchmark's figures is refused when it is loaded; a figure a run cannot
give whole (MME without all 14 subtasks) is left out with a note.

Which budget: the visual tokens the method handed the LLM, the clean rows' `kept_tokens`
(what the LLM saw, counted by the engine), rounded half up; it must equal a published budget
exactly. A suite's budget becomes tokens as the methods compute it (`prune.select.budget`:
floor(keep * N + 0.5), N = 576 for LLaVA-1.5), so keep 1/3, 2/9, 1/9 give 192, 128, 64, and
keep 0.33 gives 190, which no table prints. Adaptive budgets (`mass`) are not compared.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from .conditions import CLEAN
from .errors import SuiteError
from .published import PublishedValue, published, published_values


def _percent(metric: str) -> Callable[[dict], tuple[float | None, str | None]]:
    def read(row: dict):
        v = (row.get("metrics") or {}).get(metric)
        return (None, f"{metric} undefined") if v is None else (100 * v, None)
    return read


def _pope_f1(row: dict):
    v = (row.get("metrics") or {}).get("pope_f1")
    if v is None:
        return None, "pope_f1 undefined (a split without a 'yes' answer)"
    splits = [s for s in (row.get("breakdown") or {}).get("pope_f1", {}) if s != "all"]
    if sorted(splits) != ["adversarial", "popular", "random"]:
        return 100 * v, f"the mean F1 of {', '.join(splits) or 'no split'} (the published mean is over all three)"
    return 100 * v, None


def _mme(part: str, metric: str):
    need = {"perception": 10, "cognition": 4}

    def read(row: dict):
        b = (row.get("breakdown") or {}).get(metric) or {}
        parts = [p for p in need if p in part]
        missing = [f"{b.get(f'{p}_subtasks', 0)} of {need[p]} {p} subtasks" for p in parts
                   if b.get(f"{p}_subtasks", 0) != need[p] or b.get(p) is None]
        if missing:
            return None, f"the run holds {', '.join(missing)}: no {part} score to compare"
        return sum(b[p] for p in parts), None
    return read


@dataclass(frozen=True)
class Reading:
    """A published figure (`published/<model>.yaml` `benchmarks`) read from a run: the suite
    metrics that give it, in order of preference (the first the suite lists is used)."""

    key: str  # the published benchmark key: pope, mme, mme_perception, ...
    metric: str  # the figure as the source names it: f1, accuracy, perception+cognition
    readers: tuple[tuple[str, Callable], ...]  # (suite metric, row -> (value or None, note or None))


def _acc(key: str, *metrics: str) -> Reading:
    return Reading(key, "accuracy", tuple((m, _percent(m)) for m in metrics))


# benchmark a suite names -> (loaders that hold it, the published figures read from its rows)
READINGS: dict[str, tuple[tuple[str, ...], tuple[Reading, ...]]] = {
    "pope": (("pope",), (Reading("pope", "f1", (("pope_f1", _pope_f1),)),)),
    "mme": (("mme",), tuple(Reading(key, fig, tuple((m, _mme(fig, m)) for m in ("mme_accuracy", "mme_accuracy_plus")))
                            for key, fig in (("mme", "perception+cognition"), ("mme_perception", "perception")))),
    "textvqa": (("textvqa",), (_acc("textvqa", "textvqa_accuracy"),)),
    "scienceqa_img": (("scienceqa_img",), (_acc("scienceqa_img", "scienceqa_accuracy_llava", "scienceqa_accuracy"),)),
    # the published MMBench figures are circular accuracy; mmbench_accuracy (one pass) is another figure
    "mmbench_en": (("mmbench_en",), (_acc("mmbench_en", "mmbench_circular"),)),
    "vqav2": (("vqav2",), (_acc("vqav2", "vqa_accuracy", "vqa_accuracy_official"),)),
    "gqa": (("gqa",), (_acc("gqa", "gqa_accuracy_llava", "gqa_accuracy", "gqa_accuracy_lmms"),)),
}

# what differs from the published protocol beyond checkpoint, prompt and parsing, per benchmark
SPLIT_NOTES = {
    "vqav2": "the published VQAv2 figures are test-dev (the evaluation server); a run scores the split it loads",
    "gqa": "the published GQA figures are test-dev balanced",
    "mmbench_en": ("LLaVA's model-zoo MMBench figure is the test split (online evaluation, GPT-assisted matching); "
                   "VisionZip's is dev"),
    "mme": "LLaVA's model zoo prints one MME figure, read as the perception score (see published/)",
    "pope": "the published POPE figure is the F1 averaged over the random, popular and adversarial splits",
}
BUDGET_RULE = ("tokens = the clean rows' kept_tokens (visual tokens handed to the LLM) rounded half up, matched "
               "exactly; a keep ratio gives floor(keep * N + 0.5) of N: 1/3, 2/9, 1/9 of 576 -> 192, 128, 64")


def check_published(suite, path) -> None:
    """A suite's `published:` names a model and benchmark with published numbers, a loader that
    holds that benchmark, and a metric that gives its published figure: else one line, exit 2."""
    cfg = suite.published
    if cfg is None:
        return
    models = sorted({v.model for v in _values()})
    if cfg.model.lower() not in {m.lower() for m in models}:
        raise SuiteError(f"{path}: published.model: no published numbers for {cfg.model!r}; known: {', '.join(models)}")
    benches = sorted({v.benchmark for v in _values() if v.model.lower() == cfg.model.lower()})
    comparable = [b for b in benches if b in READINGS]
    if cfg.benchmark not in READINGS:
        what = "has no loader here to compare a run with" if cfg.benchmark in benches else "is not published"
        raise SuiteError(f"{path}: published.benchmark: {cfg.benchmark!r} {what} for {cfg.model}; "
                         f"comparable: {', '.join(comparable)}")
    loaders, readings = READINGS[cfg.benchmark]
    if suite.dataset.loader not in loaders:
        raise SuiteError(f"{path}: published.benchmark: {cfg.benchmark!r} needs dataset.loader "
                         f"{' or '.join(loaders)}, got {suite.dataset.loader!r}")
    if not any(_reader(r, suite.metrics) for r in readings):
        want = "; ".join(f"{r.metric} from {' or '.join(m for m, _ in r.readers)}" for r in readings)
        raise SuiteError(f"{path}: published.benchmark: {cfg.benchmark} is published as {want}; metrics "
                         f"{', '.join(suite.metrics)} give none of it")


def _values() -> tuple[PublishedValue, ...]:
    """Every published value of every model."""
    return published_values()


def _reader(reading: Reading, metrics) -> tuple[str, Callable] | None:
    """The first of the reading's metrics the suite lists (the suite's own order decides)."""
    for m in metrics:
        for name, read in reading.readers:
            if name == m:
                return name, read
    return None


def full_tokens(model: str) -> int:
    """The model's full visual-token count: the published `full` rows' budget (576 for LLaVA-1.5)."""
    counts = {v.tokens for v in _values() if v.model.lower() == model.lower() and v.method == "full"}
    return max(counts) if counts else 0


def planned_tokens(method: dict, n: int) -> int | None:
    """The tokens a method's settings give out of n (None for an adaptive budget), as it computes them."""
    from .prune.select import budget

    st = method.get("settings") or {}
    if method.get("name") == "full":
        return n
    if st.get("mass") is not None or (st.get("keep") is None and st.get("k") is None):
        return None
    return budget(n, st.get("keep"), st.get("k"))


def plan_lines(suite) -> list[str]:
    """What `--check` prints: per method, the published values its budget will be compared with."""
    cfg = suite.published
    if cfg is None:
        return []
    from .prune.methods import validate_method

    loaders, readings = READINGS[cfg.benchmark]
    figures = [(r, _reader(r, suite.metrics)) for r in readings]
    n = full_tokens(cfg.model)
    said = ", ".join(f"{r.metric} from {pick[0]}" for r, pick in figures if pick)
    lines = [f"  published: {cfg.model} {cfg.benchmark} ({said}; clean condition; tokens out of {n})"]
    if not suite.include_clean:
        return lines + ["    none compared: the suite runs no clean condition"]
    none = []
    for m in suite.methods:
        m = validate_method(m)
        tokens = planned_tokens({"name": m.name, "settings": m.settings}, n)
        vals = [] if tokens is None else [v for r, pick in figures if pick
                                          for v in published(cfg.model, r.key, m.name, tokens)]
        if not vals:
            none.append(m.label)
            continue
        lines.append(f"    {m.label} ({tokens} tokens): " + ", ".join(
            f"{v.metric} {v.value:g} (arXiv {v.arxiv})" for v in vals))
    if none:
        lines.append(f"    no published value: {', '.join(none)}")
    return lines


def beside_published(config: dict, rows: list[dict], methods: list[dict], metric_sources: dict | None = None
                     ) -> dict | None:
    """results.json's `published` section: for every method whose clean budget has published
    values, the run's figure in the source's metric, the value, its source and the difference
    (run - published, in the figure's units). None when the suite names no `published`.

    config: the suite as in the manifest (`Suite.model_dump`); rows: results rows; methods: the
    manifest's [{label, name, settings}]."""
    cfg = config.get("published")
    if not cfg:
        return None
    model, bench = cfg["model"], cfg["benchmark"]
    _, readings = READINGS[bench]
    figures = [(r, _reader(r, config.get("metrics") or [])) for r in readings]
    clean = {r["method"]: r for r in rows if r["condition"] == CLEAN}
    out, notes, uncompared = [], [], []
    for m in methods:
        row = clean.get(m["label"])
        if row is None or row.get("kept_tokens") is None:
            continue
        if planned_tokens(m, full_tokens(model)) is None and m["name"] != "full":
            uncompared.append(f"{m['label']} (adaptive budget)")
            continue
        tokens = math.floor(row["kept_tokens"] + 0.5)
        if abs(row["kept_tokens"] - tokens) > 1e-6:
            uncompared.append(f"{m['label']} (kept {row['kept_tokens']:g} tokens on average: not one budget)")
            continue
        found = False
        for reading, pick in figures:
            vals = published(model, reading.key, m["name"], tokens) if pick else []
            if not vals:
                continue
            found = True
            value, note = pick[1](row)
            if note:
                notes.append(f"{m['label']}, {reading.metric}: {note}")
            for v in vals:
                out.append({"method": m["label"], "name": m["name"], "tokens": tokens, "metric": v.metric,
                            "run_metric": pick[0], "run": None if value is None else round(value, 4),
                            "published": v.value,
                            "difference": None if value is None else round(value - v.value, 4),
                            "paper": v.paper, "arxiv": v.arxiv, "table": v.table, "read_in": v.read_in})
        if not found:
            uncompared.append(f"{m['label']} ({tokens} tokens: no published value)")
    return {"model": model, "benchmark": bench, "condition": CLEAN, "budget_rule": BUDGET_RULE, "rows": out,
            "not_compared": uncompared, "notes": notes, "differs": differs(config, figures, metric_sources)}


def differs(config: dict, figures, metric_sources: dict | None = None) -> str:
    """The sentence saying why a run's figure and a published one need not agree."""
    model, data = config.get("model") or {}, config.get("dataset") or {}
    used = [pick[0] for _, pick in figures if pick]
    src = "; ".join(f"{m}: {(metric_sources or {}).get(m) or 'see README'}" for m in used)
    limit = f", first {data['limit']} examples" if data.get("limit") else ""
    prompt = repr(model["prompt"]) if model.get("prompt") else "the checkpoint's chat template"
    bench = config["published"]["benchmark"]
    extra = SPLIT_NOTES.get(bench)
    if bench == "textvqa" and not (data.get("options") or {}).get("ocr"):
        extra = "the published TextVQA figures use LLaVA's OCR-token prompt; this run does not"
    return (f"The run uses {model.get('checkpoint')} in {model.get('dtype')}, the prompt {prompt}, answers scored by "
            f"{src}, on {data.get('loader')} {data.get('split')}{limit}; each published figure comes from its "
            "source's own checkpoint (LLaVA-1.5's is liuhaotian/llava-v1.5-7b, of which llava-hf's is a conversion), "
            "prompt, "
            "answer parsing and the whole split it names" + (f"; {extra}" if extra else "") +
            ". A difference mixes those choices with the pruning's own effect; differences between this run's methods "
            "(one checkpoint, prompt and parsing) are what compare them.")
