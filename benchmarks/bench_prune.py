"""What pruning saves, measured: ATP at keep {1, 0.75, 0.5, 0.25, 0.125} against the full model,
on the shipped demo model and on a LLaVA-1.5-shaped stack with random weights.

    python benchmarks/bench_prune.py [--device cpu|cuda] [--repeats 5] [--layers 2] [--vision-layers 24]
                                     [--batch 1] [--new-tokens 8] [--quick]

Per keep ratio, one batch, every figure in the same process (`robust_atp.measure.measure_cost`,
the code behind a suite's `cost:` option), the median of --repeats rounds after a warm-up
round, each round measuring every keep once:

    flops       analytical LLM prefill FLOPs / full's (FlopCounterMode agrees: `flops err`)
    prefill     measured prefill time / full's; `pred` = measured speedup / FLOPs-predicted
                speedup (1.0 = as predicted)
    e2e         measured end to end (vision pass + CLIP text pass + selection + generate) / full's
    select%     ATP's scoring + selection (`Method.apply`), % of the vision pass actually run
    +text%      the same plus the CLIP text pass of the question (ATP's relevance term needs it)
    flops err%  FlopCounterMode's count of the prefill against the analytical one
    GFLOP/s     analytical prefill FLOPs / measured prefill time: the throughput the hardware
                reached (where it falls with fewer tokens, the prefill saves less than the FLOPs)
    and where the time goes: vision, text, select, prefill, decode per token, generate (ms).

The LLaVA-1.5 stack: CLIP ViT-L/14-336 vision dims (1024 wide, 16 heads, MLP 4096, patch 14,
336 px -> 576 tokens, --vision-layers of its 24), the 2-layer MLP projector, an LLM of
LLaVA-7B's width (4096, 32 heads, FFN 11008) with --layers decoder layers, CLIP-L's text tower
(768 wide, 12 layers) for ATP's relevance term; random weights, float32 on cpu (float16 with
--half), a small word-level vocabulary (the demo's: the LM head and embeddings are not part of
the prefill count). Every method generates exactly --new-tokens tokens (EOS is ignored) so
decoding work is equal across methods. --quick: keeps 1 and 0.25, 1 repeat, and the LLaVA
stack scaled down 16x in width with 2 vision layers and 1 LLM layer, a demo batch of 2 (a smoke
test, not a measurement).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from robust_atp import cost  # noqa: E402
from robust_atp.measure import measure_cost  # noqa: E402
from robust_atp.prune.methods import validate_method  # noqa: E402
from robust_atp.suite import CostCfg, MethodCfg, ModelCfg  # noqa: E402

KEEPS = (1.0, 0.75, 0.5, 0.25, 0.125)
QUESTION = "what color is the small circle left of the red square?"


def llava_shaped(out: Path, llm_layers: int, vision_layers: int, scale: int = 1) -> Path:
    """A random LLaVA-1.5-shaped LlavaForConditionalGeneration + CLIPModel saved in out/llava and
    out/clip (widths divided by `scale`; 1 = the real dims)."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextConfig,
                              CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)

    from robust_atp.models.zoo import vocab

    clip_tok, lm_tok = vocab.build_tokenizers()
    v = len(clip_tok)
    vision = CLIPVisionConfig(hidden_size=1024 // scale, intermediate_size=4096 // scale,
                              num_hidden_layers=vision_layers, num_attention_heads=16, image_size=336, patch_size=14,
                              projection_dim=768 // scale)
    text = CLIPTextConfig(vocab_size=v, hidden_size=768 // scale, intermediate_size=3072 // scale,
                          num_hidden_layers=12 if scale == 1 else 1, num_attention_heads=12,
                          max_position_embeddings=77, projection_dim=768 // scale, **vocab.SPECIAL_IDS_CLIP)
    lm = LlamaConfig(vocab_size=v, hidden_size=4096 // scale, intermediate_size=11008 // scale,
                     num_hidden_layers=llm_layers, num_attention_heads=32, num_key_value_heads=32,
                     max_position_embeddings=4096, **vocab.SPECIAL_IDS_LM)
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(LlavaConfig(
        vision_config=vision.to_dict(), text_config=lm.to_dict(), image_token_index=vocab.IMAGE_ID,
        image_seq_length=576, vision_feature_layer=-2, vision_feature_select_strategy="default")).eval()
    clip = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                projection_dim=768 // scale)).eval()
    clip.vision_model.load_state_dict(llava.model.vision_tower.state_dict())
    proc = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    llava.save_pretrained(out / "llava")
    LlavaProcessor(image_processor=proc, tokenizer=lm_tok, patch_size=14, vision_feature_select_strategy="default",
                   image_token="<image>", num_additional_image_tokens=1).save_pretrained(out / "llava")
    clip.save_pretrained(out / "clip")
    CLIPProcessor(image_processor=proc, tokenizer=clip_tok).save_pretrained(out / "clip")
    return out


def measure(adapter, images, questions, keeps, repeats: int, new_tokens: int) -> list[dict]:
    """One row per keep: ATP at that keep (keep 1 = the full model) on one batch. The methods are
    measured in rounds (every method once per round, after one warm-up round) and each figure is
    the median over rounds, so a change in the machine's load hits every method alike."""
    adapter.generation_config.max_new_tokens = new_tokens
    adapter.generation_config.min_new_tokens = new_tokens  # equal decoding work for every method
    methods = [validate_method(MethodCfg(name="full") if k == 1 else MethodCfg(name="atp", keep=k, alpha=0.5))
               for k in keeps]
    keys = {m.label: [f"0/{i}/{m.label}" for i in range(len(images))] for m in methods}
    texts = {"question": questions, "prompt": questions}
    counted = measure_cost(methods, adapter, images, questions, texts, keys, CostCfg(flops=True))
    one = CostCfg(latency=True, repeats=1, warmup=0)
    measure_cost(methods, adapter, images, questions, texts, keys, one)  # warm-up round
    rounds = [measure_cost(methods, adapter, images, questions, texts, keys, one) for _ in range(repeats)]
    fields = ("vision", "text", "select", "prefill", "decode_per_token", "generate", "end_to_end")
    med = {m.label: {f: statistics.median(r[m.label][f + "_ms"] for r in rounds) for f in fields} for m in methods}
    llm = cost.LayerShape.from_config(adapter.cost_configs()["llm"])
    n = adapter.num_visual_tokens
    analytic = {m.label: sum(cost.prefill_flops(llm, adapter.prompt_length(q) + round(k * n))
                             for q in questions) for m, k in zip(methods, keeps)}
    full = med[methods[0].label]
    rows = []
    for m, k in zip(methods, keeps):
        r, c = med[m.label], counted[m.label]
        flops = analytic[m.label] / analytic[methods[0].label]
        prefill = r["prefill"] / full["prefill"]
        rows.append({"keep": k, "tokens": round(k * n), "flops": flops, "prefill": prefill,
                     "pred": flops / prefill, "e2e": r["end_to_end"] / full["end_to_end"],
                     "select%": None if m.name == "full" else 100 * r["select"] / r["vision"],
                     "overhead": None if m.name == "full" else 100 * (r["text"] + r["select"]) / r["vision"],
                     "gflops": analytic[m.label] / r["prefill"] / 1e6,
                     "flops_err": 100 * (c["counted_prefill_flops"] / c["analytic_prefill_flops"] - 1),
                     "prefill_ms": r["prefill"], **{f: r[f] for f in fields if f != "prefill"}})
    return rows


def print_table(title: str, rows: list[dict]) -> None:
    print(title)
    head = (f"{'keep':>6}{'tokens':>7}{'flops':>7}{'prefill':>8}{'pred':>6}{'e2e':>7}{'select%':>8}{'+text%':>8}"
            f"{'flops err%':>11}{'GFLOP/s':>8}{'vision':>9}{'text':>8}{'select':>8}{'prefill':>9}{'dec/tok':>9}"
            f"{'generate':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        sel = "-" if r["select%"] is None else f"{r['select%']:.2f}"
        over = "-" if r["overhead"] is None else f"{r['overhead']:.2f}"
        print(f"{r['keep']:>6g}{r['tokens']:>7}{r['flops']:>7.3f}{r['prefill']:>8.3f}{r['pred']:>6.2f}{r['e2e']:>7.3f}"
              f"{sel:>8}{over:>8}{r['flops_err']:>11.3f}{r['gflops']:>8.1f}{r['vision']:>9.1f}{r['text']:>8.1f}"
              f"{r['select']:>8.2f}"
              f"{r['prefill_ms']:>9.1f}{r['decode_per_token']:>9.1f}{r['generate']:>10.1f}")
    print()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", type=int, default=2, help="LLM decoder layers of the LLaVA-shaped stack (7B: 32)")
    ap.add_argument("--vision-layers", type=int, default=24, help="ViT layers of the LLaVA-shaped stack (ViT-L: 24)")
    ap.add_argument("--batch", type=int, default=1, help="images per measured batch")
    ap.add_argument("--new-tokens", type=int, default=8, help="tokens every method generates")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--half", action="store_true", help="float16 weights (for cuda)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: small stack, keeps 1 and 0.25, 1 repeat")
    a = ap.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    keeps = (1.0, 0.25) if a.quick else KEEPS
    repeats = 1 if a.quick else a.repeats
    dtype = "float16" if a.half else "float32"
    from robust_atp.data.shapes import load_shapes
    from robust_atp.models.base import load_adapter

    threads = torch.get_num_threads() if a.device == "cpu" else "-"
    print(f"device {a.device} ({threads} threads), {dtype}, median of {repeats} rounds after 1 warm-up round "
          "(each round measures every keep once); ATP alpha 0.5; "
          "ratios are against keep 1 (the full model) in the same process")
    print("columns: flops / prefill / e2e = ratio to full; pred = measured prefill speedup / FLOPs-predicted "
          "speedup; select% = ATP's scoring + selection, +text% = with the CLIP text pass, % of the vision pass; "
          "GFLOP/s = prefill FLOPs / prefill time; times in ms per batch\n")

    examples = load_shapes("test", limit=max(8, a.batch))
    demo = load_adapter(ModelCfg(checkpoint="zoo:shapes_vlm/llava", clip="zoo:shapes_vlm/clip", device=a.device,
                                 dtype=dtype))
    batch = examples[:2 if a.quick else 8]
    rows = measure(demo, [ex.image() for ex in batch], [ex.question for ex in batch], keeps, repeats, 3)
    vc, lc = demo.model.config.vision_config, demo.model.config.text_config
    print_table(f"(a) demo model (zoo:shapes_vlm): ViT {vc.num_hidden_layers} layers x {vc.hidden_size}, "
                f"{demo.num_visual_tokens} visual tokens; LLM {lc.num_hidden_layers} layers x {lc.hidden_size}; "
                f"batch {len(batch)} shapes questions, 3 new tokens", rows)
    del demo

    scale = 16 if a.quick else 1
    llm_layers, vision_layers = (1, 2) if a.quick else (a.layers, a.vision_layers)
    with tempfile.TemporaryDirectory(prefix="llava_shaped_") as tmp:
        llava_shaped(Path(tmp), llm_layers, vision_layers, scale)
        adapter = load_adapter(ModelCfg(checkpoint=str(Path(tmp) / "llava"), clip=str(Path(tmp) / "clip"),
                                        device=a.device, dtype=dtype))
    g = torch.Generator().manual_seed(0)
    images = [Image.fromarray((torch.rand(336, 336, 3, generator=g) * 255).byte().numpy()) for _ in range(a.batch)]
    rows = measure(adapter, images, [QUESTION] * a.batch, keeps, repeats, a.new_tokens)
    vc, lc = adapter.model.config.vision_config, adapter.model.config.text_config
    print_table(f"(b) LLaVA-1.5-shaped, random weights{' (QUICK: scaled down, not a measurement)' if a.quick else ''}: "
                f"ViT {vc.num_hidden_layers} layers x {vc.hidden_size} (MLP {vc.intermediate_size}, "
                f"{adapter.num_visual_tokens} tokens); LLM {lc.num_hidden_layers} layers x {lc.hidden_size} "
                f"(FFN {lc.intermediate_size}, {lc.num_attention_heads} heads); batch {a.batch}, "
                f"prompt {adapter.prompt_length(QUESTION)} text tokens, {a.new_tokens} new tokens", rows)


if __name__ == "__main__":
    main()
