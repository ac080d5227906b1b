"""Fabricated but realistic run directories (results.json + samples.jsonl) for report and gate tests.

Examples are real shapes test examples (so overlays can regenerate their images); scores are drawn
so that pruning costs a few points and corruption more; kept indices, when asked for, are a random
subset of the 12x12 patch grid that drifts with severity."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

METHODS = [("full", "full", 1.0), ("atp@0.25", "atp", 0.25), ("random@0.25", "random", 0.25)]
CORRUPTIONS = ["gaussian_noise", "fog"]
SEVERITIES = [1, 3]
N_TOKENS = 144
SCRIPT_QUESTION = "what colour is <script>alert('x')</script> the circle?"


def write_fake_run(run_dir: Path, n: int = 30, seed: int = 0, kept_indices: bool = True,
                   conditions: list[str] | None = None, score_shift: dict | None = None) -> Path:
    """`score_shift[(condition, method)]`: subtract this from that series' success probability."""
    from robust_atp.data.shapes import load_shapes

    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    examples = load_shapes("test", limit=n)
    conditions = conditions or ["clean"] + [f"image:{c}@{s}" for c in CORRUPTIONS for s in SEVERITIES]
    difficulty = rng.normal(size=n)
    samples, rows = [], []
    for cond in conditions:
        sev = 0 if cond == "clean" else int(cond.rsplit("@", 1)[1])
        for label, name, keep in METHODS:
            p = 0.9 - 0.08 * sev - (0.0 if label == "full" else 0.06)
            p -= (score_shift or {}).get((cond, label), 0.0)
            scores = (rng.random(n) + 0.15 * difficulty < p).astype(float)
            k = round(keep * N_TOKENS)
            for i, ex in enumerate(examples):
                question = SCRIPT_QUESTION if i == 0 else ex.question
                s = {"example_id": ex.id, "image_id": ex.image_id, "condition": cond, "method": label,
                     "question": question, "answers": list(ex.answers), "question_type": ex.question_type,
                     "prediction": ex.answers[0] if scores[i] else "square", "score": float(scores[i]),
                     "kept_tokens": k}
                if kept_indices:
                    s["kept_indices"] = None if label == "full" else sorted(
                        np.random.default_rng([seed, i, sev, len(label)]).choice(N_TOKENS, k, replace=False).tolist())
                samples.append(s)
            corruption, severity = (None, 0) if cond == "clean" else (cond[6:].rsplit("@", 1)[0], sev)
            rows.append({"condition": cond, "corruption": corruption, "severity": severity, "method": label,
                         "accuracy": round(float(scores.mean()), 6), "n": n, "kept_tokens": float(k),
                         "metrics": {"exact_match": round(float(scores.mean()), 6)}})
    manifest = {"suite": "fake", "seed": seed, "config_hash": "0123456789abcdef", "created": "2026-01-01T00:00:00+00:00",
                "n_examples": n, "conditions": conditions,
                "methods": [{"label": lb, "name": nm, "settings": {"keep": kp}} for lb, nm, kp in METHODS],
                "config": {"name": "fake", "seed": seed, "dataset": {"loader": "shapes", "split": "test", "limit": n,
                                                                      "options": {}, "source": None},
                           "stats": {"confidence": 0.95, "bootstrap": 400, "cluster_by": "image_id",
                                     "correction": "maxt"}}}
    (run_dir / "results.json").write_text(json.dumps({"manifest": manifest, "rows": rows}, indent=1))
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return run_dir
