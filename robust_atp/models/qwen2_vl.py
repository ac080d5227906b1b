"""Qwen2-VL (`Qwen2VLForConditionalGeneration`) behind the adapter protocol.

Qwen2-VL's ViT has no CLS token, and its merger fuses each 2x2 block of patches into one LLM
token. So `VisionOutput.cls_attn` holds a CLS-free saliency instead, per ViT layer, pooled to
the merged grid (`model.saliency`):

    attention     the attention each merged token receives: per head, the softmax attention
                  of every query patch to each key patch averaged over the queries, summed over
                  the token's 2x2 patches                               [B, L, H, N]
    feature_norm  the L2 norm of the layer's output features, averaged over the 2x2 patches
                                                                         [B, L, 1, N]

so ATP and the other CLS-attention methods run unchanged (`layer` picks the ViT layer).

Positions: the LLM places visual tokens with 3-D rotary positions (M-RoPE: temporal, row,
column). A kept token keeps the position it has in the full image; the text after the image
starts where it would after the full image (start + max(rows, cols)), so the question and every
decoded token sit exactly where they sit for `full`. The rope delta (position minus sequence
index, applied while decoding) grows by the number of dropped tokens. Merged tokens have no
grid position: merging methods are refused here.

Downsampling: the token count follows the image size (the processor's `smart_resize` brings
the image to multiples of patch_size x merge_size within its min / max pixels), so
`image_size_for_tokens` picks the size whose merged-token count is closest to a budget, and
`generate` places a resized image's tokens on its own grid (`generation_inputs` hands the
grid of the pass the tokens come from).
"""
from __future__ import annotations

import functools
import math

import torch
from PIL import Image

from ..data.images import to_rgb
from ..errors import UserError
from .base import VisionOutput, generate_greedy, prompt_ids_for_penalties, register_adapter
from .hf_base import HFAdapter
from .llava import prompt_embeddings
from .probes import HookProbe
from .scorer import load_scorer


class ReceivedAttentionProbe(HookProbe):
    """Hooks on each ViT block's attention: per layer and head, the attention each patch
    receives, averaged over the image's query patches: [n_images, L, H, n_patches].

    q and k are taken from the fused qkv projection and rotated as the model rotates them,
    so it works under sdpa / flash attention (no `output_attentions`)."""

    records = ("rows", "ctx")
    scratch = ("ctx",)

    def __init__(self, blocks: list):
        from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

        super().__init__()
        self.rotate = apply_rotary_pos_emb_vision
        self.blocks = blocks
        self.rows: dict[int, torch.Tensor] = {}
        self.ctx: dict[int, dict] = {}
        for i, block in enumerate(blocks):
            self.hook(block.attn, functools.partial(self._context, i), pre=True)
            self.hook(block.attn.qkv, functools.partial(self._received, i))

    def _context(self, i, module, args, kwargs):
        self.ctx[i] = {"cu": kwargs["cu_seqlens"], "pe": kwargs["position_embeddings"]}

    def _received(self, i, module, args, out):
        attn = self.blocks[i].attn
        s = out.shape[0]
        q, k, _ = out.reshape(s, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)  # [S, H, hd]
        cos, sin = self.ctx[i]["pe"]
        q, k = self.rotate(q, k, cos, sin)
        cu = self.ctx[i]["cu"].tolist()
        parts = []
        for a, b in zip(cu[:-1], cu[1:]):  # attention stays inside one segment
            logits = torch.einsum("qhd,khd->hqk", q[a:b].float(), k[a:b].float()) * attn.scaling
            parts.append(self.reduce(logits.softmax(-1)))
        self.rows[i] = self.join(parts)

    layer_dim = 1  # result(): [images, L, H, n]

    @staticmethod
    def reduce(probs: torch.Tensor) -> torch.Tensor:
        """[H, queries, keys] of one segment (here an image) -> [H, keys]: received, mean over queries."""
        return probs.mean(1)

    @staticmethod
    def join(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(parts)  # [images, H, n]

    def result(self) -> torch.Tensor:
        out = torch.stack([self.rows[i] for i in range(len(self.blocks))], self.layer_dim)
        self.rows.clear()
        return out


class FeatureNormProbe(HookProbe):
    """Hooks on each ViT block's output: the L2 norm of every patch's features,
    [n_images, L, 1, n_patches] (images of one size, so patches split evenly)."""

    records = ("norms",)

    def __init__(self, blocks: list):
        super().__init__()
        self.norms: dict[int, torch.Tensor] = {}
        self.blocks = blocks
        for i, block in enumerate(blocks):
            self.hook(block, functools.partial(self._keep, i))

    def _keep(self, i, module, args, out):
        self.norms[i] = out.float().norm(dim=-1)

    def result(self, n_images: int) -> torch.Tensor:
        out = torch.stack([self.norms[i].view(n_images, 1, -1) for i in range(len(self.blocks))], 1)
        self.norms.clear()
        return out


@register_adapter("qwen2_vl")
class Qwen2VLAdapter(HFAdapter):
    # Qwen2-VL-Instruct's chat template for one image and a question
    default_prompt = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      "<|vision_start|><image><|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n")
    hf_class = "Qwen2VLForConditionalGeneration"
    merges_in_tower = False  # no CLS token to protect, and merged tokens have no 3-D position
    places_tokens_by_grid = True  # positions of kept tokens come from their grid indices
    token_count_follows_image = True  # `smart_resize`: the merged grid follows the image size
    in_llm_refusal = " (its LLM's 3-D rotary positions are not carried through in-LLM pruning)"
    no_text_relevance = ("model.scorer: a method needs text relevance, but Qwen2-VL's tower is not in a CLIP "
                         "space: name an external scorer (model.scorer: {kind: open_clip, ...})")

    def setup(self, cfg) -> None:
        mc = self.model.config
        self.image_token = self.processor.image_token
        self.image_token_id = mc.image_token_id
        self.merge = mc.vision_config.spatial_merge_size
        self.visual = self.model.model.visual
        self.saliency = cfg.saliency or "attention"
        self.probe = self.saliency_probe(list(self.visual.blocks))
        self.grid: tuple[int, int] | None = None  # merged grid, known once images are seen
        self.num_visual_tokens: int | None = None
        self.scorer = load_scorer(cfg.scorer, self.device) if cfg.scorer else None

    def saliency_probe(self, blocks: list):
        """The hooks on the ViT blocks that give `cls_attn` (`model.saliency`)."""
        return ReceivedAttentionProbe(blocks) if self.saliency == "attention" else FeatureNormProbe(blocks)

    # ------------------------------------------------------------------ vision

    def processed(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values [sum of patches, C * T * p * p], image_grid_thw [B, 3]) as the processor makes them."""
        out = self.processor.image_processor(images=[to_rgb(im) for im in images], return_tensors="pt")
        grids = out["image_grid_thw"]
        if not bool((grids == grids[:1]).all()):
            sizes = sorted({im.size for im in images})
            raise UserError(f"perturbations.image.resolution: {self.name} gives images of different sizes different "
                            f"token grids (sizes {sizes[:3]} in one batch); set a canonical resolution so every "
                            "image has the same number of visual tokens")
        return out["pixel_values"].to(self.device, self.dtype), grids.to(self.device)

    def image_size_for_tokens(self, image_size: tuple[int, int], target_tokens: int) -> tuple[int, int]:
        """(width, height) whose merged-token count under the processor's own `smart_resize` is
        closest to target_tokens, never above the full image's (`size_for_tokens`)."""
        ip = self.processor.image_processor
        return size_for_tokens(image_size, target_tokens, ip.patch_size * ip.merge_size,
                               ip.size.shortest_edge, ip.size.longest_edge)

    def resized_image(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        """The image at `size` by the processor's resampling filter (bicubic for Qwen2-VL); a size
        `smart_resize` keeps, so the processor resizes it no further."""
        return to_rgb(image).resize(size, Image.Resampling(int(self.processor.image_processor.resample)))

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> VisionOutput:
        px, grids = self.processed(images)
        b, m2 = len(images), self.merge ** 2
        _, h, w = (int(x) for x in grids[0])
        with self.probe:
            out = self.visual(px, grid_thw=grids)
        # patches come ordered in 2x2 merge blocks: merged token j is patches 4j .. 4j + 3
        if self.saliency == "attention":
            sal = self.probe.result()  # [B, L, H, n_patches]
            sal = sal.view(*sal.shape[:3], -1, m2).sum(-1)
        else:
            sal = self.probe.result(b)
            sal = sal.view(*sal.shape[:3], -1, m2).mean(-1)
        tokens = out.pooler_output.view(b, -1, out.pooler_output.shape[-1])
        feats = self.visual.merger.ln_q(out.last_hidden_state).view(b, tokens.shape[1], -1)  # what the merger reads
        self.grid = (h // self.merge, w // self.merge)
        self.num_visual_tokens = tokens.shape[1]
        if self.scorer is not None:
            clip_patches = self.scorer.patches(images, self.grid)
        else:
            clip_patches = torch.empty(b, tokens.shape[1], 0, device=self.device)
        return VisionOutput(tokens=tokens, cls_attn=sal, clip_patches=clip_patches, vit_features=feats,
                            grid=self.grid, image_sizes=[im.size for im in images])

    def cost_configs(self) -> dict:
        mc = self.model.config
        return {"llm": mc.text_config, "vision": _vision_shape(mc.vision_config), "projector": None,
                "clip_text": None, "clip_projection": None}

    def vision_flops(self, n_tokens: int) -> int:
        """The ViT over the n_tokens * merge^2 patches (no CLS) and the 2x2 merger MLP."""
        from ..cost import LayerShape, layer_macs

        vc = self.model.config.vision_config
        s = LayerShape.from_config(_vision_shape(vc), gated=False)
        n = n_tokens * self.merge ** 2
        embed = n * vc.in_channels * vc.temporal_patch_size * vc.patch_size ** 2 * s.d
        wide = s.d * self.merge ** 2
        merger = n_tokens * (wide * wide + wide * vc.hidden_size)
        return 2 * (embed + s.layers * layer_macs(s, n) + merger)

    # ------------------------------------------------------------------ language

    def tokenized_prompt(self, question: str) -> str:
        """The suite's `<image>` as the processor's image token, e.g. `<|image_pad|>`."""
        return self.prompt(question).replace("<image>", self.image_token)

    def generation_inputs(self, vision, kept_indices: list) -> dict:
        """The kept indices and the merged grid they index (a downsampled pass has its own)."""
        return {"kept_indices": kept_indices, "grid": vision.grid}

    def positions(self, kept: list[torch.Tensor], questions: list[str],
                  grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """M-RoPE positions of left-padded [text, kept visual tokens, text] rows.

        kept: per example the kept merged-token indices (ascending) into the grid (rows, cols)
        (None: the last vision pass's). Returns (position_ids [4, B, T]: the sequence index row
        that `generate` prepends, then temporal / row / column; pads at 0 as the model puts
        them), and rope_deltas [B, 1]."""
        rows_, cols = self.grid if grid is None else grid
        seqs, deltas = [], []
        for idx, q in zip(kept, questions):
            before, after = self.prompt_ids(q)
            s = len(before)
            idx = idx.to("cpu").long()
            text0 = torch.arange(s).expand(3, -1)
            vis = torch.stack([torch.full_like(idx, s), s + idx // cols, s + idx % cols])
            start = s + max(rows_, cols)  # where the text resumes after the full image
            text1 = torch.arange(start, start + len(after)).expand(3, -1)
            pos = torch.cat([text0, vis, text1], 1)
            seqs.append(pos)
            deltas.append(int(pos.max()) + 1 - pos.shape[1])
        length = max(p.shape[1] for p in seqs)
        out = torch.zeros(4, len(seqs), length, dtype=torch.long)
        for i, p in enumerate(seqs):
            n = p.shape[1]
            out[0, i, length - n:] = torch.arange(n)
            out[1:, i, length - n:] = p
        return out.to(self.device), torch.tensor(deltas, device=self.device).unsqueeze(1)

    @torch.inference_mode()
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
                            "position; qwen2_vl places every visual token by its 3-D position: use a selection method")
        kept_indices = [torch.arange(len(t)) if i is None else i for i, t in zip(kept_indices, visual_tokens)]
        inputs, mask, _ = prompt_embeddings(self, visual_tokens, questions)
        position_ids, deltas = self.positions(kept_indices, questions, grid)
        self.model.model.rope_deltas = deltas  # what the model adds to sequence indices while decoding
        ids = prompt_ids_for_penalties([torch.cat([b, torch.full((len(t),), self.image_token_id), a])
                                        for t, (b, a) in zip(visual_tokens, map(self.prompt_ids, questions))])
        out = generate_greedy(self.model, self.generation_config, inputs_embeds=inputs, input_ids=ids.to(self.device),
                              attention_mask=mask, position_ids=position_ids)
        return self.decode(out[:, ids.shape[1]:])

    def reference_inputs(self, images: list[Image.Image], questions: list[str]) -> dict:
        """What the HF processor gives for these images and prompts (left-padded), for the
        model's own `generate`."""
        texts = [self.tokenized_prompt(q) for q in questions]
        self.tokenizer.padding_side = "left"
        enc = self.processor(text=texts, images=[to_rgb(im) for im in images], return_tensors="pt", padding=True)
        return {k: v.to(self.device) for k, v in enc.items()}


def size_for_tokens(image_size: tuple[int, int], target: int, factor: int, min_pixels: int,
                    max_pixels: int) -> tuple[int, int]:
    """The (width, height) to resize an image of `image_size` to so that the processor's
    `smart_resize` (multiples of `factor` = patch x merge, within [min_pixels, max_pixels])
    gives the merged-token count closest to `target` and at most the full image's: the image
    scaled by s, for s in (0, 1], through `smart_resize` (ties: the fewer tokens, then the
    aspect ratio nearer the image's). A count equal to the full image's keeps the image as it is.

    `smart_resize` of the scaled image changes only where round(h s / factor) or
    round(w s / factor) does (its clamps to the pixel bounds give sizes independent of s), so
    one s inside each interval between those breakpoints meets every size it can give."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    w, h = image_size

    def tokens(hw):
        rh, rw = smart_resize(hw[0], hw[1], factor, min_pixels, max_pixels)
        return (rh // factor) * (rw // factor)

    full = tokens((h, w))
    if target >= full:
        return image_size
    cuts = sorted({(j + 0.5) * factor / side for side in (h, w)
                   for j in range(math.ceil(side / factor) + 1) if (j + 0.5) * factor / side < 1} | {1.0})
    scales = [c / 2 for c in cuts[:1]] + [(a + b) / 2 for a, b in zip(cuts, cuts[1:])] + [1.0]
    best = None
    for s in scales:
        size = smart_resize(h * s, w * s, factor, min_pixels, max_pixels)  # (height, width)
        n = tokens(size)
        if n > full:
            continue
        key = (abs(n - target), n, abs(math.log(size[1] * h / (size[0] * w))))
        if best is None or key < best[0]:
            best = (key, n, size)
    if best is None or best[1] == full:
        return image_size
    return best[2][1], best[2][0]


def _vision_shape(vc):
    """Qwen2-VL's vision config in the names `cost.LayerShape` reads (no CLS token)."""
    from types import SimpleNamespace

    return SimpleNamespace(num_hidden_layers=vc.depth, hidden_size=vc.embed_dim,
                           intermediate_size=int(vc.embed_dim * vc.mlp_ratio), num_attention_heads=vc.num_heads,
                           num_key_value_heads=vc.num_heads, head_dim=vc.embed_dim // vc.num_heads,
                           model_type="qwen2_vl_vision", patch_size=vc.patch_size, num_channels=vc.in_channels)
