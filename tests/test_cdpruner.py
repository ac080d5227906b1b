"""CDPruner as its official code does it (Theia-4869/CDPruner @ 9541616, llava/model/llava_arch.py
encode_images), on fixed tensors worked out by hand, and on random kernels against a plain
determinant rendering of greedy MAP inference written here."""
import math

import pytest
import torch

from robust_atp.prune.cdpruner import cdpruner, cdpruner_kernel, cdpruner_relevance, dpp_greedy_map, kept_mask


def test_relevance_is_the_negative_cosine_min_max_scaled_with_the_references_epsilon():
    image = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]])
    text = torch.tensor([[1.0, 0.0]])
    # -cos: [-1, 0, 1] -> (r + 1 + 1e-6) / 2
    rel = cdpruner_relevance(image, text)
    assert torch.allclose(rel, torch.tensor([[1e-6 / 2, 0.5 + 1e-6 / 2, 1 + 1e-6 / 2]]), atol=1e-9)
    # two text segments: the mean of the two negative cosines
    two = cdpruner_relevance(image, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    neg = torch.tensor([-0.5, -0.5, 0.5])
    assert torch.allclose(two[0], (neg - neg.min() + 1e-6) / (neg.max() - neg.min()))


def test_kernel_scales_the_cosine_by_both_relevances():
    feats = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 5.0]]])
    rel = torch.tensor([[1.0, 0.5, 2.0]])
    c = 1 / math.sqrt(2)
    expected = torch.tensor([[1, 0.5 * c, 0], [0.5 * c, 0.25, 0.5 * 2 * c], [0, 2 * c * 0.5 * 1, 4]])
    assert torch.allclose(cdpruner_kernel(feats, rel)[0], expected, atol=1e-6)


def test_greedy_map_skips_the_near_duplicate_of_its_first_pick():
    kernel = torch.tensor([[[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 0.5]]])
    # d2 = [1, 1, 0.5]: token 0 (the first maximum); then d2 = [-, 1 - 0.81, 0.5]: token 2;
    # then e = [0, 0, 0.5] / sqrt(0.5), d2 = [-, 0.19, -]: token 1
    assert dpp_greedy_map(kernel, 3)[:, 0].tolist() == [0, 2, 1]
    assert dpp_greedy_map(kernel, 2)[:, 0].tolist() == [0, 2]


def test_past_the_kernels_rank_picks_repeat_as_the_references_mask_keeps_them():
    kernel = torch.ones(1, 3, 3)  # rank 1
    # 0, then d2 = [-inf, 0, 0]: 1 (argmax: the first maximum); then 0 / sqrt(0) = NaN everywhere
    # and argmax takes the first NaN: 0 again
    picks = dpp_greedy_map(kernel, 3)[:, 0].tolist()
    assert picks == [0, 1, 0]
    assert kept_mask(torch.tensor([sorted(picks)]), 3).tolist() == [[True, True, False]]


def _det_greedy(kernel, k):
    """Greedy MAP written plainly: each step adds the token that maximises det(L_S)."""
    chosen = []
    for _ in range(k):
        best, best_j = -math.inf, None
        for j in range(kernel.shape[0]):
            if j in chosen:
                continue
            idx = chosen + [j]
            d = float(torch.linalg.det(kernel[idx][:, idx].double()))
            if d > best:
                best, best_j = d, j
        chosen.append(best_j)
    return chosen


@pytest.mark.parametrize("seed", range(5))
def test_fast_map_picks_what_a_determinant_greedy_picks(seed):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, 20, 12, generator=g)
    embeds, text = torch.randn(1, 20, 6, generator=g), torch.randn(1, 6, generator=g)
    rel = cdpruner_relevance(embeds, text)
    kernel = cdpruner_kernel(feats, rel)
    fast = dpp_greedy_map(kernel, 8)[:, 0].tolist()
    assert fast == _det_greedy(kernel[0], 8)
    assert cdpruner(feats, embeds, text, 8)[0].tolist() == sorted(fast)


def test_images_of_a_batch_are_pruned_as_they_are_alone():
    g = torch.Generator().manual_seed(7)
    feats, embeds, text = torch.randn(3, 30, 8, generator=g), torch.randn(3, 30, 4, generator=g), torch.randn(3, 1, 4, generator=g)
    both = cdpruner(feats, embeds, text, 6)
    for i in range(3):
        assert torch.equal(both[i], cdpruner(feats[i:i + 1], embeds[i:i + 1], text[i], 6)[0])
