"""CausalQwen configuration (skeleton; extended by the modeling work of issue #3)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import Qwen2Config


@strict
class CausalQwenConfig(Qwen2Config):
    """A Qwen2 configuration plus the abduction-action settings of CausalQwen."""

    model_type = "causal_qwen"

    causal_size: int | None = None
    num_token_id: int = 151665


__all__ = ["CausalQwenConfig"]
