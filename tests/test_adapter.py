"""The LLaVA adapter's own parts against the Hugging Face model, on a tiny random model and the demo
model (the invariants every family keeps are in test_adapter_conformance.py)."""
import pytest
import torch


def test_hooked_cls_attention_equals_eager_row(tiny_adapter, tiny_eager_adapter, shapes_examples):
    sdpa, eager = tiny_adapter, tiny_eager_adapter
    images = [e.image() for e in shapes_examples[:4]]
    hooked = sdpa.encode_images(images).cls_attn
    with torch.inference_mode():
        out = eager.vision_tower(eager.pixel_values(images), output_attentions=True)
    rows = torch.stack([a[:, :, 0, 1:] for a in out.attentions], 1)
    assert hooked.shape == rows.shape
    assert (hooked - rows).abs().max().item() < 1e-5


def test_demo_cls_attention_equals_eager_row(demo_adapter, shapes_examples, make_adapter):
    from robust_atp.models.zoo import ZOO_DIR

    eager = make_adapter(ZOO_DIR / "shapes_vlm" / "llava", attn="eager")
    images = [e.image() for e in shapes_examples[:4]]
    hooked = demo_adapter.encode_images(images).cls_attn
    with torch.inference_mode():
        out = eager.vision_tower(eager.pixel_values(images), output_attentions=True)
    rows = torch.stack([a[:, :, 0, 1:] for a in out.attentions], 1)
    assert (hooked - rows).abs().max().item() < 1e-5


def test_clip_patches_are_the_clip_models_own_projection(tiny_dir, tiny_adapter, shapes_examples):
    """The relevance space: the VLM's tower + CLIP's post_layernorm and visual_projection equals
    the CLIPModel's own image path applied per patch."""
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(tiny_dir / "clip").eval()
    images = [e.image() for e in shapes_examples[:2]]
    px = tiny_adapter.pixel_values(images)
    with torch.inference_mode():
        hs = clip.vision_model(px).last_hidden_state[:, 1:]
        ref = clip.visual_projection(clip.vision_model.post_layernorm(hs))
    assert torch.allclose(tiny_adapter.encode_images(images).clip_patches, ref, atol=1e-6)


def test_checkpoint_references_fail_with_one_clear_line(tmp_path):
    from robust_atp.errors import UserError
    from robust_atp.models.base import resolve_checkpoint

    assert resolve_checkpoint("zoo:shapes_vlm/llava").endswith("shapes_vlm/llava")
    assert resolve_checkpoint("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"  # a hub id, left to the hub
    with pytest.raises(UserError, match=r"^model.checkpoint: 'zoo:nope/llava': no shipped model"):
        resolve_checkpoint("zoo:nope/llava")
    with pytest.raises(UserError, match=r"^model.clip: '/no/such/dir': no such directory$"):
        resolve_checkpoint("/no/such/dir", "model.clip")
    with pytest.raises(UserError, match="a directory without config.json"):
        resolve_checkpoint(str(tmp_path))
