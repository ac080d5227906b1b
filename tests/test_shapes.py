"""The shapes generator: determinism, scene constraints, and answers consistent with the scene."""
from collections import Counter

import numpy as np
import pytest

from robust_atp.data import shapes


def test_scene_identical_for_same_seed_and_index():
    a = shapes.make_example(0, "test", 17)
    b = shapes.make_example(0, "test", 17)
    assert a.question == b.question and a.answers == b.answers and a.meta == b.meta
    assert np.asarray(a.image()).tobytes() == np.asarray(b.image()).tobytes()
    c = shapes.make_example(1, "test", 17)
    assert np.asarray(c.image()).tobytes() != np.asarray(a.image()).tobytes()
    d = shapes.make_example(0, "train", 17)
    assert np.asarray(d.image()).tobytes() != np.asarray(a.image()).tobytes()


def test_loader_is_a_prefix_of_itself():
    small = shapes.load_shapes("test", limit=5)
    large = shapes.load_shapes("test", limit=20)
    assert [e.id for e in small] == [e.id for e in large[:5]]
    assert [e.question for e in small] == [e.question for e in large[:5]]


@pytest.mark.parametrize("index", range(0, 400, 7))
def test_scene_constraints(index):
    scene = shapes.make_scene(0, "val", index)
    assert 2 <= len(scene.objects) <= 6
    assert len({(o.color, o.shape) for o in scene.objects}) == len(scene.objects)
    for i, a in enumerate(scene.objects):
        assert 0 <= a.box[0] < a.box[2] <= shapes.SIZE and 0 <= a.box[1] < a.box[3] <= shapes.SIZE
        for b in scene.objects[i + 1:]:
            assert shapes.boxes_apart(a.box, b.box, 1)
    img = np.asarray(shapes.render_image(0, "val", index))
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8
    patches = img.reshape(12, 8, 12, 8, 3).transpose(0, 2, 1, 3, 4).reshape(144, -1).astype(float)
    assert (patches.std(1) > 1.0).all(), "every patch, background included, carries texture"


def test_vocabulary_sizes():
    assert len(shapes.SHAPES) >= 5 and len(shapes.COLORS) >= 6 and len(shapes.OBJECT_SIZES) == 2
    assert set(shapes.BACKGROUNDS) == {"noise", "gradient", "stripes"}


def _check(ex):
    objs, t = ex.meta["objects"], ex.meta["targets"]
    q, a = ex.question, ex.answers[0]
    boxes = ex.meta["boxes"]
    if ex.question_type == "color":
        assert a == objs[t[0]]["color"] and objs[t[0]]["shape"] in q
    elif ex.question_type == "shape":
        assert a == objs[t[0]]["shape"] and objs[t[0]]["color"] in q
    elif ex.question_type == "count":
        assert a == str(len(t))
    elif ex.question_type == "exist":
        pairs = {(o["color"], o["shape"]) for o in objs}
        color, shape = q.rstrip("?").split()[-2:]
        assert a == ("yes" if (color, shape) in pairs else "no")
    elif ex.question_type == "position":
        box = boxes[t[0]]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        expect = {"left": cx < 48, "right": cx >= 48, "top": cy < 48, "bottom": cy >= 48}
        assert expect[a]
    elif ex.question_type == "relation":
        j, i = t
        side = "left" if " left of " in q else "right"
        dx = lambda k: (boxes[k][0] + boxes[k][2]) / 2 - (boxes[i][0] + boxes[i][2]) / 2
        on_side = [k for k in range(len(objs)) if k != i and (dx(k) < 0 if side == "left" else dx(k) > 0)]
        assert on_side == [j] and a == objs[j]["color"]
    assert ex.answer_type == shapes.ANSWER_TYPES[ex.question_type]


def test_answers_agree_with_the_scene():
    exs = shapes.load_shapes("test", limit=600)
    for ex in exs:
        _check(ex)
    types = Counter(e.question_type for e in exs)
    assert set(types) == set(shapes.QUESTION_TYPES)
    assert min(types.values()) > 50
    exist = Counter(e.answers[0] for e in exs if e.question_type == "exist")
    assert abs(exist["yes"] - exist["no"]) < 0.3 * sum(exist.values())


def test_prior_shifted_split_moves_the_answer_distribution():
    train = Counter((e.question_type, e.answers[0]) for e in shapes.load_shapes("train", limit=2000))
    shifted = shapes.load_shapes("test", limit=2000, prior_shift=True)
    for ex in shifted[:200]:
        _check(ex)
    test = Counter((e.question_type, e.answers[0]) for e in shifted)
    for qtype in shapes.QUESTION_TYPES:
        p = {a: c for (t, a), c in train.items() if t == qtype}
        q = {a: c for (t, a), c in test.items() if t == qtype}
        pn, qn = sum(p.values()), sum(q.values())
        tv = 0.5 * sum(abs(p.get(a, 0) / pn - q.get(a, 0) / qn) for a in set(p) | set(q))
        assert tv > 0.2, (qtype, tv)
    assert all(e.id.startswith("shapes/test-cp/") for e in shifted)


def test_unknown_split_and_types_are_refused():
    with pytest.raises(ValueError, match="unknown shapes split"):
        shapes.load_shapes("dev", limit=1)
    with pytest.raises(ValueError, match="unknown question types"):
        shapes.load_shapes("test", limit=1, question_types=("colour",))


def test_patch_labels_mark_objects():
    scene = shapes.make_scene(0, "train", 3)
    img, masks = shapes.render(scene, np.random.default_rng(0))
    lab = shapes.patch_labels(scene, masks)
    for o in scene.objects:
        p = int(o.cy // 8) * 12 + int(o.cx // 8)
        assert lab["color"][p] == shapes.COLOR_NAMES.index(o.color) + 1
        assert lab["shape"][p] == shapes.SHAPES.index(o.shape) + 1
    assert (lab["color"] == 0).sum() > 50
