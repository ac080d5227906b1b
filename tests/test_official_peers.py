"""ToMe and VisionZip as their official code does them, on fixed tensors: which tokens, merged
values, order and counts. Expected values are worked out by hand from the algorithms
(facebookresearch/ToMe @ af95e4b tome/merge.py, tome/patch/timm.py; dvlab-research/VisionZip
@ 3151f6d visionzip/clip_encoder.py, visionzip/llava_arch.py), and compared on random inputs
with plain loop renderings of the same algorithms written here."""
import math

import pytest
import torch

from robust_atp.prune.tome import (ToMeTower, bipartite_soft_matching, merge_source, merge_wavg, parse_r,
                                   proportional_attention_bias, schedule_to_k)
from robust_atp.prune.visionzip import (PAPER_SPLITS, anyres_layout, visionzip, visionzip_apply, visionzip_counts,
                                        visionzip_plan)

D64 = torch.float64


# ----------------------------------------------------------------------------- ToMe

def _tome_metric():
    # CLS, then t1..t4; A = {CLS, t2, t4}, B = {t1, t3}; t2 links to t1 (cos 0.995) better than
    # t4 links to t3 (cos 0.981); the CLS row is never merged
    return torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 1, 0.1], [0, 0, 1], [0, 0.2, 1]]], dtype=D64)


def test_tome_merges_the_best_linked_a_token_first_and_keeps_cls_first():
    x = torch.arange(10, dtype=D64).view(1, 5, 2)  # token j = [2j, 2j + 1]
    merge, _ = bipartite_soft_matching(_tome_metric(), 1, class_token=True)
    out, size = merge_wavg(merge, x)
    # unmerged A in ascending position (CLS, t4), then B (t1 + t2 averaged, t3)
    assert out.tolist() == [[[0, 1], [8, 9], [3, 4], [6, 7]]]
    assert size[..., 0].tolist() == [[1, 1, 2, 1]]
    assert merge_source(merge, x).tolist() == [[[1, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 1, 1, 0, 0], [0, 0, 0, 1, 0]]]
    merge, _ = bipartite_soft_matching(_tome_metric(), 2, class_token=True)
    out, size = merge_wavg(merge, x)
    assert out.tolist() == [[[0, 1], [3, 4], [7, 8]]] and size[..., 0].tolist() == [[1, 2, 2]]
    # r is capped at half of the unprotected tokens: (5 - 1) // 2 = 2
    merge, _ = bipartite_soft_matching(_tome_metric(), 3, class_token=True)
    assert merge(x).shape == (1, 3, 2)


def test_tome_without_class_token_keeps_unmerged_tokens_in_link_order():
    metric = _tome_metric()[:, 1:]  # t1..t4: A = {t1, t3}, B = {t2, t4}
    x = torch.arange(8, dtype=D64).view(1, 4, 2)
    merge, unmerge = bipartite_soft_matching(metric, 1)
    # t1 -> t2 (0.995) beats t3 -> t4 (0.981): t1 merges, t3 stays; out = [t3, t1+t2, t4]
    out, size = merge_wavg(merge, x)
    assert out.tolist() == [[[4, 5], [1, 2], [6, 7]]] and size[..., 0].tolist() == [[1, 2, 1]]
    # unmerge puts each merged token back where its members came from
    assert unmerge(out).tolist() == [[[1, 2], [1, 2], [4, 5], [6, 7]]]


def test_tome_sizes_weight_later_merges_and_r_zero_does_nothing():
    metric = _tome_metric()
    x = torch.arange(10, dtype=D64).view(1, 5, 2)
    size = torch.tensor([[[1.0], [3.0], [1.0], [1.0], [1.0]]], dtype=D64)  # t1 already stands for 3
    merge, _ = bipartite_soft_matching(metric, 1, class_token=True)
    out, new = merge_wavg(merge, x, size)
    assert out[0, 2].tolist() == [(3 * 2 + 4) / 4, (3 * 3 + 5) / 4] and new[0, 2, 0] == 4
    merge, unmerge = bipartite_soft_matching(metric, 0, class_token=True)
    assert merge(x) is x and unmerge(x) is x


def _tome_loop(metric, x, size, r, class_token):
    """Bipartite soft matching and the size-weighted merge, one image at a time, in loops."""
    outs, sizes = [], []
    for m, xb, sb in zip(metric, x, size):
        t = m.shape[0]
        rr = min(r, (t - int(class_token)) // 2)
        unit = m / m.norm(dim=-1, keepdim=True)
        a_pos, b_pos = list(range(0, t, 2)), list(range(1, t, 2))
        links = []
        for i, ap in enumerate(a_pos):
            sims = [float(unit[ap] @ unit[bp]) for bp in b_pos]
            best = -math.inf if (class_token and i == 0) else max(sims)
            links.append((best, i, sims.index(max(sims))))
        ranked = sorted(links, key=lambda l: -l[0])  # random inputs: no ties
        moved, stay = ranked[:rr], ranked[rr:]
        if class_token:
            stay = sorted(stay, key=lambda l: l[1])
        acc = {j: (xb[bp] * sb[bp], sb[bp].clone()) for j, bp in enumerate(b_pos)}
        for _, i, j in moved:
            s, n = acc[j]
            acc[j] = (s + xb[a_pos[i]] * sb[a_pos[i]], n + sb[a_pos[i]])
        rows = [xb[a_pos[i]] for _, i, _ in stay] + [acc[j][0] / acc[j][1] for j in range(len(b_pos))]
        outs.append(torch.stack(rows))
        sizes.append(torch.stack([sb[a_pos[i]] for _, i, _ in stay] + [acc[j][1] for j in range(len(b_pos))]))
    return torch.stack(outs), torch.stack(sizes)


@pytest.mark.parametrize("t,r,class_token", [(17, 5, True), (16, 8, False), (9, 10, True), (12, 3, False)])
def test_tome_equals_a_loop_rendering_on_random_inputs(t, r, class_token):
    g = torch.Generator().manual_seed(t * 100 + r)
    metric = torch.randn(3, t, 4, generator=g, dtype=D64)
    x = torch.randn(3, t, 5, generator=g, dtype=D64)
    size = torch.randint(1, 4, (3, t, 1), generator=g).to(D64)
    merge, _ = bipartite_soft_matching(metric, r, class_token=class_token)
    out, new = merge_wavg(merge, x, size)
    ref, ref_size = _tome_loop(metric, x, size, r, class_token)
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-12) and torch.equal(new, ref_size)
    if class_token:
        assert torch.allclose(out[:, 0], x[:, 0], atol=1e-12)  # the CLS token stays first, unmerged


def test_proportional_attention_bias_is_log_size_on_every_key():
    size = torch.tensor([[[1.0], [2.0], [4.0]]])
    bias = proportional_attention_bias(size)
    assert bias.shape == (1, 1, 1, 3) and torch.allclose(bias[0, 0, 0], torch.tensor([0.0, math.log(2), math.log(4)]))
    # softmax with the bias = softmax over the tokens repeated `size` times
    logits = torch.tensor([0.3, -0.2, 0.5])
    repeated = torch.tensor([0.3, -0.2, -0.2, 0.5, 0.5, 0.5, 0.5]).softmax(-1)
    mass = (logits + bias[0, 0, 0]).softmax(-1)
    assert torch.allclose(mass, torch.stack([repeated[0], repeated[1:3].sum(), repeated[3:].sum()]))


def test_parse_r_reads_tomes_schedule_forms():
    assert parse_r(4, 8) == [8, 8, 8, 8]
    assert parse_r(4, (8, -1.0)) == [16, 10, 5, 0]  # the paper's decreasing schedule
    assert parse_r(4, (8, 1.0)) == [0, 5, 10, 16]
    assert parse_r(3, [2]) == [2, 0, 0]


@pytest.mark.parametrize("n,k,layers,expected", [(144, 36, 3, [36, 36, 36]), (144, 72, 3, [24, 24, 24]),
                                                 (144, 18, 3, [72, 36, 18]), (36, 9, 2, [18, 9]),
                                                 (100, 50, 3, [17, 17, 16])])
def test_schedule_ends_at_k_within_tomes_per_block_cap(n, k, layers, expected):
    sched = schedule_to_k(n, k, layers)
    assert sched == expected and sum(sched) == n - k
    t = n + 1
    for r in sched:  # bipartite_soft_matching would cap r at (t - 1) // 2
        assert r <= (t - 1) // 2
        t -= r


def test_schedule_that_cannot_reach_k_ends_as_low_as_the_blocks_allow():
    assert schedule_to_k(144, 10, 3) == [72, 36, 18]  # 18 patches left: 144 / 2^3
    assert ToMeTower(keep=0.25).schedule(144, 3) == [36, 36, 36] and ToMeTower(k=18).target(144) == 18


# ----------------------------------------------------------------------------- VisionZip

def test_paper_splits_and_the_share_rule():
    assert visionzip_counts(64) == (54, 10) and visionzip_counts(128) == (108, 20) and visionzip_counts(192) == (162, 30)
    for k, split in PAPER_SPLITS.items():  # the default share (10 / 64) gives the paper's splits
        assert visionzip_counts(k, 10 / 64) == split
    assert visionzip_counts(36) == (30, 6)  # 5.625 -> 6
    assert visionzip_counts(36, 0.0) == (36, 0) and visionzip_counts(1) == (1, 0) and visionzip_counts(2, 0.9) == (1, 1)


def _zip_inputs():
    """CLS + 6 patches; hidden token j = [j, 10 j]."""
    hidden = torch.tensor([[[j, 10.0 * j] for j in range(7)]], dtype=D64)
    # CLS row per head (2 heads), summed: patches 1..6 get 0.1, 0.5, 0.2, 0.9, 0.05, 0.3
    summed = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.05, 0.3], dtype=D64)
    attn = torch.stack([summed * 0.25, summed * 0.75])[None]  # [1, 2, 6]
    keys = torch.tensor([[[1, 1], [1, 0], [1, 1], [0.1, 1], [1, 1], [0, 1], [0.2, 1]]], dtype=D64)
    return hidden, attn, keys


def test_visionzip_keeps_cls_and_top_patches_then_target_plus_mean():
    hidden, attn, keys = _zip_inputs()
    out = visionzip(hidden, attn, keys, dominant=3, contextual=2)
    # dominant: CLS + the two most attended patches (4: 0.9, 2: 0.5), in original order;
    # rest = tokens 1, 3, 5, 6 (M = 4), targets arange(0, 4, 2) = rest[0], rest[2] = tokens 1 and 5;
    # tokens 3 and 6 are closer to 5 (keys [0, 1]) than to 1 ([1, 0]): 5 + mean(3, 6); 1 alone
    assert out.tolist() == [[[0, 0], [2, 20], [4, 40], [1, 10], [5 + 4.5, 50 + 45]]]
    plan = visionzip_plan(attn, keys, 3, 2)
    assert plan.sizes().tolist() == [[1, 1, 1, 1, 3]]
    assert plan.rest.tolist() == [[1, 3, 5, 6]] and plan.targets.tolist() == [0, 2] and plan.assign.tolist() == [[1, 1]]


def test_visionzip_accepts_every_cls_row_shape():
    hidden, attn, keys = _zip_inputs()
    ref = visionzip(hidden, attn, keys, 3, 2)
    with_cls_column = torch.cat([torch.full((1, 2, 1), 9.0, dtype=D64), attn], -1)  # [B, H, N+1]
    full = torch.zeros(1, 2, 7, 7, dtype=D64)
    full[:, :, 0] = with_cls_column  # the whole attention matrix: row 0 is the CLS row
    for a in (with_cls_column, attn.sum(1), with_cls_column.sum(1), full):
        assert torch.equal(visionzip(hidden, a, keys, 3, 2), ref)
    per_head = torch.stack([keys[0] * 0.5, keys[0] * 1.5])[None]  # [B, H, N+1, hd]: their mean is keys
    assert torch.equal(visionzip(hidden, attn, per_head, 3, 2), ref)


def test_visionzip_ties_break_as_torch_does():
    hidden, attn, keys = _zip_inputs()
    keys[0, 3] = torch.tensor([1.0, 1.0])  # token 3 equally close to both targets: argmax takes the first
    out = visionzip(hidden, attn, keys, 3, 2)
    assert out[0, 3].tolist() == [1 + 3, 10 + 30] and out[0, 4].tolist() == [5 + 6, 50 + 60]
    flat = torch.tensor([[[0.5] * 6]], dtype=D64)  # every patch equally attended: whatever torch.topk picks
    plan = visionzip_plan(flat, keys, 4, 1)
    assert plan.dominant[0, 1:].tolist() == (flat[0].sum(0).topk(3).indices + 1).tolist()


def _zip_loop(hidden, attn, keys, dominant, contextual):
    """VisionZip for one image at a time, in loops (attn: [B, H, N] CLS row)."""
    out = []
    for h, a, k in zip(hidden, attn, keys):
        scores = a.sum(0).tolist()
        top = sorted(range(len(scores)), key=lambda i: -scores[i])[: dominant - 1]  # random: no ties
        kept = sorted([0] + [i + 1 for i in top])
        rest = [j for j in range(h.shape[0]) if j not in kept]
        step = max(1, len(rest) // contextual)
        targets = list(range(0, len(rest), step))[:contextual]
        unit = k / k.norm(dim=-1, keepdim=True)
        joined = {t: [] for t in targets}
        for p in range(len(rest)):
            if p in targets:
                continue
            sims = [float(unit[rest[p]] @ unit[rest[t]]) for t in targets]
            joined[targets[sims.index(max(sims))]].append(h[rest[p]])
        ctx = [h[rest[t]] + (torch.stack(joined[t]).mean(0) if joined[t] else 0) for t in targets]
        out.append(torch.stack([h[j] for j in kept] + ctx))
    return torch.stack(out)


@pytest.mark.parametrize("n,dominant,contextual", [(24, 9, 3), (36, 30, 6), (16, 2, 5), (49, 12, 7)])
def test_visionzip_equals_a_loop_rendering_on_random_inputs(n, dominant, contextual):
    g = torch.Generator().manual_seed(n + dominant)
    hidden = torch.randn(3, n + 1, 6, generator=g, dtype=D64)
    attn = torch.rand(3, 4, n, generator=g, dtype=D64)
    keys = torch.randn(3, n + 1, 5, generator=g, dtype=D64)
    out = visionzip(hidden, attn, keys, dominant, contextual)
    assert out.shape == (3, dominant + contextual, 6)
    assert torch.allclose(out, _zip_loop(hidden, attn, keys, dominant, contextual), atol=1e-12)
    plan = visionzip_plan(attn, keys, dominant, contextual)
    assert int(plan.sizes().sum(1).unique()) == n + 1 and torch.equal(visionzip_apply(plan, hidden), out)


def _anyres_loop(per_crop, dominant_idx, rows, cols, side):
    """restore_image_features_sorted's layout, one mosaic cell at a time."""
    d = dominant_idx.shape[1]
    cells = {}
    for r in range(1, per_crop.shape[0]):
        cr, cc = divmod(r - 1, cols)
        for rank, p in enumerate(sorted(dominant_idx[r].tolist())[1:]):
            pr, pc = divmod(p - 1, side)
            cells[(cr * side + pr, cc * side + pc)] = per_crop[r, 1 + rank]
    mosaic = [cells[key] for key in sorted(cells)]
    tail = [per_crop[r, 0] for r in range(1, per_crop.shape[0])]
    ctx = [per_crop[r, j] for r in range(1, per_crop.shape[0]) for j in range(d, per_crop.shape[1])]
    return torch.stack(list(per_crop[0]) + mosaic + tail + ctx)


@pytest.mark.parametrize("rows,cols", [(2, 2), (1, 3), (2, 1)])
def test_anyres_layout_follows_the_official_restore(rows, cols):
    side, crops = 3, 1 + rows * cols
    g = torch.Generator().manual_seed(rows * 10 + cols)
    hidden = torch.randn(crops, side * side + 1, 4, generator=g, dtype=D64)
    plan = visionzip_plan(torch.rand(crops, 2, side * side, generator=g, dtype=D64),
                          torch.randn(crops, side * side + 1, 3, generator=g, dtype=D64), 4, 2)
    per_crop = visionzip_apply(plan, hidden)
    out = anyres_layout(per_crop, plan, (rows, cols))
    assert out.shape == (crops * 6, 4)
    assert torch.equal(out, _anyres_loop(per_crop, plan.dominant, rows, cols, side))
