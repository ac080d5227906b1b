"""The adapter protocol: what the engine asks of a VLM, and the one factory that builds one."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from PIL import Image

from ..errors import UserError


@dataclass
class FeatureLayer:
    """The ViT layer the connector reads, per crop and with its CLS token: what VisionZip needs
    to merge before the projector, as its official code does.

    hidden:   [B, R, 1 + S, C]  that layer's hidden states (R crops: 1 unless any-resolution), CLS first
    keys:     [B, R, 1 + S, Ck] that layer's keys, averaged over heads
    cls_attn: [B, R, H, S]      that layer's CLS -> patch attention (CLS column dropped)
    project:  ViT features [..., C] -> what the adapter hands the LLM (or the Q-Former) [..., D]
    mosaic:   (rows, cols) of the any-resolution crops after the base crop (LLaVA-NeXT), else None
    cls_prepended: the adapter adds the CLS token itself (BLIP-2): a method's tokens leave it out

    and, where the adapter provides them (LLaVA), what PruMerge+ and CDPruner read:
    last_query: [B, R, 1 + S, C]  the last ViT layer's queries (q_proj output, heads concatenated), CLS first
    last_keys:  [B, R, 1 + S, C]  the last ViT layer's keys (k_proj output, heads concatenated), CLS first
    clip_project: ViT features [..., C] -> the CLIP joint space [..., P] (post_layernorm +
                  visual_projection; None without a suite's `clip` model)
    """

    hidden: torch.Tensor
    keys: torch.Tensor
    cls_attn: torch.Tensor
    project: Callable[[torch.Tensor], torch.Tensor]
    mosaic: tuple[int, int] | None = None
    cls_prepended: bool = False
    last_query: torch.Tensor | None = None
    last_keys: torch.Tensor | None = None
    clip_project: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass
class VisionOutput:
    """One vision pass over a batch, shared by every method and text condition.

    tokens:       [B, N, D]     visual tokens as the LLM would receive them (after the projector)
    cls_attn:     [B, L, H, N]  CLS -> patch attention of every ViT layer (CLS column dropped)
    clip_patches: [B, N, P]     patches in the CLIP joint space (post_layernorm + visual_projection)
    vit_features: [B, N, C]     the ViT features the projector reads (for merging methods)
    grid:         (rows, cols)  the patch grid, rows * cols == N
    image_sizes:  B (width, height) of the input images, before the processor's resize / crop
    crop_ids:     [N]           the crop each token comes from, when budgets are per crop (LLaVA-NeXT
                                `budget_scope: per_crop`); None: one budget over all N tokens
    feature_layer: `FeatureLayer` or None (a tower without a CLS token: Qwen2-VL)
    token_sizes:  [B, N]        patches each token stands for, when the tower merged them (ToMe
                                inside the tower); None: one each
    prefix_tokens: [B, P, D]    tokens the LLM reads before the kept ones whatever a method keeps
                                (LLaVA's `full` feature selection: the projected CLS token); None: none
    """

    tokens: torch.Tensor
    cls_attn: torch.Tensor
    clip_patches: torch.Tensor
    vit_features: torch.Tensor
    grid: tuple[int, int]
    image_sizes: list[tuple[int, int]] | None = None
    crop_ids: torch.Tensor | None = None
    feature_layer: FeatureLayer | None = None
    token_sizes: torch.Tensor | None = None
    prefix_tokens: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]


class Adapter(Protocol):
    """What the engine asks of a VLM. The Hugging Face families implement it on `hf_base.HFAdapter`,
    which also declares their capabilities (`merges_in_tower`, `places_tokens_by_grid`,
    `timed_llm_passes`, `in_llm_pruning`, `patch_geometry`, ...) with defaults."""

    num_visual_tokens: int | None
    device: torch.device

    merges_in_tower: bool  # can run its vision tower with ToMe merging (`encode_images_merged`)
    token_count_follows_image: bool  # a resized image gives fewer tokens (`encode_images_downsampled`)

    def encode_images(self, images: list[Image.Image]) -> VisionOutput: ...

    def encode_images_merged(self, images: list[Image.Image], spec) -> VisionOutput:
        """The tower run with ToMe merging inside its blocks (`prune.tome.ToMeTower`): tokens
        [B, K, D] and `token_sizes` [B, K]; the other fields are empty. Only when merges_in_tower."""

    def encode_images_downsampled(self, images: list[Image.Image], target_tokens: int) -> VisionOutput:
        """The vision pass over the images resized so each gives about target_tokens tokens
        (`image_size_for_tokens`), its own grid; the shared pass's state is left as it was. Only
        when token_count_follows_image."""

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """CLIP text embeddings [B, P]."""

    def generation_inputs(self, vision: VisionOutput, kept_indices: list) -> dict:
        """What `generate` needs from the batch's vision pass beside the kept tokens."""

    def generate(self, visual_tokens: list[torch.Tensor], questions: list[str], in_llm=None, **inputs) -> list[str]:
        """Greedy answers; example i's LLM sees exactly visual_tokens[i] ([K_i, D]) in place of the image.
        in_llm: a spec (`FastVSpec`, or a `staged_llm.StagedSpec` for the methods that drop tokens
        between decoder layers) to drop visual tokens inside the LLM (fills in its `kept`);
        inputs: `generation_inputs(vision, kept_indices)`. Afterwards `last_truncated` (when the
        adapter has it) says per answer whether it stopped at max_new_tokens without an EOS."""

    def prompt_length(self, question: str) -> int:
        """Text tokens of the prompt around the image (the LLM sees these plus the visual tokens)."""

    def patch_geometry(self) -> dict | None:
        """How an image reaches the patch grid: {'shortest_edge': S, 'crop': (h, w), 'grid': (rows, cols)}."""

    def cost_configs(self) -> dict:
        """Configs the cost model reads: {'llm': text config, 'vision': vision config, 'clip_text': ... | None}."""


_ADAPTERS: dict[str, Callable] = {}
# adapters imported on demand: adapter name -> module in this package
_LAZY = {"llava_next": "llava_next", "qwen2_vl": "qwen2_vl", "blip2": "blip2"}
_LAZY.update(qwen2_5_vl="qwen2_5_vl", llava_onevision="llava_onevision", qwen3_vl="qwen3_vl", internvl="internvl")


def register_adapter(name: str):
    def deco(cls):
        _ADAPTERS[name] = cls
        cls.name = name
        return cls
    return deco


def resolve_checkpoint(ref: str, field: str = "model.checkpoint") -> str:
    """`zoo:<name>/<part>` names a model shipped in the package; anything else is a path or hub id."""
    if ref.startswith("zoo:"):
        from .zoo import ZOO_DIR
        path = ZOO_DIR / ref[4:]
        if not (path / "config.json").is_file():
            raise UserError(f"{field}: {ref!r}: no shipped model at {path}")
        return str(path)
    p = Path(ref).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise UserError(f"{field}: {ref!r}: a directory without config.json")
        return str(p)
    # a hub id is `name` or `namespace/name`; anything shaped like a path must exist
    if ref.startswith(("/", ".", "~")) or ref.count("/") > 1:
        raise UserError(f"{field}: {ref!r}: no such directory")
    return ref


def adapter_names() -> list[str]:
    from . import llava  # noqa: F401  (registers itself)

    return sorted(set(_ADAPTERS) | set(_LAZY))


def load_pretrained(model_cls, cfg, device: torch.device, dtype: torch.dtype):
    """A suite's checkpoint as `model_cls` (eval, on `device`) and its processor; remote code runs
    only when the suite sets `trust_remote_code`. -> (model, processor)"""
    from transformers import AutoProcessor

    from .placement import check_attention, rank_placement

    check_attention(cfg)
    path = resolve_checkpoint(cfg.checkpoint)
    try:
        if cfg.device_map is not None:  # accelerate places the modules (and moves their inputs)
            model = model_cls.from_pretrained(path, dtype=dtype, attn_implementation=cfg.attn_implementation,
                                              trust_remote_code=cfg.trust_remote_code, **rank_placement(cfg)).eval()
        else:
            model = model_cls.from_pretrained(path, dtype=dtype, attn_implementation=cfg.attn_implementation,
                                              trust_remote_code=cfg.trust_remote_code).to(device).eval()
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise UserError(f"model.checkpoint: cannot load {cfg.checkpoint!r}: {str(e).splitlines()[0]}") from None
    return model, processor


def greedy_generation(cfg, source, tokenizer):
    """Greedy decoding as the checkpoint defines it, of up to `cfg.generation.max_new_tokens`.

    `source` is the module whose `generate` the adapter calls (the VLM, or BLIP-2's language
    model, which HF's own `Blip2ForConditionalGeneration.generate` calls): its
    `generation_config` is what HF's `generate` reads. From it come the EOS ids (a list stays a
    list: Qwen2-VL-Instruct stops at either of two), the pad id that fills finished rows (HF's
    fallback: the first EOS id) and BOS. Nothing else is inherited: no sampling, and a penalty
    only when the suite sets one (`generate_greedy` keeps HF from filling unset fields from the
    checkpoint's file). -> (pad id for left-padding prompts, as the processor pads: the
    tokenizer's, GenerationConfig)"""
    from transformers import GenerationConfig

    saved = source.generation_config
    eos = saved.eos_token_id if saved.eos_token_id is not None else tokenizer.eos_token_id
    first_eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    prompt_pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else first_eos
    fill_pad = saved.pad_token_id if saved.pad_token_id is not None else first_eos
    bos = saved.bos_token_id if saved.bos_token_id is not None else tokenizer.bos_token_id
    g = cfg.generation
    knobs = {k: getattr(g, k) for k in ("repetition_penalty", "no_repeat_ngram_size") if getattr(g, k) is not None}
    return prompt_pad, GenerationConfig(max_new_tokens=g.max_new_tokens, do_sample=False, num_beams=1,
                                        eos_token_id=list(eos) if isinstance(eos, (list, tuple)) else eos,
                                        pad_token_id=fill_pad, bos_token_id=bos, **knobs)


def generate_greedy(source, generation_config, **inputs) -> torch.Tensor:
    """`source.generate(**inputs)` under exactly `generation_config`. HF fills every field a
    passed config leaves unset from `source.generation_config` (the checkpoint's file: its
    repetition_penalty, temperature, ...), so that attribute is this config for the call.
    Pass `input_ids` beside `inputs_embeds`: penalties then see the prompt, as on HF's own path,
    and the output starts with it. -> [B, T + new] token ids"""
    saved = source.generation_config
    source.generation_config = generation_config
    try:
        return source.generate(**inputs, generation_config=generation_config)
    finally:
        source.generation_config = saved


def prompt_ids_for_penalties(rows: list[torch.Tensor]) -> torch.Tensor:
    """Left-aligned prompt ids [B, T] for `generate_greedy`'s `input_ids`: each row's pad
    positions (masked out of attention anyway) carry the row's own first id, so the set of ids a
    repetition penalty sees is the example's alone, whatever else is in its batch: the answer is
    HF's `generate(input_ids)` on that example by itself, at every batch size."""
    length = max(len(r) for r in rows)
    return torch.stack([torch.cat([r[:1].expand(length - len(r)), r]) for r in rows])


def cut_at_limit(new_tokens: torch.Tensor, eos) -> list[bool]:
    """new_tokens [B, n] -> per row: no EOS id among them, i.e. the answer stopped at the token
    limit (max_new_tokens) rather than ending (a finished row is filled with pad ids after its EOS)."""
    stops = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    return [not any(t in stops for t in row) for row in new_tokens.tolist()]


def decode_answers(tokenizer, new_tokens: torch.Tensor, eos) -> list[str]:
    """new_tokens [B, n] -> each row's text before its first EOS id, special tokens dropped,
    stripped (an EOS such as OPT's "\n", or a pad that is no special token, leaves no trace)."""
    stops = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    rows = []
    for row in new_tokens.tolist():
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        rows.append(row[:cut])
    return [t.strip() for t in tokenizer.batch_decode(rows, skip_special_tokens=True)]


def adapter_class(name: str):
    """The adapter class registered as `name`, its family's module imported on first use (no
    weights read)."""
    import importlib

    from . import llava  # noqa: F401  (registers itself)

    if name in _LAZY and name not in _ADAPTERS:
        importlib.import_module(f"{__package__}.{_LAZY[name]}")  # only the family a suite names
    if name not in _ADAPTERS:
        raise UserError(f"model.adapter: unknown adapter {name!r}; known: {', '.join(adapter_names())}")
    return _ADAPTERS[name]


def load_adapter(model_cfg) -> Adapter:
    """The one entry point: a suite's `model:` section -> a ready adapter."""
    return adapter_class(model_cfg.adapter)(model_cfg)
