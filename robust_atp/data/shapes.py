"""Shapes: a procedural scene-VQA benchmark, deterministic in (seed, split, index).

A scene is a 96x96 RGB image on a textured background (noise, gradient or stripes, so
background patches are never blank) holding 2-6 non-overlapping objects, each one of
5 shapes x 6 colours x 2 sizes, no (colour, shape) pair twice. Questions have one-word
answers and come in six types:

    color     what color is the <shape>?                    (the shape is unique in the scene)
    shape     what shape is the <color> object?             (the colour is unique)
    count     how many <color> objects are there? / how many <shape>s are there?
    exist     is there a <color> <shape>?                   (yes / no, balanced)
    position  is the <color> <shape> on the left or the right? / at the top or the bottom?
    relation  what color is the object to the left of the <color> <shape>?  (exactly one such object)

Every example carries its object boxes and the indices of the objects its question names,
so an evaluation can ask whether the kept visual tokens cover them.
"""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .base import Example, register_loader

SIZE = 96
PATCH = 8
GRID = SIZE // PATCH
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles",
           "diamond": "diamonds", "cross": "crosses"}
COLORS = {
    "red": (215, 35, 35),
    "green": (30, 165, 55),
    "blue": (35, 75, 225),
    "yellow": (240, 215, 30),
    "purple": (145, 50, 190),
    "orange": (250, 135, 20),
}
COLOR_NAMES = tuple(COLORS)
OBJECT_SIZES = {"small": 16, "large": 26}
BACKGROUNDS = ("noise", "gradient", "stripes")
QUESTION_TYPES = ("color", "shape", "count", "exist", "position", "relation")
ANSWER_TYPES = {"color": "other", "shape": "other", "count": "number", "exist": "yes/no",
                "position": "other", "relation": "other"}
SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SPLIT_SIZE = {"train": 100_000, "val": 2_000, "test": 2_000}
_SUPERSAMPLE = 4
_AMBIGUOUS_PX = 6  # objects closer than this along an axis make left/right ambiguous


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, exclusive end

    @property
    def cx(self) -> float:
        return (self.box[0] + self.box[2]) / 2

    @property
    def cy(self) -> float:
        return (self.box[1] + self.box[3]) / 2

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str
    bg_colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    bg_params: tuple[float, float, float]  # angle, period or noise scale, phase


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    question_type: str
    targets: tuple[int, ...]


def _rng(seed: int, split: str, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[split], index, stream])


# ----------------------------------------------------------------------------- layout

def _muted_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A low-saturation tone: the six object colours stay distinguishable on it."""
    grey = rng.uniform(70, 190)
    tint = rng.uniform(-18, 18, size=3)
    return tuple(int(np.clip(grey + t, 0, 255)) for t in tint)


def sample_scene(rng: np.random.Generator) -> Scene:
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    bg_colors = (_muted_color(rng), _muted_color(rng))
    bg_params = (float(rng.uniform(0, np.pi)), float(rng.uniform(5, 12)), float(rng.uniform(0, 2 * np.pi)))
    n_target = int(rng.integers(2, 7))
    pairs = [(s, c) for s in SHAPES for c in COLOR_NAMES]
    order = rng.permutation(len(pairs))
    objects: list[Obj] = []
    for k in order[: n_target * 3]:
        if len(objects) == n_target:
            break
        shape, color = pairs[k]
        size = "small" if rng.random() < 0.5 else "large"
        side = OBJECT_SIZES[size]
        for _ in range(40):
            x0 = int(rng.integers(2, SIZE - side - 2))
            y0 = int(rng.integers(2, SIZE - side - 2))
            box = (x0, y0, x0 + side, y0 + side)
            if all(boxes_apart(box, o.box, 3) for o in objects):
                objects.append(Obj(shape, color, size, box))
                break
    if len(objects) < 2:  # pathological packing; a fresh draw from the same stream stays deterministic
        return sample_scene(rng)
    return Scene(tuple(objects), background, bg_colors, bg_params)


def boxes_apart(a, b, gap: int) -> bool:
    """Boxes (x0, y0, x1, y1) at least `gap` px apart along one axis."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


# ----------------------------------------------------------------------------- rendering

def _background(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    c0, c1 = (np.array(c, dtype=np.float32) for c in scene.bg_colors)
    angle, period, phase = scene.bg_params
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    u = (np.cos(angle) * xx + np.sin(angle) * yy)
    if scene.background == "gradient":
        t = (u - u.min()) / max(u.max() - u.min(), 1e-6)
        img = c0 + t[..., None] * (c1 - c0)
        img += rng.normal(0, 4, size=(SIZE, SIZE, 1))
    elif scene.background == "stripes":
        t = (np.sin(2 * np.pi * u / period + phase) > 0).astype(np.float32)
        img = c0 + t[..., None] * (c1 - c0)
        img += rng.normal(0, 4, size=(SIZE, SIZE, 1))
    else:  # noise: coarse blotches plus fine grain
        coarse = rng.normal(0, 1, size=(SIZE // 8 + 1, SIZE // 8 + 1))
        coarse = np.kron(coarse, np.ones((8, 8)))[:SIZE, :SIZE]
        img = (c0 + c1) / 2 + coarse[..., None] * 14
        img += rng.normal(0, 12, size=(SIZE, SIZE, 3))
    return img


def _shape_polygon(shape: str, box: tuple[int, int, int, int], s: int):
    x0, y0, x1, y1 = (v * s for v in box)
    w, h = x1 - x0, y1 - y0
    if shape == "square":
        m = w * 0.08
        return [(x0 + m, y0 + m), (x1 - m, y0 + m), (x1 - m, y1 - m), (x0 + m, y1 - m)]
    if shape == "triangle":
        return [(x0 + w / 2, y0), (x1, y1 - h * 0.08), (x0, y1 - h * 0.08)]
    if shape == "diamond":
        return [(x0 + w / 2, y0), (x1, y0 + h / 2), (x0 + w / 2, y1), (x0, y0 + h / 2)]
    if shape == "cross":
        a, b = w * 0.33, w * 0.67
        return [(x0 + a, y0), (x0 + b, y0), (x0 + b, y0 + a), (x1, y0 + a), (x1, y0 + b), (x0 + b, y0 + b),
                (x0 + b, y1), (x0 + a, y1), (x0 + a, y0 + b), (x0, y0 + b), (x0, y0 + a), (x0 + a, y0 + a)]
    raise ValueError(shape)


def _object_mask(obj: Obj) -> np.ndarray:
    """Anti-aliased coverage in [0, 1], [96, 96]."""
    s = _SUPERSAMPLE
    layer = Image.new("L", (SIZE * s, SIZE * s), 0)
    draw = ImageDraw.Draw(layer)
    if obj.shape == "circle":
        x0, y0, x1, y1 = (v * s for v in obj.box)
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=255)
    else:
        draw.polygon(_shape_polygon(obj.shape, obj.box, s), fill=255)
    return np.asarray(layer.resize((SIZE, SIZE), Image.BOX), dtype=np.float32) / 255.0


def render(scene: Scene, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """Returns the image and per-object coverage masks [n_objects, 96, 96]."""
    img = _background(scene, rng)
    masks = np.stack([_object_mask(o) for o in scene.objects])
    for obj, mask in zip(scene.objects, masks):
        color = np.array(COLORS[obj.color], dtype=np.float32) + rng.uniform(-12, 12, size=3)
        fill = color + rng.normal(0, 3, size=(SIZE, SIZE, 3))
        img = img * (1 - mask[..., None]) + fill * mask[..., None]
    return Image.fromarray(np.clip(img, 0, 255).round().astype(np.uint8), "RGB"), masks


def patch_labels(scene: Scene, masks: np.ndarray, min_cover: float = 0.25) -> dict[str, np.ndarray]:
    """Ground truth per patch for dense supervision: [GRID*GRID] class ids, row-major.

    color: 0 = background, 1..6 = COLOR_NAMES; shape: 0 = background, 1..5 = SHAPES;
    background: index into BACKGROUNDS (the same for every patch of a scene);
    object: 0 = none, 1 + i = scene.objects[i].
    """
    cover = masks.reshape(len(masks), GRID, PATCH, GRID, PATCH).mean(axis=(2, 4)).reshape(len(masks), -1)
    best = cover.argmax(0)
    has = cover.max(0) >= min_cover
    color = np.array([COLOR_NAMES.index(o.color) + 1 for o in scene.objects])[best] * has
    shape = np.array([SHAPES.index(o.shape) + 1 for o in scene.objects])[best] * has
    bg = np.full(GRID * GRID, BACKGROUNDS.index(scene.background))
    obj = (best + 1) * has
    return {"color": color.astype(np.int64), "shape": shape.astype(np.int64), "background": bg,
            "object": obj.astype(np.int64)}


def caption(scene: Scene) -> str:
    """Objects left to right, then the background: the contrastive text for the CLIP tower."""
    objs = sorted(scene.objects, key=lambda o: (o.cx, o.cy))
    parts = [f"a {o.size} {o.color} {o.shape}" for o in objs]
    body = " , ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else parts[0]
    return f"{body} on a {_BG_WORD[scene.background]} background"


_BG_WORD = {"noise": "noisy", "gradient": "gradient", "stripes": "striped"}


def blank_image(value: int = 128) -> Image.Image:
    return Image.new("RGB", (SIZE, SIZE), (value, value, value))


# ----------------------------------------------------------------------------- questions

def _unique_by(scene, attr: str, rng) -> int | None:
    """A random object whose `attr` no other object shares (so it names the object), or None."""
    counts = Counter(getattr(o, attr) for o in scene.objects)
    cands = [i for i, o in enumerate(scene.objects) if counts[getattr(o, attr)] == 1]
    return cands[rng.integers(len(cands))] if cands else None


def _q_color(scene, rng):
    i = _unique_by(scene, "shape", rng)
    if i is None:
        return None
    return QA(f"what color is the {scene.objects[i].shape}?", scene.objects[i].color, "color", (i,))


def _q_shape(scene, rng):
    i = _unique_by(scene, "color", rng)
    if i is None:
        return None
    return QA(f"what shape is the {scene.objects[i].color} object?", scene.objects[i].shape, "shape", (i,))


def _q_count(scene, rng):
    by_color = rng.random() < 0.5
    attr = "color" if by_color else "shape"
    values = COLOR_NAMES if by_color else SHAPES
    present = sorted({getattr(o, attr) for o in scene.objects})
    pool = present if rng.random() < 0.75 else values
    v = pool[rng.integers(len(pool))]
    targets = tuple(i for i, o in enumerate(scene.objects) if getattr(o, attr) == v)
    q = f"how many {v} objects are there?" if by_color else f"how many {PLURALS[v]} are there?"
    return QA(q, str(len(targets)), "count", targets)


def _q_exist(scene, rng):
    present = {(o.color, o.shape): i for i, o in enumerate(scene.objects)}
    if rng.random() < 0.5:
        keys = sorted(present)
        c, s = keys[rng.integers(len(keys))]
        return QA(f"is there a {c} {s}?", "yes", "exist", (present[(c, s)],))
    # half the absent pairs share a colour or a shape with something present: near misses
    near = sorted({(c, o.shape) for o in scene.objects for c in COLOR_NAMES}
                  | {(o.color, s) for o in scene.objects for s in SHAPES})
    pool = near if rng.random() < 0.5 else [(c, s) for c in COLOR_NAMES for s in SHAPES]
    absent = [p for p in pool if p not in present]
    c, s = absent[rng.integers(len(absent))]
    return QA(f"is there a {c} {s}?", "no", "exist", ())


def _q_position(scene, rng):
    i = int(rng.integers(len(scene.objects)))
    o = scene.objects[i]
    axes = []
    if abs(o.cx - SIZE / 2) >= 8:
        axes.append("x")
    if abs(o.cy - SIZE / 2) >= 8:
        axes.append("y")
    if not axes:
        return None
    if axes[rng.integers(len(axes))] == "x":
        return QA(f"is the {o.name} on the left or the right?", "left" if o.cx < SIZE / 2 else "right", "position", (i,))
    return QA(f"is the {o.name} at the top or the bottom?", "top" if o.cy < SIZE / 2 else "bottom", "position", (i,))


def _q_relation(scene, rng):
    options = []
    for i, o in enumerate(scene.objects):
        dx = [(j, p.cx - o.cx) for j, p in enumerate(scene.objects) if j != i]
        if any(abs(d) <= _AMBIGUOUS_PX for _, d in dx):
            continue
        for side, sign in (("left", -1), ("right", 1)):
            hits = [j for j, d in dx if d * sign > 0]
            if len(hits) == 1:
                options.append((i, side, hits[0]))
    if not options:
        return None
    i, side, j = options[rng.integers(len(options))]
    q = f"what color is the object to the {side} of the {scene.objects[i].name}?"
    return QA(q, scene.objects[j].color, "relation", (j, i))


_QUESTION_FNS = {"color": _q_color, "shape": _q_shape, "count": _q_count, "exist": _q_exist,
                 "position": _q_position, "relation": _q_relation}
ANSWERS = {
    "color": COLOR_NAMES, "shape": SHAPES, "count": tuple(str(k) for k in range(7)),
    "exist": ("no", "yes"), "position": ("bottom", "left", "right", "top"), "relation": COLOR_NAMES,
}


def sample_question(scene: Scene, rng: np.random.Generator, types=QUESTION_TYPES) -> QA:
    """A question of a type drawn uniformly from `types`; inapplicable types are redrawn."""
    types = list(types)
    while types:
        qtype = types[rng.integers(len(types))]
        qa = _QUESTION_FNS[qtype](scene, rng)
        if qa is not None:
            return qa
        types.remove(qtype)
    # every scene answers count and exist, so only a types list without them gets here
    return None


# ----------------------------------------------------------------------------- prior shift

@functools.lru_cache(maxsize=8)
def train_frequent_answers(seed: int, types: tuple[str, ...], n: int = 3000) -> dict[str, frozenset[str]]:
    """Per question type, the train split's most frequent answers (ties by name) up to half of
    the type's answer mass: the answers a prior-shifted split makes rare."""
    counts = {t: Counter() for t in types}
    for index in range(n):
        scene = sample_scene(_rng(seed, "train", index, 0))
        qa = sample_question(scene, _rng(seed, "train", index, 2), types)
        if qa is not None:
            counts[qa.question_type][qa.answer] += 1
    out = {}
    for t in types:
        total, mass, head = sum(counts[t].values()), 0, []
        for a in sorted(ANSWERS[t], key=lambda a: (-counts[t][a], a)):
            if mass >= total / 2:
                break
            head.append(a)
            mass += counts[t][a]
        out[t] = frozenset(head)
    return out


def _shifted_question(scene, rng, types, frequent, keep_frequent: float = 0.1) -> QA | None:
    """VQA-CP-style rejection sampling: an answer frequent in train is kept with probability
    `keep_frequent`; after 64 draws the scene keeps its last question."""
    for _ in range(64):
        qa = sample_question(scene, rng, types)
        if qa is None:
            return None
        if qa.answer not in frequent[qa.question_type] or rng.random() < keep_frequent:
            return qa
    return qa


# ----------------------------------------------------------------------------- examples

def make_scene(seed: int, split: str, index: int) -> Scene:
    return sample_scene(_rng(seed, split, index, 0))


def render_image(seed: int, split: str, index: int) -> Image.Image:
    return render(make_scene(seed, split, index), _rng(seed, split, index, 1))[0]


def make_example(seed: int, split: str, index: int, types=QUESTION_TYPES, prior_shift: bool = False) -> Example:
    scene = make_scene(seed, split, index)
    qrng = _rng(seed, split, index, 2)
    types = tuple(types)
    if prior_shift:
        qa = _shifted_question(scene, qrng, types, train_frequent_answers(seed, types))
    else:
        qa = sample_question(scene, qrng, types)
    if qa is None:
        raise ValueError(f"no question of types {types} fits scene {split}/{index}")
    tag = f"{split}-cp" if prior_shift else split
    return Example(
        id=f"shapes/{tag}/{index}",
        image_id=f"shapes/{split}/{index}",
        image=functools.partial(render_image, seed, split, index),
        question=qa.question,
        answers=(qa.answer,),
        question_type=qa.question_type,
        answer_type=ANSWER_TYPES[qa.question_type],
        meta={
            "boxes": [list(o.box) for o in scene.objects],
            "objects": [{"shape": o.shape, "color": o.color, "size": o.size} for o in scene.objects],
            "targets": list(qa.targets),
            "background": scene.background,
        },
    )


@register_loader("shapes")
def load_shapes(split: str = "test", limit: int | None = None, seed: int = 0,
                question_types=QUESTION_TYPES, prior_shift: bool = False) -> list[Example]:
    if split not in SPLITS:
        raise ValueError(f"unknown shapes split {split!r}; one of {sorted(SPLITS)}")
    unknown = set(question_types) - set(QUESTION_TYPES)
    if unknown:
        raise ValueError(f"unknown question types {sorted(unknown)}; known: {list(QUESTION_TYPES)}")
    n = DEFAULT_SPLIT_SIZE[split] if limit is None else int(limit)
    return [make_example(seed, split, i, question_types, prior_shift) for i in range(n)]
