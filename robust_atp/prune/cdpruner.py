"""CDPruner: a conditional determinantal point process over the visual tokens, as
Theia-4869/CDPruner's code does it.

Reference: Theia-4869/CDPruner @ 9541616c40fcd5625de1cdb8ea6c33c129eb7864,
`llava/model/llava_arch.py` `LlavaMetaForCausalLM.encode_images` (kernel and fast MAP inference),
`llava/model/multimodal_encoder/clip_encoder.py` `CLIPVisionTower.forward` (which features),
`llava/eval/model_vqa_loader.py` (the text: the question, its answer-format suffix removed).
Pure tensor code.

What it computes for LLaVA-1.5 (N = 576), per image, before the LLM:
  - similarity: cosine between the projector's outputs (the LLM-side tokens, float32) [N, N];
  - relevance: the projector's input (ViT layer -2, CLS dropped) through CLIP's post_layernorm and
    visual_projection (float32) -> image_embeds [N, P]; the question's CLIP text embeddings
    [M, P] (M segments of 77 tokens; one for a question); relevance = mean over M of the
    NEGATIVE cosine, then (r - min + 1e-6) / (max - min) (the 1e-6 in the numerator only);
  - kernel L = diag(r) S diag(r);
  - fast greedy MAP (Chen et al.'s Cholesky update): d2 = diag(L); T times: j = argmax(d2) (the
    first maximum), e = (L[j] - sum_t c_t[j] c_t) / sqrt(d2[j]), d2 -= e^2, d2[j] = -inf;
  - kept: the T picks sorted ascending (an index mask: the LLM sees them in original order).
The reference normalises the relevance over its whole batch (it runs one image at a time) and
does nothing about numerical rank: past it, d2 turns negative or NaN and picks may repeat, so
fewer than T tokens can survive its mask. Both are kept as they are; the min-max is per image.
"""
from __future__ import annotations

import torch


def cdpruner_relevance(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """image_embeds [B, N, P] (CLIP joint space), text_embeds [M, P] or [B, M, P] -> [B, N]: the
    mean negative cosine over the M text segments, min-max normalised per image."""
    image = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    text = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    rel = (-(image @ text.transpose(-1, -2))).mean(dim=-1)  # [B, N]
    lo, hi = rel.amin(dim=1, keepdim=True), rel.amax(dim=1, keepdim=True)
    return (rel - lo + 1e-6) / (hi - lo)


def cdpruner_kernel(image_features: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """image_features [B, N, D] (after the projector), relevance [B, N] -> the conditional kernel
    [B, N, N] = r_i * cos(x_i, x_j) * r_j, in float32."""
    unit = (image_features / image_features.norm(dim=-1, keepdim=True)).float()
    similarity = torch.matmul(unit, unit.transpose(1, 2))
    return relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1)


def dpp_greedy_map(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Fast greedy MAP inference of a DPP: kernel [B, N, N] -> [k, B] the picks in greedy order."""
    b, n, _ = kernel.shape
    rows = torch.arange(b, device=kernel.device)
    cis = torch.zeros(k, b, n, device=kernel.device)
    di2s = torch.diagonal(kernel, dim1=1, dim2=2).clone()
    picks = torch.empty(k, b, dtype=torch.long, device=kernel.device)
    for i in range(k):
        j = torch.argmax(di2s, dim=-1)
        picks[i] = j
        # the reference's einsum("tb,tbn->bn") as the batched product it runs for i > 1 (at i = 1
        # einsum multiplies elementwise, equal for one term, but invisible to a FLOP counter)
        update = torch.bmm(cis[:i, rows, j].t().unsqueeze(1), cis[:i].transpose(0, 1)).squeeze(1)
        eis = (kernel[rows, j] - update) / torch.sqrt(di2s[rows, j]).unsqueeze(-1)
        cis[i] = eis
        di2s -= torch.square(eis)
        di2s[rows, j] = -float("inf")
    return picks


def cdpruner(image_features: torch.Tensor, image_embeds: torch.Tensor, text_embeds: torch.Tensor,
             k: int) -> torch.Tensor:
    """CDPruner's selection: image_features [B, N, D] (the projector's outputs), image_embeds
    [B, N, P] (layer -2 patches in the CLIP joint space), text_embeds [M, P] | [B, M, P] (the
    question), k tokens -> [B, k] the picks sorted ascending (repeats possible past the kernel's
    rank; the tokens kept are the distinct ones, as the reference's mask keeps them)."""
    kernel = cdpruner_kernel(image_features, cdpruner_relevance(image_embeds, text_embeds))
    return torch.sort(dpp_greedy_map(kernel, k).t()).values


def kept_mask(picks: torch.Tensor, n: int) -> torch.Tensor:
    """picks [B, k] -> the reference's index mask [B, N] (True where picked)."""
    mask = torch.zeros(picks.shape[0], n, dtype=torch.bool, device=picks.device)
    return mask.scatter_(1, picks, True)
