"""Corruptions computed ahead in a worker process (`perturb.prefetch`, `Speedups.prefetch`): the
same images, byte for byte and in the same order, the same cache files, the same rows, and a
source image that cannot be read still fails at its own unit."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from robust_atp.engine import run_engine
from robust_atp.errors import UserError
from robust_atp.perturb.cache import CorruptionCache
from robust_atp.perturb.image import ImageCondition, condition_seed
from robust_atp.perturb.prefetch import Prefetch
from robust_atp.prune.methods import validate_method
from robust_atp.speedups import Speedups
from robust_atp.store import RunStore
from robust_atp.suite import MethodCfg

CONDS = [ImageCondition("gaussian_noise", 3), ImageCondition("glass_blur", 1), ImageCondition("fog", 5),
         ImageCondition("jpeg_compression", 2)]


def _jobs(batches, conds, seed=0):
    return [(b, c, [condition_seed(seed, ex.id, c.name) for ex in batch])
            for b, batch in enumerate(batches) for c in conds]


def test_prefetched_images_are_the_in_process_ones_in_order(shapes_examples, ahead=3):
    batches = [shapes_examples[0:3], shapes_examples[3:5]]
    jobs = _jobs(batches, CONDS)
    loads = []

    def load(b):
        loads.append(b)
        return [ex.image() for ex in batches[b]]

    here = CorruptionCache(enabled=False)
    pre = Prefetch(jobs, load, CorruptionCache(enabled=False), resolution=32, ahead=ahead)
    try:
        for i, (b, cond, seeds) in enumerate(jobs):
            imgs, hits = pre.take(i)
            assert hits == [False] * len(batches[b])
            for im, ex, seed in zip(imgs, batches[b], seeds):
                ref = here.get(ex.image(), cond, seed, 32)[0]
                assert im.size == ref.size and im.mode == ref.mode
                assert np.array_equal(np.asarray(im), np.asarray(ref)), (i, cond, ex.id)
    finally:
        pre.close()
    assert loads == [0, 1]  # each batch's sources sent once


def _run(adapter, examples, speedups, cache_root, tmp_path, tag):
    store = RunStore(tmp_path / f"{tag}.sqlite")
    stats = run_engine(examples=examples, methods=[validate_method(MethodCfg(name="full")),
                                                   validate_method(MethodCfg(name="atp", keep=0.25))],
                       image_conditions=CONDS[:3], adapter_factory=lambda: adapter, store=store, seed=3,
                       metrics=["exact_match"], batch_size=2, progress=False,
                       cache=CorruptionCache(cache_root), speedups=speedups)
    rows = {(p.example_id, p.condition, p.method): p for p in store.rows()}
    store.close()
    return rows, stats


def _files(root: Path) -> dict:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_prefetch_leaves_rows_and_cache_files_unchanged(tiny_adapter, shapes_examples, tmp_path):
    examples = shapes_examples[:5]  # 3 batches, one of them short
    off = dataclasses.replace(Speedups(), prefetch=0)
    ref_rows, ref = _run(tiny_adapter, examples, off, tmp_path / "c0", tmp_path, "off")
    on = Speedups(prefetch=2, prefetch_always=True)
    rows, stats = _run(tiny_adapter, examples, on, tmp_path / "c1", tmp_path, "on")
    assert rows == ref_rows and len(rows) == 5 * 4 * 2
    assert (stats.corruption_computed, stats.corruption_hits) == (ref.corruption_computed, 0) == (15, 0)
    assert _files(tmp_path / "c1") == _files(tmp_path / "c0") and len(_files(tmp_path / "c0")) == 15
    again, stats = _run(tiny_adapter, examples, on, tmp_path / "c1", tmp_path, "again")
    assert again == ref_rows and (stats.corruption_computed, stats.corruption_hits) == (0, 15)


def _broken():
    raise OSError("truncated file")


def test_an_unreadable_image_fails_at_its_own_unit(tiny_adapter, shapes_examples, tmp_path):
    examples = list(shapes_examples[:4])
    examples[3] = dataclasses.replace(examples[3], image=_broken)  # in the second batch
    store = RunStore(tmp_path / "p.sqlite")
    with pytest.raises(UserError, match=f"example {examples[3].id}: cannot read its image"):
        run_engine(examples=examples, methods=[validate_method(MethodCfg(name="full"))],
                   image_conditions=CONDS[:2], adapter_factory=lambda: tiny_adapter, store=store, seed=0,
                   metrics=["exact_match"], batch_size=2, progress=False, cache=CorruptionCache(enabled=False),
                   speedups=Speedups(prefetch=3, prefetch_always=True))
    # the first batch, whose images were fine, finished and was stored before the failure
    assert {p.example_id for p in store.rows()} == {ex.id for ex in examples[:2]}
    store.close()


def test_a_worker_that_dies_is_replaced_by_this_process(shapes_examples, tmp_path):
    batches = [shapes_examples[0:2], shapes_examples[2:4]]
    jobs = _jobs(batches, CONDS[:2])
    pre = Prefetch(jobs, lambda b: [ex.image() for ex in batches[b]], CorruptionCache(tmp_path), 32, ahead=1)
    try:
        first, _ = pre.take(0)
        pre.proc.kill()
        with pytest.warns(UserWarning, match="the worker stopped"):
            rest = [pre.take(i)[0] for i in range(1, len(jobs))]
    finally:
        pre.close()
    here = CorruptionCache(enabled=False)
    for (b, cond, seeds), imgs in zip(jobs, [first, *rest]):
        for im, ex, seed in zip(imgs, batches[b], seeds):
            assert np.array_equal(np.asarray(im), np.asarray(here.get(ex.image(), cond, seed, 32)[0]))


def test_the_default_leaves_a_cpu_run_whose_threads_take_every_core_alone(monkeypatch, tiny_adapter,
                                                                          shapes_examples):
    import robust_atp.engine as engine
    from robust_atp.threads import torch_threads

    class Started:
        def __init__(self, *args, **kwargs):
            pass

    monkeypatch.setattr("robust_atp.perturb.prefetch.Prefetch", Started)
    monkeypatch.setattr(engine, "usable_cores", lambda: 2)
    args = dict(by_batch={0: [(None, []), (CONDS[0], []), (CONDS[1], [])]}, batches=[shapes_examples[:2]],
                seed=0, load=None, cache=CorruptionCache(enabled=False), resolution=None, adapter=tiny_adapter)
    with torch_threads(2):  # every core taken by the model's threads
        assert engine.corruption_prefetch(speedups=Speedups(), **args) is None
        assert isinstance(engine.corruption_prefetch(speedups=Speedups(prefetch_always=True), **args), Started)
    with torch_threads(1):  # a core left free: the worker gets it
        assert isinstance(engine.corruption_prefetch(speedups=Speedups(), **args), Started)
    assert engine.corruption_prefetch(speedups=Speedups(prefetch=0, prefetch_always=True), **args) is None
    one_unit = {**args, "by_batch": {0: [(None, []), (CONDS[0], [])]}}  # nothing to overlap
    assert engine.corruption_prefetch(speedups=Speedups(prefetch_always=True), **one_unit) is None


def test_a_job_that_fails_in_the_worker_raises_its_own_error_here():
    from PIL import Image

    tiny = [Image.new("RGB", (4, 4), (200, 10, 10))]  # below the corruptions' minimum side
    pre = Prefetch([(0, CONDS[0], [1]), (0, CONDS[1], [2])], lambda b: tiny, CorruptionCache(enabled=False), None)
    try:
        with pytest.raises(ValueError, match="corruptions need at least"):
            pre.take(0)
    finally:
        pre.close()
