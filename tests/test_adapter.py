"""The LLaVA adapter against the Hugging Face model itself, on a tiny random model and the demo model."""
import pytest
import torch

from robust_atp.engine import kept_tokens_of
from robust_atp.prune.methods import validate_method
from robust_atp.suite import MethodCfg

ADAPTERS = ["tiny_adapter", "demo_adapter"]


def _reference(adapter, images, questions):
    """What `LlavaForConditionalGeneration.generate(input_ids, pixel_values)` answers, reading the
    checkpoint's own generation config, given the suite's length and greedy decoding."""
    ids, mask = adapter.reference_input_ids(questions, adapter.num_visual_tokens)
    with torch.inference_mode():
        out = adapter.model.generate(input_ids=ids, attention_mask=mask, pixel_values=adapter.pixel_values(images),
                                     max_new_tokens=adapter.cfg.generation.max_new_tokens, do_sample=False)
    new = out[:, ids.shape[1]:]
    return new, [t.strip() for t in adapter.tokenizer.batch_decode(new, skip_special_tokens=True)]


def _adapter_tokens(adapter, visual, questions):
    """The adapter's generated token ids (not just text), via the same generate call."""
    captured = {}
    orig = adapter.model.generate

    def spy(*a, **kw):
        out = orig(*a, **kw)
        captured["out"] = out[:, kw["input_ids"].shape[1]:]  # generate returns the prompt ids too
        return out

    adapter.model.generate = spy
    try:
        texts = adapter.generate(visual, questions)
    finally:
        adapter.model.generate = orig
    return captured["out"], texts


@pytest.mark.parametrize("name", ADAPTERS)
def test_full_matches_hf_generate_token_for_token(name, request, shapes_examples):
    adapter = request.getfixturevalue(name)
    exs = shapes_examples[:8]
    images, questions = [e.image() for e in exs], [e.question for e in exs]
    ref_ids, ref_text = _reference(adapter, images, questions)
    vision = adapter.encode_images(images)
    full = validate_method(MethodCfg(name="full"))
    ids, text = _adapter_tokens(adapter, kept_tokens_of(full, vision, None, [""] * 8), questions)
    assert ids.shape == ref_ids.shape
    assert torch.equal(ids, ref_ids)
    assert text == ref_text


@pytest.mark.parametrize("name", ADAPTERS)
def test_atp_keeping_every_token_is_full(name, request, shapes_examples):
    adapter = request.getfixturevalue(name)
    exs = shapes_examples[:8]
    questions = [e.question for e in exs]
    vision = adapter.encode_images([e.image() for e in exs])
    text = adapter.encode_texts(questions)
    n = adapter.num_visual_tokens
    full = kept_tokens_of(validate_method(MethodCfg(name="full")), vision, None, [""] * 8)
    for cfg in ({"keep": 1.0}, {"k": n}, {"k": n, "alpha": 1.0, "normalizer": "rank"}):
        atp = kept_tokens_of(validate_method(MethodCfg(name="atp", **cfg)), vision, text, [""] * 8)
        assert all(torch.equal(a, f) for a, f in zip(atp, full))
        assert adapter.generate(atp, questions) == adapter.generate(full, questions)


@pytest.mark.parametrize("name", ADAPTERS)
def test_llm_receives_exactly_k_visual_tokens(name, request, shapes_examples):
    adapter = request.getfixturevalue(name)
    exs = shapes_examples[:4]
    questions = [e.question for e in exs]
    vision = adapter.encode_images([e.image() for e in exs])
    text = adapter.encode_texts(questions)
    seen = []
    lm = adapter.model.model.language_model
    handle = lm.register_forward_pre_hook(lambda mod, args, kw: seen.append((kw["inputs_embeds"].shape[1],
                                                                             kw["attention_mask"].clone())),
                                          with_kwargs=True)
    try:
        for k in (1, 5, adapter.num_visual_tokens // 4):
            seen.clear()
            method = validate_method(MethodCfg(name="atp", k=k))
            kept = kept_tokens_of(method, vision, text, [""] * 4)
            assert [len(t) for t in kept] == [k] * 4
            adapter.generate(kept, questions)
            length, mask = seen[0]  # the prefill call
            for i, q in enumerate(questions):
                before, after = adapter.prompt_ids(q)
                assert int(mask[i].sum()) == len(before) + k + len(after)
    finally:
        handle.remove()


@pytest.mark.parametrize("name", ADAPTERS)
def test_batch_size_does_not_change_answers(name, request, shapes_examples):
    adapter = request.getfixturevalue(name)
    exs = shapes_examples[:8]
    images, questions = [e.image() for e in exs], [e.question for e in exs]
    method = validate_method(MethodCfg(name="atp", keep=0.25))
    text = adapter.encode_texts(questions)
    vision = adapter.encode_images(images)
    batched = adapter.generate(kept_tokens_of(method, vision, text, [""] * 8), questions)
    single = []
    for i in range(8):
        v = adapter.encode_images(images[i:i + 1])
        single += adapter.generate(kept_tokens_of(method, v, text[i:i + 1], [""]), questions[i:i + 1])
    assert single == batched


def test_hooked_cls_attention_equals_eager_row(tiny_dir, shapes_examples):
    from conftest import make_adapter

    sdpa = make_adapter(tiny_dir / "llava", tiny_dir / "clip")
    eager = make_adapter(tiny_dir / "llava", tiny_dir / "clip", attn="eager")
    images = [e.image() for e in shapes_examples[:4]]
    hooked = sdpa.encode_images(images).cls_attn
    with torch.inference_mode():
        out = eager.vision_tower(eager.pixel_values(images), output_attentions=True)
    rows = torch.stack([a[:, :, 0, 1:] for a in out.attentions], 1)
    assert hooked.shape == rows.shape
    assert (hooked - rows).abs().max().item() < 1e-5


def test_demo_cls_attention_equals_eager_row(demo_adapter, shapes_examples):
    from robust_atp.models.zoo import ZOO_DIR
    from conftest import make_adapter

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
