"""Answers cut at max_new_tokens without an end of sequence: the adapter says which, samples.jsonl
carries `truncated`, results.json counts them per (condition, method) and the summary prints the count."""
import json
import textwrap

import pytest
import torch

from robust_atp.models.base import cut_at_limit
from robust_atp.models.zoo import ZOO_DIR
from robust_atp.run import main


def test_cut_at_limit_is_no_eos_in_the_row():
    new = torch.tensor([[5, 6, 7], [5, 2, 0], [2, 0, 0], [9, 9, 1]])
    assert cut_at_limit(new, 2) == [True, False, False, True]
    assert cut_at_limit(new, [1, 2]) == [True, False, False, False]  # a list of EOS ids: any ends it


@pytest.fixture(scope="module")
def shapes_batch(shapes_examples):
    exs = shapes_examples[:8]
    return [e.image() for e in exs], [e.question for e in exs]


@pytest.mark.slow
def test_the_demo_model_one_word_answer_is_cut_at_one_token_not_at_two(make_adapter, shapes_batch):
    images, questions = shapes_batch
    out = {}
    for limit in (1, 2):
        adapter = make_adapter(ZOO_DIR / "shapes_vlm" / "llava", ZOO_DIR / "shapes_vlm" / "clip", max_new_tokens=limit)
        assert adapter.last_truncated is None  # nothing generated yet
        vision = adapter.encode_images(images)
        out[limit] = adapter.generate(list(vision.tokens), questions), adapter.last_truncated
    # the demo model answers one word then its EOS: one new token cannot hold the EOS, two can
    assert out[1][1] == [True] * len(images) and out[2][1] == [False] * len(images)
    assert out[1][0] == out[2][0]


SUITE = """
name: cut
seed: 0
dataset: {{loader: shapes, split: test, limit: 4}}
model: {{checkpoint: zoo:shapes_vlm/llava, clip: zoo:shapes_vlm/clip, generation: {{max_new_tokens: {n}}}}}
methods: [{{name: full}}, {{name: random, keep: 0.25}}]
perturbations: {{image: {{corruptions: [fog], severities: [5]}}}}
batch_size: 4
"""


@pytest.mark.parametrize("limit,cut", [(1, True), (2, False)])
def test_a_run_flags_counts_and_prints_cut_answers(tmp_path, capsys, limit, cut):
    suite = tmp_path / "cut.yaml"
    suite.write_text(textwrap.dedent(SUITE.format(n=limit)))
    run = tmp_path / "run"
    assert main([str(suite), "--out", str(run), "--no-progress", "--no-report"]) == 0
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 * 2 * 2 and all(s["truncated"] is cut for s in samples)
    rows = json.loads((run / "results.json").read_text())["rows"]
    assert [r["truncated"] for r in rows] == [4 * cut] * 4
    out = capsys.readouterr().out
    assert (f"answers cut at the token limit (max_new_tokens, no end of sequence): {16 * cut} of 16 "
            f"({100 * cut:.1f}%); full {8 * cut}, random@0.25 {8 * cut}") in out
