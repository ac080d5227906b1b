"""`downsample` (VTC-Bench's baseline): the image resized so the tower yields about K tokens, the
model run on all of them. On a tiny random Qwen2-VL: the size the processor's own `smart_resize`
gives is the closest count to K; keep 1 is `full`; the LLM reads exactly the resized image's
tokens and answers as the model's own `generate` on that image; batch sizes agree. The same on
the tiny LLaVA-NeXT and LLaVA-OneVision, whose count follows their any-resolution layout. On a
fixed tower (the demo model's llava): one line, exit 2."""
import json
import math

import pytest
import torch
import yaml
from PIL import Image

from robust_atp.models.qwen2_vl import size_for_tokens
from robust_atp.prune.methods import validate_method
from robust_atp.run import main
from robust_atp.suite import MethodCfg
from tests.helpers.tiny_families import QWEN_PROMPT

# Qwen2-VL-7B-Instruct's processor: patch 14 x merge 2, min / max pixels
QWEN_FACTOR, QWEN_MIN, QWEN_MAX = 28, 56 * 56, 28 * 28 * 1280


def _tokens(hw, factor, lo, hi):
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    h, w = smart_resize(hw[0], hw[1], factor, lo, hi)
    return (h // factor) * (w // factor)


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (1024, 1024), (1280, 320), (333, 517), (96, 96)])
@pytest.mark.parametrize("keep", [0.05, 0.11, 0.25, 0.5, 0.75, 0.9])
def test_the_chosen_size_gives_the_closest_count_to_k(size, keep):
    """Against every scale of the image (a fine sweep through `smart_resize`): no scale gives a
    count nearer K without exceeding the full image's; the chosen size is one the processor keeps."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    w, h = size
    args = (QWEN_FACTOR, QWEN_MIN, QWEN_MAX)
    full = _tokens((h, w), *args)
    k = max(1, math.floor(keep * full + 0.5))
    cw, ch = size_for_tokens(size, k, *args)
    got = _tokens((ch, cw), *args)
    reachable = {_tokens((h * s, w * s), *args) for s in torch.linspace(1e-3, 1, 20000).tolist()}
    best = min(abs(n - k) for n in reachable if n <= full)
    assert got <= full and abs(got - k) == best, (size, k, got, sorted(reachable))
    if (cw, ch) != size:
        assert smart_resize(ch, cw, *args) == (ch, cw)  # the processor resizes it no further
        assert abs(math.log((cw / ch) / (w / h))) < 0.7  # the aspect ratio roughly kept


def test_a_budget_at_or_above_the_full_count_keeps_the_image():
    args = (QWEN_FACTOR, QWEN_MIN, QWEN_MAX)
    full = _tokens((480, 640), *args)
    assert size_for_tokens((640, 480), full, *args) == (640, 480)
    assert size_for_tokens((640, 480), full + 50, *args) == (640, 480)
    # 391 tokens (17 x 23); the nearest smaller count is farther from 390 than 391 is: no resize
    assert full == 391 and size_for_tokens((640, 480), full - 1, *args) == (640, 480)
    assert size_for_tokens((640, 480), full // 2, *args) != (640, 480)


def test_the_processor_gives_the_chosen_grid(qwen):
    """The tiny model's own processor (factor 16, 32 x 32 to 64 x 64 pixels) on the resized
    image: the grid the adapter counted. A 150 x 90 image gives 15 tokens (3 x 5); at its aspect
    ratio the minimum is 6 (2 x 3, min_pixels), then 8 (2 x 4) and 12 (3 x 4); 14 is nearer 15
    than 12, so the image passes unchanged."""
    img = Image.new("RGB", (150, 90), (30, 120, 200))
    for target, expect in ((4, 6), (8, 8), (12, 12), (14, 15)):
        w, h = qwen.image_size_for_tokens(img.size, target)
        resized = qwen.resized_image(img, (w, h)) if (w, h) != img.size else img
        out = qwen.processor.image_processor(images=[resized], return_tensors="pt")
        _, gh, gw = out["image_grid_thw"][0].tolist()
        assert (gh // 2) * (gw // 2) == expect
        assert (gh * 8, gw * 8) == (h, w) or (w, h) == img.size


def _suite(tmp_path, model: dict, methods: list[dict], batch_size: int = 3, limit: int = 3) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump({"name": "downsample", "dataset": {"loader": "shapes", "split": "val", "limit": limit},
                                 "model": {**model, "generation": {"max_new_tokens": 8}}, "methods": methods,
                                 "batch_size": batch_size}))
    return str(p)


def _run(tmp_path, model, methods, batch_size=3):
    run = tmp_path / "run"
    assert main([_suite(tmp_path, model, methods, batch_size), "--out", str(run), "--no-progress",
                 "--no-report"]) == 0
    samples = [json.loads(s) for s in (run / "samples.jsonl").read_text().splitlines()]
    engine = json.loads((run / "results.json").read_text())["manifest"]["engine"]
    return {(s["example_id"], s["method"]): s for s in samples}, engine


def _qwen_model(tiny_qwen_dir):
    return {"adapter": "qwen2_vl", "checkpoint": str(tiny_qwen_dir), "prompt": QWEN_PROMPT, "dtype": "float32"}


class _LLMInputs:
    """A hook on the language model: the inputs_embeds of each prefill (the first call of a generate)."""

    def __init__(self, adapter):
        self.seen = []
        self.handle = adapter.model.model.language_model.register_forward_pre_hook(self._keep, with_kwargs=True)

    def _keep(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[1] > 1:
            self.seen.append(embeds.detach().clone())

    def close(self):
        self.handle.remove()


def test_keep_1_is_full_and_a_budget_is_the_resized_images_model(tmp_path, qwen, tiny_qwen_dir):
    """keep 1: the image passes unchanged, every answer and token count is `full`'s. keep 0.5
    (9 of 16 tokens, a 3x3 grid) and 0.25 (4, the processor's minimum): the LLM reads exactly the
    tokens of the resized image's own vision pass, and answers as the model's own generate on that
    image through the processor."""
    from robust_atp.data import shapes

    samples, engine = _run(tmp_path, _qwen_model(tiny_qwen_dir),
                           [{"name": "full"}, {"name": "downsample", "keep": 1.0}, {"name": "downsample", "keep": 0.5},
                            {"name": "downsample", "keep": 0.25}, {"name": "downsample", "k": 8, "label": "ds_k8"}])
    assert engine["downsampled_passes"] == 3  # keep 0.5 and k 8 are both 8 tokens: one pass
    exs = shapes.load_shapes("val", limit=3)
    for ex in exs:
        full, same = samples[ex.id, "full"], samples[ex.id, "downsample@1"]
        assert same["prediction"] == full["prediction"] and same["kept_tokens"] == full["kept_tokens"] == 16
        assert samples[ex.id, "downsample@0.5"]["kept_tokens"] == samples[ex.id, "ds_k8"]["kept_tokens"] == 9
        assert samples[ex.id, "downsample@0.25"]["kept_tokens"] == 4
        assert samples[ex.id, "downsample@0.25"]["vision_flops"] < samples[ex.id, "full"]["vision_flops"]

    images, questions = [ex.image() for ex in exs], [ex.question for ex in exs]
    method = validate_method(MethodCfg(name="downsample", keep=0.5))
    vision = qwen.encode_images(images)
    target = method.resize.target(vision.tokens.shape[1])
    probe = _LLMInputs(qwen)
    try:
        small = qwen.encode_images_downsampled(images, target)
        assert qwen.grid == vision.grid == (4, 4)  # the shared pass's state is left as it was
        kept = method.apply(small, None, [""] * 3)
        answers = qwen.generate([k.tokens for k in kept], questions,
                                **qwen.generation_inputs(small, [k.indices for k in kept]))
    finally:
        probe.close()
    # independently: the image resized by PIL's bicubic filter, through the processor, the model's own tower
    size = qwen.image_size_for_tokens(images[0].size, target)
    resized = [im.convert("RGB").resize(size, Image.Resampling.BICUBIC) for im in images]
    ref = qwen.reference_inputs(resized, questions)
    assert ref["image_grid_thw"][:, 1:].tolist() == [[6, 6]] * 3
    own = qwen.model.model.get_image_features(ref["pixel_values"], ref["image_grid_thw"]).pooler_output
    own = torch.cat(list(own)).view(3, 9, -1)
    prefill = probe.seen[0]
    image_pos = ref["input_ids"] == qwen.image_token_id
    assert prefill.shape[1] == ref["input_ids"].shape[1]
    for i in range(3):
        assert torch.equal(prefill[i][image_pos[i]], own[i])  # exactly the resized image's 9 tokens
    ids = qwen.model.generate(**ref, generation_config=qwen.generation_config)
    assert answers == qwen.decode(ids[:, ref["input_ids"].shape[1]:])
    assert [samples[ex.id, "downsample@0.5"]["prediction"] for ex in exs] == answers


def test_batch_sizes_1_and_3_agree(tmp_path, tiny_qwen_dir):
    methods = [{"name": "full"}, {"name": "downsample", "keep": 0.5}, {"name": "downsample", "keep": 0.25}]
    one, _ = _run(tmp_path / "b1", _qwen_model(tiny_qwen_dir), methods, batch_size=1)
    three, _ = _run(tmp_path / "b3", _qwen_model(tiny_qwen_dir), methods, batch_size=3)
    assert one.keys() == three.keys()
    for key in one:
        assert one[key]["prediction"] == three[key]["prediction"]
        assert one[key]["kept_tokens"] == three[key]["kept_tokens"]


def test_a_fixed_tower_is_refused_in_one_line(tmp_path, capsys):
    """The demo model (llava, a fixed-size CLIP tower): exit 2, one line naming the suite file and
    the method's field, and pool as the nearest equivalent."""
    model = {"adapter": "llava", "checkpoint": "zoo:shapes_vlm/llava", "clip": "zoo:shapes_vlm/clip",
             "prompt": "USER: <image>\n{question} ASSISTANT:"}
    path = _suite(tmp_path, model, [{"name": "full"}, {"name": "downsample", "keep": 0.25}])
    assert main([path, "--out", str(tmp_path / "run"), "--no-progress", "--no-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0] == (f"error: {path}: methods[1].name: downsample needs an adapter whose token count follows "
                      "the image size (llava has a fixed 96 px tower); use pool, its nearest equivalent")
    # --check reads no weights, and refuses it the same way (the adapter's class says it)
    assert main([path, "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: methods[1].name: downsample needs an adapter whose token count follows "
                   "the image size (the llava adapter's does not); use pool, its nearest equivalent"]
    qwen = _suite(tmp_path / "q", {"adapter": "qwen2_vl", "checkpoint": "Qwen/Qwen2-VL-2B-Instruct"},
                  [{"name": "full"}, {"name": "downsample", "keep": 0.25}])
    assert main([qwen, "--check"]) == 0


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen25", "qwen3"])
def test_the_other_qwen_families_answer_as_their_model_on_the_resized_image(family, request, shapes_examples):
    """Qwen2.5-VL (windowed tower) and Qwen3-VL (deepstack features of the resized pass): a budget's
    answers are the model's own generate on the resized image; keep 1 is `full`; the shared pass
    still generates afterwards (its grid and, for Qwen3-VL, its deepstack features untouched)."""
    adapter = request.getfixturevalue(family)
    exs = shapes_examples[:3]
    images, questions = [e.image() for e in exs], [e.question for e in exs]
    vision = adapter.encode_images(images)
    n = vision.tokens.shape[1]
    everything = [torch.arange(n)] * 3
    full = adapter.generate(list(vision.tokens), questions, **adapter.generation_inputs(vision, everything))
    same = adapter.encode_images_downsampled(images, n)
    assert torch.equal(same.tokens, vision.tokens)
    assert adapter.generate(list(same.tokens), questions, **adapter.generation_inputs(same, everything)) == full
    target = max(4, n // 3)
    small = adapter.encode_images_downsampled(images, target)
    m = small.tokens.shape[1]
    assert m < n and small.grid != vision.grid and adapter.grid == vision.grid
    answers = adapter.generate(list(small.tokens), questions, **adapter.generation_inputs(small, [torch.arange(m)] * 3))
    size = adapter.image_size_for_tokens(images[0].size, target)
    ref = adapter.reference_inputs([im.convert("RGB").resize(size, Image.Resampling.BICUBIC) for im in images],
                                   questions)
    assert int((ref["input_ids"][0] == adapter.image_token_id).sum()) == m
    ids = adapter.model.generate(**ref, generation_config=adapter.generation_config)
    assert answers == adapter.decode(ids[:, ref["input_ids"].shape[1]:])
    # the shared pass after the resized one: full's answers again
    assert adapter.generate(list(vision.tokens), questions, **adapter.generation_inputs(vision, everything)) == full
    # the resized rows' tower FLOPs are those of the resized grid (Qwen2.5-VL: its own windows)
    flops = adapter.vision_flops(m)
    adapter.encode_images([im.convert("RGB").resize(size, Image.Resampling.BICUBIC) for im in images])
    assert adapter.grid == small.grid and adapter.vision_flops(m) == flops


# ---------------------------------------------------------------- LLaVA-NeXT and LLaVA-OneVision

ANYRES = ["nxt", "onevision"]


def _real_count(adapter, size) -> int:
    """The patch tokens the adapter's own pass (the model's packing) gives an image of `size`."""
    return adapter.encode_images([Image.new("RGB", size, (90, 160, 40))]).tokens.shape[1]


@pytest.mark.parametrize("family", ANYRES)
@pytest.mark.parametrize("size", [(96, 96), (96, 60), (50, 90), (200, 37), (128, 128), (150, 113)])
def test_anyres_counts_are_the_models_and_the_chosen_one_is_nearest_k(family, size, request):
    """Every count the sweep of smaller sizes predicts is the one the model's packing gives (checked
    at the largest and smallest size of each count, the anyres_max resize included for OneVision's
    larger images); the chosen size's count is the nearest to K without exceeding the full one
    (ties: fewer tokens), at the image's aspect ratio; a full-count budget keeps the image."""
    adapter = request.getfixturevalue(family)
    full = _real_count(adapter, size)
    assert adapter.token_count(size) == full
    sweep = adapter.counts_by_size(size)
    by_count: dict[int, list] = {}
    for n, s in sweep:
        by_count.setdefault(n, []).append(s)
        assert abs(math.log((s[0] / s[1]) / (size[0] / size[1]))) < 0.25, (size, s)
    for n, sizes in by_count.items():
        for s in (sizes[0], sizes[-1]):
            assert _real_count(adapter, s) == n, (size, s, n)
    reachable = sorted(n for n in by_count if n <= full)
    for keep in (0.05, 0.25, 0.5, 0.75, 0.9, 1.0):
        k = max(1, math.floor(keep * full + 0.5))
        chosen = adapter.image_size_for_tokens(size, k)
        got = _real_count(adapter, chosen)
        best = min(reachable, key=lambda n: (abs(n - k), n))
        assert got == best or (chosen == size and best == full), (size, k, got, reachable)
        assert (chosen == size) == (got == full)
    assert adapter.image_size_for_tokens(size, full) == size
    assert adapter.image_size_for_tokens(size, full + 7) == size


def test_a_budget_below_the_floor_gets_the_floor(nxt, onevision, tmp_path):
    """The base crop and the smallest pinpoint's unpadded crops: no resize gives fewer tokens. The
    tiny LLaVA-NeXT (16-patch crops, pinpoints 32x64, 64x32, 64x64) takes a square image to 16 +
    4 x 4; the tiny OneVision (pinpoints 1..4 x 1..4 crops) to 16 + 4 x 4 as well (one crop). An
    image already thinner than a patch is not resized. `--check` accepts both adapters."""
    for adapter in (nxt, onevision):
        size = adapter.image_size_for_tokens((96, 96), 1)
        assert _real_count(adapter, size) == 32 == min(n for n, _ in adapter.counts_by_size((96, 96)))
        assert adapter.image_size_for_tokens((60, 6), 1) == (60, 6)
        path = _suite(tmp_path / adapter.name, {"adapter": adapter.name, "checkpoint": "hub/any"},
                      [{"name": "full"}, {"name": "downsample", "keep": 0.25}])
        assert main([path, "--check"]) == 0


@pytest.mark.parametrize("family,size", [("nxt", (96, 60)), ("nxt", (60, 96)), ("onevision", (120, 40)),
                                         ("onevision", (128, 128))])
def test_anyres_budget_answers_as_the_model_on_the_resized_image(family, size, request, shapes_examples):
    """keep 1's pass is the shared one; a budget's pass over the resized images leaves the shared
    layout alone, hands generate its own (its rows' newlines), and the LLM reads exactly what the
    model's own generate reads for the resized image through the processor, answering the same."""
    adapter = request.getfixturevalue(family)
    exs = shapes_examples[:3]
    images, questions = [e.image().convert("RGB").resize(size) for e in exs], [e.question for e in exs]
    vision = adapter.encode_images(images)
    n, layout = vision.tokens.shape[1], adapter.layout
    full = adapter.generate(list(vision.tokens), questions, **adapter.generation_inputs(vision, [torch.arange(n)] * 3))
    same = adapter.encode_images_downsampled(images, n)
    assert torch.equal(same.tokens, vision.tokens)
    target = n // 3
    small = adapter.encode_images_downsampled(images, target)
    m = small.tokens.shape[1]
    assert m < n and adapter.layout == layout and adapter.num_visual_tokens == n
    everything = [torch.arange(m)] * 3
    inputs = adapter.generation_inputs(small, everything)
    assert inputs["layout"] != layout
    probe = _LLMInputs(adapter)
    try:
        answers = adapter.generate(list(small.tokens), questions, **inputs)
        chosen = adapter.image_size_for_tokens(size, target)
        ref = adapter.reference_inputs([im.resize(chosen, Image.Resampling.BICUBIC) for im in images], questions)
        ids = adapter.model.generate(**ref, generation_config=adapter.generation_config)
    finally:
        probe.close()
    image_pos = ref["input_ids"] == adapter.image_token_id
    assert int(image_pos[0].sum()) == adapter.llm_visual_tokens(m, everything[0], m)  # the rows' newlines
    ours, own = probe.seen
    assert ours.shape == own.shape
    for i in range(3):
        assert torch.equal(ours[i][image_pos[i]], own[i][image_pos[i]])
    assert answers == adapter.decode(ids[:, ref["input_ids"].shape[1]:])
    # the shared pass afterwards: full's answers again; the resized rows' tower FLOPs are their own crops'
    again = adapter.generate(list(vision.tokens), questions, **adapter.generation_inputs(vision, [torch.arange(n)] * 3))
    assert again == full
    flops = adapter.vision_flops(m)
    adapter.encode_images([im.resize(chosen, Image.Resampling.BICUBIC) for im in images])
    assert adapter.vision_flops(m) == flops
    adapter.encode_images(images)  # the fixture's state as a shared pass leaves it


def _anyres_model(adapter) -> dict:
    model = {"adapter": adapter.name, "checkpoint": adapter.cfg.checkpoint}
    if adapter.cfg.clip:
        model["clip"] = adapter.cfg.clip
    if adapter.cfg.prompt:
        model["prompt"] = adapter.cfg.prompt
    return model


@pytest.mark.parametrize("family", ANYRES)
def test_anyres_keep_1_is_full_and_a_budget_is_the_resized_images_model(family, request, tmp_path):
    """Through the engine: keep 1 answers exactly as `full` with its token count; keep 0.5 reads
    the resized image's tokens (the count `token_count` gives, fewer tower FLOPs) and answers as
    the model's own generate on the resized image."""
    from robust_atp.data import shapes

    adapter = request.getfixturevalue(family)
    samples, engine = _run(tmp_path, _anyres_model(adapter),
                           [{"name": "full"}, {"name": "downsample", "keep": 1.0}, {"name": "downsample", "keep": 0.5}])
    assert engine["downsampled_passes"] == 2  # keep 1's pass is over the images as they are
    exs = shapes.load_shapes("val", limit=3)
    images, questions = [ex.image().convert("RGB") for ex in exs], [ex.question for ex in exs]
    n = adapter.token_count(images[0].size)
    chosen = adapter.image_size_for_tokens(images[0].size, math.floor(0.5 * n + 0.5))
    for ex in exs:
        full, same, half = (samples[ex.id, m] for m in ("full", "downsample@1", "downsample@0.5"))
        assert same["prediction"] == full["prediction"] and same["kept_tokens"] == full["kept_tokens"] == n
        assert same["vision_flops"] == full["vision_flops"] and same["prefill_flops"] == full["prefill_flops"]
        assert half["kept_tokens"] == adapter.token_count(chosen) < n
        assert half["vision_flops"] < full["vision_flops"] and half["prefill_flops"] < full["prefill_flops"]
    ref = adapter.reference_inputs([im.resize(chosen, Image.Resampling.BICUBIC) for im in images], questions)
    ids = adapter.model.generate(**ref, generation_config=adapter.generation_config, max_new_tokens=8)
    own = adapter.decode(ids[:, ref["input_ids"].shape[1]:])
    assert [samples[ex.id, "downsample@0.5"]["prediction"] for ex in exs] == own
