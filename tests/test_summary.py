"""The printed summary: budgets, image severities, question perturbations and gaps to `full`."""
from robust_atp.summary import format_summary


def _row(cond, method, acc, severity=0, text=None, kept=144):
    return {"condition": cond, "method": method, "accuracy": acc, "severity": severity, "text": text,
            "kept_tokens": kept, "flops_ratio": None, "object_recall": None}


def test_summary_has_text_and_image_columns_and_skips_crossed_conditions():
    rows = []
    for m, base, kept in (("full", 0.9, 144), ("atp@0.25", 0.8, 36)):
        rows += [_row("clean", m, base, kept=kept), _row("image:fog@3", m, base - 0.2, 3, kept=kept),
                 _row("text:keyboard@1", m, base - 0.4, text="keyboard", kept=kept),
                 _row("image:fog@3+text:keyboard@1", m, 0.0, 3, text="keyboard", kept=kept)]
    out = format_summary(rows, ["full", "atp@0.25"], {"full": "1", "atp@0.25": "0.25"}).splitlines()
    assert out[0].split() == ["method", "keep", "tokens", "clean", "sev3", "corrupted", "text", "d_clean",
                              "d_corrupt", "d_text", "flops", "recall"]
    assert out[3].split() == ["atp@0.25", "0.25", "36.0", "80.0", "60.0", "60.0", "40.0", "-10.0", "-10.0",
                              "-10.0", "-", "-"]  # the crossed condition (0.0) enters no column


def test_summary_without_perturbations():
    out = format_summary([_row("clean", "full", 0.5)], ["full"]).splitlines()
    assert out[0].split() == ["method", "keep", "tokens", "clean", "d_clean", "flops", "recall"]
    assert out[2].split() == ["full", "-", "144.0", "50.0", "+0.0", "-", "-"]
