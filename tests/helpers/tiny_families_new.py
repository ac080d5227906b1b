"""Tiny randomly initialised models of the newer families (Qwen2.5-VL, LLaVA-OneVision) with
their processors, built from the families' Hugging Face configs and saved like real
checkpoints (no download)."""
from __future__ import annotations

from pathlib import Path

import torch

from tests.helpers.tiny_families import QWEN_SPECIALS, lm_tokenizer, sharpen

# (w, h): a 96 px square, a 2:1 landscape and a 1:2.5 portrait; after the processor 80x80, 112x48 and
# 48x112 pixels: merged grids (rows x cols) 5x5, 3x7 and 7x3
QWEN25_SIZES = [(96, 96), (128, 64), (56, 140)]


def build_tiny_qwen2_5_vl(out: Path, seed: int = 0) -> Path:
    """A random Qwen2_5_VLForConditionalGeneration: patch 8, 2x2 merge, a 4-block ViT whose blocks
    1 and 3 attend over the whole image and 0 and 2 inside 32 px windows (2x2 merged tokens),
    a 2-layer LLM with M-RoPE. The processor keeps images between 32x32 and 80x80 pixels, so
    a 96 px square becomes 80x80: a 10x10 patch grid, 5x5 = 25 LLM tokens in 3x3 windows
    (the last row and column of windows are partial)."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    from robust_atp.models.zoo import vocab

    tok = lm_tokenizer(QWEN_SPECIALS)
    ids = tok.convert_tokens_to_ids(QWEN_SPECIALS)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2]},
                         **vocab.SPECIAL_IDS_LM),
        vision_config=dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=48,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           window_size=32, fullatt_block_indexes=[1, 3]),
        image_token_id=vocab.IMAGE_ID, vision_start_token_id=ids[0], vision_end_token_id=ids[1],
        video_token_id=ids[2], **vocab.SPECIAL_IDS_LM)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    sharpen(model, model.model.language_model.layers)
    with torch.no_grad():  # random init attends almost uniformly: make the ViT's attention (the saliency) peaked
        for block in model.model.visual.blocks:
            block.attn.qkv.weight[:64].mul_(4)  # q and k rows of the fused projection
    size = {"shortest_edge": 32 * 32, "longest_edge": 80 * 80}
    proc = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=8, merge_size=2, temporal_patch_size=2),
        video_processor=Qwen2VLVideoProcessor(size=size, patch_size=8, merge_size=2, temporal_patch_size=2),
        tokenizer=tok)
    out = Path(out)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


# (w, h): a square that picks the 4x4 mosaic (16x16 patches, past anyres_max_9: resized to 12x12),
# a 3:2 landscape (a 2x3 mosaic, no resize) and a 1:3 portrait (unpadded columns)
ONEVISION_SIZES = [(128, 128), (96, 64), (40, 120)]


def build_tiny_llava_onevision(out: Path, seed: int = 1, feature_layer=-1) -> Path:
    """A random LlavaOnevisionForConditionalGeneration: a 3-layer SigLIP tower (32 px crops of
    8 px patches: 16 patches a crop, no CLS), 'full' feature selection from `feature_layer`
    (an int or a list, as the config takes), pinpoints of 1..4 x 1..4 crops, anyres_max_9, and a
    2-layer Qwen2 LLM."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessor, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor,
                              Qwen2Config, SiglipVisionConfig)

    from robust_atp.models.llava import vit_layers
    from robust_atp.models.zoo import vocab

    tok = lm_tokenizer()
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                image_size=32, patch_size=8, vision_use_head=False)
    lm = Qwen2Config(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, **vocab.SPECIAL_IDS_LM)
    pinpoints = [[32 * i, 32 * j] for i in range(1, 5) for j in range(1, 5)]
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(LlavaOnevisionConfig(
        vision_config=vision.to_dict(), text_config=lm.to_dict(), image_token_index=vocab.IMAGE_ID,
        image_grid_pinpoints=pinpoints, vision_feature_layer=feature_layer, vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9")).eval()
    sharpen(model, model.model.language_model.layers)
    with torch.no_grad():
        model.model.image_newline.normal_(0, 1)  # comparable in scale to the tokens
        for layer in vit_layers(model.model.vision_tower):  # peaked ViT attention (the saliency)
            layer.self_attn.q_proj.weight.mul_(2)
            layer.self_attn.k_proj.weight.mul_(2)
    ip = LlavaOnevisionImageProcessor(size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints)
    out = Path(out)
    model.save_pretrained(out)
    video = LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32})
    LlavaOnevisionProcessor(image_processor=ip, tokenizer=tok, video_processor=video, num_image_tokens=16,
                            vision_feature_select_strategy="full", image_token="<image>",
                            vision_aspect_ratio="anyres_max_9").save_pretrained(out)
    return out


def build_tiny_qwen3_vl(out: Path, seed: int = 0) -> Path:
    """A random Qwen3VLForConditionalGeneration: patch 8, 2x2 merge, a 4-block ViT whose blocks
    1 and 2 feed deepstack mergers (added after LLM layers 0 and 1), learned position embeddings
    on a 4x4 grid, a 2-layer LLM with interleaved M-RoPE. The processor keeps images between
    32x32 and 80x80 pixels (a 96 px square: 10x10 patches, 5x5 = 25 LLM tokens)."""
    from transformers import (Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration,
                              Qwen3VLProcessor, Qwen3VLVideoProcessor)

    from robust_atp.models.zoo import vocab

    tok = lm_tokenizer(QWEN_SPECIALS)
    ids = tok.convert_tokens_to_ids(QWEN_SPECIALS)
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=12, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2],
                                          "mrope_interleaved": True},
                         **vocab.SPECIAL_IDS_LM),
        vision_config=dict(depth=4, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=48,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                           num_position_embeddings=16, deepstack_visual_indexes=[1, 2]),
        image_token_id=vocab.IMAGE_ID, vision_start_token_id=ids[0], vision_end_token_id=ids[1],
        video_token_id=ids[2], **vocab.SPECIAL_IDS_LM)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(cfg).eval()
    sharpen(model, model.model.language_model.layers)
    with torch.no_grad():  # peaked ViT attention (the saliency); deepstack features as large as the tokens
        for block in model.model.visual.blocks:
            block.attn.qkv.weight[:64].mul_(3)
    size = {"shortest_edge": 32 * 32, "longest_edge": 80 * 80}
    proc = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=8, merge_size=2, temporal_patch_size=2),
        video_processor=Qwen3VLVideoProcessor(size=size, patch_size=8, merge_size=2, temporal_patch_size=2),
        tokenizer=tok)
    out = Path(out)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


INTERNVL_SPECIALS = {"start_image_token": "<img>", "end_image_token": "</img>",
                     "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
INTERNVL_PROMPT = "USER: <image>\n{question} ASSISTANT:"
# the tiny word-level tokenizers know no chat-template markers: the tiny OneVision reads this prompt
ONEVISION_PROMPT = "USER: <image>\n{question} ASSISTANT:"


def build_tiny_internvl(out: Path, seed: int = 0) -> Path:
    """A random InternVLForConditionalGeneration: a 3-layer InternViT with q-k norms (64 px
    tiles of 8 px patches: 64 patches + CLS a tile), the 2x2 pixel shuffle (16 tokens a tile), a
    2-layer Qwen2 LLM; the processor tiles an image into 1 to 4 tiles plus a thumbnail."""
    from transformers import (GotOcr2ImageProcessor, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLProcessor, InternVLVideoProcessor, InternVLVisionConfig, Qwen2Config)

    from robust_atp.models.zoo import vocab

    tok = lm_tokenizer(list(INTERNVL_SPECIALS.values()))
    tok._set_model_specific_special_tokens(dict(INTERNVL_SPECIALS))  # named, as InternVL tokenizers have them
    vision = InternVLVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                  image_size=[64, 64], patch_size=[8, 8], use_qk_norm=True, norm_type="layer_norm")
    lm = Qwen2Config(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                     tie_word_embeddings=False, **vocab.SPECIAL_IDS_LM)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration(InternVLConfig(
        vision_config=vision.to_dict(), text_config=lm.to_dict(),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=16, downsample_ratio=0.5,
        vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=False)).eval()
    sharpen(model, model.model.language_model.layers)
    with torch.no_grad():
        model.model.vision_tower.embeddings.cls_token.normal_(0, 1)  # initialised at zero
        for layer in model.model.vision_tower.encoder.layer:  # peaked CLS attention (the saliency)
            layer.attention.q_proj.weight.mul_(3)
            layer.attention.k_proj.weight.mul_(3)
    size = {"height": 64, "width": 64}
    ip = GotOcr2ImageProcessor(size=size, crop_to_patches=True, min_patches=1, max_patches=4)
    out = Path(out)
    model.save_pretrained(out)
    InternVLProcessor(image_processor=ip, tokenizer=tok, video_processor=InternVLVideoProcessor(size=size),
                      image_seq_length=16).save_pretrained(out)
    return out
