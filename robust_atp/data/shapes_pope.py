"""A POPE-style split of the shapes benchmark: yes / no existence questions, negatives drawn three ways.

Built as POPE builds its COCO questions (AoiDragon/POPE `utils.py`, function `pope`, @ 7cf0a02):
an object is a (colour, shape) pair ("red circle"); the images are the first `n_images` test
scenes holding at least three objects (POPE's images have three ground-truth objects or more);
per image, each of its first three objects (the scene's own order, as POPE takes
`image["objects"][i]`) gives a "yes" question, and after each one a negative object gives a
"no" question:

- random: drawn uniformly from every object seen in these images, redrawn while it is in the
  image or already asked about;
- popular: the most frequent object over these images (ties: the one seen first) not in the
  image nor asked about;
- adversarial: the object co-occurring most often with that positive one over these images
  (same tie rule), falling back to a random draw when none is left.

Questions use the demo model's own template ("is there a <colour> <shape>?"), so the shipped
model answers them as trained, without retraining. Images, boxes and object lists are exactly
the shapes test split's (same seed, same index), so the existing splits are untouched.
Draws are seeded by (seed, split, image index, strategy): independent of limit and order.
With `negatives: all` the three strategies are interleaved question by question (as the `pope`
loader does), so `limit` takes the same number of questions from each.
"""
from __future__ import annotations

import functools
from collections import Counter

import numpy as np

from .base import Example, register_loader
from .pope import interleave
from .shapes import SPLITS, make_scene, render_image

STRATEGIES = ("random", "popular", "adversarial")
PER_IMAGE = 3  # positives (and negatives) per image, POPE's sample_num


def pope_images(seed: int, split: str, n_images: int) -> list[tuple[int, list[str]]]:
    """(scene index, object names in scene order) of the first n_images scenes with >= 3 objects."""
    out, index = [], 0
    while len(out) < n_images:
        scene = make_scene(seed, split, index)
        if len(scene.objects) >= PER_IMAGE:
            out.append((index, [o.name for o in scene.objects]))
        index += 1
    return out


def object_statistics(images) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """(objects in first-seen order, objects by frequency, per object its co-occurring objects
    by count): POPE's ground-truth object counts and sorted co-occurrence."""
    freq: Counter = Counter()
    co: dict[str, Counter] = {}
    for _, objects in images:
        freq.update(objects)
        for o in objects:
            row = co.setdefault(o, Counter())
            row.update(x for x in objects if x != o)
    seen = list(freq)  # Counter keeps insertion order
    by_freq = sorted(seen, key=lambda o: -freq[o])  # stable: ties stay in first-seen order
    by_co = {o: sorted(row, key=lambda x: -row[x]) for o, row in co.items()}
    return seen, by_freq, by_co


def _random_negative(rng, pool: list[str], banned) -> str:
    while True:
        o = pool[int(rng.integers(len(pool)))]
        if o not in banned:
            return o


def pope_questions(objects: list[str], strategy: str, stats, rng) -> list[tuple[str, str, int | None]]:
    """(object, label, object index in the scene or None) for one image, in POPE's order."""
    seen, by_freq, by_co = stats
    history, out = [], []
    for i in range(PER_IMAGE):
        pos = objects[i]
        history.append(pos)
        out.append((pos, "yes", i))
        banned = set(history) | set(objects)
        ranked = by_freq if strategy == "popular" else by_co.get(pos, []) if strategy == "adversarial" else []
        neg = next((o for o in ranked if o not in banned), None)
        if neg is None:
            neg = _random_negative(rng, seen, banned)
        history.append(neg)
        out.append((neg, "no", None))
    return out


@register_loader("shapes_pope")
def load_shapes_pope(split: str = "test", limit: int | None = None, seed: int = 0, n_images: int = 50,
                     negatives: str = "all") -> list[Example]:
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; one of {sorted(SPLITS)}")
    strategies = STRATEGIES if negatives == "all" else (negatives,)
    if any(s not in STRATEGIES for s in strategies):
        raise ValueError(f"negatives must be one of {', '.join(STRATEGIES)}, all; got {negatives!r}")
    images = pope_images(seed, split, int(n_images))
    stats = object_statistics(images)
    per_split = []
    for strategy in strategies:
        rows = []
        for index, objects in images:
            rng = np.random.default_rng([seed, SPLITS[split], index, 3, STRATEGIES.index(strategy)])
            scene = make_scene(seed, split, index)
            for q, (obj, label, target) in enumerate(pope_questions(objects, strategy, stats, rng)):
                rows.append(Example(
                    id=f"shapes_pope/{strategy}/{index}/{q}", image_id=f"shapes/{split}/{index}",
                    image=functools.partial(render_image, seed, split, index),
                    question=f"is there a {obj}?", answers=(label,), question_type=f"pope_{strategy}",
                    answer_type="yes/no",
                    meta={"pope_split": strategy, "boxes": [list(o.box) for o in scene.objects],
                          "objects": [{"shape": o.shape, "color": o.color, "size": o.size} for o in scene.objects],
                          "targets": [] if target is None else [target], "background": scene.background}))
        per_split.append(rows)
    return interleave(per_split, limit)
