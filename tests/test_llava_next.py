"""The LLaVA-NeXT adapter against `LlavaNextForConditionalGeneration` itself, on a tiny random
model: any-resolution crops, newline tokens after the kept rows, global and per-crop budgets."""
import pytest
import torch
from PIL import Image

from robust_atp.prune.methods import validate_method
from robust_atp.suite import MethodCfg, ModelCfg


def _adapter(d, **kw):
    from robust_atp.models.base import load_adapter

    return load_adapter(ModelCfg(adapter="llava_next", checkpoint=str(d / "llava_next"), clip=str(d / "clip"),
                                 generation={"max_new_tokens": 6}, **kw))


@pytest.fixture(scope="module")
def batch(shapes_examples):
    exs = shapes_examples[:4]
    return [e.image() for e in exs], [e.question for e in exs]


def _kept(cfg, vision, text=None):
    return validate_method(MethodCfg(**cfg)).apply(vision, text, [""] * len(vision))


def _generate(adapter, kept, questions):
    return adapter.generate([k.tokens for k in kept], questions, kept_indices=[k.indices for k in kept])


@pytest.mark.parametrize("size", [(96, 96), (96, 60), (50, 90)])
def test_tokens_are_the_models_packed_features_without_newlines(nxt, size):
    """The model's own packing (with its newlines) is our full sequence, at any aspect ratio."""
    images = [Image.new("RGB", size, (200, 30, 30)), Image.new("RGB", size, (20, 30, 230))]
    px, sizes = nxt.processed(images)
    with torch.inference_mode():
        packed = nxt.model.model.get_image_features(px, sizes).pooler_output
    vision = nxt.encode_images(images)
    full = torch.arange(vision.tokens.shape[1])
    for i in range(2):
        assert torch.equal(nxt.visual_sequence(vision.tokens[i], full), packed[i])
        assert nxt.llm_visual_tokens(len(full), full) == len(packed[i])


def _expected_visual(adapter, tokens, kept):
    """Written out: base tokens kept, then per mosaic row its kept tokens and one newline."""
    newline = adapter.model.model.image_newline
    out = [tokens[i] for i in kept.tolist() if i < 16]
    for r in range(8):
        row = [tokens[i] for i in kept.tolist() if i >= 16 and (i - 16) // 8 == r]
        out += row + ([newline] if row else [])
    return torch.stack(out)


def test_llm_receives_exactly_the_kept_tokens_and_their_rows_newlines(nxt, batch):
    images, questions = batch
    vision = nxt.encode_images(images)
    text = nxt.encode_texts(questions)
    seen = []
    handle = nxt.model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kw: seen.append((kw["inputs_embeds"].clone(), kw["attention_mask"].clone())),
        with_kwargs=True)
    try:
        for k in (1, 7, 20):
            seen.clear()
            kept = _kept({"name": "atp", "k": k}, vision, text)
            _generate(nxt, kept, questions)
            embeds, mask = seen[0]
            for i, (x, q) in enumerate(zip(kept, questions)):
                before, after = nxt.prompt_ids(q)
                visual = _expected_visual(nxt, vision.tokens[i], x.indices)
                assert len(visual) == nxt.llm_visual_tokens(k, x.indices)
                n = len(before) + len(visual) + len(after)
                assert int(mask[i].sum()) == n
                row = embeds[i, embeds.shape[1] - n:]
                assert torch.equal(row[len(before):len(before) + len(visual)], visual)
    finally:
        handle.remove()


def test_per_crop_budget_gives_each_crop_its_share(tiny_next_dir, batch):
    images, questions = batch
    adapter = _adapter(tiny_next_dir, budget_scope="per_crop")
    vision = adapter.encode_images(images)
    text = adapter.encode_texts(questions)
    crops = vision.crop_ids
    assert torch.equal(torch.bincount(crops), torch.full((5,), 16))
    for cfg, share in (({"name": "atp", "keep": 0.25}, [4] * 5), ({"name": "random", "k": 22}, [5, 5, 4, 4, 4])):
        for x in _kept(cfg, vision, text):
            assert torch.bincount(crops[x.indices], minlength=5).tolist() == share
    for x in _kept({"name": "atp", "mass": 0.5}, vision, text):
        assert set(crops[x.indices].tolist()) == set(range(5))  # every crop holds its own share of the mass
    glob = _kept({"name": "atp", "keep": 0.25}, _adapter(tiny_next_dir).encode_images(images), text)
    assert any(torch.bincount(crops[x.indices], minlength=5).tolist() != [4] * 5 for x in glob)


def test_per_crop_refuses_methods_without_a_score(tmp_path):
    from robust_atp.errors import SuiteError
    from robust_atp.suite import load_suite

    p = tmp_path / "s.yaml"
    p.write_text("name: s\ndataset: {loader: shapes}\nmodel: {adapter: llava_next, checkpoint: x, "
                 "budget_scope: per_crop}\nmethods: [{name: atp, keep: 0.5}, {name: tome, keep: 0.5}]\n")
    with pytest.raises(SuiteError, match="per_crop applies to full, atp, cls, clip, random; tome budget"):
        load_suite(p)
    p.write_text("name: s\ndataset: {loader: shapes}\nmodel: {checkpoint: x, budget_scope: per_crop}\n"
                 "methods: [{name: full}]\n")
    with pytest.raises(SuiteError, match="'budget_scope' applies to the llava_next adapter"):
        load_suite(p)


def test_images_of_different_sizes_ask_for_a_resolution(nxt):
    from robust_atp.errors import UserError

    with pytest.raises(UserError, match=r"^perturbations.image.resolution: llava_next gives"):
        nxt.encode_images([Image.new("RGB", (96, 96)), Image.new("RGB", (96, 40))])
