"""ToolPlanner: seed 001's center and right panels on top of the ToolRouter's tool states (issue #17).

Data flow (B requests, T offered tools, S plan steps, H the backbone width)::

    left panel    tools -> ToolRouterModel.encode_tools -> tool states [B, T, d_model]   (or given: tool_states=)
                  tool_projector (MLP) -> [B, T, H];  runtime_context [B, C] -> context_projector -> [B, H]
    center panel  input_ids  = request tokens, [<QUERY>], [<CTX>], <TOOL> x T, <PLAN> x S,
                               [<CALL> argument tokens <END_CALL>] per planned tool (``generate_arguments``)
                  embeddings: request tokens as the backbone embeds them (CausalQwen fuses each <NUM> with its
                  value), <TOOL>_j := projected state of tool j, <CTX> := projected context,
                  <QUERY> := the tool tower's pooled query state, projected (``use_query_state``),
                  <PLAN>_t := embed(<PLAN>) + step_embedding[t] + projected state of the tool chosen at step t-1
                  <CALL>_k := embed(<CALL>) + step_embedding[k] + projected state of the plan's k-th tool
                  -> Qwen2 / CausalQwen backbone (causal) -> hidden states [B, L, H]
    right panel   pointer: logits[b, t] = [stop(h_plan_t), q(h_plan_t) . k(h_tool_j) / sqrt(P) for j < T]
                  -> [B, S, 1 + T]  (column 0 = STOP; STOP at step 0 = abstain)
                  latency: Cauchy(loc, scale) per tool from h_tool_j  [B, T]
                  arguments (``generate_arguments``): the backbone's own LM head on the argument tokens (CausalQwen:
                  One-vs-Rest tokens + a Cauchy value per ``<NUM>``; Qwen2: softmax over digit text)

The tools come after the request, so each tool position attends to the request (its budget as a ``<NUM>`` value
with a CausalQwen backbone) and to the runtime context: the backbone can decide per tool whether it fits before
the pointer reads it. Plan steps are teacher-forced in training (``plan_labels`` give the previous step's tool)
and decoded one step at a time by :meth:`ToolPlannerModel.plan`.

Arguments are written after the whole plan ("plan, then fill the calls"): the ``<PLAN>`` slots come before every
``<CALL>``, so with causal attention the pointer never sees argument text and a plan is decoded (greedy or beam)
before any argument, exactly as it is trained; each call's arguments see the request, the tools, the whole plan
and the calls written before it. Two calls of one tool (BFCL's parallel calls) differ by their step embedding.

Labels: ``argument_labels`` [B, L] are unshifted token ids of the argument text and each ``<END_CALL>``, ``-100``
elsewhere (the model shifts). ``plan_labels`` [B, S] hold ``0`` for STOP, ``j + 1`` for tool ``j`` and ``-100`` for padding; a plan of
``n`` tools is ``n + 1`` steps (the tools, then STOP). ``latency_labels`` [B, T] are observed latencies, negative
where unobserved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen2ForCausalLM,
    Qwen2Model,
)
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput

from ..configuration.configuration_tool_planner import ToolPlannerConfig
from ..remote_code import RemoteCodeMixin
from ._checks import check_finite
from ._compat import QuietCheckpointingAlias
from ._init import apply_special_init, unit_softplus_scale, unit_variance_rows, with_init
from .cauchy import cauchy_interval, cauchy_nll
from .modeling_causal_qwen import CausalQwenForNumericCausalLM, CausalQwenModel
from .modeling_tool_router import ToolRouterModel
from .numeric_embedding import embed_numbers, frequency_ladder, multiscale_feature_count, multiscale_features

STOP = 0
IGNORE_INDEX = -100
# Backbone classes by text_config.model_type: explicit, so remote code needs no Auto registration.
BACKBONES: dict[str, type[PreTrainedModel]] = {"causal_qwen": CausalQwenModel, "qwen2": Qwen2Model}
# With generate_arguments the backbone is its causal-LM class: the same base model under ``.model`` plus its head.
CAUSAL_LMS: dict[str, type[PreTrainedModel]] = {
    "causal_qwen": CausalQwenForNumericCausalLM,
    "qwen2": Qwen2ForCausalLM,
}


@dataclass
class ToolPlannerOutput(ModelOutput):
    """Outputs of :class:`ToolPlannerModel`.

    Args:
        loss: pointer CE (mean over labelled steps) + ``latency_weight`` x latency NLL + ``argument_weight`` x
            the backbone's LM loss on argument text, for the labels given.
        pointer_logits ([B, S, 1 + T]): column 0 scores STOP, column ``j + 1`` tool ``j``; ``-inf`` where a tool is
            padding (or already chosen with ``allow_repeated_tools=False``); 0 on padded steps.
        step_mask ([B, S]): which plan steps exist in each row.
        latency_loc, latency_scale ([B, T]): Cauchy latency of each offered tool in this request.
        tool_states ([B, T, d_model]): the tool tower's states (after tool-set attention).
        hidden_states ([B, L, H]): the backbone's last hidden states.
    """

    loss: torch.Tensor | None = None
    pointer_loss: torch.Tensor | None = None
    latency_loss: torch.Tensor | None = None
    argument_loss: torch.Tensor | None = None
    pointer_logits: torch.Tensor | None = None
    step_mask: torch.Tensor | None = None
    latency_loc: torch.Tensor | None = None
    latency_scale: torch.Tensor | None = None
    tool_states: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None


@dataclass
class PlanStep:
    """One decoded step: the chosen tool (index into the request's tools, and its name when known), the pointer's
    probability for it, its latency as a Cauchy median with a central interval, and the call's arguments as text
    (``generate_arguments``; numbers written from the value head with a CausalQwen backbone)."""

    tool: int
    name: str | None
    score: float
    latency: float
    latency_interval: tuple[float, float]
    arguments: str | None = None


@dataclass
class Plan:
    """A decoded plan: the steps in order (empty = abstain) and the STOP probability at the step that ended it."""

    steps: list[PlanStep] = field(default_factory=list)
    stop_score: float = 0.0

    @property
    def abstain(self) -> bool:
        return not self.steps

    @property
    def tools(self) -> list[int]:
        return [step.tool for step in self.steps]


class ToolProjector(nn.Module):
    """Tool states (or the runtime context) -> the backbone's embedding space, LLaVA-style two-layer MLP."""

    def __init__(self, in_features: int, hidden_size: int, act: str):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden_size)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(states)))


class ResourceValueEncoder(nn.Module):
    """A tool's raw resource values read as numbers: :func:`multiscale_features` of each field, through a
    :class:`ToolProjector` to the backbone width (``config.resource_frequencies`` > 0)."""

    def __init__(
        self, resource_dim: int, num_frequencies: int, max_frequency: float, hidden_size: int, act: str
    ):
        super().__init__()
        self.num_frequencies, self.max_frequency = num_frequencies, float(max_frequency)
        self.mlp = ToolProjector(resource_dim * multiscale_feature_count(num_frequencies), hidden_size, act)

    def forward(self, resource_vectors: torch.Tensor) -> torch.Tensor:
        # The processor hands the tool tower log1p(raw); the features are of the raw value.
        raw = torch.expm1(resource_vectors.float())
        features = multiscale_features(raw, self.num_frequencies, max_frequency=self.max_frequency)
        return self.mlp(features.flatten(-2).to(self.mlp.linear_1.weight.dtype))


# The budget comparator's stand-in for ln 0 (a CPU tool's GPU count, a budget of 0): below any real need or budget.
_LOG_FLOOR = 1e-6
# Steps at each field's learned threshold, from soft (a gradient far from it) to sharp (a decision within 1 %).
_STEP_SHARPNESS = (1.0, 10.0, 100.0, 1000.0)
_THRESHOLDS_PER_FIELD, _THRESHOLD_REACH, _THRESHOLD_SCALE = 7, 9.0, 10.0


class BudgetComparator(nn.Module):
    """Each tool's resource fields compared with the request's numbers (``config.budget_frequencies`` > 0).

    Whether a tool fits "under 350 ms" is the sign of ``ln 350 - ln(need)`` up to a unit offset; a backbone that
    sees the budget at one position and the need at another has to form that difference through attention, and
    the tool tower blurs the need through ``log1p`` and LayerNorms. This module hands it the difference: for
    every ``<NUM>`` value v of the request and every raw resource field r_k of a tool, d_k = ln|v| - ln r_k,
    read as ``d_k / 10``, sinusoids of ``d_k`` at ``num_frequencies`` frequencies up to ``max_frequency`` (the
    ``<NUM>`` encoding's ladder) and steps ``tanh(s (d_k - c_kg))`` at learned thresholds c_kg (7 per field,
    started 3 apart from -9 to 9 in ln) of sharpness s = 1, 10, 100, 1000, through a two-layer MLP to the
    backbone width, averaged over the request's numbers (zero when it has none). Sinusoids alone left the
    decisions within a few percent of a need wrong (a step is many frequencies' sum); a learned threshold
    settles where the data puts it (ln 1000 = 6.908 for ms against s: 6.913 after 1,000 steps) and the sharp
    steps decide to within a fraction of a percent. Which field a number bounds (latency, memory, cost) is left
    to the backbone, which reads the words around the number.
    """

    def __init__(
        self, resource_dim: int, num_frequencies: int, max_frequency: float, hidden_size: int, act: str
    ):
        super().__init__()
        # Plain numbers, not a buffer: from_pretrained builds modules on the meta device and never fills a
        # non-persistent buffer.
        self.num_frequencies, self.max_frequency = num_frequencies, float(max_frequency)
        # Learned thresholds per field, started on a grid 3 apart in ln (a factor 20) so that one of them lies
        # within reach of the softest step's gradient wherever the units put the decision (ln 1000 between ms
        # and s); stored in units of _THRESHOLD_SCALE so that Adam moves them in tens of steps, not thousands.
        grid = torch.linspace(-_THRESHOLD_REACH, _THRESHOLD_REACH, _THRESHOLDS_PER_FIELD) / _THRESHOLD_SCALE
        self.threshold = nn.Parameter(grid.repeat(resource_dim, 1))
        features = 1 + 2 * num_frequencies + _THRESHOLDS_PER_FIELD * len(_STEP_SHARPNESS)
        self.mlp = ToolProjector(resource_dim * features, hidden_size, act)

    @property
    def frequencies(self) -> torch.Tensor:
        """The ``<NUM>`` encoding's ladder (:func:`frequency_ladder`)."""
        return frequency_ladder(self.num_frequencies, self.max_frequency, self.mlp.linear_1.weight.device)

    def forward(
        self, numbers: torch.Tensor, number_mask: torch.Tensor, resource_vectors: torch.Tensor
    ) -> torch.Tensor:
        """``numbers`` / ``number_mask`` [B, N], ``resource_vectors`` [B, T, R] (the processor's log1p) ->
        [B, T, H]."""
        log_v = numbers.float().abs().clamp_min(_LOG_FLOOR).log()
        log_r = torch.expm1(resource_vectors.float()).clamp_min(_LOG_FLOOR).log()
        d = log_v[:, :, None, None] - log_r[:, None]  # [B, N, T, R]
        angles = d.unsqueeze(-1) * self.frequencies
        thresholds = _THRESHOLD_SCALE * self.threshold.float()  # [R, G]
        shifted = (d.unsqueeze(-1) - thresholds).unsqueeze(-1)  # [B, N, T, R, G, 1]
        steps = torch.tanh(shifted * shifted.new_tensor(_STEP_SHARPNESS)).flatten(-2)
        features = torch.cat([d.unsqueeze(-1) / 10.0, torch.sin(angles), torch.cos(angles), steps], dim=-1)
        per_number = self.mlp(features.flatten(-2).to(self.mlp.linear_1.weight.dtype))  # [B, N, T, H]
        weights = number_mask.to(per_number.dtype)[:, :, None, None]
        return (per_number * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class PlanPointer(nn.Module):
    """Scores STOP and every offered tool from a plan step's hidden state."""

    def __init__(self, hidden_size: int, pointer_size: int):
        super().__init__()
        # Unit-variance queries and keys: with both at the usual std 0.02 the bilinear score and its gradients
        # start near zero and the pointer barely learns.
        self.query = with_init(nn.Linear(hidden_size, pointer_size, bias=False), unit_variance_rows)
        self.key = with_init(nn.Linear(hidden_size, pointer_size, bias=False), unit_variance_rows)
        self.stop = nn.Linear(hidden_size, 1)
        self.scale = 1.0 / math.sqrt(pointer_size)

    def forward(self, step_hidden: torch.Tensor, tool_hidden: torch.Tensor) -> torch.Tensor:
        tools = torch.einsum("bsp,btp->bst", self.query(step_hidden), self.key(tool_hidden)) * self.scale
        return torch.cat([self.stop(step_hidden), tools], dim=-1)


class PlannerLatencyHead(nn.Module):
    """Cauchy(loc, scale) of a tool's latency from its hidden state in the request (the shared Cauchy code)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.loc = nn.Linear(hidden_size, 1)
        # Unit latency scale at init, as the router's latency head is meant to start.
        self.scale = with_init(nn.Linear(hidden_size, 1), unit_softplus_scale)

    def forward(self, tool_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc(tool_hidden).squeeze(-1), nn.functional.softplus(self.scale(tool_hidden)).squeeze(-1)


def _resource_reader(cls, num_frequencies: int, max_frequency: float, config: ToolPlannerConfig):
    """``cls`` (a module that reads the tools' raw resource fields as numbers) at the backbone width, or None when
    the config turns it off (``num_frequencies`` = 0)."""
    if not num_frequencies:
        return None
    hidden = config.text_config.hidden_size
    return cls(
        config.router_config.resource_dim, num_frequencies, max_frequency, hidden, config.projector_hidden_act
    )


def _rows_to_padded(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` [N, H] taken at the True entries of ``mask`` [B, K] (row-major) -> [B, K, H], zeros elsewhere."""
    out = values.new_zeros(*mask.shape, values.shape[-1])
    out[mask] = values
    return out


def _ordinal(mask: torch.Tensor) -> torch.Tensor:
    """For each True entry of ``mask`` [B, L], its rank among the row's True entries (0, 1, ...)."""
    return mask.long().cumsum(-1) - 1


class ToolPlannerPreTrainedModel(QuietCheckpointingAlias, PreTrainedModel):
    config_class = ToolPlannerConfig
    config: ToolPlannerConfig
    base_model_prefix = "planner"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2DecoderLayer"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        apply_special_init(module)


class ToolPlannerModel(RemoteCodeMixin, ToolPlannerPreTrainedModel):
    """Plans tool calls for a request; see the module docstring for the data flow and the label format."""

    def __init__(self, config: ToolPlannerConfig):
        super().__init__(config)
        self.tool_tower = ToolRouterModel(config.router_config)
        classes = CAUSAL_LMS if config.generate_arguments else BACKBONES
        self.language_model = classes[config.text_config.model_type](config.text_config)
        hidden = config.text_config.hidden_size
        self.tool_projector = ToolProjector(config.router_config.d_model, hidden, config.projector_hidden_act)
        self.resource_encoder = _resource_reader(
            ResourceValueEncoder, config.resource_frequencies, config.resource_max_frequency, config
        )
        self.budget_comparator = _resource_reader(
            BudgetComparator, config.budget_frequencies, config.budget_max_frequency, config
        )
        self.context_projector = (
            ToolProjector(config.runtime_context_dim, hidden, config.projector_hidden_act)
            if config.runtime_context_dim
            else None
        )
        self.query_projector = (
            ToolProjector(self.tool_tower.query_encoder.hidden_size, hidden, config.projector_hidden_act)
            if config.use_query_state
            else None
        )
        # A module (not a bare parameter) so that PEFT can train it in full (modules_to_save).
        self.step_embedding = nn.Embedding(config.max_plan_steps + 1, hidden)
        self.pointer = PlanPointer(hidden, config.pointer_size)
        self.latency_head = PlannerLatencyHead(hidden)
        self.post_init()
        if config.freeze_tool_tower:
            self.tool_tower.requires_grad_(False)

    # ----------------------------------------------------------------- building
    @classmethod
    def from_components(
        cls,
        tool_tower: ToolRouterModel | str | Path,
        language_model: PreTrainedModel | PreTrainedConfig | str | Path,
        **config_kwargs: Any,
    ) -> ToolPlannerModel:
        """A planner around a trained (or fresh) ToolRouter and a Qwen2 / CausalQwen checkpoint, models or local
        paths (read with ``local_files_only``). Their weights are copied; the projectors and heads start fresh.
        A causal-LM checkpoint gives its base model (the planner reads hidden states, not token logits), or, with
        ``generate_arguments=True``, the whole causal LM (its head writes the arguments; a base model there gets a
        fresh head); a config instead of a checkpoint gives a fresh backbone of that shape."""
        with_head = bool(config_kwargs.get("generate_arguments", False))
        if isinstance(tool_tower, (str, Path)):
            tool_tower = ToolRouterModel.from_pretrained(str(tool_tower), local_files_only=True)
        if isinstance(language_model, (str, Path)):
            loader = AutoModelForCausalLM if with_head else AutoModel
            language_model = loader.from_pretrained(str(language_model), local_files_only=True)
        if isinstance(language_model, PreTrainedConfig):
            # A config: a fresh backbone of that shape (the planner's init draws its weights).
            text_config, source = language_model, None
        else:
            base = getattr(language_model, "base_model", language_model)
            text_config = base.config
            source = language_model if with_head and base is not language_model else base
        config = ToolPlannerConfig(
            router_config=tool_tower.config.to_dict(), text_config=text_config.to_dict(), **config_kwargs
        )
        model = cls(config)
        model.tool_tower.load_state_dict(tool_tower.state_dict())
        if source is not None:
            target = model.language_model if source is not base else model.backbone
            target.load_state_dict(source.state_dict())
        return model

    @property
    def backbone(self) -> PreTrainedModel:
        """The Qwen2 / CausalQwen base model (its last hidden states feed the heads)."""
        return self.language_model.model if self.config.generate_arguments else self.language_model

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    # ----------------------------------------------------------------- inputs
    def _tool_states(self, tool_states, tool_kwargs: dict[str, Any]) -> torch.Tensor:
        if tool_states is not None:
            # The resource readers take resource_vectors beside precomputed states (decoding passes both).
            allowed = ("tool_mask", "resource_vectors") if self._reads_resource_values else ("tool_mask",)
            if any(tool_kwargs.get(k) is not None for k in _TOOL_KEYS if k not in allowed):
                raise ValueError("pass either tool_states or the tool inputs (tool_input_ids, ...), not both")
            check_finite(tool_states, "tool_states contain NaN or inf")
            if tool_kwargs.get("resource_vectors") is not None:
                # The tool tower checks them when it runs; beside given states nothing else does.
                check_finite(tool_kwargs["resource_vectors"], "resource_vectors contain NaN or inf")
            return tool_states
        if tool_kwargs.get("tool_input_ids") is None and tool_kwargs.get("tool_text_embeddings") is None:
            raise ValueError("no tools: pass tool_input_ids (or tool_text_embeddings) and resource_vectors")
        ids = tool_kwargs.get("tool_input_ids")
        given = ids if ids is not None else tool_kwargs["tool_text_embeddings"]
        if given.dim() != 3:
            raise ValueError(
                "the planner's tools are per request: tool_input_ids [B, T, Lt] or tool_text_embeddings [B, T, E], "
                f"got {tuple(given.shape)}"
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_tool_tower):
            return self.tool_tower.encode_tools(**tool_kwargs).tool_states

    @property
    def _reads_resource_values(self) -> bool:
        """The heads read the raw resource values beside the tool states (decoding passes both)."""
        return self.resource_encoder is not None or self.budget_comparator is not None

    def _tool_embeds(self, states, resource_vectors, input_ids, numeric_values, tool_slots) -> torch.Tensor:
        """Tool states projected to the backbone width, plus their resource values read as numbers and compared
        with the request's numbers."""
        embeds = self.tool_projector(states)
        if not self._reads_resource_values:
            return embeds
        if resource_vectors is None or resource_vectors.shape[:2] != states.shape[:2]:
            got = None if resource_vectors is None else tuple(resource_vectors.shape)
            raise ValueError(
                f"resource_frequencies > 0 or budget_frequencies > 0 reads resource_vectors [B, T, 6] beside the "
                f"tool states {tuple(states.shape[:2])}, got {got}"
            )
        if self.resource_encoder is not None:
            embeds = embeds + self.resource_encoder(resource_vectors).to(embeds.dtype)
        if self.budget_comparator is not None:
            numbers, number_mask = self._request_numbers(input_ids, numeric_values, tool_slots)
            embeds = embeds + self.budget_comparator(numbers, number_mask, resource_vectors).to(embeds.dtype)
        return embeds

    def _request_numbers(self, input_ids, numeric_values, tool_slots) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``<NUM>`` values of the request text (before the first ``<TOOL>``: argument numbers after the plan
        are outputs, not budgets) as [B, N] with a mask, N = the most in a row (at least 1)."""
        request = (input_ids == self.config.text_config.num_token_id) & (tool_slots.cumsum(-1) == 0)
        counts = request.sum(-1)
        width = max(int(counts.max()), 1)
        mask = torch.arange(width, device=input_ids.device)[None, :] < counts[:, None]
        numbers = torch.zeros(mask.shape, dtype=torch.float32, device=input_ids.device)
        if numeric_values is not None:
            numbers[mask] = numeric_values[request].float()
        elif bool(counts.any()):
            raise ValueError("budget_frequencies > 0 reads the request's <NUM> values: pass numeric_values")
        return numbers, mask

    def _check_layout(self, input_ids, tool_mask, runtime_context) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        tool_slots = input_ids == cfg.tool_token_id
        plan_slots = input_ids == cfg.plan_token_id
        placed, offered = tool_slots.sum(-1), tool_mask.sum(-1)
        if not torch.equal(placed, offered):
            raise ValueError(
                f"each request needs one <TOOL> placeholder (id {cfg.tool_token_id}) per offered tool: placeholders "
                f"{placed.tolist()} vs tools {offered.tolist()}"
            )
        if (offered == 0).any():
            raise ValueError(f"empty tool set in request(s) {torch.nonzero(offered == 0).flatten().tolist()}")
        steps = plan_slots.sum(-1)
        if (steps == 0).any():
            raise ValueError(
                f"request(s) {torch.nonzero(steps == 0).flatten().tolist()} have no <PLAN> token"
            )
        if (steps > cfg.max_plan_steps + 1).any():
            raise ValueError(
                f"at most max_plan_steps + 1 = {cfg.max_plan_steps + 1} <PLAN> tokens per request"
            )
        self._check_runtime_context(input_ids, runtime_context)
        if cfg.use_query_state and not bool(((input_ids == cfg.query_token_id).sum(-1) == 1).all()):
            raise ValueError(
                f"use_query_state: each request needs one <QUERY> token (id {cfg.query_token_id})"
            )
        return tool_slots, plan_slots

    def _check_runtime_context(self, input_ids, runtime_context) -> None:
        cfg = self.config
        if not cfg.runtime_context_dim:
            if runtime_context is not None:
                raise ValueError("runtime_context given but the config has runtime_context_dim=0")
            return
        contexts = (input_ids == cfg.context_token_id).sum(-1)
        if runtime_context is None or not bool((contexts == 1).all()):
            raise ValueError(
                f"runtime_context_dim={cfg.runtime_context_dim}: each request needs runtime_context [B, "
                f"{cfg.runtime_context_dim}] and one <CTX> token (id {cfg.context_token_id}), got "
                f"{contexts.tolist()}"
            )
        if runtime_context.shape != (input_ids.shape[0], cfg.runtime_context_dim):
            raise ValueError(
                f"runtime_context must be [B={input_ids.shape[0]}, {cfg.runtime_context_dim}], got "
                f"{tuple(runtime_context.shape)}"
            )
        check_finite(runtime_context, "runtime_context contains NaN or inf")

    def _previous_tools(self, plan_labels, previous_tools, steps: int, like: torch.Tensor) -> torch.Tensor:
        """The tool chosen before each step [B, S] (-1: none): given, or teacher-forced from ``plan_labels``."""
        if previous_tools is not None:
            return previous_tools
        previous = torch.full((like.shape[0], steps), -1, dtype=torch.long, device=like.device)
        if plan_labels is not None and steps > 1:
            before = plan_labels[:, : steps - 1]
            previous[:, 1:] = torch.where(before > STOP, before - 1, -1)
        return previous

    def _query_state(self, query_input_ids, query_attention_mask, query_embeddings, batch: int):
        """The tool tower's pooled query states [B, E] (``use_query_state``), from ids or given embeddings."""
        if not self.config.use_query_state:
            if query_input_ids is not None or query_embeddings is not None:
                raise ValueError("query inputs given but the config has use_query_state=False")
            return None
        if query_input_ids is None and query_embeddings is None:
            raise ValueError("use_query_state: pass query_input_ids (tool tower tokens) or query_embeddings")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_tool_tower):
            states = self.tool_tower._encode_queries(query_input_ids, query_attention_mask, query_embeddings)
        if states.shape[0] != batch:
            raise ValueError(f"query states for {states.shape[0]} requests, input_ids has {batch}")
        return states

    def _call_tools(self, input_ids, plan_labels, call_tools) -> torch.Tensor | None:
        """The tool of each ``<CALL>`` [B, K] (-1 = none): given, or the labelled plan's tools in order."""
        call_slots = input_ids == self.config.call_token_id
        calls = call_slots.sum(-1)
        if not bool(calls.any()):
            if call_tools is not None:
                raise ValueError("call_tools given but input_ids has no <CALL> token")
            return None
        if not self.config.generate_arguments:
            raise ValueError(
                f"input_ids hold <CALL> tokens (id {self.config.call_token_id}) but the config has "
                "generate_arguments=False"
            )
        if call_tools is None:
            if plan_labels is None:
                raise ValueError("<CALL> tokens need call_tools [B, K] or plan_labels to take the tools from")
            tools = [[int(t) - 1 for t in row if t > STOP] for row in plan_labels.tolist()]
            width = max(len(row) for row in tools)
            call_tools = torch.tensor(
                [row + [-1] * (width - len(row)) for row in tools], device=input_ids.device
            )
        given = (call_tools >= 0).sum(-1)
        if (
            call_tools.dim() != 2
            or call_tools.shape[0] != input_ids.shape[0]
            or not torch.equal(given, calls)
        ):
            raise ValueError(
                f"each <CALL> needs its tool: <CALL> tokens per request {calls.tolist()}, call_tools "
                f"{call_tools.tolist()}"
            )
        return call_tools

    def _embed(self, input_ids, numeric_values, tool_embeds, tool_mask, tool_slots, plan_slots, previous,
               runtime_context, query_states=None, call_tools=None) -> torch.Tensor:  # fmt: skip
        cfg = self.config
        embeds = self.backbone.get_input_embeddings()(input_ids)
        value_encoding = getattr(self.backbone, "value_encoding", None)
        if value_encoding is not None:
            embeds = embed_numbers(
                embeds, input_ids, numeric_values, cfg.text_config.num_token_id, value_encoding
            )
        elif numeric_values is not None and bool((numeric_values != 0).any()):
            raise ValueError(
                "numeric_values given but the backbone is a plain Qwen2 (numbers are digit text)"
            )
        tool_embeds = tool_embeds.to(embeds.dtype)
        embeds = embeds.masked_scatter(tool_slots[..., None], tool_embeds[tool_mask])
        rows = torch.nonzero(plan_slots)[:, 0]
        step = _ordinal(plan_slots)[plan_slots]
        prev = previous[rows, step]
        chosen = tool_embeds[rows, prev.clamp(min=0)] * (prev >= 0)[:, None].to(embeds.dtype)
        embeds = embeds.clone()
        embeds[plan_slots] = embeds[plan_slots] + self.step_embedding(step).to(embeds.dtype) + chosen
        if call_tools is not None:
            call_slots = input_ids == cfg.call_token_id
            rows, step = torch.nonzero(call_slots)[:, 0], _ordinal(call_slots)[call_slots]
            tool = call_tools[rows, step]
            if bool(((tool < 0) | (tool >= tool_mask.sum(-1)[rows])).any()):
                raise ValueError("call_tools point outside the request's offered tools")
            embeds[call_slots] = (embeds[call_slots] + self.step_embedding(step).to(embeds.dtype)
                                  + tool_embeds[rows, tool])  # fmt: skip
        if self.context_projector is not None:
            context_slots = input_ids == cfg.context_token_id
            embeds[context_slots] = self.context_projector(runtime_context.to(embeds.dtype))
        if self.query_projector is not None:
            embeds[input_ids == cfg.query_token_id] = self.query_projector(query_states.to(embeds.dtype))
        return embeds

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        numeric_values: torch.Tensor | None = None,
        tool_input_ids: torch.LongTensor | None = None,
        tool_attention_mask: torch.Tensor | None = None,
        tool_text_embeddings: torch.Tensor | None = None,
        resource_vectors: torch.Tensor | None = None,
        tool_mask: torch.Tensor | None = None,
        tool_states: torch.Tensor | None = None,
        runtime_context: torch.Tensor | None = None,
        plan_labels: torch.LongTensor | None = None,
        previous_tools: torch.LongTensor | None = None,
        latency_labels: torch.Tensor | None = None,
        argument_labels: torch.LongTensor | None = None,
        call_tools: torch.LongTensor | None = None,
        query_input_ids: torch.LongTensor | None = None,
        query_attention_mask: torch.Tensor | None = None,
        query_embeddings: torch.Tensor | None = None,
        numeric_formats: torch.LongTensor | None = None,
        **kwargs,
    ) -> ToolPlannerOutput:
        r"""
        input_ids ([B, L]): request tokens, then ``<TOOL>`` x (tools of the row), then ``<PLAN>`` x steps (right
            padding; see :class:`ToolPlannerProcessor`).
        numeric_values ([B, L]): values of the request's ``<NUM>`` tokens (CausalQwen backbone).
        tool_input_ids / tool_attention_mask ([B, T, Lt]) or tool_text_embeddings ([B, T, E]), resource_vectors
            ([B, T, 6]), tool_mask ([B, T]): the offered tools, through the tool tower; or ``tool_states``
            ([B, T, d_model]) computed before (e.g. once for every decoding step).
        runtime_context ([B, C]): placed at the ``<CTX>`` token when ``runtime_context_dim`` = C > 0.
        plan_labels ([B, S]): 0 = STOP, j + 1 = tool j, -100 = no step. previous_tools ([B, S]): the tool chosen
            before each step (-1 = none), default teacher-forced from ``plan_labels``.
        latency_labels ([B, T]): observed latency per tool (negative = not observed).
        argument_labels ([B, L]): unshifted ids of the argument text and its ``<END_CALL>`` (-100 elsewhere);
            ``<NUM>`` targets are the ``numeric_values`` at those positions (``generate_arguments``).
        call_tools ([B, K]): the tool of each ``<CALL>`` in order (-1 = padding), default the tools of
            ``plan_labels``.
        query_input_ids / query_attention_mask ([B, Lq], the tool tower's tokens) or query_embeddings ([B, E]):
            the request for the tool tower's query encoder, placed at ``<QUERY>`` (``use_query_state``).
        numeric_formats: accepted so that the tokenizer's output can be passed through; not used.
        """
        tool_kwargs = dict(
            tool_input_ids=tool_input_ids,
            tool_attention_mask=tool_attention_mask,
            tool_text_embeddings=tool_text_embeddings,
            resource_vectors=resource_vectors,
            tool_mask=tool_mask,
        )
        states = self._tool_states(tool_states, tool_kwargs)
        if tool_mask is None:
            tool_mask = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
        tool_mask = tool_mask.bool()
        if input_ids.dim() != 2 or input_ids.shape[0] != states.shape[0]:
            raise ValueError(
                f"input_ids must be [B, L] with B = the tools' batch {states.shape[0]}, got {tuple(input_ids.shape)}"
            )
        tool_slots, plan_slots = self._check_layout(input_ids, tool_mask, runtime_context)
        steps = int(plan_slots.sum(-1).max())
        if plan_labels is not None and plan_labels.shape != (input_ids.shape[0], steps):
            raise ValueError(
                f"plan_labels must be [B, S] with S = the most <PLAN> tokens in a row ({steps}), got "
                f"{tuple(plan_labels.shape)}"
            )
        previous = self._previous_tools(plan_labels, previous_tools, steps, input_ids)
        if previous.shape != (input_ids.shape[0], steps):
            raise ValueError(f"previous_tools must be [B, {steps}], got {tuple(previous.shape)}")
        tool_embeds = self._tool_embeds(states, resource_vectors, input_ids, numeric_values, tool_slots)
        query_states = self._query_state(
            query_input_ids, query_attention_mask, query_embeddings, input_ids.shape[0]
        )
        call_tools = self._call_tools(input_ids, plan_labels, call_tools)
        embeds = self._embed(input_ids, numeric_values, tool_embeds, tool_mask, tool_slots, plan_slots, previous,
                             runtime_context, query_states, call_tools)  # fmt: skip
        hidden = self.backbone(
            inputs_embeds=embeds, attention_mask=attention_mask, **kwargs
        ).last_hidden_state
        step_mask = torch.arange(steps, device=hidden.device)[None, :] < plan_slots.sum(-1, keepdim=True)
        step_hidden = _rows_to_padded(hidden[plan_slots], step_mask)
        tool_hidden = _rows_to_padded(hidden[tool_slots], tool_mask)
        logits = self.pointer(step_hidden, tool_hidden)
        blocked = ~tool_mask[:, None, :].expand(-1, steps, -1)
        if not self.config.allow_repeated_tools:
            blocked = blocked | self._chosen_before(previous, tool_mask.shape[1])
        logits = torch.cat([logits[..., :1], logits[..., 1:].masked_fill(blocked, float("-inf"))], dim=-1)
        logits = logits.masked_fill(~step_mask[..., None], 0.0)
        latency_loc, latency_scale = self.latency_head(tool_hidden)
        pointer_loss = self._pointer_loss(logits, plan_labels, tool_mask) if plan_labels is not None else None
        latency_loss = self._latency_loss(latency_loc, latency_scale, latency_labels, tool_mask)
        argument_loss = self._argument_loss(hidden, argument_labels, numeric_values)
        weighted = [(self.config.pointer_weight, pointer_loss), (self.config.latency_weight, latency_loss),
                    (self.config.argument_weight, argument_loss)]  # fmt: skip
        terms = [weight * term for weight, term in weighted if term is not None]
        loss = torch.stack(terms).sum() if terms else None
        return ToolPlannerOutput(
            loss=loss,
            pointer_loss=pointer_loss,
            latency_loss=latency_loss,
            argument_loss=argument_loss,
            pointer_logits=logits,
            step_mask=step_mask,
            latency_loc=latency_loc,
            latency_scale=latency_scale,
            tool_states=states,
            hidden_states=hidden,
        )

    @staticmethod
    def _chosen_before(previous: torch.Tensor, num_tools: int) -> torch.Tensor:
        """[B, S, T]: tool j was chosen at a step before t (the previous tools up to and including step t)."""
        hits = nn.functional.one_hot(previous.clamp(min=0), num_tools).bool() & (previous >= 0)[..., None]
        return hits.cumsum(1) > 0

    def _pointer_loss(self, logits, plan_labels, tool_mask) -> torch.Tensor:
        labelled = plan_labels != IGNORE_INDEX
        valid = (plan_labels >= STOP) & (plan_labels <= tool_mask.sum(-1, keepdim=True))
        if bool((labelled & ~valid).any()):
            raise ValueError("plan_labels must be 0 (STOP), j + 1 for an offered tool j, or -100")
        target = plan_labels.masked_fill(~labelled, 0)
        picked = logits.gather(-1, target[..., None]).squeeze(-1)
        if bool(torch.isinf(picked[labelled]).any()):
            raise ValueError("a plan label points at a tool the pointer cannot choose (already in the plan)")
        # Mean over labelled steps; a batch without any labelled step still depends on the pointer (0 x logits).
        nll = torch.logsumexp(logits, dim=-1) - picked
        return (nll * labelled).sum() / labelled.sum().clamp(min=1)

    @staticmethod
    def _latency_loss(loc, scale, latency_labels, tool_mask) -> torch.Tensor | None:
        if latency_labels is None:
            return None
        if latency_labels.shape != loc.shape:
            raise ValueError(
                f"latency_labels must be [B, T] = {tuple(loc.shape)}, got {tuple(latency_labels.shape)}"
            )
        observed = torch.isfinite(latency_labels) & (latency_labels >= 0) & tool_mask
        if not bool(observed.any()):
            return None
        return cauchy_nll(latency_labels[observed].to(loc.dtype), loc[observed], scale[observed]).mean()

    def _argument_loss(self, hidden, argument_labels, numeric_values) -> torch.Tensor | None:
        """The backbone's own LM loss on the argument tokens (None when no token is labelled)."""
        if argument_labels is None:
            return None
        if not self.config.generate_arguments:
            raise ValueError("argument_labels given but the config has generate_arguments=False")
        if argument_labels.shape != hidden.shape[:2]:
            raise ValueError(
                f"argument_labels must be [B, L] = {tuple(hidden.shape[:2])}, got {tuple(argument_labels.shape)}"
            )
        if not bool((argument_labels[:, 1:] != IGNORE_INDEX).any()):
            return None
        head = self.language_model
        if isinstance(head, CausalQwenForNumericCausalLM):
            reduction = self.config.argument_cls_reduction
            return head.hidden_state_loss(hidden, argument_labels, numeric_values, reduction).total
        # Qwen2: cross-entropy on the labelled positions only (never [B, L, V] logits).
        labels = argument_labels[:, 1:]
        scored = labels != IGNORE_INDEX
        logits = head.lm_head(hidden[:, :-1][scored]).float()
        return nn.functional.cross_entropy(logits, labels[scored])

    def _next_argument_tokens(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy next token [N] and, for ``<NUM>``, its value (the Cauchy median) [N] from hidden states [N, H];
        placeholders (``<TOOL>``, ``<PLAN>``, ``<CALL>``, ...) are never written into arguments."""
        head, cfg = self.language_model, self.config
        if isinstance(head, CausalQwenForNumericCausalLM):
            outs = head.hidden_state_heads(hidden)
            logits, values = outs["logits"].float(), outs["value_loc"].float()
        else:
            logits, values = (
                head.lm_head(hidden).float(),
                hidden.new_zeros(hidden.shape[0], dtype=torch.float32),
            )
        blocked = [
            cfg.tool_token_id,
            cfg.plan_token_id,
            cfg.context_token_id,
            cfg.query_token_id,
            cfg.call_token_id,
        ]
        logits[:, [b for b in blocked if b < logits.shape[-1]]] = float("-inf")
        return logits.argmax(-1), values

    # ----------------------------------------------------------------- decoding
    @torch.no_grad()
    def plan(
        self,
        processor,
        queries: str | list[str],
        tools,
        *,
        runtime_context=None,
        budget: dict[str, float] | None = None,
        total_budget: dict[str, float] | None = None,
        max_steps: int | None = None,
        num_beams: int = 1,
        interval: float = 0.9,
        write_arguments: bool | None = None,
    ) -> Plan | list[Plan]:
        """Decode a plan per request. ``tools``: one tool list for every query, a list of tool lists (one per
        query), or a :class:`~causalqwen.tool_index.ToolIndex`; a tool is ``{"name", "text", "resources"}``, a
        ``(text, resources)`` pair or an index tool (see :class:`ToolPlannerProcessor`). ``budget`` (resource field
        -> maximum, as ``ToolIndex.route``) masks the tools that exceed it before the pointer chooses;
        ``total_budget`` (the same fields) bounds the plan's sum: at each step it masks the tools that would take
        the sum of the steps so far past it (``{"latency": 2.0}``: the calls' latencies add up to at most 2 s).
        The budgets written in the query are the model's to read. ``num_beams > 1`` searches plans by the sum of step
        log-probabilities. ``write_arguments`` (default: ``config.generate_arguments``) then writes each step's
        arguments greedily (:class:`_ArgumentWriter`). Returns one :class:`Plan` for a string query, a list
        otherwise."""
        if write_arguments is None:
            write_arguments = self.config.generate_arguments
        if write_arguments and not self.config.generate_arguments:
            raise ValueError("write_arguments=True needs a planner built with generate_arguments=True")
        single = isinstance(queries, str)
        queries = [queries] if single else list(queries)
        steps_cap = min(max_steps or self.config.max_plan_steps, self.config.max_plan_steps)
        batch = processor(queries, tools, runtime_context=runtime_context, num_plan_tokens=0)
        names, raw = batch.pop("tool_names"), batch.pop("raw_resource_vectors")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        allowed = batch["tool_mask"] & processor.budget_mask(raw, budget).to(self.device)
        totals = _TotalBudget(raw.to(self.device), processor.budget_fields(total_budget))
        states = self._tool_states(None, {k: batch.get(k) for k in _TOOL_KEYS})
        decoder = _BeamDecoder(self, batch, states, allowed, steps_cap, num_beams, totals)
        decoded = decoder.run()
        chosen_tools = [chosen for chosen, _, _ in decoded]
        texts = _ArgumentWriter(self, processor, batch, states).run(chosen_tools) if write_arguments else None
        plans = []
        for row, (chosen, probs, stop_prob) in enumerate(decoded):
            loc, scale = decoder.latency[row]
            steps = []
            for k, (tool, prob) in enumerate(zip(chosen, probs)):
                low, high = cauchy_interval(loc[tool], scale[tool], interval)
                steps.append(PlanStep(tool, names[row][tool] if names else None, prob, float(loc[tool]),
                                      (float(low), float(high)), texts[row][k] if texts else None))  # fmt: skip
            plans.append(Plan(steps, stop_prob))
        return plans[0] if single else plans


_TOOL_KEYS = (
    "tool_input_ids",
    "tool_attention_mask",
    "tool_text_embeddings",
    "resource_vectors",
    "tool_mask",
)


def _tool_inputs(
    model: ToolPlannerModel, batch: dict, states: torch.Tensor, rows: list[int]
) -> dict[str, Any]:
    """The precomputed tool states of ``rows``, with their resource vectors when the planner reads those too."""
    inputs = {"tool_states": states[rows]}
    if model._reads_resource_values:
        inputs["resource_vectors"] = batch["resource_vectors"][rows]
    return inputs


def _request_inputs(batch: dict, rows: list[int], tails: list[list[int]], tail_values: list[list[float]],
                    extra: dict[str, torch.Tensor]) -> dict[str, Any]:  # fmt: skip
    """Model inputs for the request rows ``rows`` of a processed batch (request, tools), each followed by its
    tail of tokens (plan slots, calls) with their ``<NUM>`` values, right padded; ``extra``: per-row inputs
    already built (tool states, previous tools, call tools)."""
    base_ids, base_mask = batch["input_ids"], batch["attention_mask"]
    lengths = base_mask.sum(-1)
    width = int(max(lengths[r] + len(t) for r, t in zip(rows, tails)))
    ids = base_ids.new_zeros(len(rows), width)
    mask = torch.zeros_like(ids)
    base_values = batch.get("numeric_values")
    values = None if base_values is None else base_values.new_zeros(len(rows), width)
    for i, (r, tail) in enumerate(zip(rows, tails)):
        n = int(lengths[r])
        ids[i, :n] = base_ids[r, :n]
        ids[i, n : n + len(tail)] = torch.tensor(tail, dtype=ids.dtype)
        mask[i, : n + len(tail)] = 1
        if values is not None:
            values[i, :n] = base_values[r, :n]
            values[i, n : n + len(tail)] = torch.tensor(tail_values[i], dtype=values.dtype)
    inputs = dict(input_ids=ids, attention_mask=mask, tool_mask=batch["tool_mask"][rows], **extra)
    if values is not None:
        inputs["numeric_values"] = values
    for key in ("runtime_context", "query_input_ids", "query_attention_mask", "query_embeddings"):
        if key in batch:
            inputs[key] = batch[key][rows]
    return inputs


class _TotalBudget:
    """A budget on the plan's sum (resource field -> maximum): which tools would take it past the maximum after
    the steps chosen so far."""

    def __init__(self, raw_resources: torch.Tensor, fields: list[tuple[int, float]]):
        self.raw, self.fields = raw_resources, fields

    def blocked(self, rows: list[int], prefixes: list[list[int]]) -> torch.Tensor:
        """[N, T]: True where adding the tool to the row's prefix would exceed a maximum."""
        blocked = torch.zeros(len(rows), self.raw.shape[1], dtype=torch.bool, device=self.raw.device)
        for column, limit in self.fields:
            spent = torch.stack([self.raw[r, prefix, column].sum() for r, prefix in zip(rows, prefixes)])
            blocked |= spent[:, None] + self.raw[rows, :, column] > limit
        return blocked


class _BeamDecoder:
    """Step-by-step plan decoding: each step re-reads the request with one more ``<PLAN>`` token (plans are a few
    steps long, so re-running the backbone is cheaper to get right than a cache of inputs_embeds). A beam holds
    (tools so far, summed log-probability); a beam that chose STOP is finished."""

    def __init__(self, model: ToolPlannerModel, batch: dict, states, allowed, max_steps: int, num_beams: int,
                 totals: _TotalBudget):  # fmt: skip
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        self.model, self.batch, self.states, self.allowed = model, batch, states, allowed
        self.totals = totals
        self.max_steps, self.num_beams = max_steps, num_beams
        self.latency: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.plan_id = model.config.plan_token_id

    def _step_inputs(self, rows: list[int], prefixes: list[list[int]]) -> dict[str, Any]:
        """The request rows ``rows``, each followed by ``len(prefix) + 1`` plan tokens (right padded)."""
        device = self.batch["input_ids"].device
        previous = torch.full(
            (len(rows), 1 + max(len(p) for p in prefixes)), -1, dtype=torch.long, device=device
        )
        for i, prefix in enumerate(prefixes):
            previous[i, 1 : 1 + len(prefix)] = torch.tensor(prefix, dtype=torch.long)
        tails = [[self.plan_id] * (len(p) + 1) for p in prefixes]
        return _request_inputs(self.batch, rows, tails, [[0.0] * len(t) for t in tails],
                               dict(_tool_inputs(self.model, self.batch, self.states, rows),
                                    previous_tools=previous))  # fmt: skip

    def _log_probs(self, rows: list[int], prefixes: list[list[int]]) -> torch.Tensor:
        """Log-probabilities [N, 1 + T] of STOP and each tool at the next step of each (row, prefix)."""
        out = self.model(**self._step_inputs(rows, prefixes))
        last = torch.tensor([len(p) for p in prefixes], device=out.pointer_logits.device)
        logits = out.pointer_logits[torch.arange(len(rows)), last].float()
        blocked = ~self.allowed[rows] | self.totals.blocked(rows, prefixes).to(logits.device)
        if not self.model.config.allow_repeated_tools:
            for i, prefix in enumerate(prefixes):
                blocked[i, prefix] = True
        logits[:, 1:] = logits[:, 1:].masked_fill(blocked, float("-inf"))
        if not self.latency:
            # The first call reads every row with an empty plan: each tool's latency in its request.
            self.latency = [
                (out.latency_loc[i].float(), out.latency_scale[i].float()) for i in range(len(rows))
            ]
        return torch.log_softmax(logits, dim=-1)

    def run(self) -> list[tuple[list[int], list[float], float]]:
        """Per request: (chosen tools, their step probabilities, the probability of the STOP that ended it)."""
        rows = self.batch["input_ids"].shape[0]
        # A beam: (tools so far, summed log-probability, step probabilities).
        beams: list[list[tuple]] = [[([], 0.0, [])] for _ in range(rows)]
        finished: list[list[tuple]] = [[] for _ in range(rows)]
        for step in range(self.max_steps + 1):
            live = [(r, beam) for r in range(rows) for beam in beams[r]]
            if not live:
                break
            log_probs = self._log_probs([r for r, _ in live], [beam[0] for _, beam in live])
            candidates: list[list[tuple]] = [[] for _ in range(rows)]
            for (r, (prefix, score, probs)), lp in zip(live, log_probs):
                stop_lp = float(lp[STOP])
                if step == self.max_steps:
                    # The cap: the plan ends here whatever the pointer says.
                    finished[r].append((prefix, score, probs, math.exp(stop_lp)))
                    continue
                candidates[r].append((prefix, score + stop_lp, probs, math.exp(stop_lp), True))
                top = torch.topk(lp[1:], min(self.num_beams, lp.shape[0] - 1))
                for value, tool in zip(top.values.tolist(), top.indices.tolist()):
                    if math.isfinite(value):
                        candidates[r].append(
                            (prefix + [tool], score + value, probs + [math.exp(value)], 0.0, False)
                        )
            for r in range(rows):
                # Beam search over {STOP, tools}: with one beam, each step takes the argmax (greedy decoding).
                ranked = sorted(candidates[r], key=lambda c: -c[1])[: self.num_beams]
                finished[r].extend(c[:4] for c in ranked if c[4])
                best_done = max((f[1] for f in finished[r]), default=-math.inf)
                # Log-probabilities only fall as a plan grows: a beam below the best finished plan cannot win.
                beams[r] = [c[:3] for c in ranked if not c[4] and c[1] > best_done]
        results = []
        for r in range(rows):
            prefix, _, probs, stop_prob = max(finished[r], key=lambda f: f[1])
            results.append((prefix, probs, stop_prob))
        return results


class _ArgumentWriter:
    """Greedy argument text for decoded plans: for the k-th call of every plan at once, the request is re-read
    with the plan's ``<PLAN>`` slots, the calls written so far and ``<CALL>``_k, and one token is added per pass
    until ``<END_CALL>`` or ``max_argument_tokens`` (arguments are short; no KV cache, as in
    :class:`_BeamDecoder`). A ``<NUM>`` gets the value head's median as its value."""

    def __init__(self, model: ToolPlannerModel, processor, batch: dict, states: torch.Tensor):
        self.model, self.processor, self.batch, self.states = model, processor, batch, states
        cfg = model.config
        self.plan_id, self.call_id, self.end_id = cfg.plan_token_id, cfg.call_token_id, cfg.call_end_token_id

    def _inputs(self, rows, plans, written, current) -> dict[str, Any]:
        tails, tail_values = [], []
        for r in rows:
            ids, values = [self.plan_id] * (len(plans[r]) + 1), [0.0] * (len(plans[r]) + 1)
            for call_ids, call_values in written[r]:
                ids += [self.call_id, *call_ids, self.end_id]
                values += [0.0, *call_values, 0.0]
            ids += [self.call_id, *current[r][0]]
            values += [0.0, *current[r][1]]
            tails.append(ids)
            tail_values.append(values)
        device = self.batch["input_ids"].device
        steps = 1 + max(len(plans[r]) for r in rows)
        previous = torch.full((len(rows), steps), -1, dtype=torch.long, device=device)
        calls = torch.full((len(rows), steps), -1, dtype=torch.long, device=device)
        for i, r in enumerate(rows):
            previous[i, 1 : 1 + len(plans[r])] = torch.tensor(plans[r], dtype=torch.long)
            k = len(written[r]) + 1
            calls[i, :k] = torch.tensor(plans[r][:k], dtype=torch.long)
        extra = dict(
            _tool_inputs(self.model, self.batch, self.states, rows), previous_tools=previous, call_tools=calls
        )
        return _request_inputs(self.batch, rows, tails, tail_values, extra)

    def run(self, plans: list[list[int]]) -> list[list[str]]:
        """Per request, the argument text of each planned call, in plan order."""
        return [
            [self.processor.decode_arguments(ids, values) for ids, values in row] for row in self.write(plans)
        ]

    def write(self, plans: list[list[int]]) -> list[list[tuple[list[int], list[float]]]]:
        """Per request and planned call, the written token ids (without ``<END_CALL>``) and their values."""
        written: list[list[tuple[list[int], list[float]]]] = [[] for _ in plans]
        num_id = getattr(self.model.config.text_config, "num_token_id", None)
        for k in range(max((len(p) for p in plans), default=0)):
            rows = [r for r, p in enumerate(plans) if len(p) > k]
            current = {r: ([], []) for r in rows}
            live = list(rows)
            for _ in range(self.model.config.max_argument_tokens):
                inputs = self._inputs(live, plans, written, current)
                hidden = self.model(**inputs).hidden_states
                last = inputs["attention_mask"].sum(-1) - 1
                tokens, values = self.model._next_argument_tokens(hidden[torch.arange(len(live)), last])
                ended = []
                for r, token, value in zip(live, tokens.tolist(), values.tolist()):
                    if token == self.end_id:
                        ended.append(r)
                        continue
                    current[r][0].append(token)
                    current[r][1].append(value if token == num_id else 0.0)
                live = [r for r in live if r not in ended]
                if not live:
                    break
            for r in rows:
                written[r].append(current[r])
        return written


__all__ = [
    "IGNORE_INDEX",
    "STOP",
    "Plan",
    "PlanStep",
    "ToolPlannerModel",
    "ToolPlannerOutput",
    "ToolPlannerPreTrainedModel",
]
