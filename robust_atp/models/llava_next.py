"""LLaVA-NeXT (`LlavaNextForConditionalGeneration`) behind the adapter protocol.

Any-resolution input: the image is seen as a base crop (the whole image at the ViT's size)
plus a mosaic of crops of the best-fitting pinpoint resolution, unpadded to the image's aspect
ratio. The LLM reads the base crop's tokens, then the mosaic row by row, each row closed by the
learned `image_newline` token. Here:

    tokens        the N = side^2 + rows * cols patch tokens (base, then the mosaic row-major),
                  without newlines: every method ranks and counts patch tokens only
    cls_attn      each token's own crop's CLS attention (every crop runs the ViT with its CLS)
    clip_patches  `model.clip` (the same CLIP tower, as for LLaVA-1.5) or `model.scorer`
                  (an open_clip map resized onto the base grid and onto the mosaic)
    grid          (1, N): there is no single 2-D grid across crops, so grid methods
                  (uniform, pool) spread along the token sequence

Newlines: a mosaic row's newline is kept iff at least one token of that row is kept, so the
LLM reads the kept tokens in their order with the row structure it was trained on; newlines
are not counted in K (they carry no image content), but the LLM's prefill FLOPs count them.
Merged tokens (tome, pool, visionzip) have no row: they go in as returned, without newlines.

Budgets (`model.budget_scope`): `global` (default) ranks all N tokens together; `per_crop`
gives each crop (the base and every mosaic crop) its share of the budget (`vision.crop_ids`).

Every image of a batch must have the same token layout (the same size): set
`perturbations.image.resolution` for data whose images differ in size.

Downsampling: N follows the image size (the best pinpoint, then the unpadding to the image's
aspect ratio), so `image_size_for_tokens` counts, with the model's own layout functions, the
tokens of every smaller size of the image's aspect ratio and picks the one nearest a budget. A
resized pass has its own layout: `generation_inputs` hands it to `generate` (its rows'
newlines), and its rows' counts and tower FLOPs read it by its token count (`layout_for`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from ..data.images import to_rgb
from ..errors import UserError
from .base import FeatureLayer, VisionOutput, register_adapter
from .llava import ClsAttentionProbe, LlavaAdapter, merged_output, vit_layers
from .scorer import load_scorer
from .tome_tower import merged_tower


@register_adapter("llava_next")
class LlavaNextAdapter(LlavaAdapter):
    default_prompt = "[INST] <image>\n{question} [/INST]"  # llava-v1.6-mistral-7b-hf's chat template
    hf_class = "LlavaNextForConditionalGeneration"
    places_tokens_by_grid = True  # newlines follow the rows of the kept tokens
    # LLaVA's LLM loop has no newlines, so neither timing nor FastV runs over this layout
    timed_llm_passes = False
    in_llm_pruning = False
    in_llm_refusal = " (its visual tokens carry row newlines the in-LLM passes do not lay out)"
    fuses_generation = False  # not shown safe on its any-resolution layout (kept indices per example)
    reuses_prefix = False
    lean_decoding = False  # the staged decoder is proven on LLaVA-1.5's layout only
    token_count_follows_image = True  # the best pinpoint and the unpadding follow the image size
    pass_state = ("grid", "num_visual_tokens", "layout")

    def setup(self, cfg) -> None:
        mc = self.model.config
        if mc.vision_feature_select_strategy != "default" or not isinstance(mc.vision_feature_layer, int):
            raise UserError("model.checkpoint: only the 'default' feature selection from one ViT layer is supported")
        self.image_token_id = mc.image_token_id
        self.vision_tower = self.model.model.vision_tower
        self.probe = ClsAttentionProbe(vit_layers(self.vision_tower))
        vc = mc.vision_config
        self.side = vc.image_size // vc.patch_size
        self.per_crop = cfg.budget_scope == "per_crop"
        self.layout: tuple[int, int, int] | None = None  # (crops, mosaic rows, mosaic cols) of the last batch
        self.layouts_by_count: dict[int, tuple[int, int, int]] = {}  # tokens -> the layout of a pass giving them
        self._counts: tuple = (None, [])  # (image size, `counts_by_size`) of the last image size asked
        self.num_visual_tokens: int | None = None
        self.grid: tuple[int, int] | None = None
        self.clip = self.clip_tokenizer = None
        if cfg.clip and cfg.scorer:
            raise UserError("model.scorer: give either 'clip' (the VLM's own CLIP tower) or 'scorer', not both")
        if cfg.clip:
            self._load_clip(cfg.clip, vc.hidden_size)
        self.scorer = load_scorer(cfg.scorer, self.device) if cfg.scorer else None

    # ------------------------------------------------------------------ vision

    def processed(self, images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values [B, crops, 3, S, S], image_sizes [B, 2] as (h, w)) as the processor makes them."""
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        out = self.processor.image_processor(images=[to_rgb(im) for im in images], return_tensors="pt")
        crops = {image_size_to_num_patches(s, self.model.config.image_grid_pinpoints,
                                           self.model.config.vision_config.image_size) for s in out["image_sizes"]}
        if len(crops) > 1:
            raise layout_error(self.name, len(crops))
        px = out["pixel_values"][:, :crops.pop()]  # a processor may pad every image to the batch's most crops
        return px.to(self.device, self.dtype), out["image_sizes"]

    def arrange(self, per_crop: torch.Tensor, image_size) -> tuple[torch.Tensor, int, int]:
        """Per-crop patch values [crops, side^2, X] -> the LLM's token order without newlines
        [side^2 + rows * cols, X], and the mosaic's (rows, cols): the same reshape and unpadding
        as `LlavaNextModel.pack_image_features`, applied to any per-patch quantity."""
        side, x = self.side, per_crop.shape[-1]
        base, rest = per_crop[0], per_crop[1:]
        nph, npw = self.mosaic(image_size)
        f = rest.view(nph, npw, side, side, x).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
        f = self.anyres_functions().unpad_image(f, image_size)  # [X, rows, cols]
        rows, cols = f.shape[1:]
        return torch.cat([base, f.flatten(1, 2).transpose(0, 1)]), rows, cols

    @staticmethod
    def anyres_functions():
        """The modeling module whose `get_anyres_image_grid_shape` and `unpad_image` the model uses."""
        from transformers.models.llava_next import modeling_llava_next

        return modeling_llava_next

    def mosaic_tokens(self, rows: int, cols: int) -> tuple[int, int]:
        """The (rows, cols) of tokens the LLM reads for an unpadded mosaic of rows x cols patches."""
        return rows, cols

    def token_count(self, image_size: tuple[int, int]) -> int:
        """N for an image of (width, height): the base crop's side^2 patches plus the mosaic of
        the best pinpoint's crops, unpadded to the image's aspect ratio (the model's own
        functions, on an empty tensor of the mosaic's patch grid)."""
        w, h = image_size
        nph, npw = self.mosaic((h, w))
        grid = self.anyres_functions().unpad_image(torch.empty(0, nph * self.side, npw * self.side), (h, w))
        rows, cols = self.mosaic_tokens(*grid.shape[1:])
        return self.side ** 2 + rows * cols

    def counts_by_size(self, image_size: tuple[int, int]) -> list[tuple[int, tuple[int, int]]]:
        """(N, (width, height)) of every smaller size of the image's aspect ratio, the longer side
        stepping by one pixel and the shorter side rounded, down to a shorter side of one ViT patch
        (smaller images are not images the processor reads reliably); the last image size's is
        kept (a batch's images share one size)."""
        if self._counts[0] != image_size:
            w, h = image_size
            long, short = max(w, h), min(w, h)
            patch = self.model.config.vision_config.patch_size
            out = []
            for side in range(long, 0, -1):
                other = round(short * side / long)
                if other < patch:
                    break
                size = (side, other) if w >= h else (other, side)
                out.append((self.token_count(size), size))
            self._counts = (image_size, out)
        return self._counts[1]

    def image_size_for_tokens(self, image_size: tuple[int, int], target_tokens: int) -> tuple[int, int]:
        """(width, height) of the image's aspect ratio whose N (`token_count`) is nearest
        target_tokens without exceeding the full image's (ties: the fewer tokens, then the larger
        size); a count equal to the full one keeps the image as it is. A budget below the smallest
        count a resize reaches (the base crop and the smallest pinpoint's unpadded crops) gets it."""
        full = self.token_count(image_size)
        if target_tokens >= full:
            return image_size
        best = min((((abs(n - target_tokens), n, -s[0] * s[1]), s) for n, s in self.counts_by_size(image_size)
                    if n <= full), default=None)
        return image_size if best is None or best[0][1] == full else best[1]

    def resized_image(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        """The image at `size` by the processor's resampling filter (bicubic)."""
        return to_rgb(image).resize(size, Image.Resampling(int(self.processor.image_processor.resample)))

    def layout_for(self, n: int | None) -> tuple[int, int, int]:
        """(crops, mosaic rows, mosaic cols) of the pass that gave n tokens: the shared pass's,
        or the last resized pass's with that count (None: the shared pass)."""
        if n is None or n == self.num_visual_tokens:
            return self.layout
        return self.layouts_by_count[n]

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> VisionOutput:
        mc = self.model.config
        px, sizes = self.processed(images)
        b, crops = px.shape[:2]
        with self.probe:
            out = self.vision_tower(px.flatten(0, 1), output_hidden_states=True, return_dict=True)
        keys = self.feature_keys()
        attn = self.probe.result()  # [B * crops, L, H, side^2]
        n_layers, heads = attn.shape[1:3]
        hidden = out.hidden_states[mc.vision_feature_layer]
        layer = None
        if keys is not None:  # per crop, for VisionZip's official any-resolution path
            per_image = lambda x: x.view(b, crops, *x.shape[1:])
            layer = FeatureLayer(hidden=per_image(hidden), keys=per_image(keys),
                                 cls_attn=per_image(attn[:, self.feature_block()]),
                                 project=self.model.model.multi_modal_projector, mosaic=self.mosaic(sizes[0]))
        feats = hidden[:, 1:]
        tokens = self.model.model.multi_modal_projector(feats)
        parts = [tokens.float(), feats.float(), attn.flatten(1, 2).transpose(1, 2)]
        if self.clip is not None:
            post_ln = getattr(self.vision_tower, "vision_model", self.vision_tower).post_layernorm
            parts.append(self.clip.visual_projection(post_ln(out.hidden_states[-1][:, 1:])).float())
        crop_id = torch.arange(crops, device=self.device).repeat(b).view(-1, 1, 1).expand(-1, feats.shape[1], 1)
        parts.append(crop_id.float())
        widths = [p.shape[-1] for p in parts]
        per_crop = torch.cat(parts, -1).view(b, crops, feats.shape[1], -1)
        arranged, layouts = [], set()
        for i in range(b):
            seq, rows, cols = self.arrange(per_crop[i], sizes[i])
            arranged.append(seq)
            layouts.add((crops, rows, cols))
        if len(layouts) > 1:
            raise layout_error(self.name, len(layouts))
        self.layout = layouts.pop()
        tokens, feats, attn, *rest = torch.stack(arranged).split(widths, -1)
        crop_ids = rest[-1][0, :, 0].long()
        n = tokens.shape[1]
        self.num_visual_tokens, self.grid = n, (1, n)
        self.layouts_by_count[n] = self.layout
        cls_attn = attn.transpose(1, 2).reshape(b, n_layers, heads, n)
        if self.clip is not None:
            clip_patches = rest[0]
        elif self.scorer is not None:
            maps = self.scorer.patch_grid(images).float()
            _, rows, cols = self.layout
            clip_patches = torch.cat([F.interpolate(maps, size=g, mode="bilinear", align_corners=False).flatten(2)
                                      for g in ((self.side, self.side), (rows, cols))], 2).transpose(1, 2)
        else:
            clip_patches = torch.empty(b, n, 0, device=self.device)
        return VisionOutput(tokens=tokens.to(self.dtype), cls_attn=cls_attn, clip_patches=clip_patches,
                            vit_features=feats.to(self.dtype), grid=self.grid, image_sizes=[im.size for im in images],
                            crop_ids=crop_ids if self.per_crop else None, feature_layer=layer)

    def mosaic(self, image_size) -> tuple[int, int]:
        """(rows, cols) of the any-resolution crops after the base crop, for an image of (h, w)."""
        rows, cols = self.anyres_functions().get_anyres_image_grid_shape(
            image_size, self.model.config.image_grid_pinpoints, self.model.config.vision_config.image_size)
        return int(rows), int(cols)

    @torch.inference_mode()
    def encode_images_merged(self, images: list[Image.Image], spec) -> VisionOutput:
        """ToMe inside the tower, every crop (the base and the mosaic's) merged to K patch tokens
        (K of its side^2): tokens [B, crops * K, D], crop after crop in ToMe's order, no newlines."""
        px, sizes = self.processed(images)
        b, crops = px.shape[:2]
        hidden, size = merged_tower(self.vision_tower, px.flatten(0, 1), spec, self.model.config.vision_feature_layer)
        feats = hidden[:, 1:].reshape(b, -1, hidden.shape[-1])
        return merged_output(feats, size[:, 1:].reshape(b, -1), self.model.model.multi_modal_projector,
                             [im.size for im in images])

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        if self.scorer is not None:
            return self.scorer.encode_texts(texts)
        return super().encode_texts(texts)

    def patch_geometry(self) -> None:
        """None: crops have no single patch grid, so object recall is not measured."""
        return None

    def cost_configs(self) -> dict:
        cfgs = super().cost_configs()
        if self.scorer is not None:
            cfgs.update(clip_text=None, clip_projection=None)
        return cfgs

    def vision_flops(self, n_tokens: int) -> int:
        """The ViT and projector over every crop (the base and the mosaic), before unpadding."""
        from ..cost import vision_flops

        mc = self.model.config
        proj = {"in": mc.vision_config.hidden_size, "out": mc.text_config.hidden_size, "layers": 2}
        return self.layout_for(n_tokens)[0] * vision_flops(mc.vision_config, self.side ** 2, proj)

    def llm_visual_tokens(self, k: int, kept: torch.Tensor | None = None, n: int | None = None) -> int:
        """What the LLM reads for k kept tokens: k plus the newlines of the mosaic rows they touch
        (in the layout of the pass that gave n tokens)."""
        if kept is None:
            return k
        mosaic = kept[kept >= self.side ** 2] - self.side ** 2
        return k + len(torch.unique(mosaic // self.layout_for(n)[2]))

    # ------------------------------------------------------------------ language

    def generation_inputs(self, vision, kept_indices: list) -> dict:
        """The kept indices and the layout of the pass they index (a resized pass has its own)."""
        return {"kept_indices": kept_indices, "layout": self.layout_for(vision.tokens.shape[1])}

    def visual_sequence(self, tokens: torch.Tensor, kept: torch.Tensor | None,
                        layout: tuple[int, int, int] | None = None) -> torch.Tensor:
        """Kept tokens [K, D] -> what the LLM reads: the base crop's, then each mosaic row's kept
        tokens followed by the row's newline (a row with none kept has no newline). layout: the
        pass's (crops, rows, cols) (None: the shared pass's)."""
        if kept is None:
            return tokens
        kept = kept.to(tokens.device)
        base_n, cols = self.side ** 2, (layout or self.layout)[2]
        row = torch.where(kept >= base_n, (kept - base_n) // cols, -1)
        ends = torch.ones_like(row, dtype=torch.bool)
        ends[:-1] = row[1:] != row[:-1]
        newline = self.model.model.image_newline.to(tokens.dtype)
        out = []
        for t, r, end in zip(tokens, row.tolist(), ends.tolist()):
            out.append(t)
            if r >= 0 and end:
                out.append(newline)
        return torch.stack(out)

    @torch.inference_mode()
    def generate(self, visual_tokens: list[torch.Tensor], questions: list[str], in_llm=None,
                 kept_indices: list[torch.Tensor | None] | None = None,
                 layout: tuple[int, int, int] | None = None) -> list[str]:
        """kept_indices: per example the indices of visual_tokens among the N patch tokens
        (None for merged tokens, which go in without newlines); layout: of the pass they index
        (None: the shared pass's)."""
        self.refuse_in_llm(in_llm)
        if kept_indices is None:
            kept_indices = [torch.arange(len(t)) if len(t) == self.num_visual_tokens else None for t in visual_tokens]
        seqs = [self.visual_sequence(t.to(self.dtype), i, layout) for t, i in zip(visual_tokens, kept_indices)]
        return super().generate(seqs, questions)

    def reference_inputs(self, images: list[Image.Image], questions: list[str]) -> dict:
        """What the HF processor gives (left-padded), for the model's own `generate`."""
        self.tokenizer.padding_side = "left"
        enc = self.processor(text=[self.prompt(q) for q in questions], images=[to_rgb(im) for im in images],
                             return_tensors="pt", padding=True)
        return {k: v.to(self.device) for k, v in enc.items()}


def layout_error(adapter: str, n: int) -> UserError:
    return UserError(f"perturbations.image.resolution: {adapter} gives images of different sizes different token "
                     f"layouts ({n} in one batch); set a canonical resolution so every image has the same number "
                     "of visual tokens")
