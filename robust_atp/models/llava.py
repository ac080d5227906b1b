"""LLaVA-1.5 (`LlavaForConditionalGeneration`) behind the adapter protocol.

The same code runs llava-hf/llava-1.5-7b-hf on a GPU and the shipped demo model on a CPU.
CLS attention is taken through hooks on q_proj / k_proj of every ViT layer and recomputed
for the CLS row only, so it works under sdpa / flash attention (no `output_attentions`).
"""
from __future__ import annotations

import torch
from PIL import Image

from ..cost import kv_cache_bytes
from ..data.images import to_rgb
from ..errors import UserError
from .base import (FeatureLayer, VisionOutput, generate_greedy, prompt_ids_for_penalties,
                   register_adapter, resolve_checkpoint)
from .fastv import FastVHooks, FastVSpec
from .hf_base import HFAdapter, left_pad
from .kv_prefix import PrefixCache
from .probes import QKProbe
from .staged_llm import StagedSpec, staged_generate, surviving_image_tokens
from .tome_tower import blocks_read, merged_tower


def vit_layers(vision_tower) -> list:
    """The encoder layers of a CLIP-style tower, across transformers' layouts."""
    inner = getattr(vision_tower, "vision_model", vision_tower)
    return list(inner.encoder.layers)


class ClsAttentionProbe(QKProbe):
    """Captures q and k of each ViT layer during a forward pass and returns the CLS row of
    softmax(q k^T * scale), per head, CLS column dropped: [B, L, H, N]. The last layer's queries
    are kept whole (PruMerge+ computes that layer's whole attention matrix); the others' CLS row."""

    def __init__(self, layers: list):
        super().__init__(layers, lambda layer: (layer.self_attn.q_proj, layer.self_attn.k_proj),
                         lambda i: i < len(layers) - 1)

    def head_mean_keys(self, i: int) -> torch.Tensor:
        """Layer i's keys averaged over heads [B, T, hd] (what VisionZip matches on); before `result`."""
        attn = self.layers[i].self_attn
        k = self.k[i]
        return k.view(k.shape[0], k.shape[1], attn.num_heads, attn.head_dim).mean(2)

    def result(self) -> torch.Tensor:
        rows = []
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h, hd = attn.num_heads, attn.head_dim
            q = self.q[i][:, :1].float().view(-1, h, hd)  # [B, H, hd] (CLS query)
            k = self.k[i].float()
            k = k.view(k.shape[0], k.shape[1], h, hd)  # [B, T, H, hd]
            logits = torch.einsum("bhd,bthd->bht", q, k) * attn.scale
            rows.append(logits.softmax(-1)[..., 1:])
        self.q.clear()
        self.k.clear()
        return torch.stack(rows, 1)


@register_adapter("llava")
class LlavaAdapter(HFAdapter):
    hf_class = "LlavaForConditionalGeneration"
    merges_in_tower = True  # ToMe inside the CLIP tower: `encode_images_merged`
    timed_llm_passes = True  # `run_llm`
    in_llm_pruning = True  # FastV: `in_llm_hooks`; PyramidDrop, DART, SparseVLM: `generate_staged`
    fuses_generation = True  # equal visual-token counts: one `generate` over several methods' batches
    reuses_prefix = True  # `kv_prefix`: the prompt head + image KV computed once, every question continues it
    lean_decoding = True  # `generate(..., lean=True)`: greedy through the staged decoder, lean last layer
    feature_layers: list | None = None  # the ViT layers the projector reads (None: the config's one layer)
    cls_first = False  # 'full' feature selection: the CLS token leads the visual tokens

    def setup(self, cfg) -> None:
        mc = self.model.config
        strategy = mc.vision_feature_select_strategy
        if strategy not in ("default", "full"):
            raise UserError(f"model.checkpoint: vision_feature_select_strategy {strategy!r}: LLaVA's are 'default' "
                            "and 'full'")
        # as Hugging Face's LLaVA reads them: the hidden states of every listed layer concatenated
        # along the features, the CLS token dropped ('default') or handed to the LLM first ('full')
        layer = mc.vision_feature_layer
        self.feature_layers = [layer] if isinstance(layer, int) else list(layer)
        self.cls_first = strategy == "full"
        if len(self.feature_layers) > 1 or self.cls_first:
            # ToMe inside the tower merges one layer's tokens and drops the CLS token
            self.merges_in_tower = False
        self.image_token_id = mc.image_token_id
        self.vision_tower = self.model.model.vision_tower
        self.probe = ClsAttentionProbe(vit_layers(self.vision_tower))
        vc = mc.vision_config
        side = vc.image_size // vc.patch_size
        self.grid = (side, side)
        self.num_visual_tokens = side * side
        self.clip = self.clip_tokenizer = None
        if cfg.clip:
            self._load_clip(cfg.clip, vc.hidden_size)

    def _load_clip(self, ref: str, vision_width: int) -> None:
        from transformers import AutoTokenizer, CLIPModel

        path = resolve_checkpoint(ref, "model.clip")
        try:
            clip = CLIPModel.from_pretrained(path, dtype=self.dtype)
            self.clip_tokenizer = AutoTokenizer.from_pretrained(path)
        except OSError as e:
            raise UserError(f"model.clip: cannot load {ref!r}: {str(e).splitlines()[0]}") from None
        if clip.visual_projection.in_features != vision_width:
            raise UserError(f"model.clip: {ref!r} has vision width {clip.visual_projection.in_features}, "
                            f"the VLM's tower has {vision_width}: not the same tower")
        clip.vision_model = None  # the VLM's own tower supplies the patches; keep text tower + projections
        self.clip = clip.to(self.device).eval()

    # ------------------------------------------------------------------ vision

    def pixel_values(self, images: list[Image.Image]) -> torch.Tensor:
        px = self.processor.image_processor(images=[to_rgb(im) for im in images], return_tensors="pt")["pixel_values"]
        return px.to(self.device, self.dtype)

    @torch.inference_mode()
    def encode_images(self, images: list[Image.Image]) -> VisionOutput:
        with self.probe:
            out = self.vision_tower(self.pixel_values(images), output_hidden_states=True, return_dict=True)
        keys = self.feature_keys()
        last = len(self.probe.layers) - 1
        last_query, last_keys = self.probe.q[last], self.probe.k[last]
        cls_attn = self.probe.result()
        hidden = torch.cat([out.hidden_states[i] for i in self.feature_layers], -1)
        feats = hidden[:, 1:]
        tokens = self.model.model.multi_modal_projector(feats)
        prefix = self.model.model.multi_modal_projector(hidden[:, :1]) if self.cls_first else None
        clip_project = None
        if self.clip is not None:
            post_ln = getattr(self.vision_tower, "vision_model", self.vision_tower).post_layernorm
            clip_project = lambda f: self.clip.visual_projection(post_ln(f))  # noqa: E731
            clip_patches = clip_project(out.hidden_states[-1][:, 1:])
        else:
            clip_patches = torch.empty(tokens.shape[0], tokens.shape[1], 0, device=self.device)
        layer = None
        if keys is not None:
            block = self.feature_block()
            layer = FeatureLayer(hidden=hidden[:, None], keys=keys[:, None], cls_attn=cls_attn[:, block, None],
                                 project=self.model.model.multi_modal_projector, last_query=last_query[:, None],
                                 last_keys=last_keys[:, None], clip_project=clip_project)
        return VisionOutput(tokens=tokens, cls_attn=cls_attn, clip_patches=clip_patches, vit_features=feats,
                            grid=self.grid, image_sizes=[im.size for im in images], feature_layer=layer,
                            prefix_tokens=prefix)

    def feature_block(self) -> int:
        """Index of the deepest ViT block whose output the projector reads (-1: the embeddings); its
        CLS attention and keys are what the feature layer's methods read (VisionZip)."""
        layers = self.feature_layers or [self.model.config.vision_feature_layer]
        return max(blocks_read(len(self.probe.layers), i) for i in layers) - 1

    def feature_keys(self) -> torch.Tensor | None:
        """The projector's layer's keys averaged over heads [B * crops, 1 + S, hd], from the probe's
        last pass (None when the projector reads the embeddings: no attention there)."""
        block = self.feature_block()
        return self.probe.head_mean_keys(block) if block >= 0 else None

    @torch.inference_mode()
    def encode_images_merged(self, images: list[Image.Image], spec) -> VisionOutput:
        """The tower with ToMe merging in every block up to the projector's layer (`spec`: a
        `prune.tome.ToMeTower`): tokens [B, K, D] in ToMe's order, `token_sizes` [B, K]."""
        hidden, size = merged_tower(self.vision_tower, self.pixel_values(images), spec,
                                    self.model.config.vision_feature_layer)
        return merged_output(hidden[:, 1:], size[:, 1:], self.model.model.multi_modal_projector,
                             [im.size for im in images])

    def token_count_refusal(self) -> str:
        h, w = self.patch_geometry()["crop"]
        side = f"{h}" if h == w else f"{w}x{h}"
        return f"{self.name} has a fixed {side} px tower"

    def patch_geometry(self) -> dict:
        """CLIPImageProcessor: resize the shortest edge to S, centre-crop (h, w), cut into the grid."""
        ip = self.processor.image_processor
        get = lambda d, k: d.get(k) if isinstance(d, dict) else getattr(d, k, None)  # dict or SizeDict
        s = get(ip.size, "shortest_edge") or min(get(ip.size, "height"), get(ip.size, "width"))
        crop = ip.crop_size if getattr(ip, "do_center_crop", True) else None
        h, w = (get(crop, "height"), get(crop, "width")) if crop is not None else (s, s)
        return {"shortest_edge": int(s), "crop": (int(h), int(w)), "grid": self.grid}

    def cost_configs(self) -> dict:
        mc = self.model.config
        return {"llm": mc.text_config, "vision": mc.vision_config,
                "projector": {"in": mc.vision_config.hidden_size * len(self.feature_layers or [0]),
                              "out": mc.text_config.hidden_size,
                              "layers": 2},
                "feature_blocks": self.feature_block() + 1,  # ViT blocks the projector's input went through
                "clip_text": self.clip.config.text_config if self.clip is not None else None,
                "clip_projection": self.clip.config.projection_dim if self.clip is not None else None}

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        if self.clip is None:
            raise UserError("model.clip: a method needs CLIP text relevance, but the suite names no 'clip' model")
        max_len = self.clip.config.text_config.max_position_embeddings
        # right padding whatever the checkpoint's tokenizer says: CLIP's text tower reads positions from
        # 0 and pools at the first EOS, so left padding would make an embedding depend on its batch
        enc = self.clip_tokenizer(texts, padding=True, padding_side="right", truncation=True, max_length=max_len,
                                  return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()}
        return self.clip.get_text_features(**enc).pooler_output

    # ------------------------------------------------------------------ language

    def reference_input_ids(self, questions: list[str], n_visual: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded input_ids with n_visual image tokens each, as the HF processor builds them."""
        rows = []
        for q in questions:
            before, after = self.prompt_ids(q)
            rows.append(torch.cat([before, torch.full((n_visual,), self.image_token_id), after]))
        return left_pad(rows, self.pad_token_id)

    def reference_inputs(self, images: list[Image.Image], questions: list[str]) -> dict:
        """What the HF processor gives (left-padded), for the model's own `generate`."""
        ids, mask = self.reference_input_ids(questions, self.llm_visual_tokens(self.num_visual_tokens))
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                "pixel_values": self.pixel_values(images)}

    def prompt_embeddings(self, visual_tokens: list[torch.Tensor], questions: list[str]):
        """The LLM's input: left-padded prompt embeddings [B, T, d] with example i's visual tokens
        in place of the image, the attention mask [B, T], and per example its left pads."""
        return prompt_embeddings(self, visual_tokens, questions)

    def in_llm_hooks(self, spec, visual_tokens, questions, pads):
        """FastV's hooks on the decoder layers (`spec`: a `FastVSpec`) for one pass."""
        if not isinstance(spec, FastVSpec):
            raise UserError(f"methods: {spec.method} is not supported on the {self.name} adapter")
        spans = [(p + len(self.prompt_ids(q)[0]), len(t)) for p, q, t in zip(pads, questions, visual_tokens)]
        return FastVHooks(list(self.model.model.language_model.layers), spec, spans, pads)

    def llm_visual_tokens(self, k: int, kept: torch.Tensor | None = None, n: int | None = None) -> int:
        return k + 1 if self.cls_first else k

    def generation_inputs(self, vision, kept_indices: list) -> dict:
        extra = super().generation_inputs(vision, kept_indices)
        if vision.prefix_tokens is not None:
            extra["prefix"] = vision.prefix_tokens
        return extra

    def with_prefix(self, visual_tokens: list[torch.Tensor], prefix, in_llm=None) -> list[torch.Tensor]:
        """The kept tokens after the batch's prefix tokens (`full`: the CLS token leads)."""
        if prefix is None:
            return visual_tokens
        if in_llm is not None:
            raise UserError(f"methods: {in_llm.method} is not supported with LLaVA's 'full' feature selection "
                            "(its CLS token leads the image tokens it would prune)")
        return [torch.cat([p, t.to(p.dtype)]) for p, t in zip(prefix, visual_tokens)]

    @torch.inference_mode()
    def generate(self, visual_tokens: list[torch.Tensor], questions: list[str], in_llm=None,
                 prefix=None, kv_prefix: PrefixCache | None = None, lean: bool = False) -> list[str]:
        """kv_prefix: a `kv_prefix` of these visual tokens (and CLS prefix): only the questions run.
        lean: with no in-LLM pruning, greedy through the staged decoder with its lean last layer
        (`generate_lean`, or continuing the prefix) where `lean_supported`; else Hugging Face's generate."""
        if lean and in_llm is None and kv_prefix is None and self.lean_supported():
            return self.generate_lean(self.with_prefix(visual_tokens, prefix), questions)
        if kv_prefix is not None:
            if in_llm is not None or not kv_prefix.fits(visual_tokens, prefix, self.prompt_heads(questions)):
                raise ValueError("generate: the KV prefix is not these examples' (or an in-LLM method was given one)")
            return self.generate_from_prefix(kv_prefix, questions, lean=lean and self.lean_supported())
        visual_tokens = self.with_prefix(visual_tokens, prefix, in_llm)
        if isinstance(in_llm, StagedSpec):  # tokens leave the sequence between decoder layers
            return self.generate_staged(in_llm, visual_tokens, questions)
        inputs, mask, pads = self.prompt_embeddings(visual_tokens, questions)
        # the ids of that input, one image token per visual token: what HF's own generate(input_ids)
        # carries, so a penalty sees the prompt as there
        ids = prompt_ids_for_penalties([torch.cat([b, torch.full((len(t),), self.image_token_id), a])
                                        for t, (b, a) in zip(visual_tokens, map(self.prompt_ids, questions))])
        run = dict(inputs_embeds=inputs, input_ids=ids.to(self.device), attention_mask=mask)
        if in_llm is None:
            out = generate_greedy(self.model, self.generation_config, **run)
        else:
            with self.in_llm_hooks(in_llm, visual_tokens, questions, pads):
                out = generate_greedy(self.model, self.generation_config, **run)
        return self.decode(out[:, ids.shape[1]:])

    def prompt_heads(self, questions: list[str]) -> list[torch.Tensor]:
        return [self.prompt_ids(q)[0] for q in questions]

    @torch.inference_mode()
    def kv_prefix(self, visual_tokens: list[torch.Tensor], questions: list[str], prefix=None,
                  reuse: PrefixCache | None = None) -> PrefixCache | None:
        """The KV cache of [prompt head + visual tokens] for these examples: `reuse` when it is
        theirs, else computed now (one decoder pass over the prefixes, no padding: they are all
        as long). None when their prefixes differ in length or head (nothing to share), or when
        the generation config reads the padded prompt's n-grams (`no_repeat_ngram_size`)."""
        heads = self.prompt_heads(questions)
        if reuse is not None and reuse.fits(visual_tokens, prefix, heads):
            return reuse
        if self.generation_config.no_repeat_ngram_size or any(not torch.equal(h, heads[0]) for h in heads):
            return None
        full = self.with_prefix(visual_tokens, prefix)
        if len({len(t) for t in full}) != 1:
            return None
        embed = self.model.get_input_embeddings()
        head = embed(heads[0].to(self.device))
        embeds = torch.stack([torch.cat([head, t.to(self.dtype)]) for t in full])
        n, length = embeds.shape[:2]
        mask = torch.ones(n, length, dtype=torch.long, device=self.device)
        positions = torch.arange(length, device=self.device).expand(n, -1)
        out = self.model.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                              use_cache=True)
        layers = [(layer.keys, layer.values) for layer in out.cache.layers]
        return PrefixCache(head=heads[0], visual=list(visual_tokens), extra=prefix, embeds=embeds, layers=layers)

    def generate_from_prefix(self, kv: PrefixCache, questions: list[str], lean: bool = False) -> list[str]:
        """Greedy answers continuing `kv` with each question's tail (the layout in `models.kv_prefix`);
        lean: through the staged decoder continuing the cached keys and values (`generate_lean`)."""
        embed = self.model.get_input_embeddings()
        tails = [self.prompt_ids(q)[1] for q in questions]
        width = max(len(t) for t in tails)
        pad = embed(torch.tensor([self.pad_token_id], device=self.device))[0]
        tail_embeds = torch.stack([torch.cat([pad.expand(width - len(t), -1), embed(t.to(self.device))])
                                   for t in tails])
        n = len(questions)
        tail_mask = torch.stack([torch.cat([torch.zeros(width - len(t), dtype=torch.long),
                                            torch.ones(len(t), dtype=torch.long)]) for t in tails])
        if lean:
            return self._lean_decode(tail_embeds, tail_mask, past=kv.layers)
        mask = torch.cat([torch.ones(n, kv.length, dtype=torch.long), tail_mask], 1)
        # the ids a penalty sees: the example's own, with its first id at the pads (as `generate` has them)
        image = torch.full((kv.length - len(kv.head),), self.image_token_id)
        ids = torch.stack([torch.cat([kv.head, image, kv.head[:1].expand(width - len(t)), t]) for t in tails])
        out = generate_greedy(self.model, self.generation_config, inputs_embeds=torch.cat([kv.embeds, tail_embeds], 1),
                              input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                              cache=kv.dynamic_cache())
        return self.decode(out[:, ids.shape[1]:])

    def plain_greedy(self) -> bool:
        """No repetition_penalty / no_repeat_ngram_size: what Hugging Face's generate applies and
        the staged decoder does not."""
        g = self.generation_config
        return g.repetition_penalty in (None, 1.0) and not g.no_repeat_ngram_size

    def eos_ids(self) -> list[int]:
        eos = self.generation_config.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [eos]

    def lean_supported(self) -> bool:
        """Plain greedy decoding on a Llama or Qwen2 decoder without sliding windows (the families
        the staged decoder is tested equal to `generate` on)."""
        if not self.plain_greedy():
            return False
        lm = self.model.model.language_model
        if lm.config.model_type not in ("llama", "qwen2"):
            return False
        return not any(getattr(layer.self_attn, "sliding_window", None) for layer in lm.layers)

    @torch.inference_mode()
    def generate_lean(self, visual_tokens: list[torch.Tensor], questions: list[str]) -> list[str]:
        """Greedy answers through the staged decoder (`staged_generate`, no policy) over the prompt
        embeddings `generate` builds, the prefill's last decoder layer run on the last position
        only: the tokens of Hugging Face's generate (tests/test_lean_decode.py) with a quarter
        less prefill on the demo's 4-layer LLM, and none of generate's per-call set-up."""
        inputs, mask, _ = self.prompt_embeddings(visual_tokens, questions)
        return self._lean_decode(inputs, mask)

    def _lean_decode(self, embeds: torch.Tensor, mask: torch.Tensor, past=None) -> list[str]:
        """Answers of the staged decoder, no policy, lean, over embeds [B, T, d] (left-padded,
        mask [B, T]), continuing `past` (a prefix's per-layer keys and values) when given."""
        g = self.generation_config
        out = staged_generate(self.model.model.language_model, self.model.lm_head, self.model.get_input_embeddings(),
                              embeds, mask.to(self.device), max_new_tokens=g.max_new_tokens,
                              eos_token_ids=self.eos_ids(), pad_token_id=g.pad_token_id, lean=True, past=past)
        return self.decode(out.tokens)

    @torch.inference_mode()
    def generate_staged(self, spec: StagedSpec, visual_tokens: list[torch.Tensor], questions: list[str]) -> list[str]:
        """Greedy answers through the staged decoder (`models.staged_llm.staged_generate`): the
        prompt embeddings `generate` builds, each example's image span, `spec.policy` dropping
        tokens between decoder layers; fills in `spec.kept` and `spec.image_tokens`."""
        g = self.generation_config
        if not self.plain_greedy():
            raise UserError(f"model.generation: {spec.method} decodes through the staged decoder, which applies no "
                            f"repetition_penalty / no_repeat_ngram_size (remove them)")
        n = {len(t) for t in visual_tokens}
        if len(n) != 1:
            raise ValueError(f"{spec.method}: every example must hand the LLM all its image tokens, got counts {sorted(n)}")
        n = n.pop()
        inputs, mask, pads = self.prompt_embeddings(visual_tokens, questions)
        starts = [p + len(self.prompt_ids(q)[0]) for p, q in zip(pads, questions)]
        out = staged_generate(self.model.model.language_model, self.model.lm_head, self.model.get_input_embeddings(),
                              inputs, mask, spec.policy, image_start=starts, image_count=n,
                              max_new_tokens=g.max_new_tokens, eos_token_ids=self.eos_ids(), pad_token_id=g.pad_token_id,
                              seeds=spec.seeds)
        spec.kept = surviving_image_tokens(out.seen[-1], starts, n)
        spec.image_tokens = list(out.image_tokens)
        return self.decode(out.tokens)

    @torch.inference_mode()
    def run_llm(self, visual_tokens: list[torch.Tensor], questions: list[str], steps: int = 0, in_llm=None,
                clock=None, prefix=None) -> dict:
        """For cost measurement: the decoder layers over the prompts (the prefill; no LM head, as
        the FLOPs model counts it), then `steps` decoding steps of one token each (decoder layers
        + LM head, the work of each `generate` step; the token fed is the pad token, which costs
        what any token costs). Returns {'kv_bytes': bytes of the KV cache right after the prefill,
        'marks': clock readings at the start, after the prefill, after the steps}.
        `clock`: a callable giving device-synchronised seconds."""
        clock = clock or (lambda: 0.0)
        visual_tokens = self.with_prefix(visual_tokens, prefix, in_llm)
        lm = self.model.model.language_model
        marks = [clock()]
        inputs, mask, pads = self.prompt_embeddings(visual_tokens, questions)
        hooks = self.in_llm_hooks(in_llm, visual_tokens, questions, pads) if in_llm is not None else None
        if hooks is not None:
            hooks.__enter__()
        try:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = lm(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, use_cache=True)
            cache = out.past_key_values
            marks.append(clock())
            kv = kv_cache_bytes(cache)
            pad = torch.full((len(questions), 1), self.pad_token_id, device=self.device)
            step_embeds = self.model.get_input_embeddings()(pad)
            for _ in range(steps):
                mask = torch.cat([mask, mask.new_ones(len(questions), 1)], 1)
                positions = positions[:, -1:] + 1
                out = lm(inputs_embeds=step_embeds, attention_mask=mask, position_ids=positions,
                         past_key_values=cache, use_cache=True)
                self.model.lm_head(out.last_hidden_state[:, -1])
            marks.append(clock())
        finally:
            if hooks is not None:
                hooks.__exit__(None, None, None)
        return {"kv_bytes": kv, "marks": marks}


def merged_output(feats: torch.Tensor, sizes: torch.Tensor, project, image_sizes) -> VisionOutput:
    """A merged tower pass as a VisionOutput: feats [B, K, C] (patches, CLS dropped), sizes [B, K];
    no CLS attention or CLIP patches (a merged token is no single patch)."""
    b, k, _ = feats.shape
    return VisionOutput(tokens=project(feats), cls_attn=feats.new_zeros(b, 0, 0, k), clip_patches=feats.new_zeros(b, k, 0),
                        vit_features=feats, grid=(1, k), image_sizes=image_sizes, token_sizes=sizes)


def prompt_embeddings(adapter, visual_tokens: list[torch.Tensor], questions: list[str]):
    """Left-padded prompt embeddings [B, T, d] with example i's visual tokens ([K_i, d]) between
    the prompt ids before and after its image placeholder (`adapter.prompt_ids`), the attention
    mask [B, T] and per example its left pads. Shared by adapters that feed the LLM embeddings."""
    embed = adapter.model.get_input_embeddings()
    dev = adapter.device
    seqs = []
    for toks, q in zip(visual_tokens, questions):
        before, after = adapter.prompt_ids(q)
        seqs.append(torch.cat([embed(before.to(dev)), toks.to(adapter.dtype), embed(after.to(dev))]))
    pad = embed(torch.tensor([adapter.pad_token_id], device=dev))[0]
    length = max(len(s) for s in seqs)
    inputs = torch.stack([torch.cat([pad.expand(length - len(s), -1), s]) for s in seqs])
    mask = torch.stack([torch.cat([torch.zeros(length - len(s), dtype=torch.long),
                                   torch.ones(len(s), dtype=torch.long)]) for s in seqs]).to(dev)
    return inputs, mask, [length - len(s) for s in seqs]
