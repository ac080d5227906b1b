"""Tiny random Llama / Qwen2 causal LMs built from configs and left-padded prompt embeddings,
for the staged decoder's tests (tests/test_staged_llm.py, tests/test_lean_decode.py)."""
import functools

import torch

D, LAYERS, VOCAB = 32, 6, 40
PREFIX, IMAGE = 3, 40
PADS = [0, 2, 5, 1]  # left pads per example
T = PREFIX + IMAGE + 11  # padded prompt length: 11, 9, 6 and 10 text tokens after the image
STEPS = 6


@functools.lru_cache(maxsize=None)
def tiny_lm(attn="eager", dtype=torch.float32, family="llama", seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config, model = (LlamaConfig, LlamaForCausalLM) if family == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    cfg = config(vocab_size=VOCAB, hidden_size=D, intermediate_size=64, num_hidden_layers=LAYERS,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                 bos_token_id=1, eos_token_id=3, pad_token_id=0)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    lm = model(cfg).eval().to(dtype)
    with torch.no_grad():  # random init gives near-uniform logits: scale the head so greedy is not a tie
        lm.lm_head.weight.mul_(20)
    return lm


def padded_prompts(dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(len(PADS), T, D, generator=g).to(dtype)
    mask = torch.ones(len(PADS), T, dtype=torch.long)
    for i, p in enumerate(PADS):
        mask[i, :p] = 0
        emb[i, :p] = 0
    starts = [p + PREFIX for p in PADS]
    return emb, mask, starts
