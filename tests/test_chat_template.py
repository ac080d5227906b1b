"""Prompts from the checkpoint's own chat template (`models.prompts`): what the adapter tokenises
is what the processor's `apply_chat_template` renders, the processor's own input ids included; a
suite's `model.prompt` overrides it; a checkpoint without a template gets the adapter's default."""
import shutil

import pytest
import torch

from robust_atp.errors import UserError
from robust_atp.models.base import load_adapter
from robust_atp.models.prompts import DEFAULT, SUITE, TEMPLATE, render_chat_template
from robust_atp.suite import ModelCfg

# Reference data: the chat templates the released checkpoints carry (llava-hf/llava-1.5-7b-hf,
# Qwen/Qwen2-VL-7B-Instruct), as their processors' chat_template
LLAVA_15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")
POST = "\nAnswer the question using a single word or phrase."


def _with_template(src, dst, template):
    from transformers import AutoProcessor

    shutil.copytree(src, dst)
    proc = AutoProcessor.from_pretrained(dst)
    proc.chat_template = template
    proc.save_pretrained(dst)
    return dst


def _turn(question):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def llava_tmpl(tiny_dir, tmp_path_factory):
    return _with_template(tiny_dir / "llava", tmp_path_factory.mktemp("tmpl") / "llava", LLAVA_15_TEMPLATE)


@pytest.fixture(scope="module")
def qwen_tmpl(tiny_qwen_dir, tmp_path_factory):
    from transformers import AutoProcessor

    # the tiny tokenizer's image pad token is `<image>` (the released one's `<|image_pad|>`)
    pad = AutoProcessor.from_pretrained(tiny_qwen_dir).image_token
    return _with_template(tiny_qwen_dir, tmp_path_factory.mktemp("tmpl") / "qwen",
                          QWEN2_VL_TEMPLATE.replace("<|image_pad|>", pad))


def test_llava_prompt_is_the_rendered_template_and_the_processors_ids(llava_tmpl, shapes_examples):
    a = load_adapter(ModelCfg(checkpoint=str(llava_tmpl), generation={"max_new_tokens": 3}, post_prompt=POST))
    assert a.prompt_source == TEMPLATE
    assert a.prompt_format == "USER: <image>\n{question}" + POST + " ASSISTANT:"
    exs = shapes_examples[:3]
    qs = [e.question for e in exs]
    rendered = [a.processor.apply_chat_template(_turn(q + POST), add_generation_prompt=True, tokenize=False)
                for q in qs]
    assert [a.tokenized_prompt(q) for q in qs] == rendered
    a.tokenizer.padding_side = "left"
    enc = a.processor(text=rendered, images=[e.image() for e in exs], return_tensors="pt", padding=True)
    ref = a.reference_inputs([e.image() for e in exs], qs)
    assert torch.equal(enc["input_ids"], ref["input_ids"].cpu())
    assert torch.equal(enc["attention_mask"], ref["attention_mask"].cpu())


def test_qwen2_vl_prompt_is_the_rendered_template(qwen_tmpl, shapes_examples):
    a = load_adapter(ModelCfg(adapter="qwen2_vl", checkpoint=str(qwen_tmpl), generation={"max_new_tokens": 3}))
    assert a.prompt_source == TEMPLATE
    exs = shapes_examples[:2]
    for e in exs:
        assert a.tokenized_prompt(e.question) == a.processor.apply_chat_template(
            _turn(e.question), add_generation_prompt=True, tokenize=False)
    # the processor's own ids for that text equal what the model's generate is compared against
    texts = [a.processor.apply_chat_template(_turn(e.question), add_generation_prompt=True, tokenize=False)
             for e in exs]
    a.tokenizer.padding_side = "left"
    enc = a.processor(text=texts, images=[e.image() for e in exs], return_tensors="pt", padding=True)
    ref = a.reference_inputs([e.image() for e in exs], [e.question for e in exs])
    assert torch.equal(enc["input_ids"], ref["input_ids"].cpu())


def test_a_suite_prompt_overrides_the_template(llava_tmpl):
    a = load_adapter(ModelCfg(checkpoint=str(llava_tmpl), prompt="Q: <image> {question} A:"))
    assert (a.prompt_source, a.prompt("x")) == (SUITE, "Q: <image> x A:")


def test_no_template_gives_the_adapters_default(tiny_dir):
    a = load_adapter(ModelCfg(checkpoint=str(tiny_dir / "llava"), post_prompt=" Short answer."))
    assert a.prompt_source == DEFAULT
    assert a.prompt("what?") == "USER: <image>\nwhat? Short answer. ASSISTANT:"


class _Proc:
    image_token = "<image>"

    def __init__(self, template, out):
        self.chat_template, self.out = template, out

    def apply_chat_template(self, turn, **kw):
        if self.out is None:
            raise ValueError("boom")
        return self.out.replace("Q", turn[0]["content"][1]["text"])


def test_template_failures_are_one_line_naming_the_field():
    with pytest.raises(UserError, match="model.checkpoint: its chat template did not render exactly one"):
        render_chat_template(_Proc("t", "no image here: Q"))
    with pytest.raises(UserError, match=r"model.checkpoint: its chat template cannot render .*ValueError: boom"):
        render_chat_template(_Proc("t", None))
    assert render_chat_template(_Proc(None, "")) is None
    # braces in the template's text are kept literally
    assert render_chat_template(_Proc("t", "{x} <image> Q")).format(question="hi") == "{x} <image> hi"


def test_post_prompt_with_a_prompt_is_refused():
    with pytest.raises(ValueError, match="'post_prompt' applies to the chat template"):
        ModelCfg(checkpoint="x", prompt="<image> {question}", post_prompt="!")
