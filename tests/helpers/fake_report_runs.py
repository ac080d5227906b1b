"""Fake runs for the report's layout tests: every kind of condition (image corruptions, question
perturbations, a crossed condition) and, when asked, answers cut at the token limit."""
from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.fake_runs import write_fake_run

CONDITIONS = ["clean", "image:gaussian_noise@1", "image:gaussian_noise@3", "image:fog@1", "image:fog@3",
              "text:keyboard@1", "text:keyboard@3", "image:fog@1+text:keyboard@1"]
CUT_ANSWER = "square square square"


def write_kinds_run(run_dir: Path, n: int = 30, truncated: bool = True, correction: str = "maxt",
                    kept_indices: bool = True) -> Path:
    """`truncated`: every wrong answer of random@0.25 and every 4th wrong answer of atp@0.25 is a
    repeated answer cut at the token limit (the others are flagged False); False: no such field."""
    write_fake_run(run_dir, n=n, conditions=CONDITIONS, kept_indices=kept_indices)
    samples = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    wrong_seen = {}
    for s in samples:
        if truncated:
            k = wrong_seen[s["method"]] = wrong_seen.get(s["method"], 0) + (s["score"] < 1)
            cut = s["score"] < 1 and (s["method"] == "random@0.25" or (s["method"] == "atp@0.25" and k % 4 == 0))
            s["truncated"] = bool(cut)
            if cut:
                s["prediction"] = CUT_ANSWER
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    res = json.loads((run_dir / "results.json").read_text())
    res["manifest"]["config"]["stats"]["correction"] = correction
    res["manifest"]["config"]["model"] = {"generation": {"max_new_tokens": 3}}
    (run_dir / "results.json").write_text(json.dumps(res, indent=1))
    return run_dir


def table_rows(html: str, table_id: str) -> list[list[str]]:
    """The text of every cell of the table with this id, row by row (whitespace collapsed)."""
    from html.parser import HTMLParser

    class Rows(HTMLParser):
        def __init__(self):
            super().__init__()
            self.depth, self.rows, self.cell = 0, [], None

        def handle_starttag(self, tag, attrs):
            if tag == "table" and (self.depth or dict(attrs).get("id") == table_id):
                self.depth += 1
            elif self.depth and tag == "tr":
                self.rows.append([])
            elif self.depth and tag in ("td", "th"):
                self.cell = []

        def handle_endtag(self, tag):
            if tag == "table" and self.depth:
                self.depth -= 1
            elif self.depth and tag in ("td", "th") and self.cell is not None:
                self.rows[-1].append(" ".join(" ".join(self.cell).split()))
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

    parser = Rows()
    parser.feed(html)
    if not parser.rows:
        raise AssertionError(f"no table with id {table_id!r}")
    return parser.rows
