"""Scores, normalisers, selection and the method registry: pure tensor code, exact answers."""
import math
from types import SimpleNamespace

import pytest
import torch

from robust_atp.errors import SuiteError
from robust_atp.prune import scores as S
from robust_atp.prune.methods import validate_method
from robust_atp.prune.select import budget, select_adaptive, select_topk
from robust_atp.suite import MethodCfg


def test_cls_attention_picks_layer_and_reduces_heads():
    attn = torch.zeros(1, 3, 2, 4)
    attn[0, 1, 0] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    attn[0, 1, 1] = torch.tensor([0.5, 0.0, 0.1, 0.0])
    assert torch.allclose(S.cls_attention(attn, layer=1, heads="mean"), torch.tensor([[0.3, 0.1, 0.2, 0.2]]))
    assert torch.allclose(S.cls_attention(attn, layer=-2, heads="max"), torch.tensor([[0.5, 0.2, 0.3, 0.4]]))
    with pytest.raises(ValueError):
        S.cls_attention(attn, heads="median")


def test_clip_relevance_is_signed_cosine():
    patches = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]])
    text = torch.tensor([[2.0, 0.0]])
    assert torch.allclose(S.clip_relevance(patches, text, 1), torch.tensor([[1.0, 0.0, -1.0]]))
    assert torch.allclose(S.clip_relevance(patches, text, -1), torch.tensor([[-1.0, 0.0, 1.0]]))


def test_normalisers_exact_values_and_constant_rows():
    x = torch.tensor([[1.0, 3.0, 2.0, 5.0], [4.0, 4.0, 4.0, 4.0]])
    assert torch.equal(S.minmax(x), torch.tensor([[0.0, 0.5, 0.25, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    z = S.zscore(x)
    assert torch.allclose(z[0], (x[0] - 2.75) / x[0].std(unbiased=False))
    assert torch.equal(z[1], torch.zeros(4))
    # a constant row maps to zeros, as under the other normalisers (it was an index ramp)
    assert torch.equal(S.rank(x), torch.tensor([[0.0, 2 / 3, 1 / 3, 1.0], [0.0, 0.0, 0.0, 0.0]]))


def test_atp_scores_alpha_weights_the_clip_term():
    sal = torch.tensor([[0.0, 1.0, 2.0]])
    rel = torch.tensor([[2.0, 1.0, 0.0]])
    assert torch.allclose(S.atp_scores(sal, rel, 0.25), torch.tensor([[0.25, 0.5, 0.75]]))
    assert torch.equal(S.atp_scores(sal, None, 0.0), S.minmax(sal))
    assert torch.equal(S.atp_scores(None, rel, 1.0), S.minmax(rel))


def test_budget_rounds_half_up_and_clamps():
    assert budget(144, keep=0.25) == 36
    assert budget(144, keep=0.125) == 18
    assert budget(10, keep=0.25) == 3  # 2.5 -> 3
    assert budget(10, keep=0.01) == 1
    assert budget(10, k=50) == 10
    assert budget(10) == 10


def test_topk_returns_sorted_indices_and_breaks_ties_by_index():
    s = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.5]])
    assert select_topk(s, 2).tolist() == [[0, 1]]
    assert select_topk(s, 3).tolist() == [[0, 1, 2]]
    const = torch.ones(1, 6)
    assert select_topk(const, 3).tolist() == [[0, 1, 2]]
    nan = torch.tensor([[float("nan"), 0.2, 0.1]])
    assert select_topk(nan, 2).tolist() == [[1, 2]]


def test_adaptive_takes_smallest_set_holding_the_mass():
    s = torch.tensor([[0.0, 0.6, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25]])
    out = select_adaptive(s, mass=0.85)
    assert out[0].tolist() == [1, 2]
    assert out[1].tolist() == [0, 1, 2, 3]
    clamped = select_adaptive(s, mass=0.85, k_min=1, k_max=3)
    assert clamped[1].tolist() == [0, 1, 2]
    assert select_adaptive(torch.zeros(1, 4), mass=0.5, k_min=2)[0].tolist() == [0, 1]


def _vision(b=2, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(tokens=torch.randn(b, n, 8, generator=g), cls_attn=torch.rand(b, 3, 2, n, generator=g),
                           clip_patches=torch.randn(b, n, 4, generator=g))


def test_cls_and_clip_are_atp_at_alpha_0_and_1():
    v = _vision()
    text = torch.randn(2, 4)
    keys = ["a", "b"]
    for name, alpha in (("cls", 0.0), ("clip", 1.0)):
        a = validate_method(MethodCfg(name=name, keep=0.25)).select(v, text, keys)
        b = validate_method(MethodCfg(name="atp", keep=0.25, alpha=alpha)).select(v, text, keys)
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_atp_follows_its_knobs():
    v = _vision(n=9)
    v.cls_attn[:] = 0
    v.cls_attn[:, -2, :, 4] = 1.0  # saliency says token 4
    text = torch.zeros(2, 4)
    text[:, 0] = 1
    v.clip_patches[:] = 0
    v.clip_patches[:, :, 1] = 1
    v.clip_patches[:, 7] = torch.tensor([1.0, 0, 0, 0])  # relevance says token 7
    pick = lambda **kw: validate_method(MethodCfg(name="atp", k=1, **kw)).select(v, text, ["x", "y"])[0].tolist()
    assert pick(alpha=0.0) == [4]
    assert pick(alpha=1.0) == [7]
    assert pick(alpha=1.0, relevance_sign=-1) != [7]
    v.cls_attn[:, 0, :, 2] = 5.0
    assert pick(alpha=0.0, layer=0) == [2]


def test_random_is_seeded_per_key_and_independent_of_batch():
    v = _vision(b=3, n=40)
    m = validate_method(MethodCfg(name="random", keep=0.25))
    a = m.select(v, None, ["e1", "e2", "e3"])
    b = m.select(_vision(b=1, n=40, seed=5), None, ["e2"])
    assert torch.equal(a[1], b[0])
    assert not torch.equal(a[0], a[1])
    assert all(len(x) == 10 and torch.equal(x, x.sort().values) and len(set(x.tolist())) == 10 for x in a)


@pytest.mark.parametrize("cfg, message", [
    ({"name": "atp", "keep": 1.5}, ".keep: must be in (0, 1], got 1.5"),
    ({"name": "atp", "keep": 0}, ".keep: must be in (0, 1], got 0"),
    ({"name": "atp", "keep": 0.5, "alpha": 2}, ".alpha: must be in [0, 1], got 2"),
    ({"name": "atp", "kep": 0.5}, ".kep: unknown key (did you mean 'keep'?)"),
    ({"name": "atpp", "keep": 0.5}, ".name: unknown method 'atpp' (did you mean 'atp'?)"),
    ({"name": "random"}, "give exactly one budget"),
    ({"name": "atp", "keep": 0.5, "k": 3}, "give exactly one budget"),
    ({"name": "atp", "keep": 0.5, "normalizer": "l2"}, ".normalizer: Input should be 'minmax', 'zscore' or 'rank'"),
    ({"name": "atp", "keep": 0.5, "relevance_sign": 0}, ".relevance_sign:"),
])
def test_bad_method_settings_name_the_field(cfg, message):
    with pytest.raises(SuiteError) as e:
        validate_method(MethodCfg(**cfg))
    assert message in str(e.value)


def test_labels():
    lab = lambda **kw: validate_method(MethodCfg(**kw)).label
    assert lab(name="full") == "full"
    assert lab(name="atp", keep=0.25) == "atp@0.25"
    assert lab(name="atp", keep=0.25, alpha=0.75, relevance_sign=-1) == "atp@0.25[alpha=0.75,relevance_sign=-1]"
    assert lab(name="random", k=64) == "random@k64"
    assert lab(name="atp", mass=0.9, k_min=8) == "atp@mass0.9[k_min=8]"
    assert lab(name="atp", keep=0.25, label="mine") == "mine"


# ----------------------------------------------------------------------------- adaptive budget bugs

def test_mass_one_keeps_every_token_with_mass_on_random_rows():
    """float32 running sums ended below the float32 total, so `mass: 1.0` reached nothing and
    kept k_min tokens on hundreds of 2,000 random rows."""
    scores = torch.rand(2000, 576, generator=torch.Generator().manual_seed(0))
    assert all(len(x) == 576 for x in select_adaptive(scores, 1.0))
    normed = S.minmax(scores)  # the min token holds no mass
    assert all(len(x) == 575 for x in select_adaptive(normed, 1.0, k_min=3))


def test_clip_mass_is_a_share_of_the_normalised_relevance():
    """clip with `mass` read raw cosines: with relevance_sign -1 and patches all aligned with the
    question, every score was negative, clamped to 0, and one token was kept."""
    g = torch.Generator().manual_seed(1)
    text = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    patches = torch.rand(1, 16, 4, generator=g) + torch.tensor([2.0, 0, 0, 0])  # cosines all in (0, 1)
    vision = SimpleNamespace(tokens=torch.zeros(1, 16, 2), clip_patches=patches)
    for sign in (1, -1):
        rel = S.minmax(S.clip_relevance(patches, text, sign))
        want = select_adaptive(rel, 0.6)[0]
        got = validate_method(MethodCfg(name="clip", mass=0.6, relevance_sign=sign)).select(vision, text, ["a"])[0]
        assert torch.equal(got, want) and len(got) > 1
        atp = validate_method(MethodCfg(name="atp", mass=0.6, alpha=1.0, relevance_sign=sign))
        assert torch.equal(atp.select(vision, text, ["a"])[0], got)  # clip is ATP at alpha 1


def test_zscore_mass_is_a_share_of_the_whole_row():
    """Under zscore the mass was a share of the positive scores only (negatives clamped to 0)."""
    s = torch.tensor([[2.0, 1.0, 0.5, -0.5, -1.0, -2.0]])
    shifted = s - s.min()  # [4, 3, 2.5, 1.5, 1, 0]: total 12; 0.5 of it needs 4 + 3 (7 >= 6)
    assert select_adaptive(s, 0.5)[0].tolist() == [0, 1]
    assert select_adaptive(shifted, 0.5)[0].tolist() == [0, 1]
    assert select_adaptive(s, 0.9)[0].tolist() == [0, 1, 2, 3]  # 11 >= 10.8; positive part only: [0, 1, 2]
    # through ATP: relevance = cos of 2-D patches with the text [1, 0]
    sal = torch.tensor([[0.1, 0.4, 0.2, 0.9, 0.3, 0.5]])
    rel = torch.tensor([[0.3, 0.1, 0.8, 0.2, 0.6, 0.4]])
    vision = SimpleNamespace(tokens=torch.zeros(1, 6, 2), cls_attn=sal[:, None, None],
                             clip_patches=torch.stack([rel, (1 - rel ** 2).sqrt()], -1))
    text = torch.tensor([[1.0, 0.0]])
    scores = S.atp_scores(sal, rel, 0.5, "zscore")
    for mass in (0.5, 0.8):
        atp = validate_method(MethodCfg(name="atp", mass=mass, normalizer="zscore", layer=0))
        want = select_adaptive(scores - scores.min(), mass)[0]
        assert torch.equal(atp.select(vision, text, ["a"])[0], want)
    assert len(select_adaptive(scores, 0.8)[0]) > len(select_adaptive(scores.clamp_min(0), 0.8)[0])


def test_rank_keeps_ties_tied_and_lower_index_first():
    """rank turned a constant row into an index ramp and ranked the later of two ties higher,
    so selection preferred the higher index."""
    x = torch.tensor([[0.5, 0.5, 0.1, 0.5], [0.2, 0.2, 0.2, 0.2]])
    r = S.rank(x)
    assert r[0, 0] == r[0, 1] == r[0, 3] and r[0, 2] == 0 and torch.equal(r[1], torch.zeros(4))
    assert select_topk(r, 2).tolist() == [[0, 1], [0, 1]]
    # ATP with the rank normaliser: a constant saliency adds nothing, ties in relevance go low
    sal = torch.full((1, 4), 0.3)
    rel = torch.tensor([[0.1, 0.7, 0.7, 0.2]])
    assert select_topk(S.atp_scores(sal, rel, 0.5, "rank"), 1).tolist() == [[1]]
