"""GPU benchmark: pruning's measured speedups against its FLOPs bound, on random-weight models of
real size, in one short offline run.

    python benchmarks/bench_gpu.py [--device cuda] [--dtype bfloat16] [--batch 8] [--new-tokens 8]
                                   [--repeats 3] [--models llava,qwen2_vl] [--json OUT.json] [--tiny]

Two models, built from Hugging Face configs with random weights (no download) directly on the
device in --dtype, sdpa attention, and loaded through the adapter registry (`load_adapter`) the
way a suite's `model:` section loads them:

    llava     LLaVA-1.5-7B shapes: CLIP ViT-L/14-336 (24 layers, 1024 wide, 16 heads, 336 px,
              patch 14 -> 576 tokens, feature layer -2), the 2-layer MLP projector, a 7B Llama
              (32 layers, 4096 wide, FFN 11008, 32 heads, vocab 32064); CLIP-L's text tower
              (12 layers, 768 wide) for ATP's relevance term
    qwen2_vl  Qwen2-VL-7B shapes: ViT 32 layers x 1280 (16 heads, patch 14, 2x2 merger) on a
              672 px image -> 576 tokens, a 28-layer LLM (3584 wide, FFN 18944, 28 heads, 4 KV
              heads, M-RoPE, vocab 152064); an open_clip ViT-L-14-336 (random weights) as the
              external scorer of ATP's relevance term

Methods: full, and ATP (alpha 0.5), FastV (layer 1) and VisionZip at keep 1 / 0.5 / 0.25 /
0.125; a method an adapter refuses (FastV and VisionZip on Qwen2-VL), or that fails on the
batch, is listed under the table with the adapter's reason or the error, and the run goes on.
The random LLMs' LM head is scaled by 20 and their query and key projections by 6, so greedy
answers are no ties and depend on which visual tokens the LLM sees (what `same` reads); the
cost of a forward pass does not depend on the weights' values. One synthetic batch of --batch
images and questions; every answer is exactly --new-tokens tokens (EOS ignored), so decoding
work is equal across methods. Each figure is the median of --repeats rounds after a warm-up
round, each round measuring every method once, all in this process; times are device-synchronised (`cost.Clock`: torch.cuda.synchronize on cuda).

    tokens    visual tokens the LLM's layers run on (FastV: after its layer)
    bound     the FLOPs bound on the speedup: full's analytical LLM prefill FLOPs / the method's
              (`cost.prefill_flops` over each prompt's text + visual tokens; FastV's layers after
              its cut over its K)
    prefill   measured prefill speedup: full's prefill time / the method's (prefill = `generate`
              of one token: the decoder layers over the prompt and the LM head on its last position)
    e2e       measured end-to-end speedup: full's (vision + text + select + generate) / the method's
    eff       prefill / bound (1.00: the whole FLOPs saving became time)
    ans/s     answers per second of the engine (`run_engine`) running this method alone on the batch
              (vision pass, text pass, selection, generate, store writes)
    peakMB    peak memory over the method's `generate` calls: torch.cuda.max_memory_allocated on
              cuda; on CPU the process's peak resident set (ru_maxrss, a high-water mark)
    select%   the method's scoring + selection (`Method.apply`) / the vision pass, %: ATP's overhead
              as a share of the vision tower (Qwen2-VL's vision pass includes the scorer's)
    +text%    the same with the CLIP text pass of the question (what ATP's relevance term needs)
    same      answers equal to full's, out of the batch, in the engine runs (ATP at keep 1: all)
    *_ms      median prefill, vision and end-to-end milliseconds per batch

The models are not written to disk (7B of random weights would take minutes to save and load):
their configs, tokenizers and processors are saved to a temporary directory, and while the
adapter loads that directory the model class's `from_pretrained` hands it the model already
built in memory (checked: the adapter's model is that object, in the dtype and attention the
suite's `model:` asks for).

--tiny: tiny configs of the same two families (same code path, same methods; 64 visual tokens,
3-layer LLMs), 2 repeats, batch 2, on --device cpu with one torch thread: a smoke test for CI,
not a measurement. The exit status is 1 when ATP at keep 1 does not give full's answers.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")  # nothing here needs the network: never wait on it

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from robust_atp import cost  # noqa: E402
from robust_atp.data.base import Example  # noqa: E402
from robust_atp.engine import run_engine  # noqa: E402
from robust_atp.errors import UserError  # noqa: E402
from robust_atp.models.fastv import FastVSpec  # noqa: E402
from robust_atp.perturb.cache import CorruptionCache  # noqa: E402
from robust_atp.prune.methods import validate_method  # noqa: E402
from robust_atp.store import RunStore  # noqa: E402
from robust_atp.suite import MethodCfg, ModelCfg  # noqa: E402

KEEPS = (1.0, 0.5, 0.25, 0.125)
PEERS = ("atp", "fastv", "visionzip")
QUESTIONS = ("what color is the small circle left of the red square?", "how many triangles are there?",
             "is there a blue square?", "what shape is right of the green circle?")
QWEN_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|video_pad|>"]
QWEN_PROMPT = "USER: <|vision_start|><image><|vision_end|> {question} ASSISTANT:"
COLUMNS = ("method", "keep", "tokens", "bound", "prefill", "e2e", "eff", "ans/s", "peakMB", "select%", "+text%",
           "same", "prefill_ms", "vision_ms", "e2e_ms")


@dataclass(frozen=True)
class LlavaShape:
    vit_layers: int = 24
    vit_width: int = 1024
    vit_heads: int = 16
    vit_mlp: int = 4096
    image: int = 336
    patch: int = 14
    layers: int = 32
    width: int = 4096
    ffn: int = 11008
    heads: int = 32
    kv_heads: int = 32
    vocab: int = 32064
    text_layers: int = 12
    text_width: int = 768
    text_heads: int = 12
    text_mlp: int = 3072
    text_vocab: int = 49408
    projection: int = 768


@dataclass(frozen=True)
class QwenShape:
    vit_layers: int = 32
    vit_width: int = 1280
    vit_heads: int = 16
    out_width: int = 3584  # the merger's output: the LLM's width
    patch: int = 14
    image: int = 672  # 48 x 48 patches -> 24 x 24 = 576 merged tokens
    layers: int = 28
    width: int = 3584
    ffn: int = 18944
    heads: int = 28
    kv_heads: int = 4
    mrope: tuple = (16, 24, 24)
    rope_theta: float = 1e6
    vocab: int = 152064
    scorer: str = "ViT-L-14-336"  # an open_clip built-in name, or a config written for --tiny


TINY_LLAVA = LlavaShape(vit_layers=3, vit_width=32, vit_heads=4, vit_mlp=64, image=64, patch=8, layers=3, width=48,
                        ffn=96, heads=4, kv_heads=2, vocab=256, text_layers=1, text_width=32, text_heads=4,
                        text_mlp=64, text_vocab=256, projection=16)
TINY_QWEN = QwenShape(vit_layers=2, vit_width=32, vit_heads=4, out_width=48, patch=8, image=128, layers=3, width=48,
                      ffn=96, heads=4, kv_heads=2, mrope=(2, 2, 2), rope_theta=10000.0, vocab=256, scorer="tiny")
TINY_OPEN_CLIP = {"embed_dim": 16,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
                  "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


# ----------------------------------------------------------------------------- building

def _sharpen(lm_head, layers) -> None:
    """Random init gives near-uniform logits and attention: scale the LM head so greedy choices
    are not ties, and the LLM's queries and keys so which visual tokens it sees changes answers."""
    with torch.no_grad():
        lm_head.weight.mul_(20)
        for layer in layers:
            layer.self_attn.q_proj.weight.mul_(6)
            layer.self_attn.k_proj.weight.mul_(6)


@functools.lru_cache(maxsize=1)
def _tokenizers():
    from robust_atp.models.zoo import vocab

    return vocab.build_tokenizers()  # seconds: it enumerates the shapes vocabulary


def tokenizers():
    """The demo's (CLIP, LM) tokenizers: fresh copies (a family adds its own special tokens)."""
    import copy

    return copy.deepcopy(_tokenizers())


def _lm_tokenizer(extra=()):
    _, tok = tokenizers()
    if extra:
        tok.add_special_tokens({"additional_special_tokens": list(extra)}, replace_extra_special_tokens=False)
    return tok


def build_llava(out: Path, s: LlavaShape, device: torch.device, dtype: torch.dtype) -> tuple[ModelCfg, dict]:
    """A random LLaVA-1.5-shaped VLM and its CLIPModel built on `device` in `dtype`; their configs,
    tokenizers and processors saved in out/llava and out/clip. -> (the suite's model section,
    {directory: in-memory model})"""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig,
                              CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)

    from robust_atp.models.zoo import vocab

    clip_tok, lm_tok = tokenizers()
    vision = CLIPVisionConfig(hidden_size=s.vit_width, intermediate_size=s.vit_mlp, num_hidden_layers=s.vit_layers,
                              num_attention_heads=s.vit_heads, image_size=s.image, patch_size=s.patch,
                              projection_dim=s.projection)
    text = CLIPTextConfig(vocab_size=max(s.text_vocab, len(clip_tok)), hidden_size=s.text_width,
                          intermediate_size=s.text_mlp, num_hidden_layers=s.text_layers,
                          num_attention_heads=s.text_heads, max_position_embeddings=77, projection_dim=s.projection,
                          **vocab.SPECIAL_IDS_CLIP)
    lm = LlamaConfig(vocab_size=max(s.vocab, len(lm_tok)), hidden_size=s.width, intermediate_size=s.ffn,
                     num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                     max_position_embeddings=4096, rms_norm_eps=1e-5, **vocab.SPECIAL_IDS_LM)
    n_tokens = (s.image // s.patch) ** 2
    cfg = LlavaConfig(vision_config=vision.to_dict(), text_config=lm.to_dict(), image_token_index=vocab.IMAGE_ID,
                      image_seq_length=n_tokens, vision_feature_layer=-2, vision_feature_select_strategy="default")
    clip_cfg = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=s.projection)
    torch.manual_seed(0)
    with torch.device(device):  # built where it runs: no copy of 7B weights from the host
        llava = LlavaForConditionalGeneration._from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()
        clip = CLIPModel._from_config(clip_cfg, dtype=dtype, attn_implementation="sdpa").eval()
    _sharpen(llava.lm_head, llava.model.language_model.layers)
    proc = CLIPImageProcessor(size={"shortest_edge": s.image}, crop_size={"height": s.image, "width": s.image})
    llava.config.save_pretrained(out / "llava")
    LlavaProcessor(image_processor=proc, tokenizer=lm_tok, patch_size=s.patch, vision_feature_select_strategy="default",
                   image_token="<image>", num_additional_image_tokens=1).save_pretrained(out / "llava")
    clip.config.save_pretrained(out / "clip")
    CLIPProcessor(image_processor=proc, tokenizer=clip_tok).save_pretrained(out / "clip")
    model_cfg = ModelCfg(adapter="llava", checkpoint=str(out / "llava"), clip=str(out / "clip"), device=str(device),
                         dtype=str(dtype).removeprefix("torch."), attn_implementation="sdpa")
    return model_cfg, {str(out / "llava"): llava, str(out / "clip"): clip}


def build_qwen2_vl(out: Path, s: QwenShape, device: torch.device, dtype: torch.dtype) -> tuple[ModelCfg, dict]:
    """A random Qwen2-VL-shaped VLM built on `device` in `dtype`, its config, tokenizer and
    processor saved in out/qwen2_vl; the open_clip scorer named by `s.scorer` (--tiny: a small
    config written to out). -> (the suite's model section, {directory: in-memory model})"""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    from robust_atp.models.zoo import vocab
    from robust_atp.suite import ScorerCfg

    tok = _lm_tokenizer(QWEN_SPECIALS)
    ids = tok.convert_tokens_to_ids(QWEN_SPECIALS)
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=max(s.vocab, len(tok)), hidden_size=s.width, intermediate_size=s.ffn,
                         num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                         max_position_embeddings=32768, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": s.rope_theta,
                                          "mrope_section": list(s.mrope)}, **vocab.SPECIAL_IDS_LM),
        vision_config=dict(depth=s.vit_layers, embed_dim=s.vit_width, hidden_size=s.out_width, num_heads=s.vit_heads,
                           mlp_ratio=4, patch_size=s.patch, spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=vocab.IMAGE_ID, vision_start_token_id=ids[0], vision_end_token_id=ids[1],
        video_token_id=ids[2], **vocab.SPECIAL_IDS_LM)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration._from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()
    _sharpen(model.lm_head, model.model.language_model.layers)
    # Qwen2-VL-7B-Instruct's processor limits (56^2 .. 3584^2 pixels); a s.image px square keeps its size
    size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}
    kw = dict(size=size, patch_size=s.patch, merge_size=2, temporal_patch_size=2)
    path = out / "qwen2_vl"
    model.config.save_pretrained(path)
    Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**kw), video_processor=Qwen2VLVideoProcessor(**kw),
                     tokenizer=tok).save_pretrained(path)
    scorer = s.scorer
    if scorer == "tiny":
        scorer = str(out / "bench-gpu-tiny-vit.json")
        Path(scorer).write_text(json.dumps(TINY_OPEN_CLIP))
    model_cfg = ModelCfg(adapter="qwen2_vl", checkpoint=str(path), prompt=QWEN_PROMPT, device=str(device),
                         dtype=str(dtype).removeprefix("torch."), attn_implementation="sdpa",
                         scorer=ScorerCfg(kind="open_clip", model=scorer, pretrained=None))
    return model_cfg, {str(path): model}


@contextlib.contextmanager
def served_from_memory(models: dict):
    """While the adapter loads: `from_pretrained` of each model's class, asked for one of these
    directories, returns the model built in memory (after checking that the dtype and attention
    asked for are the model's); any other path loads as usual."""
    from unittest import mock

    patches = []
    for cls in {type(m) for m in models.values()}:
        original = cls.from_pretrained

        def serve(path, *args, _original=original, **kwargs):
            model = models.get(str(path))
            if model is None:
                return _original(path, *args, **kwargs)
            want = kwargs.get("dtype")
            if want is not None and want != model.dtype:
                raise RuntimeError(f"{path}: asked for {want}, built in {model.dtype}")
            attn = kwargs.get("attn_implementation")
            if attn is not None and attn != model.config._attn_implementation:
                raise RuntimeError(f"{path}: asked for {attn} attention, built with "
                                   f"{model.config._attn_implementation}")
            return model

        patches.append(mock.patch.object(cls, "from_pretrained", staticmethod(serve)))
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


def load(model_cfg: ModelCfg, models: dict):
    """The adapter a suite's `model:` section gives, around the in-memory models."""
    from robust_atp.models.base import load_adapter

    # on the device: what the adapter builds itself (Qwen2-VL's open_clip scorer, random weights
    # here) is initialised there, not on the host and then copied
    with served_from_memory(models), torch.device(model_cfg.device):
        adapter = load_adapter(model_cfg)
    if adapter.model is not models[model_cfg.checkpoint]:
        raise RuntimeError("the adapter did not load the model built in memory")
    return adapter


# ----------------------------------------------------------------------------- measuring

def synthetic_batch(n: int, size: int) -> list[Example]:
    """n examples: seeded random RGB images of size x size, the shapes-style questions in turn."""
    return [Example(id=f"syn{i}", image_id=f"img{i}", image=functools.partial(_image, i, size),
                    question=QUESTIONS[i % len(QUESTIONS)], answers=("yes",)) for i in range(n)]


def _image(i: int, size: int) -> Image.Image:
    g = torch.Generator().manual_seed(1000 + i)
    coarse = torch.rand(3, 8, 8, generator=g)  # smooth structure, so CLS attention is not flat
    x = torch.nn.functional.interpolate(coarse[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    x = (0.7 * x + 0.3 * torch.rand(3, size, size, generator=g)).clamp(0, 1)
    return Image.fromarray((x.permute(1, 2, 0) * 255).byte().numpy())


def methods_for(keeps) -> list:
    out = [validate_method(MethodCfg(name="full"))]
    for name in PEERS:
        for k in keeps:
            extra = {"alpha": 0.5} if name == "atp" else {}
            out.append(validate_method(MethodCfg(name=name, keep=k, **extra)))
    return out


@contextlib.contextmanager
def new_tokens(adapter, n: int):
    """Exactly n new tokens per answer (EOS ignored) while inside."""
    g = adapter.generation_config
    saved = g.max_new_tokens, g.min_new_tokens
    g.max_new_tokens = g.min_new_tokens = n
    try:
        yield
    finally:
        g.max_new_tokens, g.min_new_tokens = saved


def answer(adapter, m, kept, vision, questions) -> list[str]:
    """One method's answers on one batch from its kept tokens (`Method.apply`) and the batch's
    vision pass, as the engine asks the adapter for them (its declared generation inputs)."""
    tokens = [k.tokens for k in kept]
    if m.fastv_layer is not None:
        spec = FastVSpec(m.fastv_layer, m.fastv_k(vision.tokens.shape[1]))
        return adapter.generate(tokens, questions, in_llm=spec, **adapter.generation_inputs(vision, None))
    return adapter.generate(tokens, questions, **adapter.generation_inputs(vision, [k.indices for k in kept]))


def llm_tokens(m, vision, text, keys) -> tuple[list[int], list[int] | None]:
    """Per example the visual tokens handed to the LLM, and (FastV) those after its cut."""
    n = [len(k.tokens) for k in m.apply(vision, text, keys)]
    if m.fastv_layer is None:
        return n, None
    return n, [min(m.fastv_k(vision.tokens.shape[1]), x) for x in n]


def supported(adapter, m, vision, text, questions, keys) -> str | None:
    """None if the adapter runs the method on this batch, else why not: its one-line refusal, or
    the error it failed with (reported in the table rather than ending a run of many models)."""
    try:
        answer(adapter, m, m.apply(vision, text, keys), vision, questions)
    except UserError as e:
        return f"refused: {e}"
    except Exception as e:  # noqa: BLE001
        return f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def measure_round(adapter, methods, images, questions, keys, clock, steps: int) -> dict:
    """One round: the vision pass and CLIP text pass once, then every method once: its selection,
    its prefill (one new token) and its full answer (`steps` new tokens, peak memory over it)."""
    rec = {}
    t = clock()
    vision = adapter.encode_images(images)
    vision_s = clock() - t
    text, text_s = None, 0.0
    if any(m.needs_text for m in methods):
        t = clock()
        text = adapter.encode_texts(questions)
        text_s = clock() - t
    n = vision.tokens.shape[1]
    for m in methods:
        t = clock()
        kept = m.apply(vision, text, keys[m.label])
        select_s = clock() - t
        with new_tokens(adapter, 1):
            t = clock()
            answer(adapter, m, kept, vision, questions)
            prefill_s = clock() - t
        with new_tokens(adapter, steps), cost.PeakMemory(adapter.device) as peak:
            t = clock()
            answer(adapter, m, kept, vision, questions)
            generate_s = clock() - t
        own_text = text_s if m.needs_text else 0.0
        rec[m.label] = {"vision": vision_s, "text": own_text, "select": select_s, "prefill": prefill_s,
                        "generate": generate_s, "e2e": vision_s + own_text + select_s + generate_s, "peak": peak.mb}
    return rec


def engine_rate(adapter, m, examples, steps: int) -> tuple[float, dict]:
    """The engine answering the batch with one method: (answers per second, {example id: answer})."""
    with tempfile.TemporaryDirectory(prefix="bench_gpu_store_") as tmp, new_tokens(adapter, steps):
        store = RunStore(Path(tmp) / "predictions.sqlite")
        clock = cost.Clock(adapter.device)
        t = clock()
        run_engine(examples=examples, methods=[m], image_conditions=[], adapter_factory=lambda: adapter, store=store,
                   seed=0, metrics=["exact_match"], batch_size=len(examples), progress=False,
                   cache=CorruptionCache(enabled=False))
        seconds = clock() - t
        answers = {p.example_id: p.prediction for p in store.rows()}
        store.close()
    return len(answers) / seconds, answers


def bench_model(adapter, examples, keeps, repeats: int, steps: int) -> dict:
    """Every method on one batch: rows of medians (see the module docstring), and the methods
    this adapter refuses, with its reason."""
    images = [ex.image() for ex in examples]
    questions = [ex.question for ex in examples]
    clock = cost.Clock(adapter.device)
    methods = methods_for(keeps)
    keys = {m.label: [f"0/{ex.id}/{m.label}" for ex in examples] for m in methods}
    vision = adapter.encode_images(images)
    text = adapter.encode_texts(questions) if any(m.needs_text for m in methods) else None
    refused = {}
    with new_tokens(adapter, steps):  # decoding steps too: what the measured calls run
        for m in methods:
            why = supported(adapter, m, vision, text, questions, keys[m.label])
            if why is not None:
                refused[m.label] = why
    methods = [m for m in methods if m.label not in refused]
    measure_round(adapter, methods, images, questions, keys, clock, steps)  # warm-up (untimed)
    rounds = [measure_round(adapter, methods, images, questions, keys, clock, steps) for _ in range(repeats)]
    rates, answers, unstable = {}, {}, []
    engine_rate(adapter, methods[0], examples, steps)  # warm-up: the store, the engine's first call
    for m in methods:
        runs = [engine_rate(adapter, m, examples, steps) for _ in range(repeats)]
        rates[m.label] = statistics.median(r for r, _ in runs)
        answers[m.label] = runs[0][1]
        if any(a != answers[m.label] for _, a in runs):  # greedy decoding of the same inputs should not vary
            unstable.append(m.label)
    llm = cost.LayerShape.from_config(adapter.cost_configs()["llm"])
    text_len = [adapter.prompt_length(q) for q in questions]
    full = methods[0].label
    med = {m.label: {f: statistics.median(r[m.label][f] for r in rounds)
                     for f in ("vision", "text", "select", "prefill", "generate", "e2e")} for m in methods}
    flops, rows = {}, []
    for m in methods:
        n, after = llm_tokens(m, vision, text, keys[m.label])
        if after is None:
            flops[m.label] = sum(cost.prefill_flops(llm, t + k) for t, k in zip(text_len, n))
        else:
            flops[m.label] = sum(cost.prefill_flops(llm, t + k, t + a, m.fastv_layer)
                                 for t, k, a in zip(text_len, n, after))
        r, f = med[m.label], med[full]
        bound = flops[full] / flops[m.label]
        prefill = f["prefill"] / r["prefill"]
        ref = answers[full]
        rows.append({"method": m.name, "label": m.label, "keep": m.settings.get("keep", 1.0),
                     "tokens": round(statistics.mean(after if after is not None else n), 1),
                     "prefill_flops": flops[m.label], "bound": bound, "prefill": prefill,
                     "e2e": f["e2e"] / r["e2e"], "eff": prefill / bound, "answers_per_s": rates[m.label],
                     "peak_mb": max(rd[m.label]["peak"] for rd in rounds),
                     "select_pct": None if m.name == "full" else 100 * r["select"] / r["vision"],
                     "text_pct": None if m.name == "full" else 100 * (r["text"] + r["select"]) / r["vision"],
                     "same": sum(answers[m.label][k] == ref[k] for k in ref), "batch": len(ref),
                     **{f"{k}_ms": 1e3 * v for k, v in r.items()}})
    return {"rows": rows, "refused": refused, "unrepeatable": unstable,
            "peak_kind": cost.PeakMemory(adapter.device).kind,
            "prompt_text_tokens": statistics.mean(text_len), "visual_tokens": vision.tokens.shape[1]}


# ----------------------------------------------------------------------------- output

def _cell(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def print_table(title: str, result: dict) -> None:
    print(title)
    widths = (10, 6, 7, 7, 8, 7, 6, 8, 9, 8, 8, 6, 11, 10, 9)
    head = "".join(f"{c:>{w}}" for c, w in zip(COLUMNS, widths))
    print(head)
    print("-" * len(head))
    for r in result["rows"]:
        cells = (r["method"], f"{r['keep']:g}", f"{r['tokens']:g}", f"{r['bound']:.3f}", f"{r['prefill']:.3f}",
                 f"{r['e2e']:.3f}", f"{r['eff']:.2f}", f"{r['answers_per_s']:.2f}", f"{r['peak_mb']:.0f}",
                 _cell(r["select_pct"], ".2f"), _cell(r["text_pct"], ".2f"), f"{r['same']}/{r['batch']}",
                 f"{r['prefill_ms']:.1f}", f"{r['vision_ms']:.1f}", f"{r['e2e_ms']:.1f}")
        print("".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    by_reason: dict[str, list[str]] = {}
    for label, why in result["refused"].items():
        by_reason.setdefault(why, []).append(label)
    for why, labels in by_reason.items():
        print(f"  not run: {', '.join(labels)}: {why}")
    if result["unrepeatable"]:
        print(f"  answers differed between repeated engine runs: {', '.join(result['unrepeatable'])}")
    print()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda (default; cpu with --tiny)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--batch", type=int, default=None, help="synthetic examples per batch (8; 2 with --tiny)")
    ap.add_argument("--new-tokens", type=int, default=8, help="tokens every answer has")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (3; 2 with --tiny)")
    ap.add_argument("--models", default="llava,qwen2_vl", help="comma-separated: llava, qwen2_vl")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default torch's; 1 with --tiny: tiny models "
                    "gain nothing from more, and lose much on a loaded machine)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    ap.add_argument("--tiny", action="store_true", help="tiny configs of the same families: a smoke test")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    families = [f.strip() for f in a.models.split(",") if f.strip()]
    unknown = sorted(set(families) - {"llava", "qwen2_vl"})
    if unknown or not families:
        print(f"bench_gpu.py: --models: unknown {', '.join(unknown) or '(none)'}; known: llava, qwen2_vl",
              file=sys.stderr)
        return 2
    device = torch.device(a.device or ("cpu" if a.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu.py: --device: cuda requested but no CUDA device is available (use --tiny --device cpu)",
              file=sys.stderr)
        return 2
    dtype = getattr(torch, a.dtype)
    if a.threads or a.tiny:
        torch.set_num_threads(a.threads or 1)
    batch = a.batch or (2 if a.tiny else 8)
    repeats = a.repeats or (2 if a.tiny else 3)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device {device} ({where}), {a.dtype}, sdpa; batch {batch}, {a.new_tokens} new tokens per answer; "
          f"median of {repeats} rounds after 1 warm-up round (each round measures every method once); "
          f"ratios are full's / the method's, in this process{' (TINY: not a measurement)' if a.tiny else ''}")
    print("columns: bound = FLOPs bound on the prefill speedup (full / method analytical prefill FLOPs); "
          "prefill, e2e = measured speedups; eff = prefill / bound; ans/s = engine answers per second; "
          "select%, +text% = selection (with the CLIP text pass) / vision pass; same = answers equal to full's\n")
    out = {"mode": "tiny" if a.tiny else "full", "device": str(device), "device_name": where, "dtype": a.dtype,
           "attn_implementation": "sdpa", "batch": batch, "new_tokens": a.new_tokens, "repeats": repeats,
           "keeps": list(KEEPS), "torch": torch.__version__, "models": {}}
    import transformers

    out["transformers"] = transformers.__version__
    for family in families:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"bench_gpu_{family}_") as tmp:
            if family == "llava":
                shape = TINY_LLAVA if a.tiny else LlavaShape()
                model_cfg, models = build_llava(Path(tmp), shape, device, dtype)
            else:
                shape = TINY_QWEN if a.tiny else QwenShape()
                model_cfg, models = build_qwen2_vl(Path(tmp), shape, device, dtype)
            adapter = load(model_cfg, models)
            del models
        built = time.perf_counter() - t0
        params = sum(p.numel() for p in adapter.model.parameters())
        examples = synthetic_batch(batch, shape.image)
        result = bench_model(adapter, examples, KEEPS, repeats, a.new_tokens)
        result.update(family=family, shape=dataclasses.asdict(shape), params=params, build_s=built,
                      seconds=time.perf_counter() - t0)
        lc = adapter.cost_configs()["llm"]
        title = {"llava": "LLaVA-1.5-7B-shaped", "qwen2_vl": "Qwen2-VL-7B-shaped"}[family]
        print_table(f"{title}{' (TINY)' if a.tiny else ''}, random weights, {_count(params)} parameters: "
                    f"{result['visual_tokens']} visual tokens, LLM {lc.num_hidden_layers} layers x {lc.hidden_size}; "
                    f"prompt {result['prompt_text_tokens']:g} text tokens; built in {built:.1f} s, "
                    f"measured in {result['seconds'] - built:.1f} s; peak memory: {result['peak_kind']}", result)
        out["models"][family] = result
        del adapter
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out["seconds"] = time.perf_counter() - t_start
    atp1 = [r for res in out["models"].values() for r in res["rows"] if r["label"] == "atp@1"]
    print(f"ATP at keep 1 gives full's answers: {'yes' if all(r['same'] == r['batch'] for r in atp1) else 'NO'} "
          f"({', '.join(str(r['same']) + '/' + str(r['batch']) for r in atp1)})")
    print(f"total {out['seconds']:.1f} s")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, default=str))
    return 0 if all(r["same"] == r["batch"] for r in atp1) else 1  # ATP with K = N is `full`: an invariant


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"




if __name__ == "__main__":
    sys.exit(main())
