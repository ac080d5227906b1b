"""Inputs that are valid but degenerate get a deterministic, documented result: NaN or constant
scores (NaN ranks last, ties go to the lower index), images of every PIL mode, images smaller
than a ViT patch."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from robust_atp.data.images import to_rgb
from robust_atp.perturb.image import ImageCondition, canonicalize, corrupt
from robust_atp.prune.scores import atp_scores, minmax, rank, zscore
from robust_atp.prune.select import select_adaptive, select_topk

NAN = float("nan")


def test_nan_scores_rank_last_and_ties_go_to_the_lower_index():
    s = torch.tensor([[NAN, 1.0, NAN, 1.0, 0.0, 1.0]])
    assert select_topk(s, 2).tolist() == [[1, 3]]
    assert select_topk(s, 4).tolist() == [[1, 3, 4, 5]]
    assert select_topk(s, 5).tolist() == [[0, 1, 3, 4, 5]]  # then NaNs, lower index first


def test_constant_and_all_nan_rows_keep_the_first_k():
    for row in ([0.3] * 8, [NAN] * 8, [0.0] * 8):
        assert select_topk(torch.tensor([row]), 3).tolist() == [[0, 1, 2]]
        assert select_adaptive(torch.tensor([row]), 0.5, k_min=2)[0].tolist() in ([0, 1], [0, 1, 2, 3])


def test_adaptive_selection_ignores_nan_mass():
    s = torch.tensor([[NAN, 0.9, 0.1, NAN, 0.0]])
    assert select_adaptive(s, 0.8)[0].tolist() == [1]
    assert select_adaptive(s, 1.0)[0].tolist() == [1, 2]


@pytest.mark.parametrize("norm", [minmax, zscore, rank])
def test_a_nan_does_not_spoil_the_rest_of_its_row(norm):
    x = torch.tensor([[0.2, NAN, 0.8, 0.5]])
    out = norm(x)
    clean = norm(torch.tensor([[0.2, 0.8, 0.5]]))
    if norm is rank:  # NaN is the lowest rank; the others keep their order above it
        assert torch.allclose(out, torch.tensor([[1 / 3, 0.0, 1.0, 2 / 3]]))
    else:
        assert math.isnan(out[0, 1]) and torch.allclose(out[0, [0, 2, 3]], clean[0])
    constant = norm(torch.full((1, 4), 0.7))
    assert torch.equal(constant, torch.zeros(1, 4))  # every normaliser, rank included


def test_atp_with_a_nan_patch_still_selects_by_the_other_patches():
    sal = torch.tensor([[0.1, NAN, 0.9, 0.5, 0.3]])
    rel = torch.tensor([[0.0, 1.0, 0.8, 0.1, 0.2]])
    scores = atp_scores(sal, rel, alpha=0.5)
    assert math.isnan(scores[0, 1])
    assert select_topk(scores, 2).tolist() == [[2, 3]]
    assert select_topk(scores, 2).tolist() == select_topk(scores.clone(), 2).tolist()  # deterministic


MODES = ["1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16",
         "I;16L", "I;16B", "I;16N", "F"]


def image_in(mode: str, size=(40, 36)) -> Image.Image:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    if mode in ("I", "I;16"):  # 12-bit values, as medical and raw images hold
        return Image.fromarray(rng.integers(0, 4096, (size[1], size[0])).astype(np.int32 if mode == "I" else np.uint16))
    if mode.startswith("I;16"):
        return Image.new(mode, size, 3000)
    if mode == "F":
        return Image.fromarray(rng.random((size[1], size[0]), dtype=np.float32), "F")
    if mode in ("La", "PA"):
        return Image.new(mode, size)
    if mode == "P":
        return rgb.quantize(8)
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", MODES)
def test_every_pil_mode_becomes_rgb_and_corrupts(mode):
    img = image_in(mode)
    assert img.mode == mode
    rgb = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == img.size
    assert canonicalize(img, 32).size == (32, 32)
    out = corrupt(img, ImageCondition("gaussian_noise", 3), seed=1)
    assert out.mode == "RGB" and out.size == img.size
    assert np.asarray(out).tobytes() == np.asarray(corrupt(img, ImageCondition("gaussian_noise", 3), seed=1)).tobytes()


def test_images_smaller_than_a_patch_reach_the_model(demo_adapter):
    """The processor resizes any image to the tower's input, so a 1x1, a 3x500 and an 8x8 image
    (smaller than a 8 px patch on a side) give the model's full patch grid; corrupting them needs
    perturbations.image.resolution (test_bad_input)."""
    images = [Image.new("RGB", (1, 1), (255, 0, 0)), image_in("L", (3, 500)), image_in("RGBA", (8, 8))]
    vision = demo_adapter.encode_images([to_rgb(im) for im in images])
    n = demo_adapter.num_visual_tokens
    assert vision.tokens.shape[:2] == (3, n) and torch.isfinite(vision.tokens).all()
    answers = demo_adapter.generate([vision.tokens[i] for i in range(3)], ["what colour is the circle?"] * 3)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
