"""The corruption cache: content-addressed keys, atomic lossless files, zero corruption work on a
second run, and the same corrupted images and perturbed questions whatever the batch size or
resume point; the precompute and preview commands."""
import hashlib
import json
import textwrap

import numpy as np
import pytest
from PIL import Image

from robust_atp.perturb.cache import CorruptionCache, cache_key
from robust_atp.perturb.image import ImageCondition, corrupt
from robust_atp.run import main

SUITE = """
name: cached
seed: 3
dataset: {{loader: shapes, split: test, limit: {limit}}}
model: {{checkpoint: zoo:shapes_vlm/llava, clip: zoo:shapes_vlm/clip, generation: {{max_new_tokens: 1}}}}
methods:
  - {{name: atp, keep: 0.25}}
perturbations:
  image: {{corruptions: [gaussian_noise, glass_blur, occlusion], severities: [3]{res}}}
  text: {{perturbations: [keyboard, paraphrase], severities: [2]}}
  cross: {cross}
batch_size: {batch}
"""


def suite_file(tmp_path, limit=4, batch=4, cross=False, resolution=None):
    res = f", resolution: {resolution}" if resolution else ""
    p = tmp_path / f"cached-{limit}-{batch}-{cross}-{resolution}.yaml"
    p.write_text(textwrap.dedent(SUITE.format(limit=limit, batch=batch, cross=str(cross).lower(), res=res)))
    return p


def engine_stats(run):
    return json.loads((run / "results.json").read_text())["manifest"]["engine"]


def cache_files(root):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.png")}


def test_key_names_every_input(shapes_examples):
    a, b = shapes_examples[0].image(), shapes_examples[1].image()
    fog = ImageCondition("fog", 2)
    k = cache_key(a, fog, 1, None)
    assert k == cache_key(a.copy(), fog, 1, None) == cache_key(a.convert("RGBA"), fog, 1, None)
    others = [cache_key(b, fog, 1, None), cache_key(a, ImageCondition("snow", 2), 1, None),
              cache_key(a, ImageCondition("fog", 3), 1, None), cache_key(a, fog, 2, None), cache_key(a, fog, 1, 224),
              cache_key(a.resize((97, 95)), fog, 1, None)]
    assert len({k, *others}) == 7


def test_miss_then_hit_is_lossless_and_atomic(tmp_path, shapes_examples):
    img = shapes_examples[2].image()
    cache = CorruptionCache(tmp_path)
    cond = ImageCondition("gaussian_noise", 4)
    first, hit1 = cache.get(img, cond, 9)
    second, hit2 = cache.get(img, cond, 9)
    assert (hit1, hit2) == (False, True) and (cache.computed, cache.hits) == (1, 1)
    assert first.tobytes() == second.tobytes() == corrupt(img, cond, 9).tobytes()
    files = list(tmp_path.rglob("*"))
    pngs = [p for p in files if p.is_file()]
    assert len(pngs) == 1 and pngs[0].suffix == ".png" and pngs[0].parent.name == pngs[0].name[:2]
    pngs[0].write_bytes(pngs[0].read_bytes()[:100])  # a damaged file is recomputed and replaced
    third, hit3 = cache.get(img, cond, 9)
    assert not hit3 and third.tobytes() == first.tobytes()
    assert cache.get(img, cond, 9)[1]
    off = CorruptionCache(tmp_path / "off", enabled=False)
    assert off.get(img, cond, 9)[0].tobytes() == first.tobytes() and not (tmp_path / "off").exists()


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cached")
    mp = pytest.MonkeyPatch()
    mp.setenv("ROBUST_ATP_CACHE", str(tmp / "cache"))
    assert main([str(suite_file(tmp)), "--out", str(tmp / "run1"), "--no-progress"]) == 0
    yield tmp
    mp.undo()


@pytest.mark.slow
def test_second_run_does_zero_corruption_work(cached_run, monkeypatch, capsys):
    tmp = cached_run
    monkeypatch.setenv("ROBUST_ATP_CACHE", str(tmp / "cache"))
    first = engine_stats(tmp / "run1")
    assert first["corruption_cache"]["computed"] == 4 * 3 and first["corruption_cache"]["hits"] == 0
    capsys.readouterr()
    assert main([str(suite_file(tmp)), "--out", str(tmp / "run1"), "--fresh", "--no-progress"]) == 0
    second = engine_stats(tmp / "run1")
    assert second["corruption_cache"] == {"hits": 12, "computed": 0, "root": str(tmp / "cache")}
    assert "corrupted images: 0 computed, 12 from the cache" in capsys.readouterr().err
    assert main([str(suite_file(tmp)), "--out", str(tmp / "run2"), "--no-progress"]) == 0
    assert engine_stats(tmp / "run2")["corruption_cache"]["computed"] == 0
    assert (tmp / "run2" / "samples.jsonl").read_text() == (tmp / "run1" / "samples.jsonl").read_text()


class Spy:
    """The real adapter, recording the images it encodes and the questions it answers."""

    def __init__(self, inner, log):
        self.inner, self.log = inner, log

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_images(self, images):
        self.log["images"].update(hashlib.sha256(im.tobytes()).hexdigest() for im in images)
        return self.inner.encode_images(images)

    def generate(self, tokens, questions, **kwargs):
        self.log["questions"].update(questions)
        return self.inner.generate(tokens, questions, **kwargs)


def spied_runs(tmp, monkeypatch, runs):
    import robust_atp.models.base as base

    real = base.load_adapter
    log = {"images": set(), "questions": set()}
    monkeypatch.setattr(base, "load_adapter", lambda cfg: Spy(real(cfg), log))
    for suite, out in runs:
        assert main([str(suite), "--out", str(out), "--no-progress"]) == 0
    monkeypatch.setattr(base, "load_adapter", real)
    return log


@pytest.mark.slow
def test_same_images_and_questions_across_batch_sizes_resume_and_cache(tmp_path, monkeypatch):
    logs, caches = [], []
    for name, runs in (("b4", [(4, 4)]), ("b2", [(2, 4)]), ("resumed", [(2, 2), (3, 4)])):
        d = tmp_path / name
        d.mkdir()
        monkeypatch.setenv("ROBUST_ATP_CACHE", str(d / "cache"))
        suites = [(suite_file(d, limit=limit, batch=batch, cross=True), d / "run") for batch, limit in runs]
        logs.append(spied_runs(tmp_path, monkeypatch, suites))
        caches.append(cache_files(d / "cache"))
    assert logs[0] == logs[1] == logs[2]
    assert caches[0] == caches[1] == caches[2] and len(caches[0]) == 4 * 3
    assert len(logs[0]["questions"]) >= 10 and len(logs[0]["images"]) == 4 * 4
    samples = [(tmp_path / n / "run" / "samples.jsonl").read_text() for n in ("b4", "b2", "resumed")]
    assert samples[0] == samples[1] == samples[2]


def test_canonical_resolution_reaches_the_model_and_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUST_ATP_CACHE", str(tmp_path / "cache"))
    log = spied_runs(tmp_path, monkeypatch, [(suite_file(tmp_path, limit=2, resolution=64), tmp_path / "run")])
    assert len(log["images"]) == 2 * 4  # clean + 3 corruptions, all at 64 x 64
    stored = [Image.open(p) for p in (tmp_path / "cache").rglob("*.png")]
    assert len(stored) == 6 and all(im.size == (64, 64) for im in stored)


@pytest.mark.slow
def test_precompute_fills_the_cache_a_run_then_reads(tmp_path, monkeypatch, capsys):
    from robust_atp.perturb.precompute import main as precompute

    monkeypatch.setenv("ROBUST_ATP_CACHE", str(tmp_path / "cache"))
    suite = suite_file(tmp_path, limit=3)
    assert precompute([str(suite), "--workers", "2", "--no-progress"]) == 0
    assert "9 computed now, 0 already cached" in capsys.readouterr().out
    assert len(cache_files(tmp_path / "cache")) == 9
    assert main([str(suite), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert engine_stats(tmp_path / "run")["corruption_cache"]["computed"] == 0
    assert precompute([str(suite), "--workers", "1", "--no-progress"]) == 0
    assert "0 computed now, 9 already cached" in capsys.readouterr().out
    assert precompute([str(tmp_path / "nope.yaml")]) == 2


def test_preview_writes_a_corruption_by_severity_grid(tmp_path, shapes_examples):
    from robust_atp.perturb.preview import CELL, main as preview

    src = tmp_path / "src.png"
    shapes_examples[0].image().save(src)
    out = tmp_path / "sheet.png"
    assert preview(["--corruption", "fog", "--image", str(src), "--out", str(out)]) == 0
    sheet = np.asarray(Image.open(out))
    assert sheet.shape[1] >= 6 * CELL and sheet.shape[0] >= CELL
    out_all = tmp_path / "all.png"
    assert preview(["--corruption", "all", "--image", str(src), "--out", str(out_all), "--resolution", "64"]) == 0
    assert Image.open(out_all).size[1] > 20 * CELL
    assert preview(["--corruption", "fogg", "--image", str(src), "--out", str(out)]) == 2


def test_resolution_is_a_validated_part_of_the_config_hash():
    from pathlib import Path

    from robust_atp.errors import SuiteError
    from robust_atp.suite import load_suite

    demo = Path(__file__).resolve().parents[1] / "suites" / "demo.yaml"
    native = load_suite(demo)
    assert native.perturbations.image.resolution is None
    assert "resolution" not in json.dumps(native.model_dump(mode="json")["perturbations"]["text"])
    at224 = load_suite(demo, {"perturbations.image.resolution": 224})
    assert at224.config_hash() != native.config_hash()
    with pytest.raises(SuiteError, match=r"perturbations\.image\.resolution: .*greater than or equal to 32"):
        load_suite(demo, {"perturbations.image.resolution": 16})
