"""Image corruptions: every one of the 15, byte-identical across processes and call orders."""
import hashlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from robust_atp.perturb.image import ImageCondition, condition_seed, corrupt, corruption_names, to_rgb

COMMON = corruption_names("common")

_DIGEST = """
import hashlib, sys
from robust_atp.data import shapes
from robust_atp.perturb.image import ImageCondition, condition_seed, corrupt, corruption_names
h = hashlib.sha256()
names = corruption_names("common")
order = list(range(len(names)))
if sys.argv[1] == "reversed":
    order.reverse()
out = {}
for i in order:
    for sev in (1, 5):
        for idx in (0, 1):
            ex = shapes.make_example(0, "test", idx)
            cond = ImageCondition(names[i], sev)
            out[(names[i], sev, idx)] = corrupt(ex.image(), cond, condition_seed(7, ex.id, cond.name)).tobytes()
for key in sorted(out):
    h.update(out[key])
print(h.hexdigest())
"""


def test_corrupted_images_are_byte_identical_across_processes_and_orders():
    digests = [subprocess.run([sys.executable, "-c", _DIGEST, order], capture_output=True, text=True, check=True)
               .stdout.strip() for order in ("forward", "forward", "reversed")]
    assert len(digests[0]) == 64
    assert digests[0] == digests[1] == digests[2]


@pytest.mark.parametrize("name", COMMON)
def test_each_corruption_changes_the_image_and_depends_on_the_seed_only(name, shapes_examples):
    img = shapes_examples[0].image()
    cond = ImageCondition(name, 5)
    a = corrupt(img, cond, 11)
    assert a.size == img.size and a.mode == "RGB"
    assert not np.array_equal(np.asarray(a), np.asarray(img))
    np.random.seed(999)  # global state must not leak in
    b = corrupt(img, cond, 11)
    assert a.tobytes() == b.tobytes()


def test_random_corruptions_differ_between_seeds(shapes_examples):
    img = shapes_examples[0].image()
    for name in ("gaussian_noise", "impulse_noise", "glass_blur", "snow", "frost"):
        cond = ImageCondition(name, 3)
        assert corrupt(img, cond, 1).tobytes() != corrupt(img, cond, 2).tobytes(), name


def test_condition_seed_is_content_addressed():
    assert condition_seed(0, "a", "image:fog@1") == condition_seed(0, "a", "image:fog@1")
    assert len({condition_seed(0, "a", "image:fog@1"), condition_seed(1, "a", "image:fog@1"),
                condition_seed(0, "b", "image:fog@1"), condition_seed(0, "a", "image:fog@2")}) == 4


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "CMYK", "P", "I;16", "1", "F"])
def test_any_pil_mode_becomes_rgb(mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    img = rgb.convert(mode) if mode not in ("I;16", "F") else rgb.convert("L").convert(mode)
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (40, 40)
    assert corrupt(img, ImageCondition("fog", 2), 0).mode == "RGB"


def test_images_below_32_px_get_a_clear_error():
    with pytest.raises(ValueError, match="at least 32 px"):
        corrupt(Image.new("RGB", (20, 64)), ImageCondition("fog", 1), 0)
