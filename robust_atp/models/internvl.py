"""InternVL (`InternVLForConditionalGeneration`: InternVL3 and its -hf checkpoints) behind the
adapter protocol.

The processor cuts an image into tiles (`crop_to_patches`: up to `max_patches` tiles of the
ViT's size, plus a thumbnail of the whole image when there is more than one); the InternViT
sees each tile with its CLS token; the model drops the CLS (`vision_feature_select_strategy:
default`), pixel-shuffles every 2x2 group of patches into one token (`downsample_ratio` 0.5:
4 patches' features side by side) and projects it. The LLM reads `<img>`, the tiles' tokens
tile after tile (the thumbnail last), `</img>`: no newlines, 1-D positions. Here:

    tokens        the projected tokens of every tile, in that order [B, tiles * S / 4, D]
    cls_attn      per ViT layer, each tile's CLS -> patch attention (hooked q and k after the
                  tower's q / k norms, so it works under sdpa), pooled over the 2x2 patches of
                  each token by the model's own `pixel_shuffle` (summed: the CLS attention the
                  token's four patches get)                                   [B, L, H, N]
    vit_features  the pixel-shuffled features the projector reads
    grid          the token grid of one tile (rows, cols) when there is one tile, else (1, N)

Selection methods prune these tokens before the LLM; merged tokens (tome_posthoc, pool) go in
as the method returns them (there are no newlines or 2-D positions to keep). Refused, one line
each: `tome` inside the tower and `visionzip` (both merge ViT tokens before the projector, and
the pixel shuffle there needs whole 2x2 groups), PruMerge+ / CDPruner (no CLIP projection of this
tower), FastV, and a text relevance term (the schema admits no `model.scorer` for this adapter).
"""
from __future__ import annotations


import torch
from PIL import Image

from ..data.images import to_rgb
from ..errors import UserError
from .base import FeatureLayer, VisionOutput, register_adapter
from .llava import LlavaAdapter
from .probes import QKProbe


class NormedClsAttentionProbe(QKProbe):
    """Hooks on each InternViT layer's q_norm / k_norm (identities when the tower has no q-k norm):
    the CLS row of softmax(q k^T * scale) per head, CLS column dropped: [tiles, L, H, S]; and
    every layer's keys, for the layer the projector reads."""

    def __init__(self, layers: list):
        super().__init__(layers, lambda layer: (layer.attention.q_norm, layer.attention.k_norm), lambda i: True)

    def result(self) -> torch.Tensor:
        rows = []
        for i, layer in enumerate(self.layers):
            attn = layer.attention
            h, hd = attn.num_heads, attn.head_dim
            q = self.q[i].float().view(-1, h, hd)  # [tiles, H, hd]: the CLS query
            k = self.k[i].float()
            k = k.view(k.shape[0], k.shape[1], h, hd)
            rows.append((torch.einsum("bhd,bthd->bht", q, k) * attn.scale).softmax(-1)[..., 1:])
        return torch.stack(rows, 1)


@register_adapter("internvl")
class InternVLAdapter(LlavaAdapter):
    # InternVL3-hf's chat template without its system turn
    default_prompt = "<|im_start|>user\n<image>\n{question}<|im_end|>\n<|im_start|>assistant\n"
    hf_class = "InternVLForConditionalGeneration"
    merges_in_tower = False  # the pixel shuffle needs whole 2x2 patch groups after the tower
    in_llm_pruning = False  # FastV is refused; `run_llm` (LLaVA's) times the LLM as on LLaVA
    in_llm_refusal = " (not wired for its LLM: LLaVA-1.5 only)"
    fuses_generation = False  # the fused and prefix paths are proven on LLaVA-1.5 only
    reuses_prefix = False
    lean_decoding = False  # the staged decoder is proven on LLaVA-1.5's layout only
    no_text_relevance = ("methods: a method needs text relevance, but internvl's InternViT is not in a CLIP space "
                         "(and the schema admits no model.scorer for this adapter)")

    def check_config(self, cfg) -> None:
        if cfg.clip:
            raise UserError("model.clip: internvl's InternViT is not a CLIP tower with a visual projection")

    def setup(self, cfg) -> None:
        mc = self.model.config
        if mc.vision_feature_select_strategy != "default" or not isinstance(mc.vision_feature_layer, int):
            raise UserError("model.checkpoint: internvl supports the 'default' feature selection (CLS dropped) from "
                            "one ViT layer")
        if mc.downsample_ratio != 0.5:
            raise UserError(f"model.checkpoint: internvl: downsample_ratio {mc.downsample_ratio}, only 0.5 (2x2 pixel "
                            "shuffle) is supported")
        self.image_token_id = self.processor.image_token_id
        self.image_text = (self.processor.start_image_token + self.processor.image_token
                           + self.processor.end_image_token)
        self.vision_tower = self.model.model.vision_tower
        self.probe = NormedClsAttentionProbe(list(self.vision_tower.encoder.layer))
        vc = mc.vision_config
        self.side = vc.image_size[0] // vc.patch_size[0]  # patches a tile side
        self.tiles: int | None = None
        self.grid: tuple[int, int] | None = None
        self.num_visual_tokens: int | None = None
        self.clip = self.clip_tokenizer = None

    # ------------------------------------------------------------------ vision

    def processed(self, images: list[Image.Image]) -> torch.Tensor:
        """pixel_values [B, tiles, 3, S, S], tiled as the processor tiles them (`crop_to_patches`)."""
        out = self.processor.image_processor(images=[to_rgb(im) for im in images], crop_to_patches=True,
                                             return_tensors="pt")
        tiles = set(out["num_patches"].tolist() if hasattr(out["num_patches"], "tolist") else out["num_patches"])
        if len(tiles) > 1:
            raise UserError("perturbations.image.resolution: internvl cuts images of different sizes into different "
                            f"numbers of tiles ({sorted(tiles)} in one batch); set a canonical resolution so every "
                            "image has the same number of visual tokens")
        px = out["pixel_values"]
        return px.view(len(images), -1, *px.shape[1:]).to(self.device, self.dtype)

    def shuffled(self, x: torch.Tensor) -> torch.Tensor:
        """Per-patch values of each tile [T, S, X] -> the model's pixel shuffle [T, S / 4, 4 X]:
        each token's four patches' values side by side, in the model's token order."""
        t = x.shape[0]
        x = self.model.model.pixel_shuffle(x.reshape(t, self.side, self.side, -1).contiguous(), scale_factor=0.5)
        return x.reshape(t, -1, x.shape[-1])

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> VisionOutput:
        mc = self.model.config
        px = self.processed(images)
        b, tiles = px.shape[:2]
        with self.probe:
            out = self.vision_tower(pixel_values=px.flatten(0, 1), output_hidden_states=True, return_dict=True)
        layer = mc.vision_feature_layer
        hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]  # as get_image_features
        cls_attn = self.probe.result()  # [b * tiles, L, H, S]
        n_layers, heads = cls_attn.shape[1:3]
        feats = self.shuffled(hidden[:, 1:])  # [b * tiles, S / 4, 4 C]
        tokens = self.model.model.multi_modal_projector(feats)
        pooled = self.shuffled(cls_attn.flatten(1, 2).transpose(1, 2).float())  # [b * tiles, S / 4, 4 L H]
        pooled = pooled.view(*pooled.shape[:2], 4, n_layers * heads).sum(2)
        per_tile = tokens.shape[1]
        n = tiles * per_tile
        sal = pooled.view(b, n, n_layers, heads).permute(0, 2, 3, 1)
        self.tiles, self.num_visual_tokens = tiles, n
        half = self.side // 2
        self.grid = (half, half) if tiles == 1 else (1, n)
        keys = self.probe.k[self.feature_block()] if self.feature_block() >= 0 else None
        feature_layer = None
        if keys is not None:  # for VisionZip, which reads it and is refused by `project`
            per_image = lambda x: x.reshape(b, tiles, *x.shape[1:])  # noqa: E731
            h_, hd = self.probe.layers[0].attention.num_heads, self.probe.layers[0].attention.head_dim
            feature_layer = FeatureLayer(hidden=per_image(hidden), keys=per_image(keys.view(*keys.shape[:2], h_, hd)
                                                                                     .mean(2)),
                                         cls_attn=per_image(cls_attn[:, self.feature_block()]),
                                         project=_refuse_pre_projector_merge)
        self.probe.q.clear()
        self.probe.k.clear()
        return VisionOutput(tokens=tokens.reshape(b, n, -1), cls_attn=sal,
                            clip_patches=torch.empty(b, n, 0, device=self.device),
                            vit_features=feats.reshape(b, n, -1), grid=self.grid,
                            image_sizes=[im.size for im in images], feature_layer=feature_layer)

    def feature_block(self) -> int:
        """Index of the ViT block whose output the projector reads (-1: the embeddings)."""
        layer = self.model.config.vision_feature_layer
        n = len(self.probe.layers)
        return (n + layer if layer < 0 else layer - 1)

    def encode_images_merged(self, images, spec):
        raise UserError("methods: tome merges ViT tokens inside internvl's tower, but its pixel shuffle needs whole "
                        "2x2 patch groups after it (use tome_posthoc)")

    def token_count_refusal(self) -> str:
        return f"{self.name} cuts every image into fixed-size tiles"

    def patch_geometry(self) -> None:
        """None: tiles have no single patch grid, so object recall is not measured."""
        return None

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        raise UserError(self.no_text_relevance)

    def cost_configs(self) -> dict:
        mc = self.model.config
        return {"llm": mc.text_config, "vision": _vision_shape(mc.vision_config),
                "projector": {"in": mc.vision_config.hidden_size * 4, "out": mc.text_config.hidden_size, "layers": 2},
                "clip_text": None, "clip_projection": None}

    def vision_flops(self, n_tokens: int) -> int:
        """The InternViT over every tile (its S patches + CLS, all its layers) and the projector
        over every tile's S / 4 tokens."""
        from ..cost import vision_flops

        return self.tiles * vision_flops(_vision_shape(self.model.config.vision_config), self.side ** 2,
                                         None) + _projector_flops(self, self.tiles * self.side ** 2 // 4)

    # ------------------------------------------------------------------ language

    def tokenized_prompt(self, question: str) -> str:
        """The suite's `<image>` as `<img><IMG_CONTEXT></img>`, as the processor writes it (one
        context token per visual token)."""
        return self.prompt(question).replace("<image>", self.image_text)

    @torch.inference_mode()
    def generate(self, visual_tokens: list[torch.Tensor], questions: list[str], in_llm=None) -> list[str]:
        self.refuse_in_llm(in_llm)
        return super().generate(visual_tokens, questions)

    def reference_inputs(self, images: list[Image.Image], questions: list[str]) -> dict:
        """What the HF processor gives (left-padded), for the model's own `generate`."""
        texts = [self.prompt(q).replace("<image>", self.processor.image_token) for q in questions]
        enc = self.processor(text=texts, images=[to_rgb(im) for im in images], return_tensors="pt", padding=True)
        return {k: v.to(self.device) for k, v in enc.items()}


def _refuse_pre_projector_merge(features):
    raise UserError("methods: visionzip merges ViT tokens before the projector, but internvl pixel-shuffles whole "
                    "2x2 patch groups there (use a selection method or tome_posthoc)")


def _projector_flops(adapter, n: int) -> int:
    from ..cost import projector_flops

    return projector_flops(adapter.cost_configs()["projector"], n)


def _vision_shape(vc):
    """InternViT's config in the names `cost` reads (square tiles; a plain MLP)."""
    from types import SimpleNamespace

    return SimpleNamespace(num_hidden_layers=vc.num_hidden_layers, hidden_size=vc.hidden_size,
                           intermediate_size=vc.intermediate_size, num_attention_heads=vc.num_attention_heads,
                           num_key_value_heads=vc.num_attention_heads,
                           head_dim=vc.hidden_size // vc.num_attention_heads, model_type="clip_vision_model",
                           patch_size=vc.patch_size[0], num_channels=vc.num_channels)
