"""The external open_clip scorer on a small random open_clip model built from a config (no
download): patches in its joint space, resized onto a VLM's token grid, and its text tower."""
import pytest
import torch
from PIL import Image

from robust_atp.errors import UserError
from robust_atp.models.scorer import OpenClipScorer


@pytest.fixture(scope="module")
def scorer(open_clip_config):
    torch.manual_seed(0)
    return OpenClipScorer(str(open_clip_config), None, torch.device("cpu"))


@pytest.fixture(scope="module")
def images(shapes_examples):
    return [e.image() for e in shapes_examples[:3]]


def test_patches_are_the_models_own_tokens_in_its_joint_space(scorer, images):
    """ln_post + proj of every patch token, the same path open_clip's image embedding takes for the CLS."""
    visual = scorer.model.visual
    px = torch.stack([scorer.preprocess(im) for im in images])
    with torch.inference_mode():
        x = visual.ln_post(visual.transformer(visual._embeds(px)))
        expect = x[:, 1:] @ visual.proj
        assert torch.allclose(x[:, 0] @ visual.proj, scorer.model.encode_image(px), atol=1e-6)
    grid = scorer.patch_grid(images)
    assert grid.shape == (3, 16, 4, 4)
    assert torch.allclose(grid.flatten(2).transpose(1, 2), expect, atol=1e-6)
    assert torch.equal(scorer.patches(images, (4, 4)), grid.flatten(2).transpose(1, 2))  # same grid: unchanged


def test_patch_grid_is_resized_onto_the_vlm_grid(scorer, images):
    grid = scorer.patch_grid(images)
    half = scorer.patches(images, (2, 2)).transpose(1, 2).reshape(3, 16, 2, 2)
    # bilinear at half the size samples between four patches: their mean
    assert torch.allclose(half, grid.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2)), atol=1e-6)
    wide = scorer.patches(images, (3, 6))
    assert wide.shape == (3, 18, 16) and torch.isfinite(wide).all()


def test_text_embeddings_share_the_joint_space(scorer):
    texts = ["what color is the circle ?", "how many squares are there ?"]
    emb = scorer.encode_texts(texts)
    assert emb.shape == (2, 16)
    with torch.inference_mode():
        assert torch.allclose(emb, scorer.model.encode_text(scorer.tokenizer(texts)), atol=1e-6)
    assert not torch.allclose(emb[0], emb[1])


def test_a_local_checkpoint_is_loaded(open_clip_config, scorer, images, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(scorer.model.state_dict(), path)
    loaded = OpenClipScorer(str(open_clip_config), str(path), torch.device("cpu"))
    assert torch.equal(loaded.patch_grid(images), scorer.patch_grid(images))


def test_bad_references_are_one_clear_line(open_clip_config, tmp_path):
    with pytest.raises(UserError, match=r"^model.scorer.model: unknown open_clip model 'ViT-Nope'"):
        OpenClipScorer("ViT-Nope", None, torch.device("cpu"))
    with pytest.raises(UserError, match=r"^model.scorer.model: .*: no such config file"):
        OpenClipScorer(str(tmp_path / "none.json"), None, torch.device("cpu"))
    with pytest.raises(UserError, match=r"^model.scorer.pretrained: .*: no such checkpoint file"):
        OpenClipScorer(str(open_clip_config), str(tmp_path / "none.pt"), torch.device("cpu"))


def test_qwen2_vl_atp_uses_the_scorer(tiny_qwen_dir, open_clip_config, images):
    from robust_atp.models.base import load_adapter
    from robust_atp.prune.methods import validate_method
    from robust_atp.suite import MethodCfg, ModelCfg
    from tests.helpers.tiny_families import QWEN_PROMPT

    adapter = load_adapter(ModelCfg(adapter="qwen2_vl", checkpoint=str(tiny_qwen_dir), prompt=QWEN_PROMPT,
                                    scorer={"model": str(open_clip_config)}))
    vision = adapter.encode_images(images)
    assert vision.clip_patches.shape == (3, 16, 16)  # the scorer's 4x4 map on Qwen2-VL's 4x4 merged grid
    text = adapter.encode_texts(["what color is the circle ?"] * 3)
    clip_only = validate_method(MethodCfg(name="clip", k=4)).apply(vision, text, [""] * 3)
    sim = torch.nn.functional.cosine_similarity(vision.clip_patches, text[:, None], dim=-1)
    assert [k.indices.tolist() for k in clip_only] == [sorted(s.topk(4).indices.tolist()) for s in sim]
    with pytest.raises(UserError, match="^model.scorer: a method needs text relevance"):
        load_adapter(ModelCfg(adapter="qwen2_vl", checkpoint=str(tiny_qwen_dir), prompt=QWEN_PROMPT)).encode_texts(["x"])
