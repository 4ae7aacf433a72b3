"""ToolPlanner configuration: seed 001's three panels as one composite config.

``router_config`` is the left panel (a :class:`ToolRouterConfig`: tool text encoder, resource MLP, tool-set
attention; its per-tool states are what the planner reads). ``text_config`` is the center panel, the backbone: a
``causal_qwen`` config (numbers in the request reach it as ``<NUM>`` values) or a ``qwen2`` one (numbers as digit
text). The right panel's heads (a pointer over the offered tools plus STOP, a Cauchy latency per tool) are sized by
the backbone's ``hidden_size``.

The prompt the model reads (built by :class:`causalqwen.modeling.modeling_tool_planner.ToolPlannerProcessor`):

    <request tokens> [<QUERY>] [<CTX>] <TOOL> x T <PLAN> x S [<CALL> argument tokens <END_CALL>] x (plan tools)

``tool_token_id`` / ``context_token_id`` are placeholder ids whose embeddings the model replaces with the projected
tool states / runtime context (as vision-language models place image features); with ``use_query_state`` the
``query_token_id`` placeholder carries the tool tower's pooled query embedding (its pretrained sentence encoder's
reading of the request, which a backbone trained from scratch lacks); ``plan_token_id`` is a learned
token that asks for one plan step. With ``generate_arguments`` the backbone is the causal-LM class (its LM head
writes each chosen call's arguments after a ``call_token_id`` that carries the chosen tool, ended by
``call_end_token_id``). The ids must lie inside the backbone's vocabulary; the defaults are Qwen2.5's
unused reserved rows after ``<NUM>`` (151665), so a real Qwen2.5 vocabulary needs no resize.
"""

import math
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig, Qwen2Config
from transformers.configuration_utils import SubConfigSpec

from ._keys import KnownKeysMixin
from .configuration_causal_qwen import CLS_REDUCTIONS, CausalQwenConfig
from .configuration_tool_router import ToolRouterConfig

__all__ = ["BACKBONE_TYPES", "ToolPlannerConfig"]

BACKBONE_CONFIGS: dict[str, type[PreTrainedConfig]] = {"causal_qwen": CausalQwenConfig, "qwen2": Qwen2Config}
BACKBONE_TYPES = tuple(BACKBONE_CONFIGS)


class _BackboneSpec(SubConfigSpec):
    """Resolves ``text_config``'s ``model_type`` among the two backbones without the AutoConfig registry, so a
    planner saved as remote code loads where the package (which registers ``causal_qwen``) is not installed."""

    def get_config_class(self, model_type: str | None = None):
        if model_type not in BACKBONE_CONFIGS:
            raise ValueError(f"text_config must be one of {', '.join(BACKBONE_TYPES)}, got {model_type!r}")
        return BACKBONE_CONFIGS[model_type]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@strict
class ToolPlannerConfig(KnownKeysMixin, PreTrainedConfig):
    """Configuration of the tool planner: tool tower (``router_config``), backbone (``text_config``), heads.

    Loss: ``pointer_weight * CE(pointer over STOP + tools, per plan step) + latency_weight * Cauchy NLL(observed
    latencies of the offered tools)``. ``max_plan_steps`` bounds decoding (a plan of ``max_plan_steps`` tools is
    cut there without a STOP). ``allow_repeated_tools=False`` masks tools already in the plan (training and
    decoding alike); BFCL's parallel calls repeat one function, so repeats are allowed by default.
    ``freeze_tool_tower`` keeps the router's weights fixed (no gradient), e.g. when it was trained first.
    ``generate_arguments`` adds ``argument_weight * LM loss`` on the argument text (the backbone's own loss: the
    gated One-vs-Rest + Cauchy loss for CausalQwen, cross-entropy for Qwen2); ``max_argument_tokens`` bounds
    the tokens decoded per call. ``argument_cls_reduction`` overrides the CausalQwen token loss's reduction on
    the arguments (``None``: the backbone's own ``cls_reduction``, the exact One-vs-Rest sum by default).
    Measured on a tiny planner memorising three calls (docs/tool_planner.md): with ``"balanced"`` the token loss
    falls fast but greedy decoding writes one frequent token over and over; with the sum it falls slowly.
    ``resource_frequencies`` > 0 also reads each tool's raw resource values as numbers: the multiscale features
    of the ``<NUM>`` encoding (``ln|v|``, decade, sinusoids of ``ln|v|`` at ``resource_frequencies`` frequencies
    up to ``resource_max_frequency``) of its 6 fields, through a two-layer MLP, added to the tool's projected
    state. The tool tower reads them through ``log1p`` and LayerNorms, which blur a few percent; a plan that
    compares a budget with a tool's need must resolve them (docs/tool_planner.md). 0 (default) = off.
    ``budget_frequencies`` > 0 (CausalQwen backbone only) adds to each tool's state a comparison of its 6 raw
    resource fields with every ``<NUM>`` value of the request: the log-ratio ``ln|v| - ln r``, its sinusoids at
    ``budget_frequencies`` frequencies up to ``budget_max_frequency`` and steps at learned thresholds, through a
    two-layer MLP, averaged over the request's numbers (``BudgetComparator``). 0 (default) = off.
    """

    model_type = "tool_planner"
    sub_configs_defaults = {
        "router_config": SubConfigSpec(config_class=ToolRouterConfig),
        "text_config": _BackboneSpec(config_class=AutoConfig, model_type="causal_qwen"),
    }

    router_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    tool_token_id: int = 151666
    plan_token_id: int = 151667
    context_token_id: int = 151668
    query_token_id: int = 151669
    call_token_id: int = 151670
    call_end_token_id: int = 151671
    generate_arguments: bool = False
    argument_weight: float | int = 1.0
    max_argument_tokens: int = 48
    argument_cls_reduction: str | None = None
    use_query_state: bool = False
    runtime_context_dim: int = 0
    max_plan_steps: int = 4
    pointer_size: int | None = None
    projector_hidden_act: str = "gelu"
    allow_repeated_tools: bool = True
    freeze_tool_tower: bool = False
    pointer_weight: float | int = 1.0
    latency_weight: float | int = 0.1
    resource_frequencies: int = 0
    resource_max_frequency: float | int = 100.0
    budget_frequencies: int = 0
    budget_max_frequency: float | int = 100.0
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any):
        self._reject_unknown_keys(kwargs)
        super().__post_init__(**kwargs)
        if self.pointer_size is None:
            self.pointer_size = self.text_config.hidden_size
        self._validate_planner_settings()

    @property
    def backbone_type(self) -> str:
        return self.text_config.model_type

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    def _validate_planner_settings(self) -> None:
        _check(
            type(self.text_config) in BACKBONE_CONFIGS.values(),
            f"text_config must be one of {', '.join(BACKBONE_TYPES)}, got {type(self.text_config).__name__}",
        )
        _check(
            isinstance(self.router_config, ToolRouterConfig),
            f"router_config must be a ToolRouterConfig, got {type(self.router_config).__name__}",
        )
        vocab = self.text_config.vocab_size
        ids = {"tool_token_id": self.tool_token_id, "plan_token_id": self.plan_token_id}
        if self.runtime_context_dim:
            ids["context_token_id"] = self.context_token_id
        if self.use_query_state:
            ids["query_token_id"] = self.query_token_id
        if self.generate_arguments:
            ids["call_token_id"] = self.call_token_id
            ids["call_end_token_id"] = self.call_end_token_id
        for name, value in ids.items():
            _check(0 <= value < vocab, f"{name} must lie in [0, vocab_size={vocab}), got {value}")
        _check(len(set(ids.values())) == len(ids), f"placeholder ids must differ, got {ids}")
        num_token_id = getattr(self.text_config, "num_token_id", None)
        _check(
            num_token_id not in ids.values(),
            f"placeholder ids {ids} must differ from the backbone's <NUM> id {num_token_id}",
        )
        _check(
            self.runtime_context_dim >= 0, f"runtime_context_dim must be >= 0, got {self.runtime_context_dim}"
        )
        _check(self.max_plan_steps > 0, f"max_plan_steps must be positive, got {self.max_plan_steps}")
        _check(self.pointer_size > 0, f"pointer_size must be positive, got {self.pointer_size}")
        _check(
            self.max_argument_tokens > 0,
            f"max_argument_tokens must be positive, got {self.max_argument_tokens}",
        )
        _check(
            self.argument_cls_reduction is None or self.argument_cls_reduction in CLS_REDUCTIONS,
            f"argument_cls_reduction must be None or one of {', '.join(CLS_REDUCTIONS)}, got "
            f"{self.argument_cls_reduction!r}",
        )
        for name in ("resource", "budget"):
            count, top = getattr(self, f"{name}_frequencies"), getattr(self, f"{name}_max_frequency")
            _check(count >= 0, f"{name}_frequencies must be >= 0, got {count}")
            _check(
                math.isfinite(top) and top > 0,
                f"{name}_max_frequency must be a positive finite number, got {top}",
            )
        _check(
            not self.budget_frequencies or self.backbone_type == "causal_qwen",
            "budget_frequencies > 0 compares the request's <NUM> values with the tools' resources: it needs a "
            f"causal_qwen backbone (a {self.backbone_type} backbone reads numbers as digit text)",
        )
        for name in ("pointer_weight", "latency_weight", "argument_weight"):
            value = getattr(self, name)
            _check(math.isfinite(value) and value >= 0, f"{name} must be finite and >= 0, got {value}")
