"""The analytical cost model against torch's FlopCounterMode, and object recall's geometry."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from robust_atp import cost
from robust_atp.prune.coverage import object_recall, patch_mask


@pytest.fixture(scope="module")
def eager_tiny(tiny_eager_adapter):
    # FlopCounterMode counts eager attention's matmuls; it has no formula for the CPU sdpa kernel
    return tiny_eager_adapter


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        fn()
    return fc.get_total_flops()


@pytest.mark.parametrize("keep", [1.0, 0.25])
def test_llm_prefill_flops_match_flop_counter(eager_tiny, keep):
    a = eager_tiny
    shape = cost.LayerShape.from_config(a.model.config.text_config)
    assert shape.gated and shape.kv_heads == 2 and shape.heads == 4  # GQA and a gated FFN are exercised
    k = round(keep * a.num_visual_tokens)
    n = a.prompt_length("what color is the circle?") + k
    lm = a.model.model.language_model  # the decoder layers: the LM head is not part of "prefill"
    counted = _counted(lambda: lm(inputs_embeds=torch.randn(1, n, shape.d)))
    analytic = cost.prefill_flops(shape, n)
    assert abs(analytic - counted) / counted < 0.02, (analytic, counted)


def test_fastv_cost_counts_layers_after_the_cut_with_fewer_tokens():
    s = cost.LayerShape(layers=4, d=8, m=16, heads=2, kv_heads=2, head_dim=4, gated=True)
    assert cost.prefill_flops(s, 10, 10, cut=1) == cost.prefill_flops(s, 10)
    assert cost.prefill_flops(s, 10, 4, cut=1) == 2 * (2 * cost.layer_macs(s, 10) + 2 * cost.layer_macs(s, 4))
    # MHA without GQA, plain FFN: the textbook 4nd^2 + 2n^2d + 2ndm MACs per layer
    p = cost.LayerShape(layers=1, d=8, m=16, heads=2, kv_heads=2, head_dim=4, gated=False)
    assert cost.layer_macs(p, 5) == 4 * 5 * 64 + 2 * 25 * 8 + 2 * 5 * 8 * 16


def test_vision_tower_flops_match_flop_counter(eager_tiny):
    a = eager_tiny
    vc = a.model.config.vision_config
    n = a.num_visual_tokens
    px = torch.randn(1, 3, vc.image_size, vc.image_size)
    tower = a.vision_tower
    # the whole tower runs (LLaVA reads layer -2), then the projector on the patch tokens
    counted = _counted(lambda: a.model.model.multi_modal_projector(tower(px, output_hidden_states=True)
                                                                   .hidden_states[-2][:, 1:]))
    proj = {"in": vc.hidden_size, "out": a.model.config.text_config.hidden_size, "layers": 2}
    analytic = cost.vision_flops(vc, n, proj)
    assert abs(analytic - counted) / counted < 0.02, (analytic, counted)


def test_scorer_costs_are_ordered_sensibly():
    kw = dict(d=128, c=128, proj=64, text_len=8)
    atp = cost.scorer_flops("atp", {"alpha": 0.5}, 144, 36, **kw)
    assert cost.scorer_flops("full", {}, 144, 144, **kw) == 0
    assert cost.scorer_flops("random", {}, 144, 36, **kw) == 0
    assert 0 < cost.scorer_flops("cls", {}, 144, 36, **kw) < atp
    assert cost.scorer_flops("tome_posthoc", {}, 144, 36, **kw) > 0 and cost.scorer_flops("divprune", {}, 144, 36, **kw) > 0
    # ToMe inside the tower: |A| x |B| cosines of 32-wide keys in each merging block
    tome = cost.scorer_flops("tome", {}, 144, 36, head_dim=32, schedule=[36, 36, 36], **kw)
    assert tome == 2 * sum(((t + 1) // 2) * (t // 2) * 32 + t * 128 for t in (145, 109, 73))
    zip_ = cost.scorer_flops("visionzip", {}, 144, 36, head_dim=32, split=(30, 6), **kw)
    assert zip_ == 2 * (144 * 128 + (115 - 6) * 6 * (32 + 128))  # CLS row; M = 145 - 30 rest tokens


def test_patch_mask_maps_boxes_through_resize_and_crop():
    # a 96x96 image on a 12x12 grid of 8-px patches: a box covering pixels 8..23 x 0..7 -> 2 patches
    m = patch_mask([(8, 0, 24, 8)], (96, 96), 96, (96, 96), (12, 12)).view(12, 12)
    assert m.sum() == 2 and m[0, 1] and m[0, 2]
    # a box touching a patch by one pixel counts; an exclusive end on a boundary does not spill
    m = patch_mask([(7, 7, 9, 9)], (96, 96), 96, (96, 96), (12, 12)).view(12, 12)
    assert m.sum() == 4
    # a 192x96 image: resized to 192x96 -> shortest edge 96 already; crop the centre 96x96 (x 48..143)
    m = patch_mask([(0, 0, 40, 8)], (192, 96), 96, (96, 96), (12, 12))
    assert m.sum() == 0  # cropped away
    m = patch_mask([(48, 0, 56, 8)], (192, 96), 96, (96, 96), (12, 12)).view(12, 12)
    assert m.sum() == 1 and m[0, 0]
    # upscaling: a 48x48 image to 96: its pixel 4..8 is patch 1
    m = patch_mask([(4, 4, 8, 8)], (48, 48), 96, (96, 96), (12, 12)).view(12, 12)
    assert m.sum() == 1 and m[1, 1]


def test_patch_mask_truncates_the_long_side_as_the_processor_does():
    from transformers import CLIPImageProcessor
    from PIL import Image

    # 640x427 at 336: the processor resizes to 503x336 (int, not round: 503.6), then crops 336x336
    proc = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    img = Image.new("RGB", (640, 427), (0, 0, 0))
    img.paste((255, 255, 255), (124, 0, 125, 427))  # a 1-px column at x = 124
    px = proc(images=[img], return_tensors="np", do_normalize=False, do_rescale=False)["pixel_values"][0]
    lit = [int(c) for c in ((px.max(0) > 100).any(0)).nonzero()[0]]
    # truncated: 124 * 503 / 640 - 83 = 14.5, in patch 1; rounding (504, offset 84) would give 13.7, patch 0
    assert min(lit) >= 14
    m = patch_mask([(124, 0, 125, 1)], (640, 427), 336, (336, 336), (24, 24)).view(24, 24)
    assert m.sum() == 1 and m[0, 1]


def test_object_recall_follows_the_canonical_resolution():
    from robust_atp.perturb.image import canonical_boxes

    box = [(40, 8, 56, 24)]
    native = patch_mask(box, (96, 96), 48, (48, 48), (6, 6))
    # 96 -> 192 canonical, then the processor brings 192 to 48: the same patches
    boxes, size = canonical_boxes(box, (96, 96), 192)
    assert size == (192, 192) and torch.equal(patch_mask(boxes, size, 48, (48, 48), (6, 6)), native)
    # a 192x96 image canonicalised to 96: resized to 192x96 (no change), centre 96x96 cropped (x 48..143)
    boxes, size = canonical_boxes([(48, 0, 64, 16)], (192, 96), 96)
    assert size == (96, 96) and boxes == [(0.0, 0.0, 16.0, 16.0)]


def test_object_recall_is_the_kept_share_of_object_patches():
    mask = torch.zeros(16, dtype=torch.bool)
    mask[[1, 2, 5, 6]] = True
    assert object_recall(torch.tensor([0, 1, 5, 9]), mask) == 0.5
    assert object_recall(torch.arange(16), mask) == 1.0
    assert object_recall(torch.tensor([0]), torch.zeros(16, dtype=torch.bool)) is None


def test_results_rows_average_cost_and_recall_and_ratio_to_full():
    from robust_atp.data.base import Example
    from robust_atp.results import summarize
    from robust_atp.store import Prediction

    exs = [Example(id=i, image_id=i, image=None, question="q", answers=("x",)) for i in ("a", "b")]
    p = lambda ex, m, flops, rec: Prediction(ex, "clean", m, "x", 1.0, {"exact_match": 1.0}, 4,
                                             extra={"prefill_flops": flops, "object_recall": rec})
    by = {(e, "clean", m): p(e, m, f, r) for e, m, f, r in [("a", "full", 4e12, 1.0), ("b", "full", 6e12, None),
                                                              ("a", "tome@0.25", 1e12, None), ("b", "tome@0.25", 2e12, None),
                                                              ("a", "atp@0.25", 2e12, 0.5), ("b", "atp@0.25", 2e12, 0.25)]}
    rows = {r["method"]: r for r in summarize(by, exs, ["clean"], ["full", "tome@0.25", "atp@0.25"], ["exact_match"])}
    assert rows["full"]["prefill_tflops"] == 5.0 and rows["full"]["flops_ratio"] == 1.0
    assert rows["full"]["object_recall"] == 1.0  # the mean over rows that have one
    assert rows["tome@0.25"]["flops_ratio"] == 0.3 and rows["tome@0.25"]["object_recall"] is None
    assert rows["atp@0.25"]["flops_ratio"] == 0.4 and rows["atp@0.25"]["object_recall"] == 0.375
    no_full = summarize(by, exs, ["clean"], ["atp@0.25"], ["exact_match"])
    assert no_full[0]["flops_ratio"] is None  # a suite without `full` has no ratio
