"""Tiny randomly initialised LLaVA-NeXT, Qwen2-VL and BLIP-2 models with their processors,
built from the families' Hugging Face configs and saved like real checkpoints (no download);
and a tiny open_clip model config."""
from __future__ import annotations

import json
from pathlib import Path

import torch

QWEN_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
QWEN_PROMPT = "USER: <|vision_start|><image><|vision_end|> {question} ASSISTANT:"


def lm_tokenizer(extra: list[str] = ()):
    from robust_atp.models.zoo import vocab

    _, tok = vocab.build_tokenizers()
    if extra:
        tok.add_special_tokens({"additional_special_tokens": list(extra)}, replace_extra_special_tokens=False)
    return tok


def sharpen(model, layers=()) -> None:
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

    tok = lm_tokenizer(QWEN_SPECIALS)
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
    sharpen(model, model.model.language_model.layers)
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


def build_tiny_llava_next(out: Path, seed: int = 0) -> Path:
    """A random LlavaNextForConditionalGeneration (CLIP ViT 32 px / 8 px patches: 16 tokens a crop)
    and its CLIPModel (out/llava_next, out/clip). A 96 px image picks the 64x64 pinpoint: the base
    crop plus 2x2 crops, 16 + 64 = 80 patch tokens and 8 newlines."""
    from transformers import (CLIPConfig, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig, LlamaConfig,
                              LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
                              LlavaNextProcessor)

    from robust_atp.models.zoo import vocab

    clip_tok, _ = vocab.build_tokenizers()
    tok = lm_tokenizer()
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16)
    text = CLIPTextConfig(vocab_size=len(clip_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, max_position_embeddings=48, projection_dim=16,
                          **vocab.SPECIAL_IDS_CLIP)
    lm = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **vocab.SPECIAL_IDS_LM)
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(LlavaNextConfig(
        vision_config=vision.to_dict(), text_config=lm.to_dict(), image_token_index=vocab.IMAGE_ID,
        image_grid_pinpoints=pinpoints, vision_feature_layer=-2, vision_feature_select_strategy="default")).eval()
    sharpen(model, model.model.language_model.layers)
    with torch.no_grad():  # the newline embedding is initialised at random scale; keep it comparable to the tokens
        model.model.image_newline.normal_(0, 1)
    clip = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)).eval()
    clip.vision_model.load_state_dict(model.model.vision_tower.state_dict())
    ip = LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                 image_grid_pinpoints=pinpoints)
    out = Path(out)
    model.save_pretrained(out / "llava_next")
    LlavaNextProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                       image_token="<image>", num_additional_image_tokens=1).save_pretrained(out / "llava_next")
    clip.save_pretrained(out / "clip")
    CLIPProcessor(image_processor=ip, tokenizer=clip_tok).save_pretrained(out / "clip")
    return out


BLIP2_PROMPT = "<image>Question: {question} Answer:"


def build_tiny_blip2(out: Path, seed: int = 0) -> Path:
    """A random Blip2ForConditionalGeneration: a 32 px ViT with 8 px patches (16 patch tokens +
    CLS), a 2-layer Q-Former with 8 query tokens, a 2-layer OPT."""
    from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, Blip2QFormerConfig,
                              Blip2VisionConfig, BlipImageProcessor, OPTConfig)

    from robust_atp.models.zoo import vocab

    tok = lm_tokenizer()
    cfg = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                        num_attention_heads=4, image_size=32, patch_size=8).to_dict(),
        qformer_config=Blip2QFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=64, encoder_hidden_size=32,
                                          cross_attention_frequency=1).to_dict(),
        text_config=OPTConfig(vocab_size=len(tok), hidden_size=48, ffn_dim=96, num_hidden_layers=2,
                              num_attention_heads=4, word_embed_proj_dim=48, max_position_embeddings=256,
                              **vocab.SPECIAL_IDS_LM).to_dict(),
        num_query_tokens=8, image_token_index=vocab.IMAGE_ID)
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        model.query_tokens.normal_(0, 1)  # initialised at zero: every query would be the same
        model.vision_model.embeddings.class_embedding.normal_(0, 1)
    decoder = model.language_model.model.decoder
    with torch.no_grad():  # OPT ties its head to the input embeddings: sharpen through the final norm instead
        decoder.final_layer_norm.weight.mul_(20)
        decoder.final_layer_norm.bias.mul_(20)
        for layer in decoder.layers:
            layer.self_attn.q_proj.weight.mul_(6)
            layer.self_attn.k_proj.weight.mul_(6)
    out = Path(out)
    model.save_pretrained(out)
    Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
                   num_query_tokens=8).save_pretrained(out)
    return out
