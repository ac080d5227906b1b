"""A prompt's KV cache up to and including its visual tokens, computed once and reused.

Under a prompt such as "USER: <image>\\n{question} ASSISTANT:" everything before the question
is the same for every question about an image: the head of the prompt and the visual tokens a
question-independent method keeps (`full`, `random`, `cls`, ...). A `PrefixCache` holds the
decoder's keys and values over that head + image, so each text condition only runs its
question tail. The cache is never mutated: a generation continues from `copy()` (or from
`cat` of several, when methods share one call).

Layout of a generation from a prefix (B examples, P = head + image tokens, tails of length L_i):

    [head, image]  [pad ... pad, tail_i]        attention mask [1 x P, 0 x (L - L_i), 1 x L_i]
     cached          run now                    positions 0..P-1, then P..P+L_i-1

The pads sit between the image and the tail (left padding within the tails), so positions and
attended keys are those of the left-padded prompt the adapter builds without a prefix.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PrefixCache:
    """head: the prompt ids before the image [H]; visual: per example the tokens given ([K_i, D])
    and extra: the tokens put before them (LLaVA's CLS prefix, or None), what a reuse must match;
    embeds: [B, P, d] the prefix's input embeddings; layers: per decoder layer (keys, values),
    each [B, heads, P, head_dim]."""

    head: torch.Tensor
    visual: list[torch.Tensor]
    extra: torch.Tensor | None
    embeds: torch.Tensor
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    def __len__(self) -> int:
        return self.embeds.shape[0]

    @property
    def length(self) -> int:
        return self.embeds.shape[1]

    def fits(self, visual: list[torch.Tensor], extra: torch.Tensor | None, heads: list[torch.Tensor]) -> bool:
        """Whether this cache is the prefix of these examples: the same tokens, the same prompt head."""
        if len(visual) != len(self.visual) or (extra is None) != (self.extra is None):
            return False
        if extra is not None and not torch.equal(extra, self.extra):
            return False
        return (all(torch.equal(a, b) for a, b in zip(visual, self.visual))
                and all(torch.equal(h, self.head) for h in heads))

    def dynamic_cache(self):
        """A fresh transformers `DynamicCache` holding these keys and values (its first update
        concatenates, so the tensors here are never written to)."""
        from transformers import DynamicCache

        return DynamicCache(list(self.layers))

    @staticmethod
    def cat(parts: list["PrefixCache"]) -> "PrefixCache":
        """Several prefixes of the same length and head as one batch (for one fused generation)."""
        if len({p.length for p in parts}) != 1 or not all(torch.equal(p.head, parts[0].head) for p in parts):
            raise ValueError("prefix caches of different lengths or prompt heads cannot share a generation")
        extras = [p.extra for p in parts]
        return PrefixCache(head=parts[0].head, visual=[t for p in parts for t in p.visual],
                           extra=None if extras[0] is None else torch.cat(extras),
                           embeds=torch.cat([p.embeds for p in parts]),
                           layers=[(torch.cat([p.layers[i][0] for p in parts]), torch.cat([p.layers[i][1] for p in parts]))
                                   for i in range(len(parts[0].layers))])
