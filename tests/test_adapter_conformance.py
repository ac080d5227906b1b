"""The four invariants every adapter family keeps, checked against the Hugging Face model itself:

1. `full` through the adapter is the model's own `generate(input_ids, pixel_values)`, token for token;
2. a method keeping every token is `full`;
3. answers do not depend on the batch size (1 and 4);
4. the LLM (BLIP-2: the Q-Former, which alone reads ViT tokens) receives exactly the kept tokens.

A new family gets them by adding one `Family` entry (and a session fixture in conftest.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from robust_atp.prune.methods import validate_method
from robust_atp.suite import MethodCfg


def _llm_part(adapter, kw, i, question, length):
    """Example i's visual tokens in the left-padded LLM input (the prompt before them)."""
    n = int(kw["attention_mask"][i].sum())
    assert n == adapter.prompt_length(question) + length
    before, _ = adapter.prompt_ids(question)
    row = kw["inputs_embeds"][i, kw["inputs_embeds"].shape[1] - n:]
    return row[len(before):len(before) + length]


def _qformer_part(adapter, kw, i, question, length):
    """Example i's keys in the right-padded Q-Former input."""
    assert int(kw["encoder_attention_mask"][i].sum()) == length
    return kw["encoder_hidden_states"][i, :length]


@dataclass(frozen=True)
class Family:
    fixture: str  # a session fixture giving the loaded adapter
    scorer: str  # a scoring method this family can run without an external scorer
    receiver: Callable  # adapter -> the module whose forward gets the visual tokens
    part: Callable  # (adapter, forward kwargs, i, question, length) -> example i's visual tokens there
    expected: Callable  # (adapter, vision, i, kept) -> what it must get for example i

    def __str__(self) -> str:
        return self.fixture


_language_model = lambda a: a.model.model.language_model  # noqa: E731
_kept_tokens = lambda a, v, i, x: x.tokens  # noqa: E731

FAMILIES = [
    Family("tiny_adapter", "atp", _language_model, _llm_part, _kept_tokens),
    Family("demo_adapter", "atp", _language_model, _llm_part, _kept_tokens),
    Family("nxt", "atp", _language_model, _llm_part, lambda a, v, i, x: a.visual_sequence(x.tokens, x.indices)),
    Family("qwen", "cls", _language_model, _llm_part, _kept_tokens),
    Family("qwen25", "cls", _language_model, _llm_part, _kept_tokens),
    Family("qwen3", "cls", _language_model, _llm_part, _kept_tokens),
    Family("onevision", "cls", _language_model, _llm_part,
           lambda a, v, i, x: a.visual_sequence(x.tokens, x.indices)),
    Family("intern", "cls", _language_model, _llm_part, _kept_tokens),
    Family("blip", "cls", lambda a: a.model.qformer, _qformer_part,
           lambda a, v, i, x: torch.cat([v.feature_layer.hidden[i, 0, :1], x.tokens])),
]


@pytest.fixture(params=FAMILIES, ids=str)
def family(request):
    return request.param, request.getfixturevalue(request.param.fixture)


@pytest.fixture(scope="module")
def batch(shapes_examples):
    exs = shapes_examples[:4]
    return [e.image() for e in exs], [e.question for e in exs]


def _kept(adapter, cfg, vision, questions):
    method = validate_method(MethodCfg(**cfg))
    text = adapter.encode_texts(questions) if method.needs_text else None
    return method.apply(vision, text, [""] * len(questions))


def _answer(adapter, vision, kept, questions):
    return adapter.generate([k.tokens for k in kept], questions,
                            **adapter.generation_inputs(vision, [k.indices for k in kept]))


def test_full_matches_hf_generate_token_for_token(family, batch):
    _, adapter = family
    images, questions = batch
    ref = adapter.reference_inputs(images, questions)
    with torch.inference_mode():
        out = adapter.model.generate(**ref, max_new_tokens=adapter.cfg.generation.max_new_tokens, do_sample=False)
    ref_ids = out[:, ref["input_ids"].shape[1]:]  # the model's generate returns the prompt too
    vision = adapter.encode_images(images)
    source, captured = adapter.generation_source(), {}
    orig = source.generate

    def spy(*a, **kw):
        out = orig(*a, **kw)
        captured["out"] = out[:, kw["input_ids"].shape[1]:]  # the prompt ids, then the new ones
        return out

    source.generate = spy
    try:
        texts = _answer(adapter, vision, _kept(adapter, {"name": "full"}, vision, questions), questions)
    finally:
        source.generate = orig
    assert captured["out"].shape == ref_ids.shape
    assert torch.equal(captured["out"], ref_ids)
    assert texts == [t.strip() for t in adapter.tokenizer.batch_decode(ref_ids, skip_special_tokens=True)]


def test_keeping_every_token_is_full(family, batch):
    fam, adapter = family
    images, questions = batch
    vision = adapter.encode_images(images)
    n = vision.tokens.shape[1]
    full = _kept(adapter, {"name": "full"}, vision, questions)
    answers = _answer(adapter, vision, full, questions)
    for cfg in ({"name": fam.scorer, "keep": 1.0}, {"name": fam.scorer, "k": n}, {"name": "random", "k": n}):
        kept = _kept(adapter, cfg, vision, questions)
        assert all(torch.equal(a.indices, f.indices) and torch.equal(a.tokens, f.tokens) for a, f in zip(kept, full))
        assert _answer(adapter, vision, kept, questions) == answers


def test_batch_size_does_not_change_answers(family, batch):
    fam, adapter = family
    images, questions = batch
    method = {"name": fam.scorer, "keep": 0.25}
    vision = adapter.encode_images(images)
    batched = _answer(adapter, vision, _kept(adapter, method, vision, questions), questions)
    single = []
    for i in range(len(images)):
        v = adapter.encode_images(images[i:i + 1])
        single += _answer(adapter, v, _kept(adapter, method, v, questions[i:i + 1]), questions[i:i + 1])
    assert single == batched


def test_the_llm_receives_exactly_the_kept_tokens(family, batch):
    fam, adapter = family
    images, questions = batch
    vision = adapter.encode_images(images)
    seen = []
    handle = fam.receiver(adapter).register_forward_pre_hook(lambda mod, args, kw: seen.append(dict(kw)),
                                                             with_kwargs=True)
    try:
        for k in (1, 5, 12):
            seen.clear()
            kept = _kept(adapter, {"name": "cls", "k": k}, vision, questions)
            assert [len(x) for x in kept] == [k] * len(questions)
            _answer(adapter, vision, kept, questions)
            for i, (x, q) in enumerate(zip(kept, questions)):
                want = fam.expected(adapter, vision, i, x)
                got = fam.part(adapter, seen[0], i, q, len(want))  # the first call: the prefill
                assert torch.equal(got, want.to(got.dtype))
    finally:
        handle.remove()
