"""The base class of the Hugging Face VLM adapters: construction, prompts, text encoding and
decoding, and the capabilities an adapter declares (defaults: none), which callers read instead
of probing for methods.

    merges_in_tower        runs its tower with ToMe merging inside (`encode_images_merged`)
    places_tokens_by_grid  `generate` needs the kept tokens' indices (`generation_inputs`)
    timed_llm_passes       `run_llm` times the prefill and decoding steps apart (measured cost)
    in_llm_pruning         prunes visual tokens inside the LLM (`in_llm_hooks` for a spec such as
                           `FastVSpec`; the llava adapter also runs a `StagedSpec` through its
                           staged decoder; `generate(..., in_llm=spec)` fills in `spec.kept`)
    fuses_generation       several methods' batches with equal visual-token counts may share one
                           `generate` call: answers are those of separate calls
    reuses_prefix          `kv_prefix` computes the KV cache of [prompt head + visual tokens] once;
                           `generate(..., kv_prefix=...)` runs only the question tail from it
    lean_decoding          `generate(..., lean=True)` may decode through a leaner greedy loop of its
                           own (where it says it can): the same answers as Hugging Face's generate
    token_count_follows_image  the visual-token count follows the image size: `image_size_for_tokens`
                           picks a size for a token budget and `encode_images_downsampled` encodes
                           the images resized to it (the `downsample` method); else
                           `token_count_refusal` says why not
    patch_geometry()       how an image reaches the patch grid (object recall), or None
    llm_visual_tokens()    the visual tokens the LLM reads for k kept ones
    vision_flops(), extra_flops()   what the tower and any stage beside the LLM cost
"""
from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import UserError
from .base import cut_at_limit, decode_answers, greedy_generation, load_pretrained
from .placement import input_device
from .prompts import resolve_prompt


def device_problem(name: str) -> str | None:
    """Why this machine cannot run on device `name` (one phrase), or None."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        return f"{name!r} requested but no CUDA device is available (use --device cpu)"
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        # a data-parallel rank maps `cuda` to cuda:LOCAL_RANK: more processes than GPUs land here
        return (f"{name!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s) "
                "(start at most that many processes per node)")
    if name == "mps" and not torch.backends.mps.is_available():
        return "'mps' requested but MPS is not available (use --device cpu)"
    return None


def pick_device(name: str) -> torch.device:
    problem = device_problem(name)
    if problem is not None:
        raise UserError(f"model.device: {problem}")
    return torch.device(name)


def left_pad(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows -> left-padded ids [B, T] and their attention mask [B, T]."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = r
        mask[i, length - len(r):] = 1
    return ids, mask


class HFAdapter:
    """A transformers VLM behind the adapter protocol (`models.base.Adapter`).

    Construction: `check_config` (before any weight is read), the checkpoint as `hf_class` and
    its processor, `setup` (the family's own state), then greedy decoding as the checkpoint
    defines it, from `generation_source()`."""

    hf_class: ClassVar[str]  # the transformers model class, e.g. "LlavaForConditionalGeneration"
    name: ClassVar[str] = ""  # the adapter's registered name (set by `register_adapter`)

    merges_in_tower: ClassVar[bool] = False
    places_tokens_by_grid: ClassVar[bool] = False
    timed_llm_passes: ClassVar[bool] = False
    in_llm_pruning: ClassVar[bool] = False
    fuses_generation: ClassVar[bool] = False
    reuses_prefix: ClassVar[bool] = False
    lean_decoding: ClassVar[bool] = False
    token_count_follows_image: ClassVar[bool] = False
    # what a vision pass records on the adapter (the last batch's grid and count): a pass over
    # resized images leaves it as the shared pass set it
    pass_state: ClassVar[tuple[str, ...]] = ("grid", "num_visual_tokens")
    in_llm_refusal: ClassVar[str] = ""  # why not, when the adapter cannot (appended to the error)
    # the error when a method needs text relevance and the adapter has no scorer
    no_text_relevance: ClassVar[str] = "model.scorer: a method needs text relevance: name an external scorer"

    # the prompt when the suite sets no `model.prompt` and the checkpoint's processor has no chat
    # template (the family's own conversation format; `models.prompts`)
    default_prompt: ClassVar[str] = "USER: <image>\n{question} ASSISTANT:"

    num_visual_tokens: int | None = None  # None: known per image, after its vision pass
    scorer = None
    # per answer of the last `generate`: it stopped at max_new_tokens without an EOS (None before any)
    last_truncated: list[bool] | None = None

    def __init__(self, cfg):
        import transformers

        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.dtype = getattr(torch, cfg.dtype)
        self.check_config(cfg)
        self.model, self.processor = load_pretrained(getattr(transformers, self.hf_class), cfg, self.device,
                                                     self.dtype)
        if cfg.device_map is not None:
            self.device = input_device(self.model)
        self.tokenizer = self.processor.tokenizer
        self._prompt_cache: dict = {}
        self.prompt_format, self.prompt_source = resolve_prompt(cfg, self.processor, self.default_prompt)
        self.check_prompt(self.prompt_format)
        self.setup(cfg)
        self.pad_token_id, self.generation_config = greedy_generation(cfg, self.generation_source(), self.tokenizer)

    def check_config(self, cfg) -> None:
        """Refuse a model section this family cannot run, before its weights are read."""

    def check_prompt(self, prompt: str) -> None:
        """Refuse a prompt (the suite's, the template's or the default) this family cannot place its image in."""

    def setup(self, cfg) -> None:
        """The family's own state, once the model and processor are loaded."""

    def generation_source(self):
        """The module whose `generate` the adapter calls (its generation config is read)."""
        return self.model

    def decode(self, new_tokens: torch.Tensor) -> list[str]:
        """The generated ids [B, n] (prompt dropped) -> answers; records `last_truncated`."""
        eos = self.generation_config.eos_token_id
        self.last_truncated = cut_at_limit(new_tokens, eos)
        return decode_answers(self.tokenizer, new_tokens, eos)

    # ------------------------------------------------------------------ declared capabilities

    def patch_geometry(self) -> dict | None:
        """{'shortest_edge': S, 'crop': (h, w), 'grid': (rows, cols)}, or None: no single patch
        grid (object recall is not measured)."""
        return None

    def cost_configs(self) -> dict:
        """Configs the cost model reads: {'llm': text config, 'vision': vision config, 'clip_text': ... | None}."""
        raise NotImplementedError

    def llm_visual_tokens(self, k: int, kept: torch.Tensor | None = None, n: int | None = None) -> int:
        """The visual tokens the LLM reads when k are kept (kept: their indices, None if merged;
        n: the token count of the pass they index, None: the last shared pass's)."""
        return k

    def vision_flops(self, n_tokens: int) -> int:
        """The tower and projector over an image of n_tokens patch tokens (a CLIP ViT over N + 1)."""
        from ..cost import vision_flops

        cfgs = self.cost_configs()
        return vision_flops(cfgs["vision"], n_tokens, cfgs.get("projector"))

    def token_count_refusal(self) -> str:
        """Why resizing the image does not change this adapter's token count (one phrase)."""
        return f"{self.name} reads every image at one fixed size"

    def image_size_for_tokens(self, image_size: tuple[int, int], target_tokens: int) -> tuple[int, int]:
        """The (width, height) to resize an image of `image_size` to so the tower yields about
        `target_tokens` tokens. Only when token_count_follows_image."""
        raise NotImplementedError

    def resized_image(self, image, size: tuple[int, int]):
        """`image` at (width, height) `size`, resampled as the processor resizes."""
        raise NotImplementedError

    def encode_images_downsampled(self, images: list, target_tokens: int):
        """The vision pass over the images resized to about `target_tokens` tokens each
        (`image_size_for_tokens`; an image already at its size passes unchanged), leaving the
        adapter's `pass_state` as the shared pass set it. -> VisionOutput"""
        sizes = [self.image_size_for_tokens(im.size, target_tokens) for im in images]
        resized = [im if s == im.size else self.resized_image(im, s) for im, s in zip(images, sizes)]
        saved = {a: getattr(self, a) for a in self.pass_state}
        try:
            return self.encode_images(resized)
        finally:
            for a, v in saved.items():
                setattr(self, a, v)

    def extra_flops(self, n: int, k: int) -> dict:
        """Cost columns of a stage beside the LLM that k of n kept tokens change (BLIP-2's Q-Former)."""
        return {}

    def generation_inputs(self, vision, kept_indices: list) -> dict:
        """What `generate` needs from the batch's vision pass beside the kept tokens (per
        example the kept indices, None for merged tokens)."""
        return {"kept_indices": kept_indices} if self.places_tokens_by_grid else {}

    def in_llm_hooks(self, spec, visual_tokens: list[torch.Tensor], questions: list[str], pads: list[int]):
        """A context manager pruning inside the LLM during one pass, as `spec` asks."""
        self.refuse_in_llm(spec)
        raise NotImplementedError

    def refuse_in_llm(self, spec) -> None:
        """One UserError line when asked to prune inside the LLM without the capability."""
        if spec is not None and not self.in_llm_pruning:
            raise UserError(f"methods: {spec.method} is not supported on the {self.name} adapter{self.in_llm_refusal}")

    # ------------------------------------------------------------------ text

    def prompt(self, question: str) -> str:
        return self.prompt_format.format(question=question)

    def tokenized_prompt(self, question: str) -> str:
        """The prompt as the tokenizer reads it (the suite's `<image>` as the model's image token)."""
        return self.prompt(question)

    def prompt_ids(self, question: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids before and after the image placeholder. Tokenising the whole prompt and
        splitting at the placeholder gives exactly the ids the HF processor gives around its
        expanded image tokens (tokenising the halves apart would not, for SentencePiece)."""
        if question not in self._prompt_cache:
            ids = self.tokenizer(self.tokenized_prompt(question), return_tensors="pt")["input_ids"][0]
            where = (ids == self.image_token_id).nonzero().flatten()
            if len(where) != 1:
                raise UserError(f"model.prompt: the prompt must hold exactly one image placeholder, found {len(where)}")
            i = int(where[0])
            self._prompt_cache[question] = (ids[:i], ids[i + 1:])
        return self._prompt_cache[question]

    def prompt_length(self, question: str) -> int:
        """Text tokens of the prompt around the image (the LLM sees these plus the visual tokens)."""
        before, after = self.prompt_ids(question)
        return len(before) + len(after)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """The scorer's text embeddings [B, P] (a family with its own CLIP text tower overrides this)."""
        if self.scorer is None:
            raise UserError(self.no_text_relevance)
        return self.scorer.encode_texts(texts)
