"""ToolRouter configuration (skeleton; extended by the modeling work of issue #6)."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict
class ToolRouterConfig(PreTrainedConfig):
    """Configuration of the tool router: tool/query encoders, tool-set attention, matching head."""

    model_type = "tool_router"

    vocab_size: int = 151936
    d_tool: int = 768
    d_resource: int = 256
    resource_dim: int = 6


__all__ = ["ToolRouterConfig"]
