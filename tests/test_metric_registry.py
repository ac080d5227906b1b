"""Every metric name is one documented convention, callable by name and as a function of that
name; results name the convention of every number; stored rows are scored under the current one."""
import re

import robust_atp.metrics as metrics
from robust_atp.data.base import Example
from robust_atp.metrics import CONVENTIONS, METRICS
from robust_atp.results import rescored
from robust_atp.store import Prediction

MODULES = {"vqa_accuracy": "vqa", "vqa_accuracy_official": "vqa", "textvqa_accuracy": "textvqa",
           "gqa_accuracy": "gqa", "gqa_accuracy_lmms": "gqa", "gqa_accuracy_llava": "gqa", "exact_match": "match",
           "cider_d": "captions", "pope_accuracy": "pope", "pope_accuracy_lmms_eval": "pope", "pope_f1": "pope",
           "mme_accuracy": "mme", "mme_accuracy_plus": "mme", "scienceqa_accuracy": "choice",
           "scienceqa_accuracy_llava": "choice", "mmbench_accuracy": "choice", "mmbench_circular": "choice"}


def test_every_convention_is_callable_by_name_and_as_a_function():
    import importlib

    assert set(METRICS) == set(MODULES)
    for name, module in MODULES.items():
        fn = getattr(importlib.import_module(f"robust_atp.metrics.{module}"), name)
        assert METRICS[name] is fn
        assert getattr(metrics, name) is fn
        assert isinstance(METRICS[name]("yes", ("yes",) * 10), float)


def test_every_convention_names_its_source():
    for name, conv in CONVENTIONS.items():
        if name != "cider_d":  # pycocoevalcap is called, not reimplemented
            assert re.search(r"[\w-]+/[\w-]+@[0-9a-f]{40}|GQA eval\.py", conv.source), name
    assert "vqaEval.py" in CONVENTIONS["vqa_accuracy_official"].source
    assert "vqav2_process_results" in CONVENTIONS["vqa_accuracy"].source
    assert "textvqa_process_results" in CONVENTIONS["textvqa_accuracy"].source


def test_stored_rows_are_scored_again_under_the_current_conventions():
    ex = Example(id="e1", image_id="i1", question="?", answers=("two",) * 10, image=None)
    stale = Prediction("e1", "clean", "full", "2", 0.0, {"vqa_accuracy": 0.0, "vqa_accuracy_official": 0.0}, 4)
    other = Prediction("e9", "clean", "full", "2", 0.5, {"vqa_accuracy": 0.5, "vqa_accuracy_official": 0.5}, 4)
    out = rescored({("e1", "clean", "full"): stale, ("e9", "clean", "full"): other}, [ex],
                   ["vqa_accuracy", "vqa_accuracy_official"])
    fresh = out["e1", "clean", "full"]
    assert fresh.score == 1.0 and fresh.scores == {"vqa_accuracy": 1.0, "vqa_accuracy_official": 0.0}
    assert fresh.prediction == "2" and fresh.kept == 4
    assert out["e9", "clean", "full"] is other  # not an example of this run: left as stored
