"""Qwen3-VL (`Qwen3VLForConditionalGeneration`) behind the adapter protocol.

As in Qwen2-VL (`qwen2_vl`): no CLS token, each 2x2 block of patches merged into one LLM token,
3-D rotary positions (M-RoPE; `get_rope_index` is Qwen2-VL's for still images), so a kept
token keeps its full-image position and the text resumes at start + max(rows, cols). The ViT
attends over the whole image in every block, so `cls_attn` [B, L, H, N] is Qwen2-VL's
received-attention saliency (`ReceivedAttentionProbe`) in every block.

DeepStack: besides the merged last layer (`pooler_output`, the tokens the LLM reads in place
of the image), the ViT's blocks in `deepstack_visual_indexes` each go through their own merger,
and the LLM adds deepstack feature l to the hidden states of the visual positions after its
decoder layer l. Pruning keeps the same token indices of every deepstack feature as of the
tokens: the vision pass keeps the deepstack features of its batch ([B, n_deep, N, D]), and
`generate` hands the model, through its own `mm_encoder_outputs` input, the kept tokens and
the same rows of each deepstack feature, with one image token per kept token in `input_ids`;
the model itself scatters them and adds the deepstack rows at exactly those positions.
`generate` checks that its tokens are the rows `kept_indices` names of the vision pass they
come from (`generation_inputs` hands it over: the shared pass, or a downsampled one), else of
the last shared pass.

Refused, one line each: merging methods (no grid position), FastV, text relevance without a
scorer (`model.scorer`, as for Qwen2-VL).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from ..errors import UserError
from .base import VisionOutput, generate_greedy, prompt_ids_for_penalties, register_adapter
from .qwen2_vl import Qwen2VLAdapter


@dataclass
class DeepstackVision(VisionOutput):
    """A Qwen3-VL vision pass with its deepstack features [B, n_deep, N, D]."""

    deepstack: torch.Tensor | None = None


@register_adapter("qwen3_vl")
class Qwen3VLAdapter(Qwen2VLAdapter):
    # Qwen3-VL-Instruct's chat template (no default system turn)
    default_prompt = "<|im_start|>user\n<|vision_start|><image><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
    hf_class = "Qwen3VLForConditionalGeneration"
    no_text_relevance = ("model.scorer: a method needs text relevance, but Qwen3-VL's tower is not in a CLIP "
                         "space: name an external scorer (model.scorer: {kind: open_clip, ...})")
    pass_state = ("grid", "num_visual_tokens", "last")

    def setup(self, cfg) -> None:
        super().setup(cfg)  # received attention (no `model.saliency` choice here)
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # (tokens, deepstack) of the last vision pass

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> VisionOutput:
        px, grids = self.processed(images)
        b, m2 = len(images), self.merge ** 2
        _, h, w = (int(x) for x in grids[0])
        with self.probe:
            out = self.visual(px, grid_thw=grids)
        sal = self.probe.result()  # [B, L, H, n_patches], patches in 2x2 merge blocks
        sal = sal.view(*sal.shape[:3], -1, m2).sum(-1)
        tokens = out.pooler_output.view(b, -1, out.pooler_output.shape[-1])
        n = tokens.shape[1]
        deep = torch.stack([f.view(b, n, -1) for f in out.deepstack_features], 1)  # [B, n_deep, N, D]
        feats = self.visual.merger.norm(out.last_hidden_state).view(b, n, -1)  # what the merger's MLP reads
        self.grid = (h // self.merge, w // self.merge)
        self.num_visual_tokens = n
        self.last = (tokens, deep)
        if self.scorer is not None:
            clip_patches = self.scorer.patches(images, self.grid)
        else:
            clip_patches = torch.empty(b, n, 0, device=self.device)
        return DeepstackVision(tokens=tokens, cls_attn=sal, clip_patches=clip_patches, vit_features=feats,
                               grid=self.grid, image_sizes=[im.size for im in images], deepstack=deep)

    def generation_inputs(self, vision, kept_indices: list) -> dict:
        """Qwen2-VL's, and the pass the tokens come from (its deepstack features)."""
        return {**super().generation_inputs(vision, kept_indices), "encoded": (vision.tokens, vision.deepstack)}

    def kept_deepstack(self, visual_tokens: list[torch.Tensor], kept: list[torch.Tensor],
                       encoded: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Per example the rows `kept` of each deepstack feature of the pass `encoded` (tokens,
        deepstack; None: the last shared pass) [n_deep, K_i, D], after checking that
        visual_tokens are those rows of its tokens."""
        encoded = self.last if encoded is None else encoded
        if encoded is None or len(visual_tokens) != encoded[0].shape[0]:
            raise UserError("methods: qwen3_vl's generate follows the vision pass of its own batch (its deepstack "
                            "features), and this batch is not the last one encoded")
        tokens, deep = encoded
        out = []
        for i, (t, idx) in enumerate(zip(visual_tokens, kept)):
            idx = idx.to(tokens.device).long()
            if t.shape != (len(idx), tokens.shape[-1]) or not torch.equal(t.to(tokens.dtype), tokens[i, idx]):
                raise UserError("methods: qwen3_vl's generate got tokens that are not the kept rows of the last "
                                "vision pass: its deepstack features would not line up")
            out.append(deep[i][:, idx])
        return out

    @torch.inference_mode()
    def generate(self, visual_tokens: list[torch.Tensor], questions: list[str], in_llm=None,
                 kept_indices: list[torch.Tensor | None] | None = None, grid: tuple[int, int] | None = None,
                 encoded: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[str]:
        """kept_indices: per example the grid indices of visual_tokens (None: all, in order);
        grid and encoded: the merged grid they index and the pass they come from (None: the last
        shared pass's)."""
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        self.refuse_in_llm(in_llm)
        if kept_indices is None:
            kept_indices = [None] * len(visual_tokens)
        if any(i is None and len(t) != self.num_visual_tokens for i, t in zip(kept_indices, visual_tokens)):
            raise UserError("methods: a merging method (pool, tome, visionzip) gives tokens without a grid "
                            "position; qwen3_vl places every visual token by its 3-D position and adds deepstack "
                            "features to it: use a selection method")
        kept_indices = [torch.arange(len(t)) if i is None else i for i, t in zip(kept_indices, visual_tokens)]
        deep = self.kept_deepstack(visual_tokens, kept_indices, encoded)
        rows = []
        for t, q in zip(visual_tokens, questions):
            before, after = self.prompt_ids(q)
            if len(before) == 0:
                raise UserError("model.prompt: qwen3_vl needs text before the image placeholder")
            rows.append(torch.cat([before, torch.full((len(t),), self.image_token_id), after]))
        ids = prompt_ids_for_penalties(rows).to(self.device)
        lengths = torch.tensor([len(r) for r in rows])
        mask = (torch.arange(ids.shape[1]) >= ids.shape[1] - lengths[:, None]).long().to(self.device)
        position_ids, deltas = self.positions(kept_indices, questions, grid)
        self.model.model.rope_deltas = deltas  # what the model adds to sequence indices while decoding
        image = BaseModelOutputWithDeepstackFeatures(
            pooler_output=tuple(t.to(self.dtype) for t in visual_tokens),
            deepstack_features=[tuple(d[layer] for d in deep) for layer in range(deep[0].shape[0])])
        out = generate_greedy(self.model, self.generation_config, input_ids=ids, attention_mask=mask,
                              position_ids=position_ids, mm_encoder_outputs={"image": image})
        return self.decode(out[:, ids.shape[1]:])

    def cost_configs(self) -> dict:
        mc = self.model.config
        return {"llm": mc.text_config, "vision": _vision_shape(mc.vision_config), "projector": None,
                "clip_text": None, "clip_projection": None}

    def vision_flops(self, n_tokens: int) -> int:
        """The ViT over the n_tokens * merge^2 patches (no CLS), the patch embedding, the 2x2
        merger and one more merger per deepstack layer."""
        from ..cost import LayerShape, layer_macs

        vc = self.model.config.vision_config
        s = LayerShape.from_config(_vision_shape(vc), gated=False)
        n = n_tokens * self.merge ** 2
        embed = n * vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2 * s.d
        wide = s.d * self.merge ** 2
        mergers = (1 + len(vc.deepstack_visual_indexes)) * n_tokens * (wide * wide + wide * vc.out_hidden_size)
        return 2 * (embed + s.layers * layer_macs(s, n) + mergers)


def _vision_shape(vc):
    """Qwen3-VL's vision config in the names `cost.LayerShape` reads (no CLS token, plain MLP)."""
    from types import SimpleNamespace

    return SimpleNamespace(num_hidden_layers=vc.depth, hidden_size=vc.hidden_size,
                           intermediate_size=vc.intermediate_size, num_attention_heads=vc.num_heads,
                           num_key_value_heads=vc.num_heads, head_dim=vc.hidden_size // vc.num_heads,
                           model_type="qwen3_vl_vision", patch_size=vc.patch_size, num_channels=vc.in_channels)
