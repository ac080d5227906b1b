"""Fused generation, prompt-prefix reuse and lean decoding (`robust_atp.speedups`) change the
number of model calls or their work, never a row: every prediction, score, kept index and FLOPs figure is the one the engine
gives with both off, on the demo model and on a tiny random LLaVA, at several batch sizes."""
import pytest
import torch

from robust_atp.engine import run_engine
from robust_atp.models.kv_prefix import PrefixCache
from robust_atp.perturb.cache import CorruptionCache
from robust_atp.perturb.image import ImageCondition
from robust_atp.perturb.text import TextCondition
from robust_atp.prune.methods import validate_method
from robust_atp.speedups import Selection, Speedups, generation_groups
from robust_atp.store import RunStore
from robust_atp.suite import MethodCfg, ModelCfg

# every kind the engine routes: selection with and without text, merging before the LLM and
# inside the tower, FastV and a staged method (never fused, never given a prefix)
METHODS = [MethodCfg(name="full"), MethodCfg(name="atp", keep=0.25), MethodCfg(name="random", keep=0.25),
           MethodCfg(name="cls", keep=0.25), MethodCfg(name="clip", keep=0.25), MethodCfg(name="uniform", keep=0.25),
           MethodCfg(name="visionzip", keep=0.25), MethodCfg(name="tome", keep=0.25),
           MethodCfg(name="fastv", keep=0.25, layer=0), MethodCfg(name="pdrop", keep=0.25)]
# three text conditions on the clean image (a prefix to reuse), one corrupted image
TEXT = [TextCondition("keyboard", 3), TextCondition("distractor", 1)]
IMAGE = [ImageCondition("gaussian_noise", 1)]


def _run(adapter, examples, speedups, batch_size, tmp_path, methods):
    store = RunStore(tmp_path / f"{speedups.fuse}-{speedups.reuse_prefix}-{speedups.lean}-{batch_size}.sqlite")
    stats = run_engine(examples=examples, methods=[validate_method(m) for m in methods], image_conditions=IMAGE,
                       adapter_factory=lambda: adapter, store=store, seed=0, metrics=["exact_match"],
                       batch_size=batch_size, progress=False, text_conditions=TEXT,
                       cache=CorruptionCache(enabled=False), speedups=speedups)
    rows = {(p.example_id, p.condition, p.method): p for p in store.rows()}
    store.close()
    return rows, stats


def _check_identical(adapter, examples, tmp_path, plan, methods=METHODS, reusable=6):
    """plan: (speedups, batch sizes); each against the engine with both off at the same batch size.
    reusable: the methods that read no question and prune nothing inside the LLM."""
    baseline = {}
    for speedups, sizes in plan:
        for bs in sizes:
            if bs not in baseline:
                baseline[bs] = _run(adapter, examples, Speedups.off(), bs, tmp_path, methods)
            rows, stats = _run(adapter, examples, speedups, bs, tmp_path, methods)
            ref_rows, ref = baseline[bs]
            assert rows == ref_rows, f"{speedups} at batch size {bs} changed a row"
            assert len(rows) == len(examples) * 4 * len(methods)
            assert stats.generations == ref.generations
            if speedups.fuse:  # the 25% selections before the LLM share a call
                assert stats.generate_calls < ref.generate_calls
            else:
                assert stats.generate_calls == ref.generate_calls
            batches = -(-len(examples) // bs)
            # (full, random, cls, uniform, visionzip, tome) on the clean image: computed for the clean
            # question, reused by the two perturbed ones
            assert stats.prefixes_computed == (reusable * batches if speedups.reuse_prefix else 0)
            assert stats.prefixes_reused == (2 * reusable * batches if speedups.reuse_prefix else 0)


PLAN = [(Speedups(fuse=True, reuse_prefix=False, lean=False), (1, 4)),
        (Speedups(fuse=False, reuse_prefix=True, lean=False), (1, 8)),
        (Speedups(fuse=False, reuse_prefix=False, lean=True), (1, 8)), (Speedups(), (4, 8))]


@pytest.mark.slow
def test_speedups_leave_every_row_unchanged_on_the_demo_model(demo_adapter, shapes_examples, tmp_path):
    _check_identical(demo_adapter, shapes_examples[:8], tmp_path, PLAN)


@pytest.mark.slow
def test_speedups_leave_every_row_unchanged_on_a_tiny_llava(tiny_adapter, shapes_examples, tmp_path):
    _check_identical(tiny_adapter, shapes_examples[:8], tmp_path, PLAN)


def test_speedups_together_on_a_tiny_llava(tiny_adapter, shapes_examples, tmp_path):
    """The quick version of the above: both on, batch sizes 1 and 4."""
    _check_identical(tiny_adapter, shapes_examples[:4], tmp_path, [(Speedups(), (1, 4))])


@pytest.fixture(scope="module")
def tiny_cls_first(tmp_path_factory):
    """A tiny LLaVA with 'full' feature selection: the projected CLS token leads the visual tokens."""
    from tests.helpers.tiny import build_tiny_llava

    from robust_atp.models.base import load_adapter

    out = build_tiny_llava(tmp_path_factory.mktemp("tiny_cls_first"), seed=1, strategy="full")
    return load_adapter(ModelCfg(checkpoint=str(out / "llava"), clip=str(out / "clip"),
                                 generation={"max_new_tokens": 5}))


def test_speedups_with_a_cls_prefix(tiny_cls_first, shapes_examples, tmp_path):
    """The CLS prefix tokens go into the cached prefix and are concatenated when methods fuse
    (no ToMe inside the tower, no in-LLM pruning: this layout refuses them)."""
    methods = [m for m in METHODS if m.name not in ("tome", "fastv", "pdrop")]
    _check_identical(tiny_cls_first, shapes_examples[:4], tmp_path, [(Speedups(), (1, 4))], methods, reusable=5)


QUESTIONS = ["what color is the circle?", "how many?", "is there a red square left of the big blue triangle?",
             "what shape is at the top?"]


def _tokens(adapter, examples):
    return list(adapter.encode_images([ex.image() for ex in examples]).tokens)


@pytest.mark.parametrize("lean", [False, True])
@pytest.mark.parametrize("generation", [{}, {"repetition_penalty": 1.5}])
def test_generation_from_a_prefix_is_generation_over_the_whole_prompt(tiny_dir, shapes_examples, generation, lean):
    """Tails of different lengths (pads between image and tail), batch sizes 1 and 4, a penalty
    that reads the prompt's ids (lean decoding then falls back to HF's generate); the shared
    cache is not written to by the generations from it. The reference: HF's generate over the
    whole prompt."""
    from robust_atp.models.base import load_adapter

    adapter = load_adapter(ModelCfg(checkpoint=str(tiny_dir / "llava"), clip=str(tiny_dir / "clip"),
                                    generation={"max_new_tokens": 6, **generation}))
    tokens = _tokens(adapter, shapes_examples[:4])
    kept = [t[::3] for t in tokens]
    expected = adapter.generate(kept, QUESTIONS)
    kv = adapter.kv_prefix(kept, ["first"] * 4)
    before = [(k.clone(), v.clone()) for k, v in kv.layers]
    for qs in (QUESTIONS, QUESTIONS[::-1]):
        again = adapter.kv_prefix(kept, qs, reuse=kv)
        assert again is kv
        assert adapter.generate(kept, qs, kv_prefix=again, lean=lean) == adapter.generate(kept, qs)
    assert adapter.generate(kept, QUESTIONS, kv_prefix=kv, lean=lean) == expected
    for i, q in enumerate(QUESTIONS):  # one example alone, from its own prefix
        one = adapter.kv_prefix(kept[i:i + 1], [q])
        assert adapter.generate(kept[i:i + 1], [q], kv_prefix=one, lean=lean) == expected[i:i + 1]
    assert all(torch.equal(k, k0) and torch.equal(v, v0) for (k, v), (k0, v0) in zip(kv.layers, before))
    assert len(set(expected)) > 1  # the answers depend on the question: the check above can fail


def test_a_prefix_that_is_not_theirs_is_refused(tiny_adapter, shapes_examples):
    tokens = _tokens(tiny_adapter, shapes_examples[:2])
    kv = tiny_adapter.kv_prefix(tokens, QUESTIONS[:2])
    other = [t.flip(0) for t in tokens]
    assert tiny_adapter.kv_prefix(other, QUESTIONS[:2], reuse=kv) is not kv
    with pytest.raises(ValueError):
        tiny_adapter.generate(other, QUESTIONS[:2], kv_prefix=kv)
    # ragged prefixes share nothing
    assert tiny_adapter.kv_prefix([tokens[0], tokens[1][:5]], QUESTIONS[:2]) is None
    with pytest.raises(ValueError):
        PrefixCache.cat([kv, tiny_adapter.kv_prefix([t[:5] for t in tokens], QUESTIONS[:2])])


def test_no_prefix_when_the_generation_reads_ngrams(tiny_dir, shapes_examples):
    """no_repeat_ngram_size sees the padded prompt's n-grams, which the prefix layout moves."""
    from robust_atp.models.base import load_adapter

    adapter = load_adapter(ModelCfg(checkpoint=str(tiny_dir / "llava"), clip=str(tiny_dir / "clip"),
                                    generation={"max_new_tokens": 4, "no_repeat_ngram_size": 2}))
    assert adapter.kv_prefix(_tokens(adapter, shapes_examples[:2]), QUESTIONS[:2]) is None


class _Adapter:
    def __init__(self, fuses):
        self.fuses_generation = fuses


def _selection(label, counts, in_llm=None):
    m = validate_method(MethodCfg(name="random", keep=0.5, label=label))
    return Selection(m, [type("K", (), {"tokens": torch.zeros(n, 2)})() for n in counts], in_llm=in_llm)


def test_generation_groups():
    """Equal per-example token counts and no in-LLM request share a call; order by first member."""
    sels = [_selection("a", [4, 4]), _selection("b", [8, 8]), _selection("c", [4, 4]),
            _selection("d", [4, 4], in_llm=object()), _selection("e", [4, 5]), _selection("f", [4, 4])]
    labels = lambda groups: [[s.method.label for s in g] for g in groups]  # noqa: E731
    assert labels(generation_groups(sels, _Adapter(True), Speedups())) == [["a", "c", "f"], ["b"], ["d"], ["e"]]
    assert labels(generation_groups(sels, _Adapter(False), Speedups())) == [[c] for c in "abcdef"]
    assert labels(generation_groups(sels, _Adapter(True), Speedups.off())) == [[c] for c in "abcdef"]
    sels[2].kv_prefix = object()  # a selection continuing a cached prefix runs with its own kind
    assert labels(generation_groups(sels, _Adapter(True), Speedups()))[:2] == [["a", "f"], ["b"]]


def test_only_llava_declares_the_speedups():
    from robust_atp.models.blip2 import Blip2Adapter
    from robust_atp.models.internvl import InternVLAdapter
    from robust_atp.models.llava import LlavaAdapter
    from robust_atp.models.llava_next import LlavaNextAdapter
    from robust_atp.models.qwen2_vl import Qwen2VLAdapter

    assert LlavaAdapter.fuses_generation and LlavaAdapter.reuses_prefix
    for cls in (LlavaNextAdapter, InternVLAdapter, Qwen2VLAdapter, Blip2Adapter):
        assert not cls.fuses_generation and not cls.reuses_prefix, cls.__name__
