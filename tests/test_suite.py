"""Suite validation: each user error is one line naming the file and field, exit status 2."""
import subprocess
import sys
import re
import textwrap

import pytest

from robust_atp.errors import SuiteError
from robust_atp.run import main
from robust_atp.suite import load_suite

GOOD = """
name: t
dataset: {loader: shapes, split: test, limit: 4}
model: {checkpoint: zoo:shapes_vlm/llava, clip: zoo:shapes_vlm/clip}
methods:
  - {name: full}
  - {name: atp, keep: 0.5}
  - {name: random, keep: 0.25}
perturbations:
  image: {preset: imagenet_c, severities: [1]}
"""


def write(tmp_path, text, name="s.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_good_suite_loads(tmp_path):
    s = load_suite(write(tmp_path, GOOD))
    assert s.name == "t" and len(s.methods) == 3 and s.seed == 0


def test_config_hash_ignores_batch_size_limit_and_device(tmp_path):
    a = load_suite(write(tmp_path, GOOD))
    b = load_suite(write(tmp_path, GOOD), {"batch_size": 3, "dataset.limit": 9, "model.device": "cuda"})
    c = load_suite(write(tmp_path, GOOD), {"seed": 1})
    assert a.config_hash() == b.config_hash() != c.config_hash()


CASES = [
    (GOOD.replace("keep: 0.5", "keep: 1.5"), "methods[1].keep: must be in (0, 1], got 1.5"),
    (GOOD.replace("keep: 0.5", "kep: 0.5"), "methods[1].kep: unknown key (did you mean 'keep'?)"),
    (GOOD.replace("name: random", "name: randm"), "methods[2].name: unknown method 'randm' (did you mean 'random'?)"),
    (GOOD.replace("{name: atp, keep: 0.5}", "{name: atp, keep: 0.5, alpha: -1}"), "methods[1].alpha: must be in [0, 1], got -1"),
    (GOOD.replace("- {name: random, keep: 0.25}", "- {name: atp, keep: 0.5}"), "methods[2]: label 'atp@0.5' repeats methods[1]"),
    ("name: t\ndataset: {loader: shapes}\nmodel: {checkpoint: x}\nmethods: []\n", "methods: List should have at least 1 item"),
    (GOOD.replace("dataset:", "datset:"), "datset: unknown key (did you mean 'dataset'?)"),
    (GOOD.replace("limit: 4", "limit: -4"), "dataset.limit: Input should be greater than 0, got -4"),
    (GOOD.replace("limit: 4", "limit: many"), "dataset.limit: Input should be a valid integer"),
    (GOOD.replace("model: {checkpoint: zoo:shapes_vlm/llava, clip: zoo:shapes_vlm/clip}", "model: {clip: x}"),
     "model.checkpoint: required field is missing"),
    (GOOD.replace("severities: [1]", "severities: [7]"), "perturbations.image.severities: severities must be"),
    (GOOD.replace("preset: imagenet_c", "preset: imagenet_z"), "perturbations.image.preset: unknown preset 'imagenet_z'"),
    (GOOD.replace("preset: imagenet_c", "corruptions: [fogg]"), "perturbations.image.corruptions[0]: unknown corruption 'fogg' (did you mean 'fog'?)"),
    (GOOD + "metrics: [bleu]\n", "metrics[0]: unknown metric 'bleu'"),
    (GOOD.replace("model: {", "model: {generation: {do_sample: true}, "),
     "model.generation.do_sample: sampling is not supported"),
    (GOOD.replace("model: {", "model: {generation: {repetition_penalty: 0}, "),
     "model.generation.repetition_penalty: Input should be greater than 0"),
    (GOOD.replace("model: {", "model: {generation: {temperature: 0.2}, "), "model.generation.temperature: unknown key"),
    (GOOD.replace("name: t", "name: 'a b'"), "name: String should match pattern"),
    (GOOD.replace("model: {", "model: {device: tpu, "), "model.device: must be cpu, cuda, cuda:N or mps, got 'tpu'"),
    (GOOD + "published: {model: llava-9b, benchmark: pope}\n",
     "published.model: no published numbers for 'llava-9b'; known: llava-1.5-7b"),
    (GOOD + "published: {model: llava-1.5-7b, benchmark: popee}\n",
     "published.benchmark: 'popee' is not published for llava-1.5-7b; comparable: gqa, mmbench_en, mme, pope, "
     "scienceqa_img, textvqa, vqav2"),
    (GOOD + "published: {model: llava-1.5-7b, benchmark: mmmu}\n",
     "published.benchmark: 'mmmu' has no loader here to compare a run with for llava-1.5-7b"),
    (GOOD + "published: {model: llava-1.5-7b, benchmark: pope}\n",
     "published.benchmark: 'pope' needs dataset.loader pope, got 'shapes'"),
    (GOOD.replace("loader: shapes, split: test", "loader: pope, source: hf:lmms-lab/POPE") + "published: {model: llava-1.5-7b, benchmark: pope}\nmetrics: [pope_accuracy]\n",
     "published.benchmark: pope is published as f1 from pope_f1; metrics pope_accuracy give none of it"),
    (GOOD.replace("loader: shapes, split: test", "loader: mmbench_en")
     + "published: {model: llava-1.5-7b, benchmark: mmbench_en}\nmetrics: [mmbench_accuracy]\n",
     "published.benchmark: mmbench_en is published as accuracy from mmbench_circular; metrics mmbench_accuracy"),
    (GOOD + "published: {model: llava-1.5-7b}\n", "published.benchmark: required field is missing"),
    (GOOD + "published: {model: llava-1.5-7b, benchmark: pope, table: 1}\n", "published.table: unknown key"),
    ("name: t\n  bad: [\n", "malformed YAML"),
    ("- just\n- a list\n", "<root>: must be a mapping of suite fields"),
]


@pytest.mark.parametrize("text, message", CASES)
def test_bad_suite_is_one_line_naming_file_and_field(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    assert main([str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"error: {path}: "), err
    assert message in err, err
    assert not (tmp_path / "run").exists()


def test_published_leaves_the_config_hash_alone(tmp_path):
    """What the run is compared with changes no prediction: a run resumes across adding it."""
    pope = GOOD.replace("loader: shapes, split: test", "loader: pope, source: hf:lmms-lab/POPE") + "metrics: [pope_f1]\n"
    a = load_suite(write(tmp_path, pope))
    b = load_suite(write(tmp_path, pope + "published: {model: LLaVA-1.5-7B, benchmark: pope}\n", "b.yaml"))
    assert b.published.benchmark == "pope" and a.config_hash() == b.config_hash()


def test_missing_suite_file(tmp_path, capsys):
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: no such suite file" in capsys.readouterr().err


def test_bad_command_line_values(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    assert main([str(path), "--limit", "0"]) == 2
    assert "--limit: must be a positive integer, got 0" in capsys.readouterr().err


def test_unknown_loader_is_reported(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace("loader: shapes", "loader: shapez"))
    assert main([str(path), "--out", str(tmp_path / "run")]) == 2
    assert "dataset.loader: unknown loader 'shapez'" in capsys.readouterr().err


def test_cli_exits_2_without_traceback(tmp_path):
    path = write(tmp_path, GOOD.replace("keep: 0.5", "keep: 1.5"))
    r = subprocess.run([sys.executable, "-m", "robust_atp.run", str(path)], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: {path}: methods[1].keep: must be in (0, 1], got 1.5"


def test_shipped_suites_are_valid():
    from pathlib import Path

    for p in sorted(Path(__file__).resolve().parents[1].joinpath("suites").glob("*.yaml")):
        load_suite(p)


@pytest.mark.parametrize("block, field", [
    ("image: {corruptions: [fog, snow, fog], severities: [1]}", "perturbations.image.corruptions[2]: 'fog' is listed twice"),
    ("text: {perturbations: [keyboard, keyboard], severities: [1]}",
     "perturbations.text.perturbations[1]: 'keyboard' is listed twice"),
])
def test_a_condition_listed_twice_is_refused(tmp_path, block, field):
    p = tmp_path / "s.yaml"
    p.write_text(f"name: s\ndataset: {{loader: shapes}}\nmodel: {{checkpoint: x}}\nmethods: [{{name: full}}]\n"
                 f"perturbations:\n  {block}\n")
    with pytest.raises(SuiteError, match=re.escape(f"{p}: {field}")):
        load_suite(p)


def test_config_hash_of_a_suite_without_text_or_cross_is_unchanged_by_those_options():
    """demo_ci's committed baseline was written before `text` and `cross` existed: same hash."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    baseline = json.loads((root / "reports" / "baselines" / "demo_ci" / "results.json").read_text())
    assert load_suite(root / "suites" / "demo_ci.yaml").config_hash() == baseline["manifest"]["config_hash"]


def test_generation_settings_enter_the_config_hash_only_when_set(tmp_path):
    a = load_suite(write(tmp_path, GOOD))
    same = load_suite(write(tmp_path, GOOD.replace("model: {", "model: {generation: {do_sample: false}, ")))
    penalty = load_suite(write(tmp_path, GOOD.replace("model: {", "model: {generation: {repetition_penalty: 1.05}, ")))
    ngram = load_suite(write(tmp_path, GOOD.replace("model: {", "model: {generation: {no_repeat_ngram_size: 3}, ")))
    assert a.config_hash() == same.config_hash()
    assert len({a.config_hash(), penalty.config_hash(), ngram.config_hash()}) == 3
    assert penalty.model.generation.repetition_penalty == 1.05


def test_yaml_merge_keys_work_and_a_repeated_key_is_still_refused(tmp_path):
    text = GOOD.replace("  - {name: atp, keep: 0.5}\n", "  - &atp {name: atp, keep: 0.5, alpha: 0.25}\n"
                                                          "  - {<<: *atp, keep: 0.25}\n")
    suite = load_suite(write(tmp_path, text))
    assert [(m.name, dict(m.model_extra)) for m in suite.methods[1:3]] == [
        ("atp", {"keep": 0.5, "alpha": 0.25}), ("atp", {"keep": 0.25, "alpha": 0.25})]
    with pytest.raises(SuiteError, match="key 'seed' given twice"):
        load_suite(write(tmp_path, GOOD + "seed: 1\nseed: 2\n", "twice.yaml"))
