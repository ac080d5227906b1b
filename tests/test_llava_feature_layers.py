"""LLaVA with a list of feature layers and with the `full` feature selection, as Hugging Face's
LLaVA reads them (the listed layers' hidden states concatenated; `full` hands the CLS token to the
LLM before the patches): `full` generation equals the model's own `generate` on what its processor
builds, keep-all equals `full`, batch sizes 1 and 4 agree, the LLM reads the kept tokens after the CLS
token, and the methods that cannot apply say so."""
import pytest
import torch

from robust_atp.errors import UserError
from robust_atp.models.base import load_adapter
from robust_atp.prune.methods import validate_method
from robust_atp.suite import MethodCfg, ModelCfg
from tests.helpers.tiny import build_tiny_llava

VARIANTS = {"layers": ([-3, -1], "default"), "full": (-2, "full"), "layers_full": ([-3, -2], "full")}


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def variant(request, tmp_path_factory):
    layer, strategy = VARIANTS[request.param]
    out = build_tiny_llava(tmp_path_factory.mktemp(request.param), feature_layer=layer, strategy=strategy)
    a = load_adapter(ModelCfg(checkpoint=str(out / "llava"), clip=str(out / "clip"), generation={"max_new_tokens": 5}))
    return request.param, a


def _answers(a, images, questions, cfg):
    m = validate_method(MethodCfg(**cfg))
    vision = a.encode_images(images)
    text = a.encode_texts(questions) if m.needs_text else None
    kept = m.apply(vision, text, [""] * len(questions))
    return a.generate([k.tokens for k in kept], questions, **a.generation_inputs(vision, [k.indices for k in kept]))


def test_full_equals_the_models_generate_on_its_processors_input(variant, shapes_examples):
    name, a = variant
    exs = shapes_examples[:4]
    images, questions = [e.image() for e in exs], [e.question for e in exs]
    a.tokenizer.padding_side = "left"
    enc = a.processor(text=[a.tokenized_prompt(q) for q in questions], images=images, return_tensors="pt",
                      padding=True)
    n_image = int((enc["input_ids"][0] == a.image_token_id).sum())
    assert n_image == a.num_visual_tokens + (name != "layers")  # `full`: the CLS token too
    with torch.inference_mode():
        out = a.model.generate(**enc, max_new_tokens=5, do_sample=False)
    ref = a.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    ours = _answers(a, images, questions, {"name": "full"})
    assert ours == [r.strip() for r in ref]
    # the token ids too: what the model's generate saw is what ours builds
    assert torch.equal(a.reference_inputs(images, questions)["input_ids"].cpu(), enc["input_ids"])


def test_keep_all_and_batch_sizes(variant, shapes_examples):
    _, a = variant
    exs = shapes_examples[:4]
    images, questions = [e.image() for e in exs], [e.question for e in exs]
    full = _answers(a, images, questions, {"name": "full"})
    assert _answers(a, images, questions, {"name": "atp", "keep": 1.0}) == full
    for cfg in ({"name": "full"}, {"name": "atp", "keep": 0.25}, {"name": "visionzip", "keep": 0.25}):
        four = _answers(a, images, questions, cfg)
        ones = [_answers(a, [im], [q], cfg)[0] for im, q in zip(images, questions)]
        assert four == ones, cfg


def test_the_llm_reads_the_cls_token_then_the_kept_ones(variant, shapes_examples):
    name, a = variant
    ex = shapes_examples[0]
    vision = a.encode_images([ex.image()])
    m = validate_method(MethodCfg(name="atp", keep=0.25))
    kept = m.apply(vision, a.encode_texts([ex.question]), [""])
    seen = {}
    lm = a.model.model.language_model

    def grab(mod, args, kw):
        seen.setdefault("embeds", kw["inputs_embeds"])  # the prefill's

    handle = lm.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        a.generate([kept[0].tokens], [ex.question], **a.generation_inputs(vision, [kept[0].indices]))
    finally:
        handle.remove()
    before = len(a.prompt_ids(ex.question)[0])
    k = len(kept[0].tokens)
    lead = 1 if name != "layers" else 0
    assert a.llm_visual_tokens(k) == k + lead
    got = seen["embeds"][0, before:before + k + lead]
    want = kept[0].tokens if not lead else torch.cat([vision.prefix_tokens[0], kept[0].tokens])
    assert torch.equal(got, want.to(got.dtype))


def test_methods_that_cannot_apply_say_why(variant, shapes_examples):
    name, a = variant
    from robust_atp.preflight import check_tower_methods

    with pytest.raises(UserError, match="tome merges tokens inside the vision tower"):
        check_tower_methods([validate_method(MethodCfg(name="tome", keep=0.25))], a)
    if name != "layers":
        from robust_atp.models.fastv import FastVSpec

        ex = shapes_examples[0]
        vision = a.encode_images([ex.image()])
        with pytest.raises(UserError, match="fastv is not supported with LLaVA's 'full' feature selection"):
            a.generate([vision.tokens[0]], [ex.question], in_llm=FastVSpec(1, 4), **a.generation_inputs(vision, None))
