"""Shared by the CausalQwen test files and the distributed worker: the tiny model for the tiny tokenizer."""

import torch

from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM


def tiny_causal_lm(tokenizer, seed: int = 0, **overrides) -> CausalQwenForNumericCausalLM:
    """H=32, 2 layers, the tokenizer's vocabulary and ``<NUM>``/pad ids; weights drawn after ``manual_seed(seed)``."""
    torch.manual_seed(seed)
    settings = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_token_id=tokenizer.num_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CausalQwenForNumericCausalLM(CausalQwenConfig(**{**settings, **overrides}))
