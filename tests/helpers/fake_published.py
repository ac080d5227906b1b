"""Results rows of a fake LLaVA-1.5-7B POPE and MME run with known figures (for the `published`
section, the summary and the report), and a fake run directory that carries such a section."""
from __future__ import annotations

import json
from pathlib import Path

POPE_CONFIG = {"published": {"model": "llava-1.5-7b", "benchmark": "pope"},
               "metrics": ["pope_f1", "pope_accuracy"],
               "model": {"checkpoint": "llava-hf/llava-1.5-7b-hf", "dtype": "float16",
                         "prompt": "USER: <image>\n{question}\nAnswer the question using a single word or phrase. "
                                   "ASSISTANT:"},
               "dataset": {"loader": "pope", "split": "test", "limit": 1500}}
POPE_METHODS = [{"label": "full", "name": "full", "settings": {}},
                {"label": "visionzip@k64", "name": "visionzip", "settings": {"k": 64}},
                {"label": "atp@k64", "name": "atp", "settings": {"k": 64}},
                {"label": "random@0.25", "name": "random", "settings": {"keep": 0.25}},
                {"label": "atp@mass0.9", "name": "atp", "settings": {"mass": 0.9}},
                {"label": "divprune@k128", "name": "divprune", "settings": {"k": 128}},
                {"label": "fastv@0.3333", "name": "fastv", "settings": {"keep": 0.3333}}]
SPLITS = {s: {"f1": 0.0} for s in ("random", "popular", "adversarial", "all")}


def _row(cond, method, kept, f1, splits=SPLITS):
    return {"condition": cond, "method": method, "accuracy": 0.5, "n": 30, "kept_tokens": kept,
            "metrics": {"pope_f1": f1, "pope_accuracy": 0.5}, "breakdown": {"pope_f1": dict(splits)}}


def pope_rows() -> list[dict]:
    """Clean rows with known F1 (and corrupted rows that must not be read)."""
    rows = [_row("clean", "full", 576.0, 0.8412), _row("clean", "visionzip@k64", 64.0, 0.75),
            _row("clean", "atp@k64", 64.0, 0.7), _row("clean", "random@0.25", 144.0, 0.6),
            _row("clean", "atp@mass0.9", 128.0, 0.6), _row("clean", "divprune@k128", 128.0, None),
            _row("clean", "fastv@0.3333", 192.0, 0.5, {"random": {}, "all": {}})]
    return rows + [_row("image:fog@3", r["method"], r["kept_tokens"], 0.1) for r in rows]


def mme_rows(cognition_subtasks: int = 4) -> list[dict]:
    b = {"perception": 1400.5, "cognition": 300.25, "total": 1700.75, "perception_subtasks": 10,
         "cognition_subtasks": cognition_subtasks}
    return [{"condition": "clean", "method": "full", "accuracy": 0.8, "n": 10, "kept_tokens": 576.0,
             "metrics": {"mme_accuracy": 0.8}, "breakdown": {"mme_accuracy": b}}]


def add_published(run_dir: Path) -> dict:
    """Put the POPE section into a fake run's results.json (as the engine writes it); returns it."""
    from robust_atp.beside_published import beside_published

    section = beside_published(POPE_CONFIG, pope_rows(), POPE_METHODS)
    path = Path(run_dir) / "results.json"
    data = json.loads(path.read_text())
    data["published"] = section
    path.write_text(json.dumps(data, indent=1))
    return section
