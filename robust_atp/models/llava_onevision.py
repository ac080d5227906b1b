"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`) behind the adapter protocol.

The layout is LLaVA-NeXT's (`llava_next`): a base crop plus a mosaic of crops of the best
pinpoint resolution, unpadded to the image's aspect ratio, each mosaic row closed by the
learned `image_newline`. What differs:

- The tower is SigLIP: no CLS token. `vision_feature_select_strategy: full` hands the
  projector every patch of the layer (or the layers, concatenated, when
  `vision_feature_layer` is a list: Hugging Face's own handling of both).
- anyres_max_9: when the unpadded mosaic holds more than 1.1^2 x 9 crops' worth of patches,
  the model resizes its projected features bilinearly by 1 / ratio on each side (`ratio` =
  sqrt(mosaic patches / (9 side^2))) before the newlines. The LLM's mosaic tokens are then
  interpolations of patches, not patches.

Here every per-patch quantity goes through exactly the model's `pack_image_features` (reshape,
unpad, the same bilinear resize) without the newlines:

    tokens        the projected features, packed in their own dtype: what the LLM reads
    cls_attn      a CLS-free saliency [B, L, H, N] per ViT layer: the attention each patch
                  receives in its crop, averaged over the crop's query patches (softmax of
                  the hooked q, k; works under sdpa), packed the same way (so a resized
                  mosaic token's saliency is the same bilinear blend of its patches')
    vit_features  the features the projector reads, packed the same way
    grid          (1, N), as for LLaVA-NeXT (no 2-D grid across crops)

Newlines follow the kept tokens' rows (`LlavaNextAdapter.visual_sequence`). There is no CLS
token, no CLIP joint space of the tower's own here (the suite schema admits no scorer for this
adapter yet) and no ToMe inside the tower: the methods that need one are refused, each with
one line (VisionZip: no CLS; PruMerge+ / CDPruner: no CLS query or CLIP projection; tome: its
tower merge keeps a CLS token; methods with text relevance: no scorer); FastV is refused as on
LLaVA-NeXT.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError
from .base import VisionOutput, register_adapter
from .llava import vit_layers
from .llava_next import LlavaNextAdapter, layout_error
from .probes import QKProbe


class ReceivedAttentionProbe(QKProbe):
    """Hooks on q_proj / k_proj of each ViT layer (CLIP / SigLIP layout): per layer and head,
    the attention each patch receives, averaged over every query of its crop:
    [crops, L, H, S]. Recomputed from q and k, so it works under sdpa / flash attention."""

    def __init__(self, layers: list):
        super().__init__(layers, lambda layer: (layer.self_attn.q_proj, layer.self_attn.k_proj))

    def result(self) -> torch.Tensor:
        rows = []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h, hd = attn.num_heads, attn.head_dim
            q, k = (x.float().view(x.shape[0], x.shape[1], h, hd) for x in (self.q[i], self.k[i]))
            logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * attn.scale
            rows.append(logits.softmax(-1).mean(2))  # [crops, H, S]: received, mean over queries
        self.q.clear()
        self.k.clear()
        return torch.stack(rows, 1)


@register_adapter("llava_onevision")
class LlavaOnevisionAdapter(LlavaNextAdapter):
    # llava-onevision-qwen2-*-ov-hf's chat template
    default_prompt = "<|im_start|>user <image>\n{question}<|im_end|><|im_start|>assistant\n"
    hf_class = "LlavaOnevisionForConditionalGeneration"
    merges_in_tower = False  # `tome_tower` keeps a CLS token; SigLIP has none
    no_text_relevance = ("methods: a method needs text relevance, but llava_onevision has no CLIP space here "
                         "(its SigLIP tower has no patch projection, and the schema admits no model.scorer for it)")

    def check_config(self, cfg) -> None:
        if cfg.clip:
            raise UserError("model.clip: llava_onevision's tower is SigLIP, not a CLIP tower with a visual "
                            "projection: no relevance term from it")

    def setup(self, cfg) -> None:
        mc = self.model.config
        if mc.vision_feature_select_strategy != "full":
            raise UserError("model.checkpoint: llava_onevision supports the 'full' feature selection of its CLS-free "
                            f"SigLIP tower, not {mc.vision_feature_select_strategy!r}")
        if not mc.vision_aspect_ratio.startswith("anyres_max_"):
            raise UserError(f"model.checkpoint: vision_aspect_ratio {mc.vision_aspect_ratio!r}: only anyres_max_<n>")
        self.feature_layers = ([mc.vision_feature_layer] if isinstance(mc.vision_feature_layer, int)
                               else list(mc.vision_feature_layer))
        self.max_crops = int(mc.vision_aspect_ratio[len("anyres_max_"):])
        self.image_token_id = mc.image_token_id
        self.vision_tower = self.model.model.vision_tower
        self.probe = ReceivedAttentionProbe(vit_layers(self.vision_tower))
        vc = mc.vision_config
        self.side = vc.image_size // vc.patch_size
        self.per_crop = False
        self.layout: tuple[int, int, int] | None = None  # (crops, mosaic rows, mosaic cols) of the last batch
        self.layouts_by_count: dict[int, tuple[int, int, int]] = {}
        self._counts: tuple = (None, [])
        self.num_visual_tokens: int | None = None
        self.grid: tuple[int, int] | None = None
        self.clip = self.clip_tokenizer = self.scorer = None

    # ------------------------------------------------------------------ vision

    def arrange(self, per_crop: torch.Tensor, image_size) -> tuple[torch.Tensor, int, int]:
        """Per-crop patch values [crops, side^2, X] -> the LLM's token order without newlines
        [side^2 + rows * cols, X], and the mosaic's (rows, cols): the reshape, unpadding and
        anyres_max resize of `LlavaOnevisionModel.pack_image_features`, on any per-patch quantity."""
        side, x = self.side, per_crop.shape[-1]
        base, rest = per_crop[0], per_crop[1:]
        nph, npw = self.mosaic(image_size)
        f = rest.view(nph, npw, side, side, x).permute(4, 0, 2, 1, 3).contiguous().flatten(1, 2).flatten(2, 3)
        f = self.anyres_functions().unpad_image(f, image_size)  # [X, rows, cols]
        size = self.mosaic_tokens(*f.shape[1:])
        if size != tuple(f.shape[1:]):
            f = F.interpolate(f[None], list(size), mode="bilinear")[0]
        rows, cols = f.shape[1:]
        return torch.cat([base, f.flatten(1, 2).transpose(0, 1)]), rows, cols

    @staticmethod
    def anyres_functions():
        from transformers.models.llava_onevision import modeling_llava_onevision

        return modeling_llava_onevision

    def mosaic_tokens(self, rows: int, cols: int) -> tuple[int, int]:
        """anyres_max: past 1.1^2 x max_crops crops' worth of patches, the mosaic resized by 1 / ratio a side."""
        ratio = math.sqrt(rows * cols / (self.max_crops * self.side ** 2))
        return (int(rows // ratio), int(cols // ratio)) if ratio > 1.1 else (rows, cols)

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> VisionOutput:
        px, sizes = self.processed(images)
        b, crops = px.shape[:2]
        with self.probe:
            out = self.vision_tower(px.flatten(0, 1), output_hidden_states=True, return_dict=True)
        attn = self.probe.result()  # [B * crops, L, H, S]
        n_layers, heads = attn.shape[1:3]
        feats = torch.cat([out.hidden_states[i] for i in self.feature_layers], -1)  # what the projector reads
        tokens = self.model.model.multi_modal_projector(feats)
        s = feats.shape[1]
        per_image = lambda x: x.reshape(b, crops, s, -1)  # noqa: E731
        tokens, feats = per_image(tokens), per_image(feats)
        extras = torch.cat([feats.float(), per_image(attn.flatten(1, 2).transpose(1, 2))], -1)
        arranged_tokens, arranged, layouts = [], [], set()
        for i in range(b):
            # the tokens in their own dtype, as the model packs them; the rest in float32
            seq, rows, cols = self.arrange(tokens[i], sizes[i])
            arranged_tokens.append(seq)
            arranged.append(self.arrange(extras[i], sizes[i])[0])
            layouts.add((crops, rows, cols))
        if len(layouts) > 1:
            raise layout_error(self.name, len(layouts))
        self.layout = layouts.pop()
        tokens = torch.stack(arranged_tokens)
        feats, attn = torch.stack(arranged).split([feats.shape[-1], n_layers * heads], -1)
        n = tokens.shape[1]
        self.num_visual_tokens, self.grid = n, (1, n)
        self.layouts_by_count[n] = self.layout
        return VisionOutput(tokens=tokens, cls_attn=attn.transpose(1, 2).reshape(b, n_layers, heads, n),
                            clip_patches=torch.empty(b, n, 0, device=self.device), vit_features=feats.to(self.dtype),
                            grid=self.grid, image_sizes=[im.size for im in images])

    def encode_images_merged(self, images, spec):
        raise UserError("methods: tome merges inside the tower keeping a CLS token; llava_onevision's SigLIP tower "
                        "has none (use tome_posthoc)")

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        raise UserError(self.no_text_relevance)

    def cost_configs(self) -> dict:
        mc = self.model.config
        return {"llm": mc.text_config, "vision": mc.vision_config,
                "projector": {"in": mc.vision_config.hidden_size * len(self.feature_layers),
                              "out": mc.text_config.hidden_size, "layers": 2},
                "clip_text": None, "clip_projection": None}

    def vision_flops(self, n_tokens: int) -> int:
        """The SigLIP tower (no CLS; the model runs all its layers whichever it reads) over every
        crop's side^2 patches, and the projector over every crop's patches (before unpadding and resize)."""
        from ..cost import LayerShape, layer_macs, projector_flops

        vc = self.model.config.vision_config
        s = LayerShape.from_config(vc, gated=False)
        n = self.side ** 2
        embed = n * vc.num_channels * vc.patch_size ** 2 * s.d
        per_crop = 2 * (embed + s.layers * layer_macs(s, n)) + projector_flops(self.cost_configs()["projector"], n)
        return self.layout_for(n_tokens)[0] * per_crop
