"""The demo model's word-level vocabulary, its two tokenizers, and how both models are saved."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...data import shapes

# CLIP's image normalisation, which the demo model was trained under
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SPECIALS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID, IMAGE_ID = range(len(SPECIALS))
# CLIP's text tower pools at the first eos token, unless eos_token_id == 2 (a legacy
# branch that takes the argmax id instead): keep eos at 3.
SPECIAL_IDS_CLIP = {"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}
SPECIAL_IDS_LM = {"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}
_SPLIT = re.compile(r"\w+|[^\w\s]+")


def words() -> list[str]:
    """Every word the prompt, the questions, the answers and the captions can use."""
    found = set(_SPLIT.findall("USER: ASSISTANT: background".lower()))
    rng = np.random.default_rng(12345)
    for i in range(3000):
        scene = shapes.sample_scene(rng)
        found.update(_SPLIT.findall(shapes.caption(scene)))
        for qtype in shapes.QUESTION_TYPES:
            qa = shapes.sample_question(scene, rng, (qtype,))
            if qa is not None:
                found.update(_SPLIT.findall(qa.question))
    for qtype, answers in shapes.ANSWERS.items():
        found.update(answers)
    found.update(shapes.PLURALS.values())
    found.update(shapes.OBJECT_SIZES)
    return sorted(found)


def build_tokenizers():
    """(clip_tokenizer, llava_tokenizer): one vocabulary; CLIP's appends eos, the LM's does not."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(list(SPECIALS) + words())}
    out = []
    for template in ("<s> $A </s>", "<s> $A"):
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.add_special_tokens(list(SPECIALS))
        tok.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[("<s>", BOS_ID), ("</s>", EOS_ID)])
        out.append(PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
            padding_side="left" if template == "<s> $A" else "right",
            extra_special_tokens={"image_token": "<image>"}, model_max_length=512))
    return out[0], out[1]


def image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": shapes.SIZE}, crop_size={"height": shapes.SIZE, "width": shapes.SIZE},
                              image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def save(out: Path, clip, llava, clip_tok, lm_tok) -> None:
    """`out/clip`: CLIPModel + tokenizer + image processor; `out/llava`: LLaVA + its processor."""
    from transformers import CLIPProcessor, LlavaProcessor

    out = Path(out)
    (out / "clip").mkdir(parents=True, exist_ok=True)
    (out / "llava").mkdir(parents=True, exist_ok=True)
    clip.save_pretrained(out / "clip", safe_serialization=True)
    CLIPProcessor(image_processor=image_processor(), tokenizer=clip_tok).save_pretrained(out / "clip")
    llava.save_pretrained(out / "llava", safe_serialization=True)
    LlavaProcessor(image_processor=image_processor(), tokenizer=lm_tok, patch_size=shapes.PATCH,
                   vision_feature_select_strategy="default", image_token="<image>",
                   num_additional_image_tokens=1).save_pretrained(out / "llava")
