"""DART: duplication-aware visual-token reduction inside the LLM, as ZichenWen1/DART's code does it.

Reference: ZichenWen1/DART (mirrored as xqy1111111/DART @ d6a5af6f24f9d0c2f3f3a8eb09b8ca7cef58b58a),
`llava/model/language_model/modeling_llama_self.py` (`DART.forward`: where and how it prunes;
`DART.get_retained_image_token`: the pivots and the duplicates; the decoder layer returns its
RoPE'd, KV-repeated key states), `llava/eval/model_vqa_loader.py` (`configure_DART` and the
defaults), `scripts/v1_5/eval/*.sh` (`--pruned_layer 2 --pivot_image_token 4 --pivot_text_token 4`,
the budget as `max_num_trunction`: `textvqa.sh 0.778 128`). Pure tensor code.

What it computes for LLaVA-1.5 (image tokens at [35, 35 + 576), 32 decoder layers), per prompt:
  - where: before decoder layer K = 2, from layer K - 1's outputs: its hidden states through the
    model's final norm (`self.norm`), and its key states (RoPE applied, repeated over KV groups,
    heads concatenated: [L, H hd]);
  - pivots: the `pivot_image_token` = 4 image tokens and the `pivot_text_token` = 4 tokens after
    the image (the question and the rest of the prompt) with the largest L1 norm of their keys;
  - per pivot, in the order of `list(set(image_pivots + text_pivots))` (Python's set order), the
    TOKEN_TOPK image tokens least cosine-similar to it (`topk` of the negative cosine of the
    normed hidden states) among those not yet taken (`list(set)` order again; the image pivots
    are never candidates), added to the kept set;
  - TOKEN_TOPK = ceil(max_num_trunction // (4 + 4)) (max_num_trunction None: N (1 -
    reduction_ratio) // 8); the scripts' 128 give 16 per pivot, so the image keeps
    4 + 8 * 16 = 132 tokens (the text pivots leave the kept set at the end);
  - the sequence [prefix, kept image tokens, the rest], sorted by position, enters layer K; kept
    tokens KEEP their position ids (position_ids = the kept indices); only the prefill prunes.

Wired as the suite method `dart` (`prune/peers.py`): `prune/staged.py`'s `DartPolicy` on the
LLaVA adapter's staged decoder (`models/staged_llm.py`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_LAYER = 2  # --pruned_layer
DEFAULT_PIVOTS = (4, 4)  # --pivot_image_token, --pivot_text_token
DEFAULT_TRUNCATION = 128  # --max_num_trunction of the scripts' runs (`textvqa.sh 0.778 128`)


def token_topk(n_image: int, max_num_trunction: int | None = DEFAULT_TRUNCATION, reduction_ratio: float = 0.778,
               pivot_image: int = 4, pivot_text: int = 4) -> int:
    """Tokens each pivot keeps: ceil(M // (pivot_image + pivot_text)), M = max_num_trunction or,
    when None, n_image * (1 - reduction_ratio) (floor division first, as the reference writes it)."""
    m = max_num_trunction if max_num_trunction is not None else n_image * (1 - reduction_ratio)
    return math.ceil(m // (pivot_image + pivot_text))


def retained_count(n_image: int, topk: int, pivot_image: int = 4, pivot_text: int = 4) -> int:
    """Image tokens DART keeps: the image pivots plus TOKEN_TOPK per pivot."""
    return min(n_image, pivot_image + (pivot_image + pivot_text) * topk)


def dart_retained(hidden: torch.Tensor, keys: torch.Tensor, image_start: int, n_image: int, topk: int,
                  pivot_image: int = 4, pivot_text: int = 4) -> list[int]:
    """One prompt. hidden [L, d] (layer K - 1's output through the final norm), keys [L, H hd]
    (layer K - 1's keys, RoPE applied, heads concatenated) -> the retained image positions
    (absolute), in the reference's set order (sort them for the sequence)."""
    end = image_start + n_image
    image_norm = torch.norm(keys[image_start:end], p=1, dim=-1)
    text_norm = torch.norm(keys[end:], p=1, dim=-1)
    image_pivots = (image_norm.topk(pivot_image).indices + image_start).tolist()
    text_pivots = (text_norm.topk(pivot_text).indices + end).tolist()
    chosen = set(image_pivots + text_pivots)
    free = set(range(image_start, end)) - set(image_pivots)
    free_list = list(free)
    for pivot in list(chosen):
        far = (-F.cosine_similarity(hidden[pivot, :], hidden[free_list, :], dim=-1)).topk(topk).indices
        picked = [free_list[i] for i in far]
        chosen.update(picked)
        free.difference_update(picked)
        free_list = list(free)
    chosen.difference_update(text_pivots)
    return list(chosen)


def dart_keep(seq_len: int, image_start: int, n_image: int, retained) -> torch.Tensor:
    """The positions entering layer K, ascending (and their position ids: DART keeps them)."""
    retained = torch.as_tensor(list(retained), dtype=torch.long)
    keep = torch.cat([torch.arange(image_start), retained, torch.arange(image_start + n_image, seq_len)])
    return keep.sort().values


def layer_image_tokens(n_image: int, n_layers: int, retained: int, layer: int = DEFAULT_LAYER) -> list[int]:
    """Image tokens each decoder layer sees: all of them before layer K, `retained` from K on."""
    return [n_image if l < layer else retained for l in range(n_layers)]
