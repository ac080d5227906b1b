"""Tiny randomly initialised LLaVA-NeXT, Qwen2-VL and BLIP-2 models with their processors,
built from the families' Hugging Face configs and saved like real checkpoints (no download);
and a tiny open_clip model config."""
from __future__ import annotations

import json
from pathlib import Path

import torch

QWEN_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
QWEN_PROMPT = "USER: <|vision_start|><image><|vision_end|> {question} ASSISTANT:"


def _lm_tokenizer(extra: list[str] = ()):
    from robust_atp.models.zoo import vocab

    _, tok = vocab.build_tokenizers()
    if extra:
        tok.add_special_tokens({"additional_special_tokens": list(extra)}, replace_extra_special_tokens=False)
    return tok


def _sharpen(model, layers=()) -> None:
    """Random init gives near-uniform logits and attention: scale the head so greedy choices are
    not ties, and the LLM's queries and keys so attention (and so positions) matters."""
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
        for layer in layers:
            layer.self_attn.q_proj.weight.mul_(6)
            layer.self_attn.k_proj.weight.mul_(6)


def build_tiny_qwen2_vl(out: Path, seed: int = 0) -> Path:
    """A random Qwen2VLForConditionalGeneration (patch 8, 2x2 merge, 2-layer LLM with M-RoPE)
    whose processor resizes a 96 px image to 64 px: an 8x8 patch grid, 4x4 = 16 LLM tokens."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    from robust_atp.models.zoo import vocab

    tok = _lm_tokenizer(QWEN_SPECIALS)
    ids = tok.convert_tokens_to_ids(QWEN_SPECIALS)
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2]},
                         **vocab.SPECIAL_IDS_LM),
        vision_config=dict(depth=3, embed_dim=32, hidden_size=48, num_heads=4, mlp_ratio=2, patch_size=8,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=vocab.IMAGE_ID, vision_start_token_id=ids[0], vision_end_token_id=ids[1],
        video_token_id=ids[2], **vocab.SPECIAL_IDS_LM)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    _sharpen(model, model.model.language_model.layers)
    size = {"shortest_edge": 32 * 32, "longest_edge": 64 * 64}
    proc = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=8, merge_size=2, temporal_patch_size=2),
        video_processor=Qwen2VLVideoProcessor(size=size, patch_size=8, merge_size=2, temporal_patch_size=2),
        tokenizer=tok)
    out = Path(out)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def tiny_open_clip_config(out: Path) -> Path:
    """A small open_clip ViT config (32 px, 8 px patches: a 4x4 grid; 16-d joint space), as a
    model config file open_clip registers under its name."""
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tiny-vit-test.json"
    path.write_text(json.dumps(cfg))
    return path
