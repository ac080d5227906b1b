"""`python -m robust_atp.report.compare`: partners at the same budget, exact tests, Holm per column."""
from __future__ import annotations

import json

import pytest

from robust_atp.report.compare import compare, format_table, main, partners
from robust_atp.report.rundata import load_run

# (label, name, settings)
METHODS = [("full", "full", {}), ("atp@0.5", "atp", {"keep": 0.5}),
           ("atp@0.5_a0", "atp", {"keep": 0.5, "alpha": 0.0}), ("random@0.5", "random", {"keep": 0.5}),
           ("cdpruner@0.25", "cdpruner", {"keep": 0.25}), ("prumerge_plus", "prumerge_plus", {})]
CONDS = ["clean", "image:fog@3", "image:gaussian_noise@3"]
# per method, per condition: the scores of 8 questions (each on its own image)
ATP = {"clean": [1, 1, 1, 1, 1, 1, 0, 0], "image:fog@3": [1, 1, 0, 0, 1, 1, 0, 0],
       "image:gaussian_noise@3": [1, 0, 0, 0, 1, 1, 0, 1]}
SCORES = {
    "full": {c: [1] * 8 for c in CONDS},
    "atp@0.5": ATP,
    "atp@0.5_a0": ATP,  # identical to the default ATP: no discordant pair
    # clean: wrong on 4 questions ATP gets right, nothing the other way: McNemar p = 2 * 0.5**4
    "random@0.5": {"clean": [0, 0, 0, 0, 1, 1, 0, 0], "image:fog@3": [0, 0, 0, 0, 1, 1, 0, 0],
                   "image:gaussian_noise@3": [0, 0, 0, 0, 1, 1, 0, 1]},
    "cdpruner@0.25": {c: [1, 0] * 4 for c in CONDS},
    "prumerge_plus": {c: [0] * 8 for c in CONDS},
}


def _run(tmp_path):
    samples, rows = [], []
    for c in CONDS:
        for label, _, _ in METHODS:
            sc = SCORES[label][c]
            for i, s in enumerate(sc):
                samples.append({"example_id": f"q{i}", "image_id": f"img{i}", "condition": c, "method": label,
                                "score": float(s)})
            rows.append({"condition": c, "method": label, "accuracy": sum(sc) / len(sc), "kept_tokens": 72.0,
                         "flops_ratio": 0.5})
    manifest = {"conditions": CONDS, "methods": [{"label": lb, "name": nm, "settings": st} for lb, nm, st in METHODS],
                "config": {"stats": {"bootstrap": 999, "cluster_by": "image_id"}}}
    (tmp_path / "results.json").write_text(json.dumps({"manifest": manifest, "rows": rows}))
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return tmp_path


def test_partners_are_the_default_reference_at_the_same_budget(tmp_path):
    run = load_run(_run(tmp_path))
    assert partners(run, "atp") == {"full": None, "atp@0.5": None, "atp@0.5_a0": "atp@0.5",
                                    "random@0.5": "atp@0.5", "cdpruner@0.25": None, "prumerge_plus": None}


def test_clean_is_exact_mcnemar_and_holm_spans_the_column(tmp_path):
    by = {c.method: c for c in compare(load_run(_run(tmp_path)), "atp")}
    r = by["random@0.5"]
    assert r.acc["clean"] == pytest.approx(2 / 8) and r.ref["clean"] == pytest.approx(6 / 8)
    assert r.p["clean"] == pytest.approx(0.125)
    # Holm over the two tested comparisons (p 0.125 and 1.0): 2 x 0.125
    assert r.p_adj["clean"] == pytest.approx(0.25)
    assert by["atp@0.5_a0"].p["clean"] == 1.0 and by["atp@0.5_a0"].p_adj["clean"] == 1.0
    # image: the mean over the two corruptions per question
    assert r.acc["image"] == pytest.approx((2 + 3) / 16) and r.ref["image"] == pytest.approx((4 + 4) / 16)
    assert 0 < r.p["image"] <= 1 and "image" in r.p_adj
    for untested in ("full", "atp@0.5", "cdpruner@0.25", "prumerge_plus"):
        assert by[untested].p == {} and by[untested].acc["clean"] is not None


def test_table_and_cli(tmp_path, capsys):
    run_dir = _run(tmp_path)
    text = format_table(compare(load_run(run_dir), "atp"), "atp", markdown=True)
    lines = text.splitlines()
    assert lines[0].startswith("| method | tokens | flops | clean | atp clean | p (Holm) |")
    assert "| `random@0.5` | 72.0 | 0.50 | 25.0 | 75.0 | 0.12 (0.25) |" in text
    assert main([str(run_dir)]) == 0
    assert "random@0.5" in capsys.readouterr().out


def test_an_unknown_reference_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(_run(tmp_path)), "--against", "nosuch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--against: no method named 'nosuch'" in err[0] and "atp" in err[0]
