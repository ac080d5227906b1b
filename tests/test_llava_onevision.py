"""The LLaVA-OneVision adapter against `LlavaOnevisionForConditionalGeneration` itself, on a tiny
random model (SigLIP tower without CLS, 'full' feature selection, anyres_max_9): `full` is the
model's own generate at three aspect ratios (one past the anyres_max resize), the tokens and
the saliency are packed exactly as the model packs its features, the LLM reads the kept tokens
with their rows' newlines at the model's own positions."""
import pytest
import torch

from robust_atp.errors import UserError
from robust_atp.prune.methods import validate_method
from robust_atp.suite import MethodCfg, ModelCfg
from tests.helpers.tiny_families_new import ONEVISION_SIZES, build_tiny_llava_onevision

MAX_NEW = 8


@pytest.fixture(scope="module")
def tiny_ov_dir(tmp_path_factory):
    return build_tiny_llava_onevision(tmp_path_factory.mktemp("tiny_llava_onevision"))


def _adapter(path, **kw):
    from robust_atp.models.base import load_adapter

    from tests.helpers.tiny_families_new import ONEVISION_PROMPT

    return load_adapter(ModelCfg(adapter="llava_onevision", checkpoint=str(path), prompt=ONEVISION_PROMPT,
                                 generation={"max_new_tokens": MAX_NEW}, **kw))


@pytest.fixture(scope="module")
def ov(tiny_ov_dir):
    return _adapter(tiny_ov_dir)


def _images(examples, size):
    return [e.image().convert("RGB").resize(size) for e in examples]


@pytest.fixture(scope="module")
def batch(shapes_examples):
    """Four shapes images at 96x64: the base crop + a 2x3 mosaic, 16 + 8 x 12 tokens."""
    exs = shapes_examples[:4]
    return _images(exs, (96, 64)), [e.question for e in exs]


def _kept(method_cfg, vision, text=None):
    m = validate_method(MethodCfg(**method_cfg))
    return m.apply(vision, text, [""] * len(vision))


def _generate(adapter, kept, questions):
    return adapter.generate([k.tokens for k in kept], questions, kept_indices=[k.indices for k in kept])


def _spy_generate(adapter, kept, questions):
    captured = {}
    orig = adapter.model.generate

    def spy(*a, **kw):
        out = orig(*a, **kw)
        captured["out"] = out[:, kw["input_ids"].shape[1]:]  # the prompt ids, then the new ones
        return out

    adapter.model.generate = spy
    try:
        texts = _generate(adapter, kept, questions)
    finally:
        adapter.model.generate = orig
    return captured["out"], texts


def _full_matches(adapter, images, questions):
    ref = adapter.reference_inputs(images, questions)
    with torch.inference_mode():
        out = adapter.model.generate(**ref, max_new_tokens=MAX_NEW, do_sample=False)
    ref_ids = out[:, ref["input_ids"].shape[1]:]
    ids, texts = _spy_generate(adapter, _kept({"name": "full"}, adapter.encode_images(images)), questions)
    assert ids.shape == ref_ids.shape == (len(images), MAX_NEW)
    assert torch.equal(ids, ref_ids)
    assert texts == [t.strip() for t in adapter.tokenizer.batch_decode(ref_ids, skip_special_tokens=True)]
    return texts


@pytest.mark.parametrize("size, layout", list(zip(ONEVISION_SIZES, [(17, 12, 12), (7, 8, 12), (9, 16, 6)])))
def test_full_matches_hf_generate_token_for_token(ov, shapes_examples, size, layout):
    exs = shapes_examples[4:8]
    texts = _full_matches(ov, _images(exs, size), [e.question for e in exs])
    assert ov.layout == layout  # 128 px: a 16x16 mosaic resized to 12x12 (anyres_max_9)
    assert len(set(texts)) > 1  # the answers depend on the input: the equality can tell tokens apart


def test_a_list_of_feature_layers_is_concatenated_as_hugging_face_does(tmp_path, shapes_examples):
    adapter = _adapter(build_tiny_llava_onevision(tmp_path / "layers", feature_layer=[-3, -1]))
    assert adapter.model.model.multi_modal_projector.linear_1.in_features == 64
    exs = shapes_examples[:4]
    _full_matches(adapter, _images(exs, (96, 64)), [e.question for e in exs])
    assert adapter.encode_images(_images(exs[:1], (96, 64))).vit_features.shape[-1] == 64


@pytest.mark.parametrize("size", ONEVISION_SIZES)
def test_tokens_and_saliency_are_packed_as_the_model_packs_its_features(ov, shapes_examples, size):
    """The model's own `pack_image_features` (reshape, unpad, anyres_max resize) gives our tokens
    (with its newlines: our full sequence) and, applied to the eager attention each patch
    receives, our saliency: the hooked attention (under sdpa) equals the eager kernel's weights."""
    from transformers.models.siglip import modeling_siglip as ms

    images = _images(shapes_examples[:2], size)
    px, sizes = ov.processed(images)
    with torch.inference_mode():
        packed = ov.model.model.get_image_features(px, sizes, batch_num_images=torch.ones(2, dtype=torch.long))
    vision = ov.encode_images(images)
    full = torch.arange(vision.tokens.shape[1])
    for i in range(2):
        assert torch.equal(ov.visual_sequence(vision.tokens[i], full), packed.pooler_output[i])
        assert ov.llm_visual_tokens(len(full), full) == len(packed.pooler_output[i])

    eager = _adapter(ov.cfg.checkpoint, attn_implementation="eager")
    weights = []
    orig = ms.eager_attention_forward

    def keep(*a, **kw):
        out = orig(*a, **kw)
        weights.append(out[1].float())  # [crops, H, S, S] of one layer
        return out

    ms.eager_attention_forward = keep
    try:
        sal = eager.encode_images(images).cls_attn  # [B, L, H, N]
    finally:
        ms.eager_attention_forward = orig
    assert torch.allclose(sal, vision.cls_attn, atol=1e-5)  # sdpa and eager agree
    received = torch.stack([w.mean(2) for w in weights], 1)  # [2 * crops, L, H, S]
    crops = px.shape[1]
    per_crop = received.flatten(1, 2).transpose(1, 2).reshape(2, crops, 16, -1)
    with torch.inference_mode():
        ref, _ = ov.model.model.pack_image_features(list(per_crop), sizes, image_newline=None,
                                                    vision_aspect_ratio=ov.model.config.vision_aspect_ratio)
    for i in range(2):
        expect = ref[i].transpose(0, 1).reshape(3, 4, -1)
        assert torch.allclose(sal[i], expect, atol=1e-5)
    assert float((sal[:, -1].amax(-1) - sal[:, -1].amin(-1)).min()) > 1e-3  # not a flat map


def test_keeping_every_token_is_full(ov, batch):
    images, questions = batch
    vision = ov.encode_images(images)
    n = vision.tokens.shape[1]
    full = _kept({"name": "full"}, vision)
    answers = _generate(ov, full, questions)
    for cfg in ({"name": "atp", "keep": 1.0, "alpha": 0.0, "layer": -1}, {"name": "cls", "k": n}):
        kept = _kept(cfg, vision)
        assert all(torch.equal(a.indices, f.indices) and torch.equal(a.tokens, f.tokens) for a, f in zip(kept, full))
        assert _generate(ov, kept, questions) == answers


def _expected_visual(adapter, tokens, kept, cols):
    """Written out: base tokens kept, then per mosaic row its kept tokens and one newline."""
    newline = adapter.model.model.image_newline
    out = [tokens[i] for i in kept.tolist() if i < 16]
    rows = (len(tokens) - 16) // cols
    for r in range(rows):
        row = [tokens[i] for i in kept.tolist() if i >= 16 and (i - 16) // cols == r]
        out += row + ([newline] if row else [])
    return torch.stack(out)


def test_llm_receives_exactly_the_kept_tokens_and_their_rows_newlines_at_its_own_positions(ov, batch):
    """The prefill's embeddings are the prompt, the kept tokens with their rows' newlines, the
    question; its positions are what the model's own generate gives any input of that length
    (0, 1, ... after the left pads: the LLM's 1-D rotary positions over what it reads)."""
    images, questions = batch
    vision = ov.encode_images(images)
    seen = []
    handle = ov.model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kw: seen.append((kw["inputs_embeds"].clone(), kw["attention_mask"].clone(),
                                           kw.get("position_ids"))), with_kwargs=True)
    try:
        for k in (1, 9, 40):
            seen.clear()
            kept = _kept({"name": "cls", "k": k, "layer": -1}, vision)
            _generate(ov, kept, questions)
            embeds, mask, positions = seen[0]
            for i, (x, q) in enumerate(zip(kept, questions)):
                before, after = ov.prompt_ids(q)
                visual = _expected_visual(ov, vision.tokens[i], x.indices, 12)
                assert len(visual) == ov.llm_visual_tokens(k, x.indices)
                n = len(before) + len(visual) + len(after)
                assert int(mask[i].sum()) == n
                row = embeds[i, embeds.shape[1] - n:]
                assert torch.equal(row[len(before):len(before) + len(visual)], visual)
                assert positions[i, embeds.shape[1] - n:].tolist() == list(range(n))
    finally:
        handle.remove()
    # the model's own generate on its own full input puts its tokens at the same positions
    seen.clear()
    ref = ov.reference_inputs(images, questions)
    handle = ov.model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kw: seen.append((kw["attention_mask"].clone(), kw.get("position_ids"))), with_kwargs=True)
    try:
        with torch.inference_mode():
            ov.model.generate(**ref, max_new_tokens=1, do_sample=False)
    finally:
        handle.remove()
    mask, positions = seen[0]
    for i in range(4):
        n = int(mask[i].sum())
        assert positions[i, mask.shape[1] - n:].tolist() == list(range(n))


def test_batch_size_does_not_change_answers(ov, batch):
    images, questions = batch
    method = {"name": "atp", "keep": 0.25, "alpha": 0.0, "layer": -1}
    kept = _kept(method, ov.encode_images(images))
    batched = _generate(ov, kept, questions)
    single = []
    for i in range(4):
        k = _kept(method, ov.encode_images(images[i:i + 1]))
        assert torch.equal(k[0].indices, kept[i].indices)
        single += _generate(ov, k, questions[i:i + 1])
    assert single == batched


def test_merged_tokens_go_in_without_newlines(ov, batch):
    images, questions = batch
    vision = ov.encode_images(images)
    merged = _kept({"name": "tome_posthoc", "keep": 0.25}, vision)
    seen = []
    handle = ov.model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(kw["attention_mask"].clone()), with_kwargs=True)
    try:
        ov.generate([m.tokens for m in merged], questions, kept_indices=[None] * 4)
    finally:
        handle.remove()
    for i, (m, q) in enumerate(zip(merged, questions)):
        before, after = ov.prompt_ids(q)
        assert int(seen[0][i].sum()) == len(before) + len(m.tokens) + len(after)


@pytest.mark.parametrize("method, message", [
    ({"name": "visionzip", "keep": 0.25}, "visionzip needs the ViT's CLS token"),
    ({"name": "prumerge_plus"}, "prumerge_plus needs the last ViT layer's CLS query"),
    ({"name": "cdpruner", "keep": 0.25}, "cdpruner needs the projector's ViT layer in the CLIP joint space"),
])
def test_methods_that_need_a_cls_token_or_clip_space_are_refused(ov, batch, method, message):
    vision = ov.encode_images(batch[0])
    with pytest.raises(UserError, match=message):
        _kept(method, vision)


def test_text_relevance_tome_in_the_tower_and_fastv_are_refused(ov, batch):
    from robust_atp.preflight import check_tower_methods
    from robust_atp.models.fastv import FastVSpec

    images, questions = batch
    with pytest.raises(UserError, match="^methods: a method needs text relevance, but llava_onevision"):
        ov.encode_texts(questions)
    with pytest.raises(UserError, match="merges tokens inside the vision tower, which the LlavaOnevisionAdapter"):
        check_tower_methods([validate_method(MethodCfg(name="tome", keep=0.5))], ov)
    with pytest.raises(UserError, match="fastv is not supported on the llava_onevision adapter"):
        ov.generate(list(ov.encode_images(images).tokens), questions, in_llm=FastVSpec(0, 4))


def test_a_default_feature_selection_or_a_clip_model_is_one_error(tmp_path, tiny_ov_dir):
    import json
    import shutil

    with pytest.raises(UserError, match="^model.clip: llava_onevision's tower is SigLIP"):
        _adapter(tiny_ov_dir, clip=str(tiny_ov_dir))
    other = tmp_path / "default"
    shutil.copytree(tiny_ov_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["vision_feature_select_strategy"] = "default"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="^model.checkpoint: llava_onevision supports the 'full' feature selection"):
        _adapter(other)


def test_images_of_different_sizes_ask_for_a_resolution(ov):
    from PIL import Image

    with pytest.raises(UserError, match=r"^perturbations.image.resolution: llava_onevision gives"):
        ov.encode_images([Image.new("RGB", (96, 96)), Image.new("RGB", (96, 40))])


@pytest.mark.slow
def test_llava_onevision_through_the_engine(tmp_path, tiny_ov_dir):
    import json

    import yaml

    from robust_atp.prune.select import budget
    from robust_atp.run import main

    suite = {"name": "family", "dataset": {"loader": "shapes", "split": "val", "limit": 4},
             "model": {"adapter": "llava_onevision", "checkpoint": str(tiny_ov_dir),
                       "generation": {"max_new_tokens": 3}},
             "methods": [{"name": "full"}, {"name": "atp", "keep": 0.25, "alpha": 0.0, "layer": -1},
                         {"name": "divprune", "keep": 0.25}],
             "perturbations": {"image": {"corruptions": ["fog"], "severities": [1], "resolution": 96}},
             "batch_size": 2}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    run = tmp_path / "run"
    assert main([str(tmp_path / "suite.yaml"), "--out", str(run), "--no-progress", "--no-report"]) == 0
    rows = {(r["condition"], r["method"]): r for r in json.loads((run / "results.json").read_text())["rows"]}
    assert len(rows) == 2 * 3
    n = 16 + 12 * 12  # 96 px: the 3x3 mosaic (12x12 patches), under the anyres_max_9 limit
    for (_, method), r in rows.items():
        assert r["n"] == 4 and r["kept_tokens"] == (n if method == "full" else budget(n, 0.25, None))
        assert r["flops_ratio"] == 1.0 if method == "full" else r["flops_ratio"] < 0.6
    samples = [json.loads(s) for s in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["vision_flops"] > 0 for s in samples)
