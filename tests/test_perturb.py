"""Image corruptions: all 19 of imagecorruptions and occlusion, byte-identical across processes
and call orders; canonical resolution; any input mode."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from robust_atp.data.images import to_rgb
from robust_atp.perturb.image import (OCCLUSION_GREY, OCCLUSION_SHARE, ImageCondition, canonicalize, condition_seed,
                                      corrupt, corruption_names)

ALL = corruption_names("all")

_DIGEST = """
import hashlib, sys
from robust_atp.data import shapes
from robust_atp.perturb.image import ImageCondition, condition_seed, corrupt, corruption_names
h = hashlib.sha256()
names = corruption_names("all")
order = list(range(len(names)))
if sys.argv[1] == "reversed":
    order.reverse()
out = {}
for i in order:
    for sev in (1, 5):
        for idx in (0, 1):
            ex = shapes.make_example(0, "test", idx)
            cond = ImageCondition(names[i], sev)
            for res in (None, 64) if sev == 5 and idx == 0 else (None,):
                out[(names[i], sev, idx, str(res))] = corrupt(ex.image(), cond, condition_seed(7, ex.id, cond.name),
                                                              res).tobytes()
for key in sorted(out):
    h.update(out[key])
print(h.hexdigest())
"""


@pytest.mark.slow
def test_corrupted_images_are_byte_identical_across_processes_and_orders():
    procs = [subprocess.Popen([sys.executable, "-c", _DIGEST, order], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONHASHSEED": hs})
             for order, hs in (("forward", "1"), ("forward", "2"), ("reversed", "3"))]
    digests = [p.communicate(timeout=300)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(digests[0]) == 64
    assert digests[0] == digests[1] == digests[2]


def test_all_19_library_corruptions_and_occlusion():
    assert len(corruption_names("common")) == 15
    assert corruption_names("extra") == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert ALL == corruption_names("common") + corruption_names("extra") + ["occlusion"]


@pytest.mark.parametrize("name", ALL)
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
    for name in ("gaussian_noise", "impulse_noise", "glass_blur", "snow", "frost", "spatter", "occlusion"):
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


def test_images_below_32_px_get_a_clear_error_or_a_canonical_resolution():
    with pytest.raises(ValueError, match="at least 32 px.*resolution"):
        corrupt(Image.new("RGB", (20, 64)), ImageCondition("fog", 1), 0)
    assert corrupt(Image.new("RGB", (20, 64)), ImageCondition("fog", 1), 0, resolution=32).size == (32, 32)


def test_canonical_resolution_resizes_the_shorter_side_and_centre_crops():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 300, 3), dtype=np.uint8))
    out = canonicalize(img, 60)
    assert out.size == (60, 60)
    assert np.array_equal(np.asarray(out), np.asarray(img.resize((150, 60), Image.BICUBIC).crop((45, 0, 105, 60))))
    square = canonicalize(img, 60)
    assert canonicalize(square, 60) is square or canonicalize(square, 60).tobytes() == square.tobytes()
    assert canonicalize(img, None).size == (300, 120)
    assert corrupt(img, ImageCondition("defocus_blur", 3), 1, resolution=224).size == (224, 224)


def test_occlusion_covers_its_graded_share_with_grey():
    img = Image.new("RGB", (96, 96), (10, 200, 30))
    shares = []
    for sev in range(1, 6):
        arr = np.asarray(corrupt(img, ImageCondition("occlusion", sev), 5))
        grey = np.all(arr == OCCLUSION_GREY, axis=-1).mean()
        assert OCCLUSION_SHARE[sev - 1] <= grey < OCCLUSION_SHARE[sev - 1] + (12 * 12) / 96**2 + 1e-9
        assert np.all((arr == OCCLUSION_GREY).all(-1) | (arr == (10, 200, 30)).all(-1))
        shares.append(grey)
    assert shares == sorted(shares)
