"""PruMerge+ and CDPruner through the LLaVA adapter on a tiny random model: the tensors they read
are the ones their reference code reads, the engine runs them, keep-all CDPruner is `full`,
batches do not change them, and their own cost is what torch counts."""
import json
import textwrap
from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from robust_atp import cost
from robust_atp.errors import UserError
from robust_atp.prune.cdpruner import cdpruner
from robust_atp.prune.methods import validate_method
from robust_atp.prune.prumerge import fixed_ratio, prumerge_cls_attention, prumerge_plus
from robust_atp.suite import MethodCfg


@pytest.fixture(scope="module")
def examples(shapes_examples):
    return shapes_examples[:4]


@pytest.fixture(scope="module")
def images(examples):
    return [e.image() for e in examples]


def _last_layer_qk_and_features(adapter, images):
    """The reference's hooks: layer 23 (the last) q_proj / k_proj outputs, and hidden_states[-2]."""
    got = {}
    last = adapter.vision_tower.encoder.layers[-1].self_attn
    hooks = [last.q_proj.register_forward_hook(lambda m, a, out: got.setdefault("q", out)),
             last.k_proj.register_forward_hook(lambda m, a, out: got.setdefault("k", out))]
    with torch.inference_mode():
        out = adapter.vision_tower(adapter.pixel_values(images), output_hidden_states=True)
    for h in hooks:
        h.remove()
    return got["q"], got["k"], out.hidden_states[-2]


@pytest.mark.parametrize("keep", [None, 0.25])
def test_prumerge_plus_reads_the_last_layers_qk_and_merges_before_the_projector(tiny_adapter, images, keep):
    vision = tiny_adapter.encode_images(images)
    cfg = MethodCfg(name="prumerge_plus") if keep is None else MethodCfg(name="prumerge_plus", keep=keep)
    kept = validate_method(cfg).apply(vision, None, [""] * 4)
    q, k, hidden = _last_layer_qk_and_features(tiny_adapter, images)
    for i, x in enumerate(kept):
        attn = prumerge_cls_attention(q[i:i + 1], k[i:i + 1])
        ref = (prumerge_plus(attn, k[i:i + 1], hidden[i:i + 1]) if keep is None else
               prumerge_plus(attn, k[i:i + 1], hidden[i:i + 1], adaptive=False, reduction_ratio=fixed_ratio(36, 9)))
        with torch.inference_mode():
            ref = tiny_adapter.model.model.multi_modal_projector(ref[0])
        assert x.indices is None and torch.allclose(x.tokens, ref, atol=1e-6)
        if keep is not None:  # 4 outliers + arange(4, 35, 8) + the extra token
            assert len(x) == 9
        assert int(x.sizes[-1]) == 36 - (len(x) - 1)  # the extra token stands for the pruned patches


def test_cdpruner_reads_layer_minus_2_in_clip_space_and_the_question(tiny_adapter, images, examples):
    vision = tiny_adapter.encode_images(images)
    questions = [e.question for e in examples]
    text = tiny_adapter.encode_texts(questions)
    kept = validate_method(MethodCfg(name="cdpruner", keep=0.25)).apply(vision, text, [""] * 4)
    _, _, hidden = _last_layer_qk_and_features(tiny_adapter, images)
    clip = tiny_adapter.clip
    with torch.inference_mode():
        embeds = clip.visual_projection(tiny_adapter.vision_tower.post_layernorm(hidden[:, 1:]))
        feats = tiny_adapter.model.model.multi_modal_projector(hidden[:, 1:])
    for i, x in enumerate(kept):
        ref = cdpruner(feats[i:i + 1], embeds[i:i + 1].float(), text[i:i + 1], 9)[0]
        assert torch.equal(x.indices, ref) and torch.equal(x.tokens, vision.tokens[i, ref])


def test_both_give_each_image_what_it_gets_alone(tiny_adapter, images, examples):
    text = tiny_adapter.encode_texts([e.question for e in examples])
    together = tiny_adapter.encode_images(images)
    for cfg in (MethodCfg(name="prumerge_plus"), MethodCfg(name="prumerge_plus", keep=0.5),
                MethodCfg(name="cdpruner", keep=0.5)):
        m = validate_method(cfg)
        batch = m.apply(together, text, [""] * 4)
        for i, im in enumerate(images):
            one = m.apply(tiny_adapter.encode_images([im]), text[i:i + 1], [""])[0]
            assert len(one) == len(batch[i]) and torch.equal(one.sizes, batch[i].sizes)
            assert torch.allclose(one.tokens, batch[i].tokens, atol=1e-5)  # BLAS may round batches apart
            if one.indices is not None:
                assert torch.equal(one.indices, batch[i].indices)


def test_their_own_cost_is_what_torch_counts(tiny_adapter, images, examples):
    text = tiny_adapter.encode_texts([e.question for e in examples[:1]])
    vision = tiny_adapter.encode_images(images[:1])
    cfgs = tiny_adapter.cost_configs()
    kw = dict(d=48, c=32, proj=16)
    for cfg in (MethodCfg(name="prumerge_plus"), MethodCfg(name="cdpruner", keep=0.25)):
        m = validate_method(cfg)
        with FlopCounterMode(display=False) as fc, torch.inference_mode():
            kept = m.apply(vision, text, [""])
        counted = fc.get_total_flops()
        k = len(kept[0])
        analytic = cost.scorer_flops(m.name, m.settings, 36, k, picks=9, **kw)  # no text tower: encoded apart
        if m.name == "prumerge_plus":  # its apply runs the projector over its K' + 1 tokens too
            analytic += cost.projector_flops(cfgs["projector"], k)
        assert counted == analytic, (m.name, counted, analytic)


def _run(tmp_path, tiny_dir, methods, batch_size):
    from robust_atp.run import main

    p = tmp_path / f"s{batch_size}.yaml"
    p.write_text(textwrap.dedent(f"""
        name: pre_llm
        dataset: {{loader: shapes, split: val, limit: 4}}
        model: {{checkpoint: "{tiny_dir / 'llava'}", clip: "{tiny_dir / 'clip'}", generation: {{max_new_tokens: 3}}}}
        methods: [{methods}]
        batch_size: {batch_size}
    """))
    run = tmp_path / f"run{batch_size}"
    assert main([str(p), "--out", str(run), "--no-progress", "--no-report"]) == 0
    return [json.loads(s) for s in (run / "samples.jsonl").read_text().splitlines()]


def test_through_the_engine_keep_all_cdpruner_is_full_and_batch_sizes_agree(tmp_path, tiny_dir):
    methods = "{name: full}, {name: cdpruner, keep: 1.0}, {name: prumerge_plus}, {name: cdpruner, keep: 0.25}"
    one, four = _run(tmp_path, tiny_dir, methods, 1), _run(tmp_path, tiny_dir, methods, 4)
    by = lambda rows: {(r["example_id"], r["method"]): r for r in rows}
    one, four = by(one), by(four)
    assert one.keys() == four.keys()
    for key, row in one.items():
        assert row["prediction"] == four[key]["prediction"] and row["kept_tokens"] == four[key]["kept_tokens"]
    for (ex, method), row in one.items():
        if method == "cdpruner@1":
            assert row["prediction"] == one[ex, "full"]["prediction"] and row["kept_indices"] == one[ex, "full"]["kept_indices"]
        if method == "prumerge_plus@iqr":
            assert row["kept_indices"] is None and row["object_recall"] is None


def test_adapters_without_the_tensors_are_refused_with_one_line():
    bare = SimpleNamespace(tokens=torch.zeros(1, 4, 2), feature_layer=None)
    with pytest.raises(UserError, match="prumerge_plus needs the last ViT layer's CLS query and keys"):
        validate_method(MethodCfg(name="prumerge_plus")).apply(bare, None, [""])
    with pytest.raises(UserError, match="cdpruner needs the projector's ViT layer in the CLIP joint space"):
        validate_method(MethodCfg(name="cdpruner", k=2)).apply(bare, torch.zeros(1, 3), [""])
    crops = SimpleNamespace(tokens=torch.zeros(1, 8, 2), feature_layer=SimpleNamespace(
        hidden=torch.zeros(1, 2, 5, 2), last_keys=torch.zeros(1, 2, 5, 2), clip_project=lambda x: x))
    with pytest.raises(UserError, match="one crop per image"):
        validate_method(MethodCfg(name="cdpruner", k=2)).apply(crops, torch.zeros(1, 3), [""])
