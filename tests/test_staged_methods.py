"""PyramidDrop, DART and SparseVLM as suite methods: the LLaVA adapter runs them through the
staged decoder (`generate(..., in_llm=StagedSpec)`). Keeping every token is `full` token for
token; batch sizes 1 and 4 agree; each layer's image tokens are the policy's (worked out by
hand for the demo model's 144 tokens and 4 decoder layers); rows through the engine carry the
last layer's count, the survivors and the staged FLOPs, which equal what torch counts; an
adapter without in-LLM pruning refuses with one line."""
import json
import textwrap

import pytest
import torch

from robust_atp import cost
from robust_atp.engine import kept_tokens_of, staged_spec
from robust_atp.errors import SuiteError, UserError
from robust_atp.models.base import generate_greedy, prompt_ids_for_penalties
from robust_atp.models.staged_llm import KeepAll, StagedSpec, staged_generate, staged_prefill
from robust_atp.preflight import check_loaded
from robust_atp.prune.methods import validate_method
from robust_atp.run import main
from robust_atp.suite import MethodCfg

STAGED = ("pdrop", "dart", "sparsevlm")


def _method(name, **kw):
    return validate_method(MethodCfg(name=name, **kw))


def _depth(adapter) -> int:
    return adapter.cost_configs()["llm"].num_hidden_layers


@pytest.fixture(scope="module")
def demo_batch(demo_adapter, shapes_examples):
    exs = shapes_examples[:4]
    vision = demo_adapter.encode_images([e.image() for e in exs])
    return exs, [e.question for e in exs], [vision.tokens[i] for i in range(4)]


def _spec(m, adapter, exs):
    return staged_spec(m, adapter, adapter.num_visual_tokens, [f"0/{e.id}/{m.label}" for e in exs])


def test_the_staged_decoder_on_llava_keeping_everything_is_hfs_generate_token_for_token(demo_adapter, demo_batch):
    a = demo_adapter
    exs, questions, tokens = demo_batch
    ids = prompt_ids_for_penalties([torch.cat([b, torch.full((len(t),), a.image_token_id), f])
                                    for t, (b, f) in zip(tokens, map(a.prompt_ids, questions))])
    g = a.generation_config
    with torch.inference_mode():  # the tokens are inference tensors (the vision pass's)
        inputs, mask, pads = a.prompt_embeddings(tokens, questions)
        hf = generate_greedy(a.model, g, inputs_embeds=inputs, input_ids=ids, attention_mask=mask)[:, ids.shape[1]:]
        starts = [p + len(a.prompt_ids(q)[0]) for p, q in zip(pads, questions)]
        ours = staged_generate(a.model.model.language_model, a.model.lm_head, a.model.get_input_embeddings(), inputs,
                               mask, KeepAll(), image_start=starts, image_count=144, max_new_tokens=g.max_new_tokens,
                               eos_token_ids=[g.eos_token_id], pad_token_id=g.pad_token_id)
    assert ours.tokens.tolist() == hf[:, :ours.tokens.shape[1]].tolist()
    assert (hf[:, ours.tokens.shape[1]:] == g.pad_token_id).all()  # HF pads on to max_new_tokens


@pytest.mark.parametrize("name", ["tiny_adapter", "demo_adapter"])
def test_methods_that_keep_every_token_answer_as_full(name, request, shapes_examples):
    adapter = request.getfixturevalue(name)
    exs = shapes_examples[:6]
    questions = [e.question for e in exs]
    vision = adapter.encode_images([e.image() for e in exs])
    tokens = kept_tokens_of(_method("full"), vision, None, [""] * 6)
    full = adapter.generate(tokens, questions)
    n, layers = adapter.num_visual_tokens, _depth(adapter)
    keep_all = [_method("pdrop", keep=0.5, lam=1.0)]  # lambda 1: every stage keeps all N
    if n == 36:  # DART on 36 tokens: 4 pivots + 8 x 4 = all of them
        keep_all.append(_method("dart", keep=1.0))
    for m in keep_all:
        spec = _spec(m, adapter, exs)
        assert adapter.generate(tokens, questions, in_llm=spec) == full, m.label
        assert spec.image_tokens == [n] * layers
        assert [t.tolist() for t in spec.kept] == [list(range(n))] * 6


# demo model: 144 image tokens, 4 decoder layers
#   pdrop keep 0.5 (K = 72): stages before layers 1, 2, 3 (8, 16, 24 of 32 scaled); lambda 0.55
#     averages (144 + 79 + 43 + 23) / 4 = 72.25 (int(144 x 0.55^s)), the nearest to 72
#   dart keep 0.25 (K = 36): TOKEN_TOPK = ceil(36 // 8) = 4, so 4 pivots + 8 x 4 = 36 from layer 2 on
#   sparsevlm keep 0.25 (K = 36 of 144 is 144 of 576): RETAIN_TOKN 128's (303, 110, 36) x 36 / 128 =
#     (85, 31, 10) after layers 0, 1, 2; deleted 59 -> int(0.3 x 59) + 1 = 18 recycled into
#     int(18 / 10) + 1 = 2 clusters: 87; 86 - 31 = 55 deleted -> 17 into 2: 33; 23 -> 7 into 1: 11
EXPECTED = {("pdrop", 0.5): [144, 79, 43, 23], ("dart", 0.25): [144, 144, 36, 36],
            ("sparsevlm", 0.25): [144, 87, 33, 11]}


@pytest.mark.parametrize("name, keep", list(EXPECTED))
def test_each_layer_runs_on_the_policys_counts_and_batch_sizes_1_and_4_agree(demo_adapter, demo_batch, name, keep):
    exs, questions, tokens = demo_batch
    m = _method(name, keep=keep)
    spec = _spec(m, demo_adapter, exs)
    answers = demo_adapter.generate(tokens, questions, in_llm=spec)
    assert spec.image_tokens == EXPECTED[name, keep] == spec.policy.layer_image_tokens(144, 4)
    last = spec.image_tokens[-1]
    for kept in spec.kept:
        assert kept.tolist() == sorted(set(kept.tolist())) and all(0 <= i < 144 for i in kept.tolist())
        if name == "sparsevlm":  # its recycled tokens are no single image token
            assert len(kept) < last
        else:
            assert len(kept) == last
    for i in range(4):
        one = _spec(m, demo_adapter, exs[i:i + 1])
        assert one.seeds == spec.seeds[i:i + 1]
        assert demo_adapter.generate(tokens[i:i + 1], questions[i:i + 1], in_llm=one) == answers[i:i + 1]
        assert one.kept[0].tolist() == spec.kept[i].tolist() and one.image_tokens == spec.image_tokens


def test_counted_prefill_flops_equal_the_rows_analytical_ones(tiny_eager_adapter, shapes_examples):
    a = tiny_eager_adapter  # eager attention: torch's counter has formulas for its matmuls
    ex = shapes_examples[0]
    vision = a.encode_images([ex.image()])
    tokens = [vision.tokens[0]]
    s = cost.LayerShape.from_config(a.cost_configs()["llm"])
    head = 2 * s.d * a.model.lm_head.out_features  # staged_prefill's LM head on the last position
    for name in STAGED:
        m = _method(name, keep=0.25)
        spec = _spec(m, a, [ex])
        inputs, mask, pads = a.prompt_embeddings(tokens, [ex.question])
        start = [pads[0] + len(a.prompt_ids(ex.question)[0])]
        counted = cost.counted_flops(lambda: staged_prefill(a.model.model.language_model, a.model.lm_head, inputs,
                                                            mask, spec.policy, start, 36, spec.seeds))
        spec.image_tokens = spec.policy.layer_image_tokens(36, 2)
        analytic = cost.staged_prefill_flops(s, a.prompt_length(ex.question), spec.image_tokens)
        assert counted == analytic + spec.policy.scoring_flops(s, 0) + head, name
        assert counted > cost.prefill_flops(s, a.prompt_length(ex.question) + spec.image_tokens[-1]) + head


def _suite(tmp_path, methods, model="{checkpoint: zoo:shapes_vlm/llava, generation: {max_new_tokens: 2}}"):
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(f"""
        name: staged
        dataset: {{loader: shapes, split: val, limit: 4}}
        model: {model}
        methods: [{", ".join(methods)}]
        batch_size: 4
    """))
    return p


def test_rows_through_the_engine_follow_what_each_layer_ran_on(tmp_path, demo_adapter):
    methods = ["{name: full}"] + [f"{{name: {n}, keep: 0.25}}" for n in STAGED]
    run = tmp_path / "run"
    assert main([str(_suite(tmp_path, methods)), "--out", str(run), "--no-progress", "--no-report"]) == 0
    rows = {r["method"]: r for r in json.loads((run / "results.json").read_text())["rows"]}
    samples = [json.loads(s) for s in (run / "samples.jsonl").read_text().splitlines()]
    s = cost.LayerShape.from_config(demo_adapter.cost_configs()["llm"])
    for name in STAGED:
        m = _method(name, keep=0.25)
        per_layer = m.staged(144, 4).layer_image_tokens(144, 4)
        assert rows[m.label]["kept_tokens"] == per_layer[-1]
        assert 0.25 < rows[m.label]["flops_ratio"] < 1.0
        mine = [x for x in samples if x["method"] == m.label]
        assert len(mine) == 4
        policy = m.staged(144, 4)
        for x in mine:
            assert x["llm_image_tokens"] == per_layer and x["kept_tokens"] == per_layer[-1]
            assert x["kept_indices"] == sorted(x["kept_indices"])
            text = demo_adapter.prompt_length(x["question"])
            staged = cost.staged_prefill_flops(s, text, per_layer)
            if name == "pdrop":  # each ranking over the tokens before its stage's drop
                at = [text + per_layer[b - 1] for b in policy.layers]
                assert x["prefill_flops"] == staged + cost.pdrop_rank_flops(s, at)
            elif name == "dart":  # no scoring products: the staged count alone
                assert x["prefill_flops"] == staged
            else:  # plus its raters' scoring (how many raters depends on the question)
                assert x["prefill_flops"] > staged


def test_an_adapter_without_in_llm_pruning_refuses_with_one_line(tmp_path, tiny_blip2_dir, blip, capsys):
    from tests.helpers.tiny_families import BLIP2_PROMPT

    spec = StagedSpec("pdrop", KeepAll())
    with pytest.raises(UserError) as e:
        blip.generate([torch.zeros(4, 8)], ["q"], in_llm=spec)
    assert str(e.value) == "methods: pdrop is not supported on the blip2 adapter (its LLM sees query tokens only)"
    with pytest.raises(UserError, match=r"^method 'dart@0.25': dart prunes inside the LLM, which the blip2 adapter "
                                        r"cannot do \(its LLM sees query tokens only\)$"):
        check_loaded([_method("dart", keep=0.25)], blip)
    prompt = BLIP2_PROMPT.encode("unicode_escape").decode()
    p = _suite(tmp_path, ["{name: full}", "{name: sparsevlm, keep: 0.25}"],
               model=f'{{adapter: blip2, checkpoint: "{tiny_blip2_dir}", prompt: "{prompt}"}}')
    assert main([str(p), "--out", str(tmp_path / "run"), "--no-progress", "--no-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: method 'sparsevlm@0.25': sparsevlm prunes inside the LLM")
    assert "Traceback" not in "\n".join(err)


def test_settings_the_model_cannot_run_are_one_line_before_any_work(tmp_path, capsys):
    for entry, msg in [
        ("{name: pdrop, keep: 0.25, layers: [1, 4]}", "pdrop: layers [1, 4] must leave a decoder layer after each "
                                                      "cut: the model has 4 decoder layers, so at most 3"),
        ("{name: dart, keep: 0.25, layer: 4}", "dart: layer 4 must leave a decoder layer after each cut"),
        ("{name: sparsevlm, keep: 0.25, schedule: [50, 20]}", "sparsevlm: schedule [50, 20] has 2 counts for the 3 "
                                                              "pruning layers [0, 1, 2]"),
    ]:
        run = tmp_path / f"run{len(msg)}"
        assert main([str(_suite(tmp_path, [entry])), "--out", str(run), "--no-progress", "--no-report"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert msg in err[-1] and err[-1].startswith("error: method '")
    with pytest.raises(SuiteError, match=r"\.layers: .*strictly increasing"):
        _method("pdrop", keep=0.25, layers=[3, 2])
    with pytest.raises(SuiteError, match=r"\.lam: must be in \(0, 1\]"):
        _method("pdrop", keep=0.25, lam=0)
