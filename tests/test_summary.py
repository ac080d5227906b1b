"""The printed summary: budgets, one overview in the report's words, a table per kind (image
corruptions, question perturbations, crossed conditions), every family, answers cut at the limit."""
from robust_atp.summary import format_summary, truncation_line


def _row(cond, method, acc, severity=0, text=None, kept=144, truncated=None, n=10):
    return {"condition": cond, "method": method, "accuracy": acc, "severity": severity, "text": text,
            "kept_tokens": kept, "flops_ratio": None, "object_recall": None, "truncated": truncated, "n": n}


def _rows():
    rows = []
    for m, base, kept in (("full", 0.9, 144), ("atp@0.25", 0.8, 36)):
        rows += [_row("clean", m, base, kept=kept), _row("image:fog@3", m, base - 0.2, 3, kept=kept),
                 _row("image:fog@1", m, base - 0.1, 1, kept=kept),
                 _row("image:snow@1", m, base - 0.3, 1, kept=kept),
                 _row("text:keyboard@1", m, base - 0.4, text="keyboard", kept=kept),
                 _row("image:fog@3+text:keyboard@1", m, base - 0.5, 3, text="keyboard", kept=kept)]
    return rows


def _section(out: str, title: str) -> list[str]:
    return next(s for s in out.split("\n\n") if s.startswith(title)).splitlines()


def test_overview_names_each_kind_apart():
    out = format_summary(_rows(), ["full", "atp@0.25"], {"full": "1", "atp@0.25": "0.25"})
    lines = out.splitlines()
    assert lines[0].split() == ["method", "keep", "tokens", "clean", "image", "text", "crossed", "d_clean",
                                "d_image", "d_text", "d_crossed", "flops", "recall"]
    # image: mean of fog@1, fog@3, snow@1 = 0.8 - 0.2 = 60.0; text 40.0; crossed 30.0
    assert lines[3].split() == ["atp@0.25", "0.25", "36.0", "80.0", "60.0", "40.0", "30.0", "-10.0", "-10.0",
                                "-10.0", "-10.0", "-", "-"]
    assert "image = mean over image corruptions" in out and "text = mean over question perturbations" in out
    assert "crossed = mean over crossed conditions" in out


def test_a_table_per_kind_by_severity():
    out = format_summary(_rows(), ["full", "atp@0.25"])
    image = _section(out, "image corruptions")
    assert image[0].startswith("image corruptions: 2 corruptions")
    assert image[1].split() == ["method", "sev1", "sev3", "mean", "d_full"]
    # sev1: (0.8 - 0.1 + 0.8 - 0.3) / 2 = 60.0, sev3: 60.0
    assert image[4].split() == ["atp@0.25", "60.0", "60.0", "60.0", "-10.0"]
    text = _section(out, "question perturbations")
    assert text[1].split() == ["method", "sev1", "mean", "d_full"]
    assert text[3].split() == ["full", "50.0", "50.0", "+0.0"]
    crossed = _section(out, "crossed conditions")
    assert "severity of the question perturbation" in crossed[0]
    assert crossed[4].split() == ["atp@0.25", "30.0", "30.0", "-10.0"]


def test_every_family_is_listed():
    fams = _section(format_summary(_rows(), ["full", "atp@0.25"]), "by family")
    assert fams[1].split() == ["family", "full", "atp@0.25"]
    assert [line.split() for line in fams[3:]] == [
        ["image:fog", "75.0", "65.0"], ["image:snow", "60.0", "50.0"], ["text:keyboard", "50.0", "40.0"],
        ["image:fog@3+text:keyboard", "40.0", "30.0"]]


def test_summary_without_perturbations():
    out = format_summary([_row("clean", "full", 0.5)], ["full"]).splitlines()
    assert out[0].split() == ["method", "keep", "tokens", "clean", "d_clean", "flops", "recall"]
    assert out[2].split() == ["full", "-", "144.0", "50.0", "+0.0", "-", "-"]
    assert not any(line.startswith(("by family", "image corruptions", "answers cut")) for line in out)


def test_truncation_count_line():
    rows = [_row("clean", "full", 0.5, truncated=3, n=10), _row("clean", "atp", 0.4, truncated=0, n=10),
            _row("image:fog@1", "full", 0.5, 1, truncated=1, n=10)]
    line = truncation_line(rows, ["full", "atp"])
    assert line == ("answers cut at the token limit (max_new_tokens, no end of sequence): 4 of 30 (13.3%); "
                    "full 4, atp 0")
    assert format_summary(rows, ["full", "atp"]).endswith(line)
    assert truncation_line([_row("clean", "full", 0.5)], ["full"]) is None  # the adapter did not say


def test_beside_published_table():
    from tests.helpers.fake_published import POPE_CONFIG, POPE_METHODS, pope_rows
    from robust_atp.beside_published import beside_published

    rows, labels = pope_rows(), [m["label"] for m in POPE_METHODS]
    section = beside_published(POPE_CONFIG, rows, POPE_METHODS)
    lines = _section(format_summary(rows, labels, published=section), "beside published")
    assert lines[0] == ("beside published: llava-1.5-7b pope, clean condition; diff = run - published in "
                        "percentage points")
    assert lines[1].split() == ["method", "tokens", "figure", "run", "published", "diff", "source"]
    assert [ln.split() for ln in lines[3:8]] == [
        ["full", "576", "f1", "84.1", "85.9", "-1.8", "arXiv", "2310.03744", "docs/MODEL_ZOO.md"],
        ["full", "576", "f1", "84.1", "85.9", "-1.8", "arXiv", "2412.04467", "Table", "1"],
        ["visionzip@k64", "64", "f1", "75.0", "77.0", "-2.0", "arXiv", "2412.04467", "Table", "1"],
        ["divprune@k128", "128", "f1", "-", "86.72", "-", "arXiv", "2508.18264", "Table", "1"],
        ["fastv@0.3333", "192", "f1", "50.0", "64.8", "-14.8", "arXiv", "2412.04467", "Table", "1"]]
    assert lines[8] == "arXiv 2310.03744: Improved Baselines with Visual Instruction Tuning (LLaVA-1.5)"
    assert lines[-1] == ("not compared: atp@k64 (64 tokens: no published value), random@0.25 (144 tokens: no "
                         "published value), atp@mass0.9 (adaptive budget)")
    assert "note: fastv@0.3333, f1: the mean F1 of random (the published mean is over all three)" in lines
    assert "beside published" not in format_summary(rows, labels)
