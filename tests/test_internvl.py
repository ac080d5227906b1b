"""The InternVL adapter against `InternVLForConditionalGeneration` itself, on a tiny random model
(InternViT with CLS and q-k norms, 2x2 pixel shuffle, tiles + thumbnail): `full` is the model's
own generate at three tilings, the saliency is the eager CLS attention pooled per 2x2 patch
group, the LLM reads exactly the kept tokens at the model's own positions."""
import pytest
import torch

from robust_atp.errors import UserError
from robust_atp.prune.methods import validate_method
from robust_atp.suite import MethodCfg, ModelCfg
from tests.helpers.tiny_families_new import INTERNVL_PROMPT, build_tiny_internvl

MAX_NEW = 8
# (w, h) -> tiles: one 64 px tile; a 2:1 landscape, 2 tiles + thumbnail; a square, 4 tiles + thumbnail
SIZES = [((64, 64), 1), ((128, 64), 3), ((128, 128), 5)]


@pytest.fixture(scope="module")
def tiny_internvl_dir(tmp_path_factory):
    return build_tiny_internvl(tmp_path_factory.mktemp("tiny_internvl"))


def _adapter(path, **kw):
    from robust_atp.models.base import load_adapter

    return load_adapter(ModelCfg(adapter="internvl", checkpoint=str(path), prompt=INTERNVL_PROMPT,
                                 generation={"max_new_tokens": MAX_NEW}, **kw))


@pytest.fixture(scope="module")
def ivl(tiny_internvl_dir):
    return _adapter(tiny_internvl_dir)


def _images(examples, size):
    return [e.image().convert("RGB").resize(size) for e in examples]


@pytest.fixture(scope="module")
def batch(shapes_examples):
    """Four shapes images at 128x64: 2 tiles + the thumbnail, 48 tokens."""
    exs = shapes_examples[:4]
    return _images(exs, (128, 64)), [e.question for e in exs]


def _kept(method_cfg, vision, text=None):
    return validate_method(MethodCfg(**method_cfg)).apply(vision, text, [""] * len(vision))


def _generate(adapter, kept, questions):
    return adapter.generate([k.tokens for k in kept], questions)


@pytest.mark.parametrize("size, tiles", SIZES)
def test_full_matches_hf_generate_token_for_token(ivl, shapes_examples, size, tiles):
    exs = shapes_examples[4:8]
    images, questions = _images(exs, size), [e.question for e in exs]
    ref = ivl.reference_inputs(images, questions)
    with torch.inference_mode():
        out = ivl.model.generate(**ref, max_new_tokens=MAX_NEW, do_sample=False)
    ref_ids = out[:, ref["input_ids"].shape[1]:]
    vision = ivl.encode_images(images)
    assert ivl.tiles == tiles and vision.tokens.shape[1] == 16 * tiles
    captured = {}
    orig = ivl.model.generate

    def spy(*a, **kw):
        o = orig(*a, **kw)
        captured["out"] = o[:, kw["input_ids"].shape[1]:]
        return o

    ivl.model.generate = spy
    try:
        texts = _generate(ivl, _kept({"name": "full"}, vision), questions)
    finally:
        ivl.model.generate = orig
    assert captured["out"].shape == ref_ids.shape == (4, MAX_NEW)
    assert torch.equal(captured["out"], ref_ids)
    assert texts == [t.strip() for t in ivl.tokenizer.batch_decode(ref_ids, skip_special_tokens=True)]


def test_tokens_are_the_models_image_features(ivl, batch):
    images, _ = batch
    vision = ivl.encode_images(images)
    with torch.inference_mode():
        px = ivl.processed(images)
        own = ivl.model.model.get_image_features(px.flatten(0, 1)).pooler_output  # [tiles_total, 16, D]
    assert torch.equal(own.reshape(4, -1, own.shape[-1]), vision.tokens)
    with torch.inference_mode():
        again = ivl.model.model.multi_modal_projector(vision.vit_features)
    assert torch.allclose(again, vision.tokens, atol=1e-6)


def test_cls_saliency_is_the_eager_cls_attention_pooled_per_2x2_group(tiny_internvl_dir, batch):
    """The hooked CLS attention (under sdpa, after the q-k norms) equals the eager kernel's CLS
    row; a token's saliency is the sum over the 2x2 patches the pixel shuffle puts in it (token
    (r, c) of a tile's 4x4 token grid holds patches rows 2r, 2r + 1 x cols 2c, 2c + 1)."""
    from transformers.models.internvl import modeling_internvl as mi

    images, _ = batch
    adapter = _adapter(tiny_internvl_dir, attn_implementation="eager")
    weights = []
    orig = mi.eager_attention_forward

    def keep(*a, **kw):
        out = orig(*a, **kw)
        if out[1].shape[-1] == 65:  # the ViT's: 64 patches + CLS a tile
            weights.append(out[1].float())  # [tiles, H, 65, 65]
        return out

    mi.eager_attention_forward = keep
    try:
        sal = adapter.encode_images(images).cls_attn  # [B, L, H, N]
    finally:
        mi.eager_attention_forward = orig
    assert len(weights) == 3
    cls_rows = torch.stack([w[:, :, 0, 1:] for w in weights], 1)  # [B * 3 tiles, L, H, 64]
    pooled = cls_rows.view(4 * 3, 3, 4, 4, 2, 4, 2).sum((4, 6)).flatten(-2)  # [tiles, L, H, 16]
    expect = pooled.view(4, 3, 3, 4, 16).permute(0, 2, 3, 1, 4).reshape(4, 3, 4, 48)
    assert torch.allclose(sal, expect, atol=1e-5)
    sdpa = _adapter(tiny_internvl_dir).encode_images(images).cls_attn
    assert torch.allclose(sdpa, sal, atol=1e-5)
    assert float((sal[:, -1].amax(-1) - sal[:, -1].amin(-1)).min()) > 1e-3  # not a flat map


def test_keeping_every_token_is_full(ivl, batch):
    images, questions = batch
    vision = ivl.encode_images(images)
    full = _kept({"name": "full"}, vision)
    answers = _generate(ivl, full, questions)
    for cfg in ({"name": "atp", "keep": 1.0, "alpha": 0.0}, {"name": "cls", "k": 48, "layer": -1}):
        kept = _kept(cfg, vision)
        assert all(torch.equal(a.indices, f.indices) and torch.equal(a.tokens, f.tokens) for a, f in zip(kept, full))
        assert _generate(ivl, kept, questions) == answers


def test_llm_receives_exactly_the_kept_tokens_at_the_models_own_positions(ivl, batch):
    images, questions = batch
    vision = ivl.encode_images(images)
    seen = []
    handle = ivl.model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kw: seen.append((kw["inputs_embeds"].clone(), kw["attention_mask"].clone(),
                                           kw.get("position_ids"))), with_kwargs=True)
    try:
        for k in (1, 7, 30):
            seen.clear()
            kept = _kept({"name": "cls", "k": k}, vision)
            _generate(ivl, kept, questions)
            embeds, mask, positions = seen[0]
            for i, (x, q) in enumerate(zip(kept, questions)):
                before, after = ivl.prompt_ids(q)
                n = len(before) + k + len(after)
                assert int(mask[i].sum()) == n
                row = embeds[i, embeds.shape[1] - n:]
                assert torch.equal(row[len(before):len(before) + k], vision.tokens[i, x.indices])
                assert positions[i, embeds.shape[1] - n:].tolist() == list(range(n))
        seen.clear()
        ref = ivl.reference_inputs(images, questions)
        with torch.inference_mode():
            ivl.model.generate(**ref, max_new_tokens=1, do_sample=False)
        _, mask, positions = seen[0]  # the model's own generate places its own input the same way
        for i in range(4):
            n = int(mask[i].sum())
            assert positions[i, mask.shape[1] - n:].tolist() == list(range(n))
    finally:
        handle.remove()


def test_batch_size_does_not_change_answers(ivl, batch):
    images, questions = batch
    method = {"name": "atp", "keep": 0.25, "alpha": 0.0}
    kept = _kept(method, ivl.encode_images(images))
    batched = _generate(ivl, kept, questions)
    single = []
    for i in range(4):
        k = _kept(method, ivl.encode_images(images[i:i + 1]))
        assert torch.equal(k[0].indices, kept[i].indices)
        single += _generate(ivl, k, questions[i:i + 1])
    assert single == batched


@pytest.mark.parametrize("method, message", [
    ({"name": "visionzip", "keep": 0.25}, "visionzip merges ViT tokens before the projector, but internvl"),
    ({"name": "prumerge_plus"}, "prumerge_plus needs the last ViT layer's CLS query"),
    ({"name": "cdpruner", "keep": 0.25}, "cdpruner needs the projector's ViT layer in the CLIP joint space"),
])
def test_methods_that_merge_before_the_projector_or_need_clip_are_refused(ivl, batch, method, message):
    vision = ivl.encode_images(batch[0])
    with pytest.raises(UserError, match=message):
        _kept(method, vision)


def test_tome_in_the_tower_fastv_text_relevance_and_clip_are_refused(ivl, batch, tiny_internvl_dir):
    from robust_atp.preflight import check_tower_methods
    from robust_atp.models.fastv import FastVSpec

    images, questions = batch
    with pytest.raises(UserError, match="merges tokens inside the vision tower, which the InternVLAdapter"):
        check_tower_methods([validate_method(MethodCfg(name="tome", keep=0.5))], ivl)
    with pytest.raises(UserError, match="fastv is not supported on the internvl adapter"):
        ivl.generate(list(ivl.encode_images(images).tokens), questions, in_llm=FastVSpec(0, 4))
    with pytest.raises(UserError, match="^methods: a method needs text relevance, but internvl"):
        ivl.encode_texts(questions)
    with pytest.raises(UserError, match="^model.clip: internvl's InternViT is not a CLIP tower"):
        _adapter(tiny_internvl_dir, clip=str(tiny_internvl_dir))


def test_merged_tokens_go_in_as_returned(ivl, batch):
    images, questions = batch
    merged = _kept({"name": "tome_posthoc", "keep": 0.25}, ivl.encode_images(images))
    assert len(_generate(ivl, merged, questions)) == 4


def test_images_of_different_sizes_ask_for_a_resolution(ivl):
    from PIL import Image

    with pytest.raises(UserError, match=r"^perturbations.image.resolution: internvl cuts images"):
        ivl.encode_images([Image.new("RGB", (64, 64)), Image.new("RGB", (128, 64))])


@pytest.mark.slow
def test_internvl_through_the_engine(tmp_path, tiny_internvl_dir):
    import json

    import yaml

    from robust_atp.prune.select import budget
    from robust_atp.run import main

    suite = {"name": "family", "dataset": {"loader": "shapes", "split": "val", "limit": 4},
             "model": {"adapter": "internvl", "checkpoint": str(tiny_internvl_dir), "prompt": INTERNVL_PROMPT,
                       "generation": {"max_new_tokens": 3}},
             "methods": [{"name": "full"}, {"name": "atp", "keep": 0.25, "alpha": 0.0},
                         {"name": "divprune", "keep": 0.25}],
             "perturbations": {"image": {"corruptions": ["fog"], "severities": [1], "resolution": 128}},
             "batch_size": 2}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    run = tmp_path / "run"
    assert main([str(tmp_path / "suite.yaml"), "--out", str(run), "--no-progress", "--no-report"]) == 0
    rows = {(r["condition"], r["method"]): r for r in json.loads((run / "results.json").read_text())["rows"]}
    assert len(rows) == 2 * 3
    n = 16 * 5  # 128 px: 4 tiles + the thumbnail
    for (_, method), r in rows.items():
        assert r["n"] == 4 and r["kept_tokens"] == (n if method == "full" else budget(n, 0.25, None))
        assert r["flops_ratio"] == 1.0 if method == "full" else r["flops_ratio"] < 0.6
