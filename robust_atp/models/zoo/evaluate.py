"""Evaluate the demo VLM through the real adapter and (optionally) write its model card.

    python -m robust_atp.models.zoo.evaluate [--model DIR] [--n 1000] [--write-card]

Figures: clean test accuracy per question type; accuracy on blank (uniform grey) images
beside the best answer-prior baseline (the model must fall to the prior when it cannot
see); mean accuracy over the 15 ImageNet-C corruptions at severity 5. `metrics.json` holds
them; `tests/test_demo_model.py` recomputes them from the shipped weights.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ...data import shapes
from ...metrics.match import exact_match
from ...perturb.image import ImageCondition, condition_seed, corrupt, corruption_names
from . import ZOO_DIR

CARD_SEED = 0  # the seed of the corruption draws used for the card's severity-5 figure


def load_demo(model_dir: Path | str | None = None, device: str = "cpu"):
    from ...models.base import load_adapter
    from ...suite import ModelCfg

    root = Path(model_dir) if model_dir else ZOO_DIR / "shapes_vlm"
    cfg = ModelCfg(adapter="llava", checkpoint=str(root / "llava"), clip=str(root / "clip"), device=device,
                   generation={"max_new_tokens": 3})
    return load_adapter(cfg)


@torch.inference_mode()
def answer(adapter, images, questions, batch: int = 64) -> list[str]:
    out = []
    for i in range(0, len(images), batch):
        v = adapter.encode_images(images[i:i + batch])
        out += adapter.generate(list(v.tokens), questions[i:i + batch])
    return out


def prior_baselines(examples, seed: int = 0, n_train: int = 20000) -> dict:
    """Accuracy on `examples` of two answer priors fitted on train questions (no pixels):
    the majority answer per question type, and per exact question string."""
    by_type, by_question = defaultdict(Counter), defaultdict(Counter)
    for i in range(n_train):
        scene = shapes.make_scene(seed, "train", i)
        qa = shapes.sample_question(scene, np.random.default_rng([seed, 0, i, 2]))
        by_type[qa.question_type][qa.answer] += 1
        by_question[qa.question][qa.answer] += 1

    def hits(pick):
        return [exact_match(pick(e), e.answers) for e in examples]

    per_type = hits(lambda e: by_type[e.question_type].most_common(1)[0][0])
    per_question = hits(lambda e: (by_question.get(e.question) or by_type[e.question_type]).most_common(1)[0][0])
    by_qtype = defaultdict(list)
    for e, h in zip(examples, per_question):
        by_qtype[e.question_type].append(h)
    return {"per_type_majority": round(float(np.mean(per_type)), 4),
            "per_question_majority": round(float(np.mean(per_question)), 4),
            "best": round(float(max(np.mean(per_type), np.mean(per_question))), 4),
            "per_question_majority_by_type": {k: round(float(np.mean(v)), 4) for k, v in sorted(by_qtype.items())}}


def evaluate(adapter, n: int = 1000, n_corrupt: int = 300, seed: int = 0, progress: bool = True) -> dict:
    examples = shapes.load_shapes("test", limit=n, seed=seed)
    images = [e.image() for e in examples]
    questions = [e.question for e in examples]
    preds = answer(adapter, images, questions)
    per_type = defaultdict(list)
    for e, p in zip(examples, preds):
        per_type[e.question_type].append(exact_match(p, e.answers))
    blank = answer(adapter, [shapes.blank_image()] * n, questions)
    blank_acc = float(np.mean([exact_match(p, e.answers) for e, p in zip(examples, blank)]))
    sev5 = {}
    sub = examples[:n_corrupt]
    for c in tqdm(corruption_names("common"), desc="severity 5", disable=not progress, leave=False):
        cond = ImageCondition(c, 5)
        imgs = [corrupt(im, cond, condition_seed(CARD_SEED, e.id, cond.name)) for im, e in zip(images, sub)]
        p = answer(adapter, imgs, questions[:n_corrupt])
        sev5[c] = round(float(np.mean([exact_match(a, e.answers) for a, e in zip(p, sub)])), 4)
    clean_sub = float(np.mean([exact_match(p, e.answers) for e, p in zip(sub, preds)]))
    return {
        "n": n,
        "clean_accuracy": round(float(np.mean([x for v in per_type.values() for x in v])), 4),
        "clean_accuracy_by_type": {k: round(float(np.mean(v)), 4) for k, v in sorted(per_type.items())},
        "blank_image_accuracy": round(blank_acc, 4),
        "answer_prior": prior_baselines(examples, seed),
        "severity5": {"n": len(sub), "clean_accuracy_same_examples": round(clean_sub, 4),
                      "mean": round(float(np.mean(list(sev5.values()))), 4), "by_corruption": sev5},
    }


def write_card(model_dir: Path, metrics: dict) -> None:
    training = json.loads((model_dir / "training.json").read_text())
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    m = metrics
    prior = m["answer_prior"]["per_question_majority_by_type"]
    rows = "\n".join(f"| {k} | {100 * v:.1f} | {100 * prior[k]:.1f} |" for k, v in m["clean_accuracy_by_type"].items())
    weak = [k for k, v in m["clean_accuracy_by_type"].items() if v - prior[k] < 0.10]
    mix = ("All six question types are in the mix; each beats its answer prior by 10 points or more."
           if not weak else f"Types within 10 points of their answer prior: {', '.join(weak)}.")
    sev = "\n".join(f"| {k} | {100 * v:.1f} |" for k, v in m["severity5"]["by_corruption"].items())
    size = sum(p.stat().st_size for p in model_dir.rglob("*.safetensors")) / 1e6
    secs = training["seconds"]
    cfg = json.loads((model_dir / "llava" / "config.json").read_text())
    vis, txt = cfg["vision_config"], cfg["text_config"]
    n_patch = (vis["image_size"] // vis["patch_size"]) ** 2
    text = f"""# shapes_vlm: the offline demo VLM

A small LLaVA-architecture VLM trained from scratch on the procedural shapes benchmark
(`robust_atp/data/shapes.py`), shipped so that the suite runs offline on a CPU through the
same adapter code as LLaVA-1.5.

- `llava/`: `LlavaForConditionalGeneration`: CLIP ViT ({vis["image_size"]} px, patch {vis["patch_size"]}, {n_patch} patch tokens + CLS,
  {vis["num_hidden_layers"]} layers, width {vis["hidden_size"]}), 2-layer MLP projector, Llama LM
  ({txt["num_hidden_layers"]} layers, width {txt["hidden_size"]}), word-level tokenizer.
- `clip/`: the `CLIPModel` whose vision tower is the VLM's (same weights), with its text tower
  and projections: the relevance term of ATP.
- {size:.1f} MB of safetensors in all.

## Training

    {training["command"]}

Seed {training["seed"]}; {secs["total"] / 60:.1f} min on {training["threads"]} CPU threads
(render {secs["render"]:.0f} s, stage a {secs["stage_a"]:.0f} s, stage b {secs["stage_b"]:.0f} s), torch {training["torch"]}.
Stage a trains the CLIP model (per-patch colour / shape / background / object-centre heads at
ViT layer -2, contrastive scene captions, projected patches aligned with object descriptions).
Stage b freezes the tower and trains projector + LM on cached features, many questions per
scene, with two auxiliary losses: projected visual tokens are tied to the word embeddings of
the colour and shape they show and of the image half they lie in, and one attention head per
LM layer (after the first) is supervised to look, from the answer position, at the patches
of the objects the question names. Half the training rows drop a random share of the visual
tokens, so the LM answers from a subset of its tokens as large VLMs do. None of this touches
what the pruning methods read (ViT CLS attention, CLIP patch and text embeddings). See
`train_shapes.py` for why each choice was made.
{mix}

## Figures (test split, n = {m["n"]}, greedy, through `robust_atp.models.llava`)

Clean accuracy: **{100 * m["clean_accuracy"]:.1f}%**

| question type | accuracy % | answer prior % |
|---|---|---|
{rows}

Blank (uniform grey) images: **{100 * m["blank_image_accuracy"]:.1f}%**; best answer-prior baseline
{100 * m["answer_prior"]["best"]:.1f}% (majority answer per question string
{100 * m["answer_prior"]["per_question_majority"]:.1f}%, per question type {100 * m["answer_prior"]["per_type_majority"]:.1f}%).

Severity-5 corruptions (first {m["severity5"]["n"]} test examples; clean on the same examples
{100 * m["severity5"]["clean_accuracy_same_examples"]:.1f}%): mean **{100 * m["severity5"]["mean"]:.1f}%**

| corruption @ 5 | accuracy % |
|---|---|
{sev}

Reproduce: `python -m robust_atp.models.zoo.evaluate` (prints these figures from the shipped
weights); `pytest tests/test_demo_model.py` checks them against `metrics.json`.
"""
    (model_dir / "README.md").write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Evaluate the demo VLM (clean, blank, severity-5).")
    ap.add_argument("--model", type=Path, default=ZOO_DIR / "shapes_vlm")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--write-card", action="store_true", help="write metrics.json and README.md into --model")
    args = ap.parse_args(argv)
    adapter = load_demo(args.model)
    metrics = evaluate(adapter, n=args.n)
    print(json.dumps(metrics, indent=2))
    if args.write_card:
        write_card(args.model, metrics)
        print(f"wrote {args.model / 'README.md'} and metrics.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
