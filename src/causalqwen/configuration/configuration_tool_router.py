"""ToolRouter configuration: Mamba text encoders, resource MLP, tool-set attention, matching/abstain/latency heads.

Defaults follow seed 001 (d_tool 768 + d_resource 256 = d_model 1024, 8 heads, 1 layer); tests use tiny
configs. ``d_model`` is derived (``d_tool + d_resource``) because the tool embedding is their concatenation.
"""

from __future__ import annotations

import math
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

MATCHING_TYPES = ("cosine", "kan")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@strict
class ToolRouterConfig(PreTrainedConfig):
    """Configuration of the tool router: tool/query encoders, tool-set attention, matching head.

    Encoders: ``encoder_*`` configure transformers' ``MambaModel`` (separate query/tool encoders unless
    ``share_encoder``); ``use_mambapy`` is passed through to ``MambaConfig``.
    Loss: ``bce_weight * BCE + listwise_weight * listwise CE + latency_weight * Cauchy NLL``.
    """

    model_type = "tool_router"

    vocab_size: int = 151936
    pad_token_id: int | None = 0
    d_tool: int = 768
    d_resource: int = 256
    resource_dim: int = 6
    runtime_context_dim: int = 0
    # Mamba text encoders.
    encoder_hidden_size: int = 256
    encoder_num_layers: int = 2
    encoder_state_size: int = 16
    encoder_expand: int = 2
    encoder_conv_kernel: int = 4
    share_encoder: bool = False
    use_mambapy: bool = False
    # Tool-set attention.
    num_attention_heads: int = 8
    num_tool_set_layers: int = 1
    use_ffn: bool = False
    dim_feedforward: int = 2048
    dropout: float | int = 0.1
    # Matching.
    matching: str = "cosine"
    init_temperature: float | int = 0.07
    kan_grid_size: int = 8
    kan_spline_order: int = 3
    latency_hidden_size: int = 64
    # Loss weights.
    bce_weight: float | int = 1.0
    listwise_weight: float | int = 1.0
    latency_weight: float | int = 1.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs: Any):
        super().__post_init__(**kwargs)
        self._validate_router_settings()

    @property
    def d_model(self) -> int:
        return self.d_tool + self.d_resource

    def _validate_router_settings(self) -> None:
        for name in (
            "vocab_size", "d_tool", "d_resource", "resource_dim", "encoder_hidden_size", "encoder_num_layers",
            "encoder_state_size", "encoder_expand", "encoder_conv_kernel", "num_attention_heads",
            "num_tool_set_layers", "dim_feedforward", "kan_grid_size", "latency_hidden_size",
        ):  # fmt: skip
            _check(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        _check(
            self.runtime_context_dim >= 0, f"runtime_context_dim must be >= 0, got {self.runtime_context_dim}"
        )
        _check(
            self.d_model % self.num_attention_heads == 0,
            f"d_model = d_tool + d_resource = {self.d_model} must be divisible by "
            f"num_attention_heads={self.num_attention_heads}",
        )
        _check(
            self.matching in MATCHING_TYPES,
            f"matching must be one of {MATCHING_TYPES}, got {self.matching!r}",
        )
        _check(0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), got {self.dropout}")
        _check(
            math.isfinite(self.init_temperature) and self.init_temperature > 0,
            f"init_temperature must be a positive finite number, got {self.init_temperature}",
        )
        _check(self.kan_spline_order >= 0, f"kan_spline_order must be >= 0, got {self.kan_spline_order}")
        for name in ("bce_weight", "listwise_weight", "latency_weight"):
            value = getattr(self, name)
            _check(math.isfinite(value) and value >= 0, f"{name} must be finite and >= 0, got {value}")


__all__ = ["ToolRouterConfig"]
