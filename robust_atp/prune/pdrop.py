"""PyramidDrop: staged visual-token dropping inside the LLM, as Cooperx521/PyramidDrop's code does it.

Reference: Cooperx521/PyramidDrop @ 6444f304aee4b7edcb022839fb9e8cd07859704a,
`llava/model/modeling_llama_pdrop.py` (`LlamaModel.pdrop_forward`: where it ranks and how the
decoding positions move; `LlamaModel.pdrop_rank_drop`: the ranking and the drop),
`llava/eval/model_vqa_loader.py` (`layer_list`, `image_token_ratio_list` with 1.0 put first),
`scripts/v1_5/pdrop_eval/*.sh` (the inference defaults: `[8,16,24]`, `[0.5,0.25,0.125]`).
Pure tensor code: the algorithm and its token counts.

What it computes for LLaVA-1.5 (N = 576 image tokens, 32 decoder layers), per prompt:
  - stages: `layer_list` = [8, 16, 24] and ratios [1.0, 0.5, 0.25, 0.125] (lambda = 0.5): after
    decoder layer l (0-based) with l + 1 in layer_list, stage s = layer_list.index(l + 1) ends;
    the image span holds int(N * ratio[s]) tokens and keeps int(N * ratio[s + 1]) (floors:
    288, 144, 72 of 576), so layers 0-7 see 576 image tokens, 8-15 288, 16-23 144, 24-31 72;
  - rank: with decoder layer l + 1's own input_layernorm, q_proj and k_proj (and RoPE at the
    current positions) on layer l's output, the LAST instruction token's query against every
    key: softmax(q k^T / sqrt(head_dim) + causal mask) in float32, cast back to the query's dtype,
    averaged over heads; its image-span columns ranked by `topk(keep)`, the kept ones re-sorted
    into their original order;
  - drop: [text before the image, the kept image tokens, everything after the image], and the
    position ids become arange over the shorter sequence (positions are NOT preserved; a decoding
    step's position falls by the tokens each stage dropped);
  - only the prefill drops; the KV cache of each layer holds what that layer saw.
The reference multiplies a query of H heads with keys of H_kv heads without repeating them (it
runs on LLaMA, H = H_kv); `last_token_attention` repeats them as the model's attention does.

Wired as the suite method `pdrop` (`prune/peers.py`): `prune/staged.py`'s `PDropPolicy` on the
LLaVA adapter's staged decoder (`models/staged_llm.py`).
"""
from __future__ import annotations

import math

import torch

DEFAULT_LAYERS = (8, 16, 24)  # scripts/v1_5/pdrop_eval: --layer_list '[8,16,24]'
DEFAULT_RATIOS = (0.5, 0.25, 0.125)  # --image_token_ratio_list "[0.5,0.25,0.125]": lambda = 0.5


def stage_ratios(lam: float, stages: int = 3) -> list[float]:
    """Lambda -> the reference's ratio list with its leading 1.0: [1, lam, lam^2, ...]."""
    return [1.0] + [lam ** s for s in range(1, stages + 1)]


def stage_counts(n_image: int, ratios) -> list[int]:
    """Image tokens per stage, as the reference floors them: [int(N * r) for r in ratios]
    (ratios with the leading 1.0)."""
    return [int(n_image * r) for r in ratios]


def layer_image_tokens(n_image: int, n_layers: int, layer_list=DEFAULT_LAYERS, ratios=None) -> list[int]:
    """Image tokens each decoder layer sees: stage s's count from layer layer_list[s - 1] on."""
    counts = stage_counts(n_image, ratios if ratios is not None else [1.0, *DEFAULT_RATIOS])
    out, stage = [], 0
    for layer in range(n_layers):
        while stage < len(layer_list) and layer >= layer_list[stage]:
            stage += 1
        out.append(counts[stage])
    return out


def scaled_layers(n_layers: int, layer_list=DEFAULT_LAYERS, reference_layers: int = 32) -> list[int]:
    """The reference's stage boundaries (of 32 layers) at the same depth shares of n_layers:
    round(l * n_layers / 32), kept strictly increasing inside 1..n_layers - 1 (a suite's choice
    for other depths; LLaVA-1.5's 32 layers give the reference's own)."""
    out = []
    for l in layer_list:
        b = max(1, min(n_layers - 1, int(l * n_layers / reference_layers + 0.5)))
        if out and b <= out[-1]:
            b = out[-1] + 1
        if b <= n_layers - 1:
            out.append(b)
    return out


def last_token_attention(q_last: torch.Tensor, keys: torch.Tensor, mask_row: torch.Tensor | None = None) -> torch.Tensor:
    """q_last [H, hd] (the last instruction token's query, RoPE applied), keys [H_kv, L, hd] (RoPE
    applied), mask_row [L] additive (0 where visible; None: all visible, the last token's causal
    row) -> [L] the head-mean attention, softmax in float32 cast back to q's dtype."""
    h, hd = q_last.shape
    keys = keys.repeat_interleave(h // keys.shape[0], dim=0)  # GQA: as the model's repeat_kv
    logits = torch.matmul(q_last[:, None], keys.transpose(1, 2)) / math.sqrt(hd)  # [H, 1, L]
    if mask_row is not None:
        logits = logits + mask_row
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(q_last.dtype)
    return probs.mean(dim=0)[0]


def pdrop_keep(attention: torch.Tensor, image_start: int, n_image: int, keep: int) -> torch.Tensor:
    """attention [L] (`last_token_attention`) -> the kept image positions [keep] (absolute,
    ascending): the image span's `topk(keep)`, re-sorted."""
    span = attention[image_start:image_start + n_image]
    return (span.topk(keep).indices + image_start).sort().values


def pdrop_drop(hidden: torch.Tensor, image_start: int, n_image: int, kept: torch.Tensor) -> torch.Tensor:
    """hidden [L, d] -> [L - n_image + len(kept), d]: the text before the image, the kept image
    tokens, everything after it. The new positions are arange(len) (the reference renumbers)."""
    return torch.cat([hidden[:image_start], hidden[kept], hidden[image_start + n_image:]])
