"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`) behind the adapter protocol.

As in Qwen2-VL (`qwen2_vl`), the ViT has no CLS token, its merger fuses each 2x2 block of
patches into one LLM token, and the LLM places visual tokens with 3-D rotary positions
(M-RoPE). What differs is the tower:

- Windowed attention. Most ViT blocks attend only inside windows of `window_size` pixels
  (`vision_config.window_size // patch_size // merge` merged tokens a side); the blocks in
  `fullatt_block_indexes` attend over the whole image. For that the tower reorders the merged
  units window by window (`get_vision_window_index`) before its blocks and restores raster
  order only after its merger (`pooler_output`); `last_hidden_state` stays in window order.
- The saliency (`VisionOutput.cls_attn`, [B, L, H, N], one row per ViT block) is the attention
  each merged token receives, averaged over every query patch of its image and summed over the
  token's 2x2 patches, in the LLM's (raster) order. In a full-attention block that is the
  `qwen2_vl` saliency. In a windowed block a query attends only inside its window; the
  average is still over all the image's queries, those of other windows giving 0: the
  saliency is aggregated per window, and its scale (uniform attention gives each patch
  1 / patches, as in a full block) stays comparable across windows of different sizes.
  A method's `layer` indexes ViT blocks; the last block of released checkpoints is a
  full-attention block (`fullatt_block_indexes` [7, 15, 23, 31] of 32): the suites read
  `layer: -1`, attention over the whole image in the tower's last layer, the one whose output
  the merger reads.

Positions, kept tokens and refused methods are as in `qwen2_vl` (the model's `get_rope_index`
is Qwen2-VL's for still images): a kept token keeps its full-image position, the text resumes
at start + max(rows, cols), merging methods and FastV are refused.
"""
from __future__ import annotations

import torch
from PIL import Image

from ..errors import UserError
from .base import VisionOutput, register_adapter
from .qwen2_vl import Qwen2VLAdapter, ReceivedAttentionProbe


class WindowedReceivedAttentionProbe(ReceivedAttentionProbe):
    """Qwen2-VL's received-attention hooks (the same fused qkv and rotation) over Qwen2.5-VL's
    attention segments, a window or the whole image in a full-attention block: per block and
    head, the attention each patch receives, summed over its segment's queries: [L, H, total
    patches], in the tower's window order."""

    layer_dim = 0  # result(): [L, H, total patches]

    @staticmethod
    def reduce(probs: torch.Tensor) -> torch.Tensor:
        return probs.sum(1)  # [H, keys]: received, summed over the segment's queries

    @staticmethod
    def join(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts, 1)  # the segments side by side: [H, total patches]


def window_order(grids: torch.Tensor, vision_config) -> torch.Tensor:
    """The tower's window order of the merged units: position j of its blocks' sequence holds
    merged unit `window_index[j]` (global over the batch's images, raster order within each)."""
    from transformers.vision_utils import get_vision_window_index

    index, _ = get_vision_window_index(grids, spatial_merge_size=vision_config.spatial_merge_size,
                                       window_size=vision_config.window_size, patch_size=vision_config.patch_size)
    return index.to(grids.device)


def to_raster(x: torch.Tensor, index: torch.Tensor, unit: int) -> torch.Tensor:
    """Per-patch values in the tower's window order [S, ...] -> merged units in raster order,
    each unit's `unit` patches together: [S // unit, unit, ...] (the inverse of the tower's
    `permute_input_for_window_attn`)."""
    return x.reshape(-1, unit, *x.shape[1:])[torch.argsort(index)]


@register_adapter("qwen2_5_vl")
class Qwen2_5VLAdapter(Qwen2VLAdapter):
    """Prompts, positions and generation are Qwen2-VL's (`Qwen2VLAdapter`); the vision pass
    undoes the tower's window order."""

    hf_class = "Qwen2_5_VLForConditionalGeneration"
    no_text_relevance = ("model.scorer: a method needs text relevance, but Qwen2.5-VL's tower is not in a CLIP "
                         "space: name an external scorer (model.scorer: {kind: open_clip, ...})")

    def setup(self, cfg) -> None:
        super().setup(cfg)
        self.full_attention_blocks = tuple(self.model.config.vision_config.fullatt_block_indexes)
        # merged tokens -> the grid of a pass that gave that many (a downsampled pass leaves
        # `grid` as the shared pass set it; its rows' tower FLOPs need its own windows)
        self.grids_by_count: dict[int, tuple[int, int]] = {}

    def saliency_probe(self, blocks: list):
        return WindowedReceivedAttentionProbe(blocks)

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> VisionOutput:
        px, grids = self.processed(images)
        b, m2 = len(images), self.merge ** 2
        _, h, w = (int(x) for x in grids[0])
        per_image = h * w
        with self.probe:
            out = self.visual(px, grid_thw=grids)
        index = window_order(grids, self.model.config.vision_config)
        # received attention summed over each segment's queries, window order -> the mean over
        # the image's queries (queries of other windows give 0), merged units in raster order
        sal = to_raster(self.probe.result().permute(2, 0, 1) / per_image, index, m2).sum(1)  # [B * N, L, H]
        sal = sal.view(b, -1, *sal.shape[1:]).permute(0, 2, 3, 1)  # [B, L, H, N]
        tokens = out.pooler_output.view(b, -1, out.pooler_output.shape[-1])  # already in raster order
        feats = to_raster(self.visual.merger.ln_q(out.last_hidden_state), index, m2)
        feats = feats.reshape(b, tokens.shape[1], -1)  # what the merger's MLP reads, per token
        self.grid = (h // self.merge, w // self.merge)
        self.num_visual_tokens = tokens.shape[1]
        self.grids_by_count[self.num_visual_tokens] = self.grid
        if self.scorer is not None:
            clip_patches = self.scorer.patches(images, self.grid)
        else:
            clip_patches = torch.empty(b, tokens.shape[1], 0, device=self.device)
        return VisionOutput(tokens=tokens, cls_attn=sal, clip_patches=clip_patches, vit_features=feats,
                            grid=self.grid, image_sizes=[im.size for im in images])

    def generate(self, visual_tokens: list[torch.Tensor], questions: list[str], in_llm=None,
                 kept_indices: list[torch.Tensor | None] | None = None,
                 grid: tuple[int, int] | None = None) -> list[str]:
        """kept_indices: per example the grid indices of visual_tokens (None: all, in order);
        grid: the merged grid they index (None: the last vision pass's)."""
        self.refuse_in_llm(in_llm)
        if kept_indices is None:
            kept_indices = [None] * len(visual_tokens)
        if any(i is None and len(t) != self.num_visual_tokens for i, t in zip(kept_indices, visual_tokens)):
            raise UserError("methods: a merging method (pool, tome, visionzip) gives tokens without a grid "
                            "position; qwen2_5_vl places every visual token by its 3-D position: use a selection "
                            "method")
        return super().generate(visual_tokens, questions, kept_indices=kept_indices, grid=grid)

    def cost_configs(self) -> dict:
        mc = self.model.config
        return {"llm": mc.text_config, "vision": _vision_shape(mc.vision_config), "projector": None,
                "clip_text": None, "clip_projection": None}

    def window_lengths(self, grid: tuple[int, int] | None = None) -> list[int]:
        """Patches in each attention window of a merged grid (None: the last batch's)."""
        from transformers.vision_utils import get_vision_window_index

        vc = self.model.config.vision_config
        rows, cols = self.grid if grid is None else grid
        grid = torch.tensor([[1, rows * self.merge, cols * self.merge]])
        _, cu = get_vision_window_index(grid, spatial_merge_size=self.merge, window_size=vc.window_size,
                                        patch_size=vc.patch_size)
        return (cu[1:] - cu[:-1]).tolist()

    def vision_flops(self, n_tokens: int) -> int:
        """The ViT over the n_tokens * merge^2 patches (no CLS): the full-attention blocks over
        all of them, the others window by window; the patch embedding and the 2x2 merger MLP."""
        from ..cost import LayerShape, layer_macs

        vc = self.model.config.vision_config
        s = LayerShape.from_config(_vision_shape(vc), gated=True)
        n = n_tokens * self.merge ** 2
        full = len(self.full_attention_blocks)
        grid = self.grid if n_tokens == self.num_visual_tokens else self.grids_by_count.get(n_tokens)
        windows = self.window_lengths(grid) if grid is not None else [n]
        embed = n * vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2 * s.d
        wide = s.d * self.merge ** 2
        merger = n_tokens * (wide * wide + wide * vc.out_hidden_size)
        blocks = full * layer_macs(s, n) + (vc.depth - full) * sum(layer_macs(s, w) for w in windows)
        return 2 * (embed + blocks + merger)


def _vision_shape(vc):
    """Qwen2.5-VL's vision config in the names `cost.LayerShape` reads (no CLS token, gated MLP)."""
    from types import SimpleNamespace

    return SimpleNamespace(num_hidden_layers=vc.depth, hidden_size=vc.hidden_size,
                           intermediate_size=vc.intermediate_size, num_attention_heads=vc.num_heads,
                           num_key_value_heads=vc.num_heads, head_dim=vc.hidden_size // vc.num_heads,
                           model_type="qwen2_5_vl_vision", patch_size=vc.patch_size, num_channels=vc.in_channels)
