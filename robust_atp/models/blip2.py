"""BLIP-2 (`Blip2ForConditionalGeneration`) behind the adapter protocol.

BLIP-2's LLM never sees ViT tokens: a Q-Former reads them through cross-attention and hands
the LLM a fixed number of query tokens (32 in the released checkpoints). So here the tokens a
method prunes are the ViT's patch tokens on their way into the Q-Former:

    tokens, vit_features  the ViT's last hidden states (post-LayerNorm), patches only  [B, N, C]
    cls_attn              CLS -> patch attention of every ViT layer                    [B, L, H, N]
    clip_patches          only through an external scorer (`model.scorer`): the ViT is not in a CLIP space

The ViT's CLS token always goes to the Q-Former with the kept patches (it is not a patch; K
counts patches). Pruning changes nothing in the LLM: its prefill is the same for every method
(`flops_ratio` 1.0) and the saving is the Q-Former's cross-attention over fewer ViT tokens,
reported as `qformer_flops` and included in `vision_flops`.
"""
from __future__ import annotations

import functools

import torch
from PIL import Image

from ..data.images import to_rgb
from ..errors import UserError
from .base import FeatureLayer, VisionOutput, generate_greedy, prompt_ids_for_penalties, register_adapter
from .hf_base import HFAdapter, left_pad
from .probes import HookProbe
from .scorer import load_scorer


class FusedQkvClsProbe(HookProbe):
    """CLS -> patch attention from the fused qkv projection of each ViT layer (no rotary):
    softmax(q_cls k^T * scale) per head, CLS column dropped: [B, L, H, N]."""

    records = ("rows",)

    def __init__(self, layers: list):
        super().__init__()
        self.layers = layers
        self.rows: dict[int, torch.Tensor] = {}
        self.last_keys: torch.Tensor | None = None  # the last layer's keys averaged over heads [B, T, hd]
        for i, layer in enumerate(layers):
            self.hook(layer.self_attn.qkv, functools.partial(self._row, i))

    def _row(self, i, module, args, out):
        attn = self.layers[i].self_attn
        b, t, _ = out.shape
        qkv = out.float().view(b, t, 3, attn.num_heads, attn.head_dim)
        logits = torch.einsum("bhd,bthd->bht", qkv[:, 0, 0], qkv[:, :, 1]) * attn.scale
        self.rows[i] = logits.softmax(-1)[..., 1:]
        if i == len(self.layers) - 1:
            self.last_keys = out.view(b, t, 3, attn.num_heads, attn.head_dim)[:, :, 1].mean(2)

    def result(self) -> torch.Tensor:
        out = torch.stack([self.rows[i] for i in range(len(self.layers))], 1)
        self.rows.clear()
        return out


@register_adapter("blip2")
class Blip2Adapter(HFAdapter):
    hf_class = "Blip2ForConditionalGeneration"
    merges_in_tower = False  # its attention takes no bias, so no ToMe proportional attention inside the ViT
    in_llm_refusal = " (its LLM sees query tokens only)"
    no_text_relevance = ("model.scorer: a method needs text relevance, but BLIP-2's ViT is not in a CLIP space: "
                         "name an external scorer (model.scorer: {kind: open_clip, ...})")

    default_prompt = "<image>Question: {question} Answer:"  # LAVIS's VQA prompt for BLIP-2 OPT

    def check_prompt(self, prompt: str) -> None:
        if not prompt.startswith("<image>"):
            raise UserError("model.prompt: BLIP-2 puts its query tokens before the text: the prompt must start "
                            "with '<image>'")

    def setup(self, cfg) -> None:
        mc = self.model.config
        if not mc.use_decoder_only_language_model:
            raise UserError("model.checkpoint: only BLIP-2 with a decoder-only LLM (OPT) is supported, not Flan-T5")
        self.probe = FusedQkvClsProbe(list(self.model.vision_model.encoder.layers))
        vc = mc.vision_config
        side = vc.image_size // vc.patch_size
        self.grid = (side, side)
        self.num_visual_tokens = side * side
        self.num_query_tokens = mc.num_query_tokens
        self.scorer = load_scorer(cfg.scorer, self.device) if cfg.scorer else None

    def generation_source(self):
        # HF's Blip2ForConditionalGeneration.generate hands over to its language model's generate,
        # which reads the language model's generation config (its text config's EOS: OPT's "\n")
        return self.model.language_model

    # ------------------------------------------------------------------ vision

    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        px = self.processor.image_processor(images=[to_rgb(im) for im in images], return_tensors="pt")["pixel_values"]
        return px.to(self.device, self.dtype)

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> VisionOutput:
        with self.probe:
            out = self.model.vision_model(self.pixel_values(images), return_dict=True)
        hidden = out.last_hidden_state  # what the Q-Former reads: [B, 1 + N, C]
        patches = hidden[:, 1:]
        if self.scorer is not None:
            clip_patches = self.scorer.patches(images, self.grid)
        else:
            clip_patches = torch.empty(len(images), patches.shape[1], 0, device=self.device)
        cls_attn = self.probe.result()
        # VisionZip merges what the Q-Former reads: the post-LayerNorm output of the last layer,
        # matched on that layer's keys; the adapter adds the CLS token to every method's tokens
        layer = FeatureLayer(hidden=hidden[:, None], keys=self.probe.last_keys.to(hidden.dtype)[:, None],
                             cls_attn=cls_attn[:, -1, None], project=lambda x: x, cls_prepended=True)
        return VisionOutput(tokens=patches, cls_attn=cls_attn, clip_patches=clip_patches,
                            vit_features=patches, grid=self.grid, image_sizes=[im.size for im in images],
                            feature_layer=layer)

    def generation_inputs(self, vision, kept_indices: list) -> dict:
        """The batch's CLS tokens [B, C], which go to the Q-Former with every method's kept patches."""
        return {"cls_tokens": vision.feature_layer.hidden[:, 0, 0]}

    @torch.inference_mode()
    def query_tokens(self, visual_tokens: list[torch.Tensor], cls_tokens: torch.Tensor) -> torch.Tensor:
        """The Q-Former over each example's CLS ([B, C], from the same vision pass) + kept ViT
        tokens (right-padded, masked), projected for the LLM: [B, num_query_tokens, D]."""
        if len(cls_tokens) != len(visual_tokens):
            raise ValueError(f"blip2: {len(cls_tokens)} CLS tokens for {len(visual_tokens)} examples")
        rows = [torch.cat([c[None], t.to(c.dtype)]) for c, t in zip(cls_tokens, visual_tokens)]
        length = max(len(r) for r in rows)
        keys = torch.stack([torch.cat([r, r.new_zeros(length - len(r), r.shape[1])]) for r in rows])
        mask = torch.stack([torch.arange(length, device=self.device) < len(r) for r in rows]).long()
        queries = self.model.query_tokens.expand(len(rows), -1, -1)
        out = self.model.qformer(query_embeds=queries, encoder_hidden_states=keys, encoder_attention_mask=mask,
                                 return_dict=True).last_hidden_state
        return self.model.language_projection(out.to(keys.dtype))

    def cost_configs(self) -> dict:
        from types import SimpleNamespace

        mc = self.model.config
        t = mc.text_config
        # OPT names its FFN width ffn_dim; its FFN is a plain MLP (model_type 'opt', see cost.LayerShape)
        llm = t if hasattr(t, "intermediate_size") else SimpleNamespace(
            num_hidden_layers=t.num_hidden_layers, hidden_size=t.hidden_size, intermediate_size=t.ffn_dim,
            num_attention_heads=t.num_attention_heads, model_type=t.model_type)
        return {"llm": llm, "vision": mc.vision_config, "projector": None, "clip_text": None, "clip_projection": None}

    def llm_visual_tokens(self, k: int, kept=None, n=None) -> int:
        """The LLM reads the query tokens, however many ViT tokens were kept."""
        return self.num_query_tokens

    def vision_flops(self, n_tokens: int) -> int:
        """The ViT over n_tokens patches + CLS (RGB patch embedding; a plain MLP)."""
        from ..cost import LayerShape, layer_macs

        vc = self.model.config.vision_config
        s = LayerShape.from_config(vc, gated=False)
        return 2 * (n_tokens * 3 * vc.patch_size ** 2 * s.d + s.layers * layer_macs(s, n_tokens + 1))

    def extra_flops(self, n: int, k: int) -> dict:
        """The Q-Former over CLS + k kept ViT tokens (what pruning saves), and the vision total with it."""
        q = qformer_flops(self.model.config, k + 1)
        return {"qformer_flops": q, "vision_flops": self.vision_flops(n) + q}

    # ------------------------------------------------------------------ language

    def prompt_ids(self, question: str) -> torch.Tensor:
        """The text after the query tokens, tokenised as the processor does (with BOS)."""
        if question not in self._prompt_cache:
            text = self.prompt(question)[len("<image>"):]
            if "<image>" in text:
                raise UserError("model.prompt: the prompt must hold exactly one image placeholder")
            self._prompt_cache[question] = self.tokenizer(text, return_tensors="pt")["input_ids"][0]
        return self._prompt_cache[question]

    def prompt_length(self, question: str) -> int:
        return len(self.prompt_ids(question))

    @torch.inference_mode()
    def generate(self, visual_tokens: list[torch.Tensor], questions: list[str], in_llm=None,
                 cls_tokens: torch.Tensor | None = None) -> list[str]:
        """visual_tokens: per example the kept ViT patch tokens [K_i, C]; cls_tokens: the batch's
        CLS tokens (`generation_inputs`). The LLM input is laid out as the processor lays it out:
        the query tokens, then the left-padded text."""
        self.refuse_in_llm(in_llm)
        if cls_tokens is None:
            raise ValueError("blip2: generate() needs the batch's CLS tokens: pass **adapter.generation_inputs(vision, "
                             "kept_indices)")
        queries = self.query_tokens(visual_tokens, cls_tokens)
        ids, text_mask = left_pad([self.prompt_ids(q) for q in questions], self.pad_token_id)
        embed = self.model.get_input_embeddings()
        inputs = torch.cat([queries.to(self.dtype), embed(ids.to(self.device))], 1)
        mask = torch.cat([torch.ones(queries.shape[:2], dtype=torch.long), text_mask], 1).to(self.device)
        # the input's ids as HF's own path hands them to the language model (query placeholders, then
        # the text), so a penalty sees what it sees there
        image = self.model.config.image_token_index
        ids = prompt_ids_for_penalties([torch.cat([torch.full((queries.shape[1],), image), self.prompt_ids(q)])
                                        for q in questions])
        out = generate_greedy(self.model.language_model, self.generation_config, inputs_embeds=inputs,
                              input_ids=ids.to(self.device), attention_mask=mask)
        return self.decode(out[:, ids.shape[1]:])

    def reference_inputs(self, images: list[Image.Image], questions: list[str]) -> dict:
        """The inputs of the model's own `generate`, laid out as `Blip2Processor` lays them out:
        num_query_tokens image placeholders, then the left-padded tokenised text (with BOS)."""
        ids, mask = left_pad([self.prompt_ids(q) for q in questions], self.pad_token_id)
        q = self.num_query_tokens
        ids = torch.cat([torch.full((len(questions), q), self.model.config.image_token_index), ids], 1)
        mask = torch.cat([torch.ones(len(questions), q, dtype=torch.long), mask], 1)
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                "pixel_values": self.pixel_values(images)}


def qformer_flops(mc, n_keys: int) -> int:
    """FLOPs of the Q-Former's layers for its queries over n_keys ViT tokens (the LLM
    projection, the same for every method, left out). Per layer: self-attention of the
    queries; every `cross_attention_frequency`-th layer a cross-attention whose key / value
    projections and scores scale with n_keys; the queries' FFN. MACs x 2, as in `cost`."""
    qc = mc.qformer_config
    q, d, c, m = mc.num_query_tokens, qc.hidden_size, qc.encoder_hidden_size, qc.intermediate_size
    macs = 0
    for layer in range(qc.num_hidden_layers):
        macs += 4 * q * d * d + 2 * q * q * d  # self-attention: projections, scores and mixing
        if layer % qc.cross_attention_frequency == 0:
            macs += 2 * q * d * d + 2 * n_keys * c * d + 2 * q * n_keys * d  # q / out, k / v over the keys, scores
        macs += 2 * q * d * m  # the queries' FFN
    return 2 * macs
