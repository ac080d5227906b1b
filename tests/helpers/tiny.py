"""Tiny randomly initialised LLaVA / CLIP pairs built from Hugging Face configs (no download)."""
from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_llava(out: Path, seed: int = 0, image_size: int = 48, patch: int = 8, feature_layer=-2,
                     strategy: str = "default") -> Path:
    """A random LlavaForConditionalGeneration + its CLIPModel, saved like the demo model:
    out/llava and out/clip. The CLIP vision tower carries the same weights as the VLM's.
    feature_layer: an int or a list (concatenated); strategy: 'default' (CLS dropped) or 'full'."""
    from transformers import (CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration)

    from robust_atp.models.zoo import vocab

    clip_tok, lm_tok = vocab.build_tokenizers()
    v = len(clip_tok)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=image_size, patch_size=patch, projection_dim=16)
    text = CLIPTextConfig(vocab_size=v, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=4, max_position_embeddings=48, projection_dim=16,
                          **vocab.SPECIAL_IDS_CLIP)
    lm = LlamaConfig(vocab_size=v, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, **vocab.SPECIAL_IDS_LM)
    n_tokens = (image_size // patch) ** 2
    torch.manual_seed(seed)
    llava = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=vision.to_dict(), text_config=lm.to_dict(), image_token_index=vocab.IMAGE_ID,
        image_seq_length=n_tokens + (strategy == "full"), vision_feature_layer=feature_layer,
        vision_feature_select_strategy=strategy)).eval()
    # random init gives near-uniform logits; scale the head so greedy choices are not ties
    with torch.no_grad():
        llava.lm_head.weight.mul_(20)
    clip = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)).eval()
    clip.vision_model.load_state_dict(llava.model.vision_tower.state_dict())
    from transformers import CLIPImageProcessor, CLIPProcessor, LlavaProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    out = Path(out)
    clip.save_pretrained(out / "clip")
    CLIPProcessor(image_processor=proc, tokenizer=clip_tok).save_pretrained(out / "clip")
    llava.save_pretrained(out / "llava")
    LlavaProcessor(image_processor=proc, tokenizer=lm_tok, patch_size=patch, vision_feature_select_strategy=strategy,
                   image_token="<image>", num_additional_image_tokens=1).save_pretrained(out / "llava")
    return out
