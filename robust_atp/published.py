"""Published numbers (the top-level `published/` directory) for a (model, benchmark, method, budget).

Each `published/<model>.yaml` names its sources (paper, arXiv id, table, where the number was
read) and holds rows of values per (source, method, visual tokens). `published()` returns the
matching values, one `PublishedValue` per source that prints one, so a caller can show a run's
number beside each. A budget is a visual-token count (576 = LLaVA-1.5's full image).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import UserError

PUBLISHED_DIR = Path(__file__).resolve().parents[1] / "published"
# method names the papers use -> this suite's method names
METHOD_ALIASES = {"vanilla": "full", "upper bound": "full"}


@dataclass(frozen=True)
class PublishedValue:
    model: str
    benchmark: str
    method: str
    tokens: int
    metric: str  # the figure the source prints: accuracy, f1, perception+cognition, ...
    value: float
    paper: str
    arxiv: str
    table: str
    read_in: str
    note: str = ""


@functools.lru_cache(maxsize=8)
def _load(directory: str) -> tuple[PublishedValue, ...]:
    out = []
    for path in sorted(Path(directory).glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise UserError(f"{path}: malformed YAML ({getattr(e, 'problem', None) or e})") from None
        try:
            model, metrics, sources = data["model"], data["benchmarks"], data["sources"]
            for i, row in enumerate(data["rows"]):
                src = sources[row["source"]]
                for bench, value in row["values"].items():
                    out.append(PublishedValue(
                        model=model, benchmark=bench, method=row["method"], tokens=int(row["tokens"]),
                        metric=metrics[bench], value=float(value), paper=src["paper"], arxiv=str(src["arxiv"]),
                        table=src["table"], read_in=src["read_in"], note=src.get("note", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}: malformed published data ({type(e).__name__}: {e})") from None
    return tuple(out)


def published_values(directory: Path | str | None = None) -> tuple[PublishedValue, ...]:
    """Every published value of every model in the directory (default: `published/`)."""
    return _load(str(directory or PUBLISHED_DIR))


def published(model: str, benchmark: str, method: str | None = None, tokens: int | None = None,
              directory: Path | str | None = None) -> list[PublishedValue]:
    """The published values for a model and benchmark, optionally one method and one token budget.

    Names are compared case-insensitively; `method` accepts the papers' aliases ("vanilla")."""
    method = METHOD_ALIASES.get(method.lower(), method.lower()) if method else None
    rows = _load(str(directory or PUBLISHED_DIR))
    return [v for v in rows
            if v.model.lower() == model.lower() and v.benchmark.lower() == benchmark.lower()
            and (method is None or v.method.lower() == method) and (tokens is None or v.tokens == int(tokens))]
