"""Generation as the checkpoint defines it, for every adapter, against HF's own `generate`.

Each tiny model is saved again with a generation config of its own, the way real checkpoints
differ from their tokenizers: a different EOS (Qwen2-VL-Instruct: a list of two ids; BLIP-2 OPT:
"\\n" in its text config), a repetition penalty, and sampling settings. The reference is the
model's own `generate(input_ids, pixel_values, ...)` reading that saved config, given only what
the suite sets (max_new_tokens; greedy; the penalty off unless the suite names one), never the
adapter's config. Each test also checks that it can fail: the saved EOS ends some answer early,
and the penalty changes some answer.
"""
import json
import shutil

import pytest
import torch

from robust_atp.models.base import load_adapter
from robust_atp.prune.methods import validate_method
from robust_atp.suite import MethodCfg, ModelCfg
from tests.helpers.tiny_families import BLIP2_PROMPT, QWEN_PROMPT

N_NEW = 6
PENALTY = 2.0

FAMILIES = {
    # name: (fixture, subdirectory of the checkpoint, extra model settings)
    "llava": ("tiny_dir", "llava", {}),
    "llava_next": ("tiny_next_dir", "llava_next", {}),
    "qwen2_vl": ("tiny_qwen_dir", "", {"prompt": QWEN_PROMPT}),
    "blip2": ("tiny_blip2_dir", "", {"prompt": BLIP2_PROMPT}),
}


def _reference_inputs(adapter, images, questions):
    if hasattr(adapter, "reference_inputs"):
        return adapter.reference_inputs(images, questions)
    ids, mask = adapter.reference_input_ids(questions, adapter.num_visual_tokens)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": adapter.pixel_values(images)}


def _hf_new_tokens(adapter, images, questions, **settings):
    """HF's own generate on the processor's inputs, its saved generation config plus `settings`."""
    ref = _reference_inputs(adapter, images, questions)
    with torch.inference_mode():
        out = adapter.model.generate(**ref, max_new_tokens=N_NEW, **settings)
    return out[:, ref["input_ids"].shape[1]:]


def _source(adapter):
    return adapter.generation_source()


def _adapter_new_tokens(adapter, images, questions):
    """The adapter's answers for `full`, and the new token ids its generate call produced."""
    vision = adapter.encode_images(images)
    kept = validate_method(MethodCfg(name="full")).apply(vision, None, [""] * len(images))
    source, seen = _source(adapter), {}
    orig = source.generate

    def spy(*a, **kw):
        seen["out"], seen["prompt"] = orig(*a, **kw), kw["input_ids"].shape[1]
        return seen["out"]

    source.generate = spy
    try:
        texts = adapter.generate([k.tokens for k in kept], questions,
                                 **adapter.generation_inputs(vision, [k.indices for k in kept]))
    finally:
        source.generate = orig
    return texts, seen["out"][:, seen["prompt"]:]


def _texts(adapter, new_tokens, eos):
    stops = set(eos) if isinstance(eos, list) else {eos}
    rows = [next((r[:i] for i, t in enumerate(r) if t in stops), r) for r in new_tokens.tolist()]
    return [t.strip() for t in adapter.tokenizer.batch_decode(rows, skip_special_tokens=True)]


@pytest.fixture(scope="module")
def batch(shapes_examples):
    exs = shapes_examples[:4]
    return [e.image() for e in exs], [e.question for e in exs]


def _stop_token(tokens: torch.Tensor, avoid: set) -> int:
    """A token the model emits after its first step in some row (so an EOS on it ends an answer
    early) and not as the first token of every row."""
    firsts = set(tokens[:, 0].tolist())
    counts: dict[int, int] = {}
    for row in tokens.tolist():
        for t in row[1:-1]:
            if t not in avoid and not (t in firsts and len(firsts) == 1):
                counts[t] = counts.get(t, 0) + 1
    return max(sorted(counts), key=counts.get)


@pytest.fixture(scope="module", params=list(FAMILIES))
def variant(request, tmp_path_factory, batch):
    """(family, checkpoint dir, the saved EOS) of a tiny model re-saved with its own generation config."""
    from transformers import GenerationConfig

    name = request.param
    fixture, sub, extra = FAMILIES[name]
    root = request.getfixturevalue(fixture)
    out = tmp_path_factory.mktemp(f"gen_{name}")
    for entry in root.iterdir():
        (shutil.copytree if entry.is_dir() else shutil.copy)(entry, out / entry.name)
    ckpt = out / sub if sub else out
    clip = {"clip": str(out / "clip")} if (out / "clip").is_dir() else {}
    plain = load_adapter(ModelCfg(adapter=name, checkpoint=str(ckpt), generation={"max_new_tokens": N_NEW},
                                  **clip, **extra))
    tok = plain.tokenizer
    stop = _stop_token(_hf_new_tokens(plain, *batch, do_sample=False),
                       {tok.eos_token_id, tok.pad_token_id, tok.bos_token_id})
    if name == "blip2":  # HF's BLIP-2 generate reads its language model's config: OPT's text config, as "\n"
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["text_config"]["eos_token_id"] = stop
        (ckpt / "config.json").write_text(json.dumps(cfg))
        eos = stop
    else:  # a list, as Qwen2-VL-Instruct's
        eos = [stop, tok.eos_token_id]
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=tok.pad_token_id,
                     repetition_penalty=PENALTY, do_sample=True, temperature=0.3, top_k=5).save_pretrained(ckpt)
    return name, ckpt, clip, extra, eos


_LOADED: dict = {}  # (checkpoint, settings) -> adapter: each is loaded once for the module's tests


def _load(variant, **generation):
    name, ckpt, clip, extra, _ = variant
    key = (str(ckpt), tuple(sorted(generation.items())))
    if key not in _LOADED:
        _LOADED[key] = load_adapter(ModelCfg(adapter=name, checkpoint=str(ckpt),
                                             generation={"max_new_tokens": N_NEW, **generation}, **clip, **extra))
    return _LOADED[key]


def test_eos_and_pad_come_from_the_checkpoint_and_nothing_else(variant):
    from transformers import GenerationConfig

    adapter = _load(variant)
    eos = variant[4]
    if variant[0] != "blip2":  # the reference below reads the checkpoint's own file, untouched by the adapter
        saved = GenerationConfig.from_pretrained(variant[1])
        assert adapter.model.generation_config.to_diff_dict() == saved.to_diff_dict()
    assert adapter.generation_config.eos_token_id == eos  # a list stays a list
    assert adapter.generation_config.eos_token_id != adapter.tokenizer.eos_token_id
    assert adapter.generation_config.do_sample is False
    assert adapter.generation_config.repetition_penalty is None  # off: HF's neutral default applies


def test_default_generation_is_hf_generate_greedy_without_penalty(variant, batch):
    adapter = _load(variant)
    texts, ids = _adapter_new_tokens(adapter, *batch)
    ref = _hf_new_tokens(adapter, *batch, do_sample=False, repetition_penalty=1.0)
    assert torch.equal(ids, ref)
    eos = variant[4]
    assert texts == _texts(adapter, ref, eos)
    stops = set(eos) if isinstance(eos, list) else {eos}
    assert any(t in stops for t in ref[:, :-1].flatten().tolist())  # the saved EOS ended an answer early
    # an answer without any EOS among its N_NEW tokens stopped at the limit: the adapter says which
    assert adapter.last_truncated == [not any(t in stops for t in row) for row in ref.tolist()]
    if variant[0] != "blip2":  # the saved penalty, inherited, would have given other answers
        inherited = _hf_new_tokens(adapter, *batch, do_sample=False)
        assert not torch.equal(inherited, ref)


def test_a_suite_penalty_matches_hf_generate_with_input_ids(variant, batch):
    """generation.repetition_penalty: each answer is HF's generate(input_ids) with that penalty
    on the example by itself (the penalty sees its prompt and nothing of its batch), at batch
    size 4 and 1."""
    adapter = _load(variant, repetition_penalty=PENALTY)
    texts, ids = _adapter_new_tokens(adapter, *batch)
    images, questions = batch
    refs = [_hf_new_tokens(adapter, [im], [q], do_sample=False, repetition_penalty=PENALTY)
            for im, q in zip(images, questions)]  # one example each: shorter when it stopped early
    eos = variant[4]
    assert texts == [_texts(adapter, r, eos)[0] for r in refs]
    for row, ref in zip(ids.tolist(), refs):  # in the batch, a finished row goes on with pad ids
        ref = ref[0].tolist()
        assert row[:len(ref)] == ref
    singles = [_adapter_new_tokens(adapter, [im], [q])[0][0] for im, q in zip(images, questions)]
    assert singles == texts
    plain = _adapter_new_tokens(_load(variant), *batch)[1]
    assert not torch.equal(plain, ids)  # the penalty changed something


@pytest.mark.parametrize("variant", ["llava"], indirect=True)  # one family: the setting takes the same path in all
def test_no_repeat_ngram_size_reaches_generate(variant, batch):
    adapter = _load(variant, no_repeat_ngram_size=1)
    texts, ids = _adapter_new_tokens(adapter, *batch)
    images, questions = batch
    for (im, q), row, text in zip(zip(images, questions), ids.tolist(), texts):
        ref = _hf_new_tokens(adapter, [im], [q], do_sample=False, repetition_penalty=1.0, no_repeat_ngram_size=1)
        assert _texts(adapter, ref, variant[4]) == [text]
