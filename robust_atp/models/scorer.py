"""An external CLIP scorer (open_clip) for VLMs whose vision tower is not in a CLIP space.

ATP's relevance term needs each visual token and the question in one joint space. When the
VLM's own tower has no such space (Qwen2-VL), an open_clip model supplies it: its ViT's patch
tokens after `ln_post` and the projection (as TRIM projects CLIP patches), laid out on its own
patch grid and resized bilinearly onto the VLM's token grid, and its text tower for the
question. The scorer sees the image through its own preprocessing (resize the shortest side,
centre-crop): with a canonical square resolution both models see the whole image.

Suite schema (`model.scorer`):

    kind: open_clip
    model: ViT-B-32 | <path to an open_clip model config .json> | local-dir:<dir> | hf-hub:<repo>
    pretrained: <tag, e.g. openai> | <path to a checkpoint> | null (random weights: tests only)
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import UserError


def load_scorer(cfg, device: torch.device) -> "OpenClipScorer":
    if cfg.kind != "open_clip":
        raise UserError(f"model.scorer.kind: unknown scorer {cfg.kind!r}; known: open_clip")
    return OpenClipScorer(cfg.model, cfg.pretrained, device)


class OpenClipScorer:
    def __init__(self, model: str, pretrained: str | None, device: torch.device):
        import open_clip

        name = model
        if model.endswith(".json"):  # a model config as data: register it under its file name
            path = Path(model).expanduser()
            if not path.is_file():
                raise UserError(f"model.scorer.model: {model!r}: no such config file")
            open_clip.add_model_config(path)
            name = path.stem
        elif ":" not in model and model not in open_clip.list_models():
            raise UserError(f"model.scorer.model: unknown open_clip model {model!r} "
                            "(a built-in name, a config .json, local-dir:<dir> or hf-hub:<repo>)")
        if pretrained is not None and ("/" in pretrained or pretrained.startswith((".", "~"))):
            if not Path(pretrained).expanduser().is_file():
                raise UserError(f"model.scorer.pretrained: {pretrained!r}: no such checkpoint file")
            pretrained = str(Path(pretrained).expanduser())
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, device=device, pretrained_text=False)
        except RuntimeError as e:
            raise UserError(f"model.scorer: cannot load {model!r} / {pretrained!r}: {str(e).splitlines()[0]}") from None
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self.device = device
        visual = self.model.visual
        if not hasattr(visual, "output_tokens") or not hasattr(visual, "conv1"):
            raise UserError(f"model.scorer.model: {model!r} has no ViT patch tokens (a ViT open_clip model is needed)")

    @torch.inference_mode()
    def patch_grid(self, images: list[Image.Image]) -> torch.Tensor:
        """Projected patch tokens on the scorer's own grid: [B, P, g_rows, g_cols]."""
        px = torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)
        visual = self.model.visual
        visual.output_tokens = True  # only here: encode_image keeps returning the pooled embedding
        try:
            _, tokens = visual(px)  # [B, g*g, width], after ln_post
        finally:
            visual.output_tokens = False
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        gh, gw = visual.grid_size
        return tokens.transpose(1, 2).reshape(len(images), -1, gh, gw)

    def patches(self, images: list[Image.Image], grid: tuple[int, int]) -> torch.Tensor:
        """The scorer's patches resized (bilinear) onto the VLM's (rows, cols) token grid: [B, rows*cols, P]."""
        maps = self.patch_grid(images).float()
        out = F.interpolate(maps, size=grid, mode="bilinear", align_corners=False)
        return out.flatten(2).transpose(1, 2)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings in the joint space: [B, P]."""
        return self.model.encode_text(self.tokenizer(texts).to(self.device)).float()
