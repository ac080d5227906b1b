"""PruMerge+ as its official code does it (42Shawn/LLaVA-PruMerge @ 097c041,
llava/model/multimodal_encoder/clip_encoder.py token_prune_merge_advanced_plus), on fixed
tensors whose expected values are worked out by hand, and on random inputs against a plain loop
rendering of the same algorithm written here."""
import numpy as np
import pytest
import torch

from robust_atp.prune.prumerge import (complement, fixed_ratio, iqr_outlier_ratio, prumerge_cls_attention,
                                       prumerge_plus, prumerge_plus_indices, prumerge_plus_plan)

D64 = torch.float64


def _arc_keys(n):
    """Keys on an arc: token j at angle 0.05 j, so similarity falls with |i - j| (CLS first)."""
    theta = torch.arange(n, dtype=D64) * 0.05
    keys = torch.stack([theta.cos(), theta.sin()], 1)
    return torch.cat([torch.tensor([[1.0, -1.0]], dtype=D64), keys])


def _hand_case():
    # 36 patches, attention 0.01 but for four outliers; features x_j = [j, 1]
    attn = torch.full((36,), 0.01, dtype=D64)
    attn[[5, 20, 30, 12]] = torch.tensor([0.2, 0.15, 0.1, 0.05], dtype=D64)
    x = torch.stack([torch.arange(36, dtype=D64), torch.ones(36, dtype=D64)], 1)
    hidden = torch.cat([torch.full((1, 2), 99.0, dtype=D64), x])  # a CLS row the method never reads
    return attn, _arc_keys(36), hidden


def test_outliers_then_the_spatial_extras_in_the_references_order():
    attn, keys, _ = _hand_case()
    # Q1 = Q3 = 0.01, IQR 0: the four values above it are the outliers, r = 4 / 36
    assert iqr_outlier_ratio(attn) == 4 / 36
    # topk(int(36 r) = 4) in descending attention, then arange(0, 35, int(int(1 / r) / 3) = 3)
    # without the outliers (12 and 30 are on it): 0 3 6 9 15 18 21 24 27 33
    assert prumerge_plus_indices(attn).tolist() == [5, 20, 30, 12, 0, 3, 6, 9, 15, 18, 21, 24, 27, 33]
    plan = prumerge_plus_plan(attn, keys)
    assert plan.pruned.tolist() == [1, 2, 4, 7, 8, 10, 11, 13, 14, 16, 17, 19, 22, 23, 25, 26, 28, 29, 31, 32, 34, 35]
    # 32 neighbours of 35 candidates: token 5 leaves out the three farthest on the arc (33, 34, 35)
    assert sorted(plan.members[0].tolist()) == [j for j in range(33) if j != 5]
    assert sorted(plan.members[4].tolist()) == list(range(1, 33))  # token 0: 33, 34, 35 out too


def test_merged_values_are_the_token_plus_an_attention_weighted_sum():
    attn, keys, hidden = _hand_case()
    out = prumerge_plus(attn[None], keys[None], hidden[None])[0]
    assert out.shape == (15, 2)  # 14 kept + the extra token
    # token 5: [5, 1] + 0.15 [20, 1] + 0.1 [30, 1] + 0.05 [12, 1] + 0.01 * (the 29 other j <= 32):
    # sum j = 528 - 67 = 461  ->  [5 + 3 + 3 + 0.6 + 4.61, 1 + 0.15 + 0.1 + 0.05 + 0.29]
    assert torch.allclose(out[0], torch.tensor([16.21, 1.59], dtype=D64))
    # token 0 (fifth): neighbours 1..32: 0.2 [5, 1] + 0.15 [20, 1] + 0.1 [30, 1] + 0.05 [12, 1]
    # + 0.01 * (28 others: sum j = 528 - 67 = 461) = [1 + 3 + 3 + 0.6 + 4.61, 0.5 + 0.28]
    assert torch.allclose(out[4], torch.tensor([12.21, 1.78], dtype=D64))
    # the extra token: the 22 pruned tokens, 0.01 each: sum j = 630 - 223 = 407
    assert torch.allclose(out[-1], torch.tensor([4.07, 0.22], dtype=D64))


def test_the_references_float_rounding_can_drop_the_only_outlier():
    attn = torch.full((49,), 0.01, dtype=D64)
    attn[40] = 0.5
    # r = 1 / 49, but int(49 * (1 / 49)) = 0: no outlier is kept; int(1 / r) = 49, step 16
    assert iqr_outlier_ratio(attn) == 1 / 49 and int(49 * (1 / 49)) == 0
    assert prumerge_plus_indices(attn).tolist() == [0, 16, 32]
    assert 40 in prumerge_plus_plan(attn, _arc_keys(49)).pruned.tolist()


def test_no_outlier_and_a_dense_grid_fall_back_instead_of_dividing_by_zero():
    flat = torch.full((16,), 1 / 16, dtype=D64)
    assert iqr_outlier_ratio(flat) == 0
    # the top patch (topk's pick among equal values) is the one outlier; step int(16 / 3) = 5
    idx = prumerge_plus_indices(flat)
    assert len(idx) == 3 + (0 if int(idx[0]) in (0, 5, 10) else 1)


def test_the_fixed_ratio_path_keeps_duplicates_and_loses_complement_tokens_as_there():
    attn = torch.full((16,), 0.01, dtype=D64)
    attn[4], attn[9] = 0.3, 0.2
    # reduction_ratio 1/8: topk 2 -> [4, 9], then arange(4, 15, 8) = [4, 12] unfiltered
    assert prumerge_plus_indices(attn, adaptive=False, reduction_ratio=1 / 8).tolist() == [4, 9, 4, 12]
    plan = prumerge_plus_plan(attn, _arc_keys(16), adaptive=False, reduction_ratio=1 / 8)
    # complement_idx drops as many values as idx has (4), so token 0 is lost with the zeros
    assert plan.pruned.tolist() == [1, 2, 3, 5, 6, 7, 8, 10, 11, 13, 14, 15]
    assert complement(torch.tensor([3, 1]), 5).tolist() == [0, 2, 4]
    assert fixed_ratio(576, 144) == 1 / 8 and fixed_ratio(144, 36) == 1 / 8


def test_cls_attention_is_one_head_over_the_whole_width():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 10, 8, generator=g, dtype=D64), torch.randn(2, 10, 8, generator=g, dtype=D64)
    full = prumerge_cls_attention(q, k)
    logits = torch.einsum("bc,btc->bt", q[:, 0], k) / 8 ** 0.5
    assert torch.allclose(full, logits.softmax(-1)[:, 1:]) and full.shape == (2, 9)
    assert torch.allclose(prumerge_cls_attention(q[:, 0], k), full)  # the CLS query alone: the same row


def _loop_prumerge_plus(attn, keys, hidden):
    """The adaptive path, one image, in plain Python loops."""
    n = len(attn)
    a = attn.tolist()
    q1, q3 = np.percentile(np.array(a, dtype=np.float32), 25), np.percentile(np.array(a, dtype=np.float32), 75)
    outliers = [j for j in range(n) if np.float32(a[j]) > q3 + 1.5 * (q3 - q1)]
    ratio = len(outliers) / n
    top = sorted(range(n), key=lambda j: -a[j])[: int(n * ratio)]
    extras = [j for j in range(0, n - 1, int(int(1 / ratio) / 3)) if j not in top]
    kept = top + extras
    pruned = [j for j in range(n) if j not in kept]
    unit = [keys[1 + j] / keys[1 + j].norm() for j in range(n)]
    x = hidden[1:]
    out = []
    for i, ki in enumerate(kept):
        others = kept[:i] + kept[i + 1:] + pruned
        near = sorted(others, key=lambda j: -float(unit[ki] @ unit[j]))[:32]
        out.append(x[ki] + sum(a[j] * x[j] for j in near))
    out.append(sum(a[j] * x[j] for j in pruned))
    return torch.stack(out)


@pytest.mark.parametrize("seed", range(4))
def test_prumerge_plus_equals_a_loop_rendering_on_random_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    n = 64
    attn = torch.rand(n, generator=g, dtype=D64) ** 8  # heavy-tailed: a few outliers
    keys = torch.randn(n + 1, 6, generator=g, dtype=D64)
    hidden = torch.randn(n + 1, 5, generator=g, dtype=D64)
    got = prumerge_plus(attn[None], keys[None], hidden[None])[0]
    assert torch.allclose(got, _loop_prumerge_plus(attn, keys, hidden))


def test_images_are_planned_alone_and_stack_when_their_counts_agree():
    attn, keys, hidden = _hand_case()
    other = attn.flip(0)
    both = prumerge_plus(torch.stack([attn, other]), torch.stack([keys, keys]), torch.stack([hidden, hidden]))
    assert torch.equal(both[0], prumerge_plus(attn[None], keys[None], hidden[None])[0])
    assert torch.equal(both[1], prumerge_plus(other[None], keys[None], hidden[None])[0])
    single = torch.full((36,), 0.01, dtype=D64)
    single[3] = 0.9
    with pytest.raises(ValueError, match="different numbers of tokens"):
        prumerge_plus(torch.stack([attn, single]), torch.stack([keys, keys]), torch.stack([hidden, hidden]))
