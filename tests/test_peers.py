"""Properties of every pruning method (hypothesis): selections are unique, ordered, exactly K,
deterministic; merges keep the size-weighted mean; ATP's ends are CLS-only and CLIP-only."""
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robust_atp.errors import SuiteError
from robust_atp.prune.merge import bipartite_merge, contextual_merge, grid_groups
from robust_atp.prune.methods import validate_method
from robust_atp.prune.select import budget, select_diverse, select_grid
from robust_atp.suite import MethodCfg

SELECTION = ["atp", "cls", "clip", "random", "uniform", "divprune"]
MERGING = ["pool", "tome_posthoc", "visionzip_mean"]  # size-weighted means of post-projector tokens
FAST = settings(max_examples=40, deadline=None)


def vision(rows, cols, seed, b=2, ties=False):
    g = torch.Generator().manual_seed(seed)
    n = rows * cols
    v = SimpleNamespace(tokens=torch.randn(b, n, 6, generator=g), cls_attn=torch.rand(b, 3, 2, n, generator=g),
                        clip_patches=torch.randn(b, n, 4, generator=g), vit_features=torch.randn(b, n, 5, generator=g),
                        grid=(rows, cols))
    if ties:  # many equal scores and duplicated features: tie-breaking must still be deterministic
        v.cls_attn = (v.cls_attn * 2).round() / 2
        v.clip_patches[:, 1::2] = v.clip_patches[:, ::2][:, : n // 2]
        v.vit_features[:, 1::2] = v.vit_features[:, ::2][:, : n // 2]
        v.tokens[:, 1::2] = v.tokens[:, ::2][:, : n // 2]
    return v


grids = st.tuples(st.integers(1, 9), st.integers(1, 9))


@FAST
@given(grid=grids, seed=st.integers(0, 10**6), frac=st.floats(0.01, 1.0), name=st.sampled_from(SELECTION),
       ties=st.booleans())
def test_selection_is_unique_ordered_exactly_k_and_deterministic(grid, seed, frac, name, ties):
    v = vision(*grid, seed, ties=ties)
    n = grid[0] * grid[1]
    m = validate_method(MethodCfg(name=name, keep=frac))
    text = torch.randn(2, 4, generator=torch.Generator().manual_seed(seed))
    a = m.select(v, text, ["e1", "e2"])
    b = m.select(vision(*grid, seed, ties=ties), text.clone(), ["e1", "e2"])
    k = budget(n, frac)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
        assert len(x) == k and len(set(x.tolist())) == k
        assert torch.equal(x, x.sort().values) and 0 <= int(x.min()) and int(x.max()) < n
    kept = m.apply(v, text, ["e1", "e2"])
    assert all(torch.equal(kp.tokens, v.tokens[i, a[i]]) and kp.sizes.tolist() == [1] * k for i, kp in enumerate(kept))


@FAST
@given(grid=grids, seed=st.integers(0, 10**6), mass=st.floats(0.05, 1.0), k_min=st.integers(1, 5),
       extra=st.integers(0, 30), name=st.sampled_from(["atp", "cls", "clip"]))
def test_adaptive_counts_stay_within_bounds(grid, seed, mass, k_min, extra, name):
    v = vision(*grid, seed)
    n = grid[0] * grid[1]
    m = validate_method(MethodCfg(name=name, mass=mass, k_min=k_min, k_max=k_min + extra))
    for x in m.select(v, torch.randn(2, 4), ["a", "b"]):
        assert min(k_min, n) <= len(x) <= min(k_min + extra, n)
        assert len(set(x.tolist())) == len(x) and torch.equal(x, x.sort().values)


@FAST
@given(grid=grids, seed=st.integers(0, 10**6), frac=st.floats(0.01, 1.0), name=st.sampled_from(MERGING),
       ties=st.booleans())
def test_merges_keep_the_size_weighted_mean_and_are_deterministic(grid, seed, frac, name, ties):
    v = vision(*grid, seed, ties=ties)
    n = grid[0] * grid[1]
    m = validate_method(MethodCfg(name=name, keep=frac))
    a = m.apply(v, None, ["e1", "e2"])
    b = m.apply(vision(*grid, seed, ties=ties), None, ["e1", "e2"])
    k = budget(n, frac)
    for i, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.sizes, y.sizes)
        assert int(x.sizes.sum()) == n and bool((x.sizes >= 1).all())
        mean = (x.tokens * x.sizes[:, None]).sum(0) / n
        assert torch.allclose(mean, v.tokens[i].mean(0), atol=1e-5)
        if name == "pool":
            assert len(x) == grid_groups(grid, k)[1]
        else:
            assert len(x) == k
        assert (x.indices is None) == (k < n or name != "visionzip_mean")


@FAST
@given(grid=grids, seed=st.integers(0, 10**6), frac=st.floats(0.01, 1.0),
       normalizer=st.sampled_from(["minmax", "zscore", "rank"]), sign=st.sampled_from([1, -1]))
def test_atp_alpha_0_is_cls_and_alpha_1_is_clip(grid, seed, frac, normalizer, sign):
    v = vision(*grid, seed)
    text = torch.randn(2, 4, generator=torch.Generator().manual_seed(seed + 1))
    keys = ["a", "b"]
    atp0 = validate_method(MethodCfg(name="atp", keep=frac, alpha=0.0, normalizer=normalizer, relevance_sign=sign))
    atp1 = validate_method(MethodCfg(name="atp", keep=frac, alpha=1.0, normalizer=normalizer, relevance_sign=sign))
    cls = validate_method(MethodCfg(name="cls", keep=frac))
    clip = validate_method(MethodCfg(name="clip", keep=frac, relevance_sign=sign))
    for x, y in zip(atp0.select(v, text, keys), cls.select(v, text, keys)):
        assert torch.equal(x, y)
    for x, y in zip(atp1.select(v, text, keys), clip.select(v, text, keys)):
        assert torch.equal(x, y)


def test_uniform_grid_is_a_lattice_when_it_can_be():
    assert select_grid((12, 12), 36).tolist() == [r * 12 + c for r in (1, 3, 5, 7, 9, 11) for c in (1, 3, 5, 7, 9, 11)]
    assert select_grid((4, 4), 16).tolist() == list(range(16))
    assert select_grid((12, 12), 1).tolist() == [6 * 12 + 6]


def test_divprune_starts_far_and_stays_diverse():
    f = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.98, 0.15]])
    # token 3 is farthest from its nearest neighbour; then the token farthest from it (0); then 2
    assert select_diverse(f[None], 1).tolist() == [[3]]
    assert select_diverse(f[None], 2).tolist() == [[0, 3]]
    assert select_diverse(f[None], 3).tolist() == [[0, 2, 3]]


def test_tome_posthoc_merges_the_best_linked_pair_size_weighted():
    metric = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.01], [-1.0, 0.0]])
    x = torch.arange(8.0).view(4, 2)
    tokens, sizes, pos = bipartite_merge(metric, x, 3)
    # A = {0, 2}, B = {1, 3}: 2 links to 1 (cos 0.01) better than 0 does (cos 0): 2 joins 1
    assert pos.tolist() == [0, 1, 3] and sizes.tolist() == [1, 2, 1]
    assert torch.equal(tokens, torch.tensor([[0.0, 1.0], [3.0, 4.0], [6.0, 7.0]]))


def test_visionzip_mean_joins_each_token_to_its_nearest_target():
    metric = torch.eye(6)
    x = torch.arange(12.0).view(6, 2)
    tokens, sizes = contextual_merge(metric, x, 3)
    # targets 1, 3, 5; the others are equally far from all: ties go to the first target
    assert sizes.tolist() == [4, 1, 1]
    assert torch.equal(tokens, torch.tensor([[3.5, 4.5], [6.0, 7.0], [10.0, 11.0]]))


@FAST
@given(side=st.integers(1, 8), seed=st.integers(0, 10**6), frac=st.floats(0.01, 1.0), ties=st.booleans())
def test_official_visionzip_gives_k_tokens_cls_first_and_covers_every_token(side, seed, frac, ties):
    from robust_atp.models.base import FeatureLayer
    from robust_atp.prune.visionzip import visionzip_counts

    g = torch.Generator().manual_seed(seed)
    n = side * side
    hidden = torch.randn(2, 1, n + 1, 5, generator=g)
    keys = torch.randn(2, 1, n + 1, 3, generator=g)
    attn = torch.rand(2, 1, 2, n, generator=g)
    if ties:
        attn, keys = (attn * 2).round() / 2, keys.round()
    layer = FeatureLayer(hidden=hidden, keys=keys, cls_attn=attn, project=lambda x: 2 * x)
    v = SimpleNamespace(tokens=torch.zeros(2, n, 5), feature_layer=layer)
    m = validate_method(MethodCfg(name="visionzip", keep=frac))
    a, b = m.apply(v, None, ["", ""]), m.apply(v, None, ["", ""])
    contextual = visionzip_counts(budget(n, frac))[1]
    for i, (x, y) in enumerate(zip(a, b)):
        assert torch.equal(x.tokens, y.tokens) and len(x) == budget(n, frac)
        assert torch.equal(x.tokens[0], 2 * hidden[i, 0, 0])
        # with a contextual token every token is represented (with none, the rest is dropped)
        assert int(x.sizes.sum()) == (n + 1 if contextual else len(x))


def test_peer_settings_are_validated():
    with pytest.raises(SuiteError, match="no score to hold a mass"):
        validate_method(MethodCfg(name="tome", mass=0.5))
    with pytest.raises(SuiteError, match=r"\.contextual: must be in \[0, 1\)"):
        validate_method(MethodCfg(name="visionzip", keep=0.25, contextual=1.0))
    with pytest.raises(SuiteError, match=r"\.contextual: must be in \[0, 1\)"):
        validate_method(MethodCfg(name="visionzip_mean", keep=0.25, contextual=1.0))
    with pytest.raises(SuiteError, match=r"\.layer: unknown key"):  # the official layer is the projector's
        validate_method(MethodCfg(name="visionzip", keep=0.25, layer=-3))
    assert validate_method(MethodCfg(name="tome", keep=0.25, prop_attn=False)).label == "tome@0.25[prop_attn=False]"
    m = validate_method(MethodCfg(name="fastv", keep=0.25, layer=2))
    assert m.label == "fastv@0.25[layer=2]" and m.fastv_layer == 2 and m.fastv_k(144) == 36
    assert validate_method(MethodCfg(name="pool", keep=0.5)).merges
