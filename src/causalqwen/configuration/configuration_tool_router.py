"""ToolRouter configuration: text encoders, resource MLP, tool-set attention, matching/abstain/latency heads.

Text encoders (``encoder_type``): ``"mamba"`` (seed 000: transformers' ``MambaModel`` from scratch, sized by
the ``encoder_*`` fields) or ``"pretrained"`` (seed 001's ToolEncoder: any transformers encoder such as
all-MiniLM-L6-v2 or all-mpnet-base-v2, described by ``text_encoder_config``, the encoder's own
``config.json`` as a dict; its weights are part of the router checkpoint). Matching (``matching``):
``"cosine"`` and ``"kan"`` score the query against the tool-set state; ``"fusion"`` (router v2) is a
two-layer KAN over a few scalar features per (query, tool): dense cosine, its z-score over the tool set,
the z-scored lexical (BM25) score, the set-context cosine and a resource fit (docs/routing.md).

Defaults follow seed 001 (d_tool 768 + d_resource 256 = d_model 1024, 8 heads, 1 layer); tests use tiny
configs. ``d_model`` is derived (``d_tool + d_resource``) because the tool embedding is their concatenation.
"""

import math
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from ._keys import KnownKeysMixin

MATCHING_TYPES = ("cosine", "kan", "fusion")
ENCODER_TYPES = ("mamba", "pretrained")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@strict
class ToolRouterConfig(KnownKeysMixin, PreTrainedConfig):
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
    # Text encoders: "mamba" (the encoder_* fields) or "pretrained" (text_encoder_config).
    encoder_type: str = "mamba"
    text_encoder_config: dict | None = None
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
    # Width of the fusion KAN's hidden layer (matching="fusion"): features -> kan_hidden_size -> 1.
    kan_hidden_size: int = 4
    latency_hidden_size: int = 64
    # Loss weights.
    bce_weight: float | int = 1.0
    listwise_weight: float | int = 1.0
    latency_weight: float | int = 1.0
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs: Any):
        self._reject_unknown_keys(kwargs)
        super().__post_init__(**kwargs)
        self._validate_router_settings()

    @classmethod
    def for_pretrained_encoder(cls, encoder_path: str, **kwargs: Any) -> "ToolRouterConfig":
        """A v2 router config around the transformers encoder saved in ``encoder_path`` (read locally).

        ``d_tool`` defaults to the encoder width, so the tool-set attention sees the pretrained embedding
        unchanged; ``matching`` defaults to ``"fusion"``. The weights are copied by
        ``ToolRouterModel.from_pretrained_encoder``; the config alone builds a randomly initialised encoder.
        """
        from transformers import AutoConfig

        encoder_config = AutoConfig.from_pretrained(encoder_path, local_files_only=True).to_dict()
        for key in ("_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype"):
            encoder_config.pop(key, None)
        settings = dict(
            encoder_type="pretrained",
            text_encoder_config=encoder_config,
            vocab_size=encoder_config["vocab_size"],
            pad_token_id=encoder_config.get("pad_token_id", 0),
            d_tool=encoder_config["hidden_size"],
            matching="fusion",
        )
        settings.update(kwargs)
        return cls(**settings)

    @property
    def d_model(self) -> int:
        return self.d_tool + self.d_resource

    def _validate_router_settings(self) -> None:
        for name in (
            "vocab_size", "d_tool", "d_resource", "resource_dim", "encoder_hidden_size", "encoder_num_layers",
            "encoder_state_size", "encoder_expand", "encoder_conv_kernel", "num_attention_heads",
            "num_tool_set_layers", "dim_feedforward", "kan_grid_size", "kan_hidden_size", "latency_hidden_size",
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
        _check(
            self.encoder_type in ENCODER_TYPES,
            f"encoder_type must be one of {ENCODER_TYPES}, got {self.encoder_type!r}",
        )
        if self.encoder_type == "pretrained":
            _check(
                isinstance(self.text_encoder_config, dict) and "model_type" in self.text_encoder_config,
                "encoder_type='pretrained' needs text_encoder_config: the encoder's config.json as a dict "
                "(with its model_type), e.g. ToolRouterConfig.for_pretrained_encoder(path)",
            )
            encoder_vocab = self.text_encoder_config.get("vocab_size", self.vocab_size)
            _check(
                encoder_vocab == self.vocab_size,
                f"vocab_size={self.vocab_size} differs from the text encoder's vocab_size={encoder_vocab}",
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
