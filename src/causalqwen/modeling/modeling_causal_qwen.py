"""CausalQwen: a Qwen2 backbone with numeric inputs, Cauchy abduction and action heads (DESIGN.md section 2).

Data flow for one position::

    x, v --embed + <NUM> fusion--> Qwen2 layers --> z
    abduction:  loc_U = W_loc z + b_loc,  scale_U = softplus(W_s z + b_s)                (Cauchy U, size C)
    action:     U' per inference mode (noise b_noise, temperature T)
    token head: loc_S = W loc_U',  scale_S = |W| scale_U'     ->  P_k = 1/2 + atan((loc_S,k - C_k)/scale_S,k)/pi
    value head: loc_Y = w loc_U' + b,  scale_Y = |w| scale_U'  ->  value_loc / value_scale in data units

``logits`` ranks tokens as the active mode decides, so ``generate`` and logits processors work unchanged:
``(loc_S - C) / scale_S`` in the One-vs-Rest modes (P_k is monotone in it), ``loc_S`` in ``deterministic``.

Initialisation (``from_qwen2``): W_loc = I, b_loc = 0, W_s = 0, b_s = softplus^-1(gamma_init) (gamma_init = 1),
``b_noise = b_noise_init`` (0.1), the token head is the base ``lm_head``. Hence in ``deterministic`` mode
``loc_S`` equals the base logits and greedy generation reproduces the base model.

In the OvR modes every coordinate of scale_U' equals ``gamma_init + T b_noise_init`` at init, so
``scale_S,k = c ||W_k||_1`` and the rank is ``(loc_k - C_k) / ||W_k||_1`` whatever ``gamma_init`` and
``b_noise_init`` are: they set the sharpness of P (and so the loss), never the ranking. Only the thresholds
move the ranking. With C_k = 0 the rank is a direction match ``loc_k / ||W_k||_1`` and disagrees with the base
often; with C_k far from the logits it follows ``1/||W_k||_1`` and ignores the context. With C_k close to the
typical top logit, only the few tokens near the top compete and the base order survives. ``from_qwen2``
therefore calibrates one threshold for all tokens: the median, over positions of random token sequences, of
the base model's top logit (``ovr_threshold_init`` overrides it). Measured top-1 agreement with the base in
``standard`` mode (tiny random Qwen2, H=64, V=384, 16 x 256 random positions, three seeds;
``tests/test_causal_qwen_model.py``): **0.958 / 0.959 / 0.960** calibrated, versus 0.61 / 0.66 / 0.63 with
C_k = 0 (with a Qwen2.5-sized vocabulary, V=151,700, 256 positions: 0.969 vs 0.266). The calibrated threshold also makes most P_k < 1/2
at init, the right prior for One-vs-Rest (a token is usually *not* next), so the initial BCE is far smaller.

Generation: ``numeric_values`` enter on prefill only; at every step the predicted ``value_loc`` of the last
position is appended to a per-call value track and fed back when the sampled token is ``<NUM>``. Beam search
reorders the track with the beams; assisted decoding cuts drafts before their first ``<NUM>`` (the table of
strategies is in docs/causal_qwen.md).
``generate(..., return_dict_in_generate=True)`` returns :class:`CausalQwenGenerateOutput` with
``numeric_values`` [B, L] (0 where the token is not ``<NUM>``). The action noise temperature is passed to
``generate`` as ``causal_temperature=`` (``temperature=`` there is the softmax temperature of sampling).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, Qwen2ForCausalLM, Qwen2Model
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.generation.configuration_utils import GenerationConfig, GenerationMode
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.qwen2.modeling_qwen2 import Qwen2PreTrainedModel
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from ..configuration.configuration_causal_qwen import INFERENCE_MODES, QWEN25_NUM_TOKEN_ID, CausalQwenConfig
from ..remote_code import RemoteCodeMixin
from ._compat import (
    CACHE_NAME,
    LEGACY_CACHE_NAME,
    QuietCheckpointingAlias,
    accepts_both_cache_names,
    assigns_fields_directly,
    cache_output_field,
)
from .cauchy import (
    SCALE_EPS,
    cauchy_sample,
    interval_half_width,
    linear_cauchy,
    softplus_inverse,
    spans_stream_blocks,
    streamed_linear_cauchy,
)
from .loss import CauchyHeads, chunk_rows, gated_loss
from .numeric_embedding import (
    ValueNormalizer,
    build_value_encoding,
    check_numeric_values,
    embed_numbers,
    perturb_input_values,
)

__all__ = [
    "CausalAbduction",
    "CausalAction",
    "CausalQwenForNumericCausalLM",
    "CausalQwenGenerateBeamOutput",
    "CausalQwenGenerateOutput",
    "CausalQwenModel",
    "CausalQwenOutput",
    "CausalQwenPreTrainedModel",
]


@torch.no_grad()
def _calibrated_threshold(base: PreTrainedModel, input_ids: torch.LongTensor | None) -> float:
    """Median over positions of the base model's top logit (one sequence at a time: [1, S, V] at most)."""
    if input_ids is None:
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.randint(0, base.config.vocab_size, (8, 128), generator=generator)
    if input_ids.dim() != 2 or input_ids.numel() == 0:
        raise ValueError(
            f"calibration_input_ids must be a non-empty [batch, seq] tensor, got {tuple(input_ids.shape)}"
        )
    was_training = base.training
    base.eval()
    device = base.get_input_embeddings().weight.device
    top = [base(input_ids=row[None].to(device)).logits.float().amax(-1).flatten().cpu() for row in input_ids]
    base.train(was_training)
    return float(torch.cat(top).median())


@assigns_fields_directly
@dataclass
@cache_output_field
class CausalQwenOutput(ModelOutput):
    """Output of :class:`CausalQwenForNumericCausalLM`.

    ``logits`` ranks tokens by the active decision rule; ``loc_S``/``scale_S`` [B, S, V] are the token scores'
    Cauchy parameters (``scale_S`` is 0 in ``deterministic`` mode); ``value_loc``/``value_scale`` [B, S] the
    next value's Cauchy median and scale in data units; ``loc_U``/``scale_U`` [B, S, C] the abducted
    causal representation. In training with labels the vocabulary-sized fields are ``None`` unless
    ``return_logits=True``. ``cache`` is the KV cache; on transformers < 5.24 the field is ``past_key_values``
    (the name generation reads there), and either name reads it on any version.
    """

    loss: torch.FloatTensor | None = None
    loss_cls: torch.FloatTensor | None = None
    loss_reg: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    loc_S: torch.FloatTensor | None = None
    scale_S: torch.FloatTensor | None = None
    value_loc: torch.FloatTensor | None = None
    value_scale: torch.FloatTensor | None = None
    loc_U: torch.FloatTensor | None = None
    scale_U: torch.FloatTensor | None = None
    cache: Cache | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class CausalQwenGenerateOutput(GenerateDecoderOnlyOutput):
    """``GenerateDecoderOnlyOutput`` plus ``numeric_values`` and ``numeric_formats`` [B, L] aligned with
    ``sequences`` (pass both to the tokenizer's ``decode``)."""

    numeric_values: torch.FloatTensor | None = None
    numeric_formats: torch.LongTensor | None = None


@dataclass
class CausalQwenGenerateBeamOutput(GenerateBeamDecoderOnlyOutput):
    """``GenerateBeamDecoderOnlyOutput`` plus ``numeric_values`` and ``numeric_formats``
    [B * num_return_sequences, L] of the beams."""

    numeric_values: torch.FloatTensor | None = None
    numeric_formats: torch.LongTensor | None = None


def _shortest_decimals(values: torch.Tensor) -> torch.Tensor:
    """float32 ``values`` as float64 holding the shortest decimal that round-trips each (what it stands for)."""
    flat = values.detach().cpu().numpy().reshape(-1)
    decimals = [float(str(v)) for v in flat]
    return torch.tensor(decimals, dtype=torch.float64).reshape(values.shape).to(values.device)


def _output_fields(out: ModelOutput) -> dict:
    return {f.name: getattr(out, f.name) for f in fields(out)}


# Both names of the KV cache keyword (CACHE_NAME is one of them, whichever the installed version uses).
_CACHE_NAMES = frozenset({"cache", LEGACY_CACHE_NAME})
_HUB_ONLY_MODES = frozenset(
    {
        GenerationMode.CONTRASTIVE_SEARCH,
        GenerationMode.GROUP_BEAM_SEARCH,
        GenerationMode.CONSTRAINED_BEAM_SEARCH,
        GenerationMode.DOLA_GENERATION,
    }
)


@dataclass(frozen=True)
class _PackedHeads:
    """The heads packed once per ``generate`` call for a small token head (``_packed_heads``).

    A decoding step at such sizes is bound by per-operation overhead, not arithmetic: at the tiny benchmark
    shape (H = 64, V = 512) the heads took 148 us per token against 15 us for Qwen2's ``lm_head``, most of it
    module calls, config reads and about 15 small tensor operations. Packed, the two abduction maps are one
    matmul and the value row rides on the token head (one matmul per Cauchy parameter gives both heads): six
    operations in standard mode, and nothing read from the config per step (148 -> 77-88 us per token). The
    weights do not change inside a ``generate`` call, so no staleness check is needed per step; the tensors
    are detached copies (no autograd graph).
    """

    abduction_weight: torch.Tensor  # [2C, H]: loc rows, then scale rows
    abduction_bias: torch.Tensor  # [2C]
    head_weight: torch.Tensor  # [V + 1, C]: lm_head rows, then the value_head row
    head_abs_weight: torch.Tensor  # |head_weight|
    value_bias: torch.Tensor  # [1]
    noise: torch.Tensor  # |b_noise| [C]
    thresholds: torch.Tensor  # ovr_thresholds [V]
    normalizer: ValueNormalizer
    value_scale_factor: float

    # The modes whose U' is a deterministic function of U (no sampling, no mode-specific noise shape).
    MODES = ("standard", "deterministic")

    def __call__(self, hidden: torch.Tensor, mode: str, temperature: float):
        """``_heads``'s result (equal to rounding: a stacked matmul may sum in another order)."""
        weight = self.abduction_weight
        loc_U, scale_pre = F.linear(hidden.to(weight.dtype), weight, self.abduction_bias).chunk(2, dim=-1)
        scale_U = F.softplus(scale_pre)
        vocab = self.thresholds.shape[0]
        loc = F.linear(loc_U, self.head_weight)
        loc_S, loc_Y = loc[..., :vocab], loc[..., vocab] + self.value_bias
        if mode == "deterministic":
            return CauchyHeads(loc_S, None, loc_Y, None), loc_U, scale_U
        # standard: scale_U' = scale_U + T |b_noise|, as CausalAction
        scale = F.linear(torch.add(scale_U, self.noise, alpha=temperature), self.head_abs_weight)
        return CauchyHeads(loc_S, scale[..., :vocab], loc_Y, scale[..., vocab]), loc_U, scale_U


@dataclass
class _NumericTrackState:
    """Per-``generate`` state of the value track (transformers threads ``numeric_values`` through its model
    kwargs but gives the model no hook to reorder them with beams or to learn the draft length), and the heads
    packed for the call (``None`` where they are not packed)."""

    track: torch.Tensor
    step_values: list[torch.Tensor] = field(default_factory=list)
    drafts: int = 0
    heads: _PackedHeads | None = None


class _NumericDrafts:
    """Wraps an assisted-decoding candidate generator for a CausalQwen target.

    A drafted ``<NUM>`` could be verified (the logits before it do not depend on its value) but every token
    after it depends on a value the target predicts in the same forward pass, so drafts are cut before their
    first ``<NUM>``; the target then emits that ``<NUM>`` itself, with its own value, as the bonus token. The
    output is therefore exactly greedy decoding's. A CausalQwen assistant receives the target's value track so
    far (so its drafts see the same numbers); any other assistant gets no ``numeric_values``.
    """

    def __init__(self, inner, target: CausalQwenForNumericCausalLM):
        self.inner = inner
        self.target = target
        # Model-based generators pass their model kwargs (a copy of the target's, values included) to the
        # assistant's generate; prompt lookup and other model-free generators have none.
        has_assistant_kwargs = hasattr(inner, "assistant_kwargs")
        assistant = getattr(inner, "assistant_model", None)
        self.numeric_assistant = (
            has_assistant_kwargs
            and isinstance(assistant, CausalQwenForNumericCausalLM)
            and assistant.config.num_token_id == target.config.num_token_id
        )
        if has_assistant_kwargs and not self.numeric_assistant:
            inner.assistant_kwargs.pop("numeric_values", None)

    def get_candidates(self, input_ids: torch.LongTensor, *args, **kwargs):  # 5.0 passes is_first_iteration
        state = self.target._numeric_state
        if self.numeric_assistant and state is not None:
            self.inner.assistant_kwargs["numeric_values"] = state.track.to(self.inner.assistant_model.device)
        candidate_ids, candidate_logits = self.inner.get_candidates(input_ids, *args, **kwargs)
        drafted = candidate_ids[:, input_ids.shape[1] :] == self.target.config.num_token_id
        if drafted.any():
            first = torch.where(drafted.any(-1), drafted.float().argmax(-1), drafted.shape[1])
            keep = int(first.min())  # drafts before the first <NUM> of any row
            candidate_ids = candidate_ids[:, : input_ids.shape[1] + keep]
            # No draft left: no logits either, as transformers' own generators do (its speculative sampling
            # cannot index an empty draft).
            candidate_logits = None if candidate_logits is None or keep == 0 else candidate_logits[:, :keep]
        return candidate_ids, candidate_logits

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


class CausalAbduction(nn.Module):
    """Infers Cauchy(loc_U, scale_U) from hidden states; identity loc path and exact scale at init."""

    def __init__(self, hidden_size: int, causal_size: int):
        super().__init__()
        self.loc_weight = nn.Parameter(torch.empty(causal_size, hidden_size))
        self.loc_bias = nn.Parameter(torch.empty(causal_size))
        self.scale_weight = nn.Parameter(torch.empty(causal_size, hidden_size))
        self.scale_bias = nn.Parameter(torch.empty(causal_size))

    def _init_causal_weights(self, config: CausalQwenConfig) -> None:
        # Rectangular identity when C != H: U copies the first min(C, H) coordinates of z.
        init.eye_(self.loc_weight)
        init.zeros_(self.loc_bias)
        init.zeros_(self.scale_weight)
        init.constant_(self.scale_bias, softplus_inverse(float(config.gamma_init)))

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # In the module's own dtype (float32 under a bf16/fp16 backbone: see FP32_VALUE_PATH).
        hidden = hidden.to(self.loc_weight.dtype)
        loc = F.linear(hidden, self.loc_weight, self.loc_bias)
        scale = F.softplus(F.linear(hidden, self.scale_weight, self.scale_bias))
        return loc, scale


class CausalAction(nn.Module):
    """Exogenous noise ``b_noise`` [C] and the One-vs-Rest thresholds ``ovr_thresholds`` [V] (a buffer)."""

    def __init__(self, causal_size: int, vocab_size: int, threshold_init: float = 0.0):
        super().__init__()
        self.b_noise = nn.Parameter(torch.empty(causal_size))
        # Filled at construction, not left to the init pass: a checkpoint without the buffer, loaded with weight
        # init skipped (meta-device loading), must still get deterministic thresholds.
        self.register_buffer(
            "ovr_thresholds", torch.full((vocab_size,), float(threshold_init)), persistent=True
        )

    def _init_causal_weights(self, config: CausalQwenConfig) -> None:
        init.constant_(self.b_noise, float(config.b_noise_init))
        init.constant_(self.ovr_thresholds, float(config.ovr_threshold_init))

    def forward(
        self, loc_U: torch.Tensor, scale_U: torch.Tensor, mode: str, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(loc_U', scale_U') of the mode; ``None`` scale is a point mass (deterministic)."""
        noise = temperature * self.b_noise.abs()
        if mode == "standard":
            return loc_U, scale_U + noise
        if mode == "deterministic":
            return loc_U, None
        if mode == "exogenous":
            return loc_U, noise.expand_as(loc_U)
        if mode == "endogenous":
            return loc_U, scale_U
        if mode == "sampling":
            eps = cauchy_sample(torch.zeros_like(loc_U), torch.ones_like(loc_U))
            return loc_U + noise * eps, scale_U
        raise ValueError(f"unknown inference_mode {mode!r}; expected one of {', '.join(INFERENCE_MODES)}")


# Modules kept in float32 when the backbone runs in bf16/fp16 (``from_pretrained(dtype=...)`` and ``from_qwen2``):
# the whole value path (<NUM> fusion, abduction, action noise, value head). In bf16 a value has ~3 significant
# digits (value_loc precise to ~0.4 %); these modules are a few H x H matrices, so float32 costs little memory.
FP32_VALUE_PATH = ("value_encoding", "abduction", "action", "value_head")


def _scale_weight(weight: torch.Tensor, isotropic: bool) -> torch.Tensor:
    """``|W|``, or its row sums (the row L1 norms) for the isotropic scale (a reduction: no |W| copy)."""
    return torch.linalg.vector_norm(weight, 1, dim=-1) if isotropic else weight.abs()


def _streams_head(weight: torch.Tensor) -> bool:
    """Whether a head without a caller's |W| uses ``streamed_linear_cauchy``: no autograd graph is being recorded,
    no compiler is tracing (the streamed head is a Python loop over row blocks: eager only), the weight is on
    the CPU and spans more than one block. On a GPU the loop's few hundred kernel launches per position would
    cost more than a second read of |W| at GPU bandwidth (0.2 ms for the 0.5B head); a head of one block is
    cache-sized, so streaming saves no memory traffic, and the cached |W| takes fewer ops (tiny shape, H = 64,
    V = 512: 93 against 130-148 us per decoding step for the heads), so both keep the cached |W|."""
    return (
        not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and weight.device.type == "cpu"
        and spans_stream_blocks(weight)
    )


def _as_dtype(loc: torch.Tensor, scale: torch.Tensor | None, weight: torch.Tensor):
    """``loc``/``scale`` in the dtype of the head they enter (float32 value path next to a bf16 token head)."""
    return loc.to(weight.dtype), None if scale is None else scale.to(weight.dtype)


class CausalQwenPreTrainedModel(QuietCheckpointingAlias, Qwen2PreTrainedModel):
    config_class = CausalQwenConfig
    config: CausalQwenConfig
    _keep_in_fp32_modules_strict = list(FP32_VALUE_PATH)

    def _init_weights(self, module: nn.Module) -> None:
        # Leaf modules holding their own parameters carry their special init (transformers initialises
        # bottom-up and ignores a parent's init of a child's parameters).
        if hasattr(module, "_init_causal_weights"):
            module._init_causal_weights(self.config)
        else:
            super()._init_weights(module)


class CausalQwenModel(RemoteCodeMixin, CausalQwenPreTrainedModel, Qwen2Model):
    """The Qwen2 backbone with ``<NUM>`` value fusion in the input embedding; returns hidden states.

    Parameter names match ``Qwen2Model`` (plus ``value_encoding.*``), so Qwen2 weights load as they are.
    """

    def __init__(self, config: CausalQwenConfig):
        super().__init__(config)
        self.value_encoding = build_value_encoding(config)
        # Qwen2Model.__init__ already ran post_init; running it again initialises only the new module.
        self.post_init()

    @accepts_both_cache_names
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        numeric_values: torch.Tensor | None = None,
        numeric_formats: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""
        numeric_values (`torch.FloatTensor` [B, S], *optional*): value of each `<NUM>` input token (0 elsewhere).
        numeric_formats (`torch.LongTensor` [B, S], *optional*): how each number was written (the tokenizer
            returns it for its decode); accepted so that `model(**tokenizer(...))` works, not used.
        """
        if input_ids is not None and inputs_embeds is None:
            if self.training and self.config.numeric_input_noise > 0 and numeric_values is not None:
                numeric_values = perturb_input_values(
                    numeric_values,
                    input_ids == self.config.num_token_id,
                    self.config.numeric_input_noise,
                    self.config.numeric_input_noise_relative,
                )
            inputs_embeds = embed_numbers(
                self.embed_tokens(input_ids),
                input_ids,
                numeric_values,
                self.config.num_token_id,
                self.value_encoding,
            )
            input_ids = None
        elif numeric_values is not None:
            raise ValueError("numeric_values needs input_ids (with inputs_embeds, fuse the values yourself)")
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **{CACHE_NAME: cache},
            **kwargs,
        )


class CausalQwenForNumericCausalLM(RemoteCodeMixin, CausalQwenPreTrainedModel, GenerationMixin):
    """CausalQwen language model: next-token OvR decisions plus a Cauchy value for ``<NUM>`` tokens."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # The loss is a mean over positions; the Trainer must not pass num_items_in_batch.
    accepts_loss_kwargs = False

    def __init__(self, config: CausalQwenConfig):
        super().__init__(config)
        self.model = CausalQwenModel(config)
        self.vocab_size = config.vocab_size
        self.abduction = CausalAbduction(config.hidden_size, config.causal_size)
        self.action = CausalAction(config.causal_size, config.vocab_size, config.ovr_threshold_init)
        self.lm_head = nn.Linear(config.causal_size, config.vocab_size, bias=False)
        self.value_head = nn.Linear(config.causal_size, 1)
        self.loss_type = "ForCausalLM"
        self._numeric_state: _NumericTrackState | None = None
        self.post_init()

    @property
    def normalizer(self) -> ValueNormalizer:
        return ValueNormalizer.from_config(self.config)

    def _resolve_mode(self, inference_mode: str | None, temperature: float | None) -> tuple[str, float]:
        mode = self.config.inference_mode if inference_mode is None else inference_mode
        if mode not in INFERENCE_MODES:
            raise ValueError(f"unknown inference_mode {mode!r}; expected one of {', '.join(INFERENCE_MODES)}")
        temp = self.config.causal_temperature if temperature is None else temperature
        if isinstance(temp, torch.Tensor):
            temp = float(temp)
        if not (isinstance(temp, (int, float)) and math.isfinite(temp) and temp >= 0):
            raise ValueError(f"temperature must be a finite number >= 0, got {temp!r}")
        return mode, float(temp)

    def _token_scale_weight(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """What the token head's scale needs from its weight W [V x C]: ``|W|`` (default) or the row L1 norms
        ``||W_k||_1`` [V] (``config.isotropic_scale``). Formed once per forward and shared by every loss chunk
        and the logits (not once per chunk).

        With gradients it is still a constant: the head's matmul (``cauchy.linear_cauchy``) folds the scale path's
        gradient into W's own, ``sgn(W)`` a row block at a time, so the step holds one |W| copy (545 MB in float32
        at Qwen2.5-0.5B; none for the row norms) and no gradient for it. When
        no gradient reaches W (evaluation with labels, or training with a frozen head) it is
        cached between batches; decoding and scoring without labels on the CPU stream a multi-block head instead
        (``streamed_linear_cauchy``: W read once, no |W| copy kept; ``_streams_head``). The cache is keyed on the
        weight's storage, version counter (bumped by every in-place update: optimizer steps,
        ``load_state_dict``, ``copy_``), dtype, device and the option, so a stale value is never used; a plain
        attribute, never saved, rebuilt after ``.to()``. ``torch.compile`` cannot trace the key (storage
        pointers), so compiled code recomputes.
        """
        weight = self.lm_head.weight if weight is None else weight
        isotropic = bool(self.config.isotropic_scale)
        if (torch.is_grad_enabled() and weight.requires_grad) or torch.compiler.is_compiling():
            return _scale_weight(weight.detach(), isotropic)
        # No gradient reaches W (no grad mode, or a frozen head; not apply_lora's recipe, whose trainable <NUM>
        # row makes the head's weight need gradients): a constant |W| is cached between steps instead of formed
        # again in every training forward.
        key = (
            weight.data_ptr(),
            weight._version,
            weight.dtype,
            weight.device,
            tuple(weight.shape),
            isotropic,
        )
        cached = getattr(self, "_scale_weight_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, _scale_weight(weight.detach(), isotropic))
            self._scale_weight_cache = cached
        return cached[1]

    def _packed_heads(self) -> _PackedHeads | None:
        """The heads packed for one ``generate`` call, or ``None`` where packing does not apply: a token head of
        more than one stream block (it streams W, ``streamed_linear_cauchy``, and a packed copy would double
        its memory), the isotropic scale, head weights of different dtypes or devices (a bf16 token head next to
        the float32 value path), or weights not materialised (``meta``: offloaded, loaded by hooks)."""
        weight = self.lm_head.weight
        if self.config.isotropic_scale or spans_stream_blocks(weight):
            return None
        abduction, value_head, b_noise = self.abduction, self.value_head, self.action.b_noise
        sources = (*abduction.parameters(), weight, *value_head.parameters(), b_noise)
        if weight.is_meta or any(t.dtype != weight.dtype or t.device != weight.device for t in sources):
            return None
        head_weight = torch.cat([weight, value_head.weight]).detach()
        return _PackedHeads(
            abduction_weight=torch.cat([abduction.loc_weight, abduction.scale_weight]).detach(),
            abduction_bias=torch.cat([abduction.loc_bias, abduction.scale_bias]).detach(),
            head_weight=head_weight,
            head_abs_weight=head_weight.abs(),
            value_bias=value_head.bias.detach(),
            noise=b_noise.detach().abs(),
            thresholds=self.action.ovr_thresholds.to(weight.dtype),
            normalizer=self.normalizer,
            value_scale_factor=float(self.config.value_scale_factor),
        )

    def _head_parameters(self) -> list[torch.Tensor]:
        """The parameters :meth:`_heads` uses (abduction, action noise, token and value heads), once each: the
        chunked loss computes their gradients in its forward (``modeling/loss.py``)."""
        # Not lm_head.weight: the loss takes it as a head input, read once per forward (under PEFT's
        # trainable_token_indices the property builds a new tensor, index_copy of the trained rows, at each read,
        # and a read inside a chunk would be a tensor the loss never differentiates against).
        tensors = [*self.abduction.parameters(), *self.action.parameters(), *self.value_head.parameters()]
        return list({id(t): t for t in tensors}.values())

    def _heads(
        self,
        hidden: torch.Tensor,
        mode: str,
        temperature: float,
        scale_weight: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
    ) -> tuple[CauchyHeads, torch.Tensor, torch.Tensor]:
        """Cauchy parameters of the token and value heads (value in normalised units), plus loc_U, scale_U.

        ``scale_weight`` is :meth:`_token_scale_weight` when the caller already formed it (once per forward);
        ``weight`` is ``lm_head.weight`` as the caller read it (the loss differentiates against that tensor).
        """
        loc_U, scale_U = self.abduction(hidden)
        loc, scale = self.action(loc_U, scale_U, mode, temperature)
        weight = self.lm_head.weight if weight is None else weight
        value_weight = self.value_head.weight
        isotropic = scale is not None and self.config.isotropic_scale
        # Without gradients (decoding, scoring) on the CPU the default head streams W once instead of reading W
        # and a cached |W|.
        stream = scale is not None and not isotropic and scale_weight is None and _streams_head(weight)
        if scale is not None and scale_weight is None and not stream:
            scale_weight = self._token_scale_weight(weight)
        if isotropic:
            # One scale per position: |W| (s 1) = s ||W_k||_1, a scale "matmul" of one column (the row norms).
            scale = scale.mean(-1, keepdim=True)
            loc_S, scale_S = linear_cauchy(
                *_as_dtype(loc, scale, weight), weight, abs_weight=scale_weight.unsqueeze(-1)
            )
            loc_Y = F.linear(loc.to(value_weight.dtype), value_weight, self.value_head.bias)
            scale_Y = scale.to(value_weight.dtype) * value_weight.abs().sum(-1)
        else:
            if stream:
                loc_S, scale_S = streamed_linear_cauchy(*_as_dtype(loc, scale, weight), weight)
            else:
                loc_S, scale_S = linear_cauchy(
                    *_as_dtype(loc, scale, weight), weight, abs_weight=scale_weight
                )
            loc_Y, scale_Y = linear_cauchy(*_as_dtype(loc, scale, value_weight), value_weight,
                                           self.value_head.bias)  # fmt: skip
        heads = CauchyHeads(
            loc_S, scale_S, loc_Y.squeeze(-1), None if scale_Y is None else scale_Y.squeeze(-1)
        )
        return heads, loc_U, scale_U

    def _gated_loss(self, hidden, labels, numeric_targets, mode: str, temp: float, scale_weight=None,
                    cls_reduction: str | None = None, weight=None):  # fmt: skip
        """The gated loss of hidden states [B, S, H] against unshifted ``labels`` and raw-unit value targets;
        ``weight`` is ``lm_head.weight`` as the caller read it (read here when not given)."""
        if mode == "deterministic":
            raise ValueError(
                "labels with inference_mode='deterministic': that mode is a point mass (scale 0), so the One-vs-Rest "
                "and Cauchy losses would be scored at the scale floor and mean nothing. Compute losses in "
                "'standard' (the default), 'exogenous', 'endogenous' or 'sampling'; decode in 'deterministic' "
                "(inference_mode= per call)"
            )
        if numeric_targets is not None:
            check_numeric_values(numeric_targets, labels)
            numeric_targets = self.normalizer(numeric_targets.float())
        weight = self.lm_head.weight if weight is None else weight
        return gated_loss(
            hidden,
            labels,
            numeric_targets,
            lambda h, w, *scale_w: self._heads(h, mode, temp, *scale_w, weight=w)[0],
            self.action.ovr_thresholds,
            num_token_id=self.config.num_token_id,
            gate_alpha=float(self.config.gate_alpha),
            reg_lambda=float(self.config.reg_lambda),
            reg_beta=float(self.config.reg_beta),
            chunk_size=chunk_rows(self.config.loss_chunk_size, self.config.vocab_size),
            cls_reduction=cls_reduction or self.config.cls_reduction,
            hard_negatives=self.config.cls_hard_negatives,
            head_inputs=(weight, *(() if scale_weight is None else (scale_weight,))),
            parameters=self._head_parameters(),
            compile_kernels=bool(self.config.loss_compile),
        )

    def _head_outputs(self, hidden, mode: str, temp: float, scale_weight=None) -> dict[str, torch.Tensor]:
        """The head fields of :class:`CausalQwenOutput` (logits, token and value Cauchy parameters, U) for hidden
        states [..., H]."""
        state = self._numeric_state
        packed = None if state is None or scale_weight is not None else state.heads
        if (
            packed is not None
            and mode in packed.MODES
            and hidden.device == packed.head_weight.device
            and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling()  # a compiled forward traces the modules, as before
        ):
            heads, loc_U, scale_U = packed(hidden, mode, temp)
            thresholds, normalizer, factor = packed.thresholds, packed.normalizer, packed.value_scale_factor
        else:
            heads, loc_U, scale_U = self._heads(hidden, mode, temp, scale_weight)
            thresholds, normalizer = self.action.ovr_thresholds, self.normalizer
            factor = self.config.value_scale_factor
        if heads.scale_S is None:
            # A point mass; expanded views cost no memory.
            scale_S = heads.loc_S.new_zeros(()).expand_as(heads.loc_S)
            scale_Y = heads.loc_Y.new_zeros(()).expand_as(heads.loc_Y)
            logits = heads.loc_S
        else:
            scale_S, scale_Y = heads.scale_S, heads.scale_Y
            thresholds = thresholds.to(heads.loc_S.dtype)  # logits in the token head dtype
            logits = (heads.loc_S - thresholds) / scale_S.clamp_min(SCALE_EPS)
        value_loc, value_scale = normalizer.inverse_cauchy(heads.loc_Y, scale_Y)
        # Post-hoc calibration (calibrate_value_scale); outputs only, never the loss.
        if factor != 1.0:
            value_scale = value_scale * factor
        return dict(logits=logits, loc_S=heads.loc_S, scale_S=scale_S, value_loc=value_loc,
                    value_scale=value_scale, loc_U=loc_U, scale_U=scale_U)  # fmt: skip

    def hidden_state_loss(self, hidden: torch.Tensor, labels: torch.LongTensor, numeric_labels=None,
                          cls_reduction: str | None = None):  # fmt: skip
        """The gated loss (``GatedLoss``: total, cls, reg) of last hidden states [B, S, H] computed elsewhere
        (e.g. a composite model that builds its own ``inputs_embeds``), in ``config.inference_mode``; ``labels``
        unshifted, ``numeric_labels`` the raw values at ``<NUM>`` labels; ``cls_reduction`` overrides the
        config's for this loss."""
        mode, temp = self._resolve_mode(None, None)
        weight = self.lm_head.weight
        scale_weight = None if mode == "deterministic" else self._token_scale_weight(weight)
        return self._gated_loss(
            hidden, labels, numeric_labels, mode, temp, scale_weight, cls_reduction, weight
        )

    def hidden_state_heads(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """The head fields of :class:`CausalQwenOutput` for last hidden states [..., H] computed elsewhere."""
        mode, temp = self._resolve_mode(None, None)
        return self._head_outputs(hidden, mode, temp)

    def value_interval(
        self, value_loc: torch.Tensor, value_scale: torch.Tensor, level: float = 0.9
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The central ``level`` interval ``(lower, upper)`` of predicted values (``value_loc``/``value_scale`` of
        the outputs): the Cauchy's own, or the calibrated one when ``config.value_interval_table`` is set
        (``training.evaluation.calibrate_value_intervals``)."""
        half = value_scale * interval_half_width(level, self.config.value_interval_table)
        return value_loc - half, value_loc + half

    @can_return_tuple
    @accepts_both_cache_names
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        numeric_values: torch.Tensor | None = None,
        numeric_formats: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        numeric_labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        inference_mode: str | None = None,
        temperature: float | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        return_logits: bool | None = None,
        **kwargs,
    ) -> CausalQwenOutput:
        r"""
        cache (`Cache`, *optional*): the KV cache; also accepted as `past_key_values` (its name before transformers
            5.24, see `_compat.py`).
        numeric_values (`torch.FloatTensor` [B, S], *optional*): value of each `<NUM>` input token (0 elsewhere);
            any float dtype (the tokenizer returns exact float64), cast to the float32 value path.
        numeric_formats (`torch.LongTensor` [B, S], *optional*): how each number was written (for the tokenizer's
            decode); accepted so that `model(**tokenizer(...))` works, not used.
        labels (`torch.LongTensor` [B, S], *optional*): unshifted target ids, -100 ignored (the model shifts).
        numeric_labels (`torch.FloatTensor` [B, S], *optional*): target values aligned with `labels`; defaults to
            `numeric_values` (in causal-LM training the input numbers are the targets).
        inference_mode (`str`, *optional*): overrides `config.inference_mode` for this call.
        temperature (`float`, *optional*): overrides `config.causal_temperature` (noise temperature) for this call.
        return_logits (`bool`, *optional*): return the vocabulary-sized fields even when training with labels.
        """
        mode, temp = self._resolve_mode(inference_mode, temperature)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            numeric_values=numeric_values,
            **kwargs,
        )
        hidden = outputs.last_hidden_state

        loss = loss_cls = loss_reg = None
        # Formed once here only for the loss (shared by its chunks and the logits); without labels ``_heads``
        # decides (``_streams_head``).
        weight = None if labels is None else self.lm_head.weight
        scale_weight = None if mode == "deterministic" or labels is None else self._token_scale_weight(weight)
        if labels is not None:
            targets = numeric_labels if numeric_labels is not None else numeric_values
            result = self._gated_loss(hidden, labels, targets, mode, temp, scale_weight, weight=weight)
            loss, loss_cls, loss_reg = result.total, result.cls, result.reg

        if return_logits is None:
            return_logits = labels is None or not self.training
        heads = (
            self._head_outputs(slice_logits_to_keep(hidden, logits_to_keep), mode, temp, scale_weight)
            if return_logits
            else {}
        )
        return CausalQwenOutput(
            loss=loss,
            loss_cls=loss_cls,
            loss_reg=loss_reg,
            **heads,
            **{CACHE_NAME: getattr(outputs, CACHE_NAME)},
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
    ) -> nn.Embedding:
        """Grow the vocabulary (embeddings, token head and OvR thresholds together); never shrink.

        ``resize_token_embeddings(len(tokenizer))`` on a Qwen2 checkpoint would cut its padded 151,936-row
        embedding (and may cut ``<NUM>``), so a smaller size raises instead.
        """
        rows = self.get_input_embeddings().weight.shape[0]
        if new_num_tokens is not None and new_num_tokens < rows:
            raise ValueError(
                f"refusing to shrink the embedding from {rows} to {new_num_tokens} rows: Qwen2 embeddings are "
                f"padded beyond the tokenizer length (len(tokenizer) is not the row count) and <NUM> is id "
                f"{self.config.num_token_id}, so shrinking to len(tokenizer) would cut trained rows and maybe "
                f"<NUM>. Nothing needs resizing when the tokenizer's ids are all < {rows}; to add tokens, grow "
                f"to max(len(tokenizer), {rows}) (optionally pad_to_multiple_of=64)"
            )
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        old = self.action.ovr_thresholds
        grown = old.new_full((embeddings.weight.shape[0],), float(self.config.ovr_threshold_init))
        grown[: old.shape[0]] = old
        self.action.ovr_thresholds = grown
        return embeddings

    # ----------------------------------------------------------------------------------------- generation

    @accepts_both_cache_names
    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        numeric_values: torch.Tensor | None = None,
        causal_temperature: float | None = None,
        **kwargs,
    ):
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            **{CACHE_NAME: cache},
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if causal_temperature is not None:
            model_inputs["temperature"] = causal_temperature
        step_ids = model_inputs.get("input_ids")
        if numeric_values is None:
            return model_inputs
        # Tokens past the end of the value track are assisted-decoding drafts; they hold no <NUM> (the draft
        # is cut before its first <NUM>, see _NumericDrafts), so they are fed value 0.
        drafts = input_ids.shape[1] - numeric_values.shape[1]
        if self._numeric_state is not None:
            self._numeric_state.drafts = max(drafts, 0)
        if step_ids is None or step_ids.shape[1] == 0:
            return model_inputs
        if drafts > 0:
            if (input_ids[:, -drafts:] == self.config.num_token_id).any():
                raise RuntimeError(
                    "a draft token is <NUM>: its value is not known before verification; wrap custom candidate "
                    "generators so that drafts stop before <NUM>"
                )
            numeric_values = F.pad(numeric_values, (0, drafts))
        values = numeric_values[:, -step_ids.shape[1] :].to(step_ids.device)
        model_inputs["numeric_values"] = values.masked_fill(step_ids != self.config.num_token_id, 0.0)
        return model_inputs

    def _update_model_kwargs_for_generation(
        self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1
    ):
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )
        track = model_kwargs.get("numeric_values")
        value_loc = getattr(outputs, "value_loc", None)
        state = self._numeric_state
        if track is not None and value_loc is not None and state is not None:
            # value_loc at position t is the value of token t + 1. The new tokens follow the last position
            # before the drafts (0 drafts outside assisted decoding).
            end = value_loc.shape[1] - state.drafts
            new = value_loc[:, end - 1 : end - 1 + num_new_tokens].to(device=track.device, dtype=track.dtype)
            state.track = model_kwargs["numeric_values"] = torch.cat([track, new], dim=-1)
            state.step_values.append(new[:, -1])
        return model_kwargs

    def _get_running_beams_for_next_iteration(self, *args, **kwargs):
        """Beam search: reorder the value track with the beams, as the KV cache is reordered."""
        running = super()._get_running_beams_for_next_iteration(*args, **kwargs)
        state = self._numeric_state
        if state is not None and state.track is not None:
            # [batch, beams, generated]: flat source rows, -1 beyond the current step
            beam_indices = running[2]
            step = int((beam_indices[0, 0] >= 0).sum()) - 1
            source_rows = beam_indices[..., step].reshape(-1).to(state.track.device, torch.long)
            state.track.copy_(state.track.index_select(0, source_rows))
        return running

    def _validate_model_kwargs(self, model_kwargs: dict) -> None:
        # forward takes the KV cache under both names (_compat.accepts_both_cache_names) but its signature shows
        # one; an assistant's generate receives its cache under the installed version's name (transformers 5.23:
        # past_key_values), which the signature check would reject.
        super()._validate_model_kwargs({k: v for k, v in model_kwargs.items() if k not in _CACHE_NAMES})

    def _get_candidate_generator(self, *args, **kwargs):
        return _NumericDrafts(super()._get_candidate_generator(*args, **kwargs), self)

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """``GenerationMixin.generate`` that also consumes ``numeric_values`` and returns generated values.

        Extra keyword arguments: ``numeric_values`` [B, P] for the prompt, ``inference_mode`` and
        ``causal_temperature`` (per-call overrides). Every decoding strategy that transformers runs in-library
        works: greedy, sampling, beam search and beam sampling (the value track is reordered with the beams),
        assisted and prompt-lookup decoding (drafts stop before their first ``<NUM>``, whose value is only
        known once the model has verified the token before it). With ``return_dict_in_generate=True`` the
        output carries ``numeric_values`` and ``numeric_formats`` aligned with ``sequences``: the prompt's own
        values (in their dtype: the tokenizer's float64 stay exact) and formats (``numeric_formats=`` from the
        tokenizer, else 0), then the generated values (format 0); in a float64 track a generated float32 value
        is stored as the shortest decimal that round-trips it (``-7.4``, not ``-7.400000095367432``).
        """
        self._refuse_hub_strategies(generation_config, kwargs)
        prompt = inputs if inputs is not None else kwargs.get("input_ids")
        numeric_values = kwargs.pop("numeric_values", None)
        numeric_formats = kwargs.pop("numeric_formats", None)
        if numeric_formats is not None and (
            prompt is None
            or not isinstance(numeric_formats, torch.Tensor)
            or numeric_formats.shape != prompt.shape
            or numeric_formats.is_floating_point()
        ):
            raise ValueError(
                "numeric_formats must be an integer tensor with the shape of input_ids (the tokenizer returns it)"
            )
        if prompt is None:
            if numeric_values is not None:
                raise ValueError("numeric_values needs input_ids in generate")
            embeds = kwargs.get("inputs_embeds")
            if embeds is None:
                raise ValueError(
                    "CausalQwen generate needs input_ids or inputs_embeds (to start from nothing, pass the start "
                    "token: input_ids=[[bos_token_id]])"
                )
            # With inputs_embeds, sequences hold only the generated tokens; the track starts empty.
            numeric_values = embeds.new_zeros((embeds.shape[0], 0), dtype=torch.float32)
        elif numeric_values is None:
            if (prompt == self.config.num_token_id).any():
                raise ValueError(
                    "the prompt contains <NUM> but numeric_values is None: pass the value of every <NUM> as "
                    "numeric_values [B, P] (the tokenizer returns it beside input_ids)"
                )
            numeric_values = torch.zeros(prompt.shape, dtype=torch.float32, device=prompt.device)
        else:
            check_numeric_values(numeric_values, prompt)
        prompt_values, numeric_values = numeric_values, numeric_values.float()
        # Saved and restored: an assistant model may be this very model, generating inside this call.
        state = _NumericTrackState(track=numeric_values, heads=self._packed_heads())
        outer_state, self._numeric_state = self._numeric_state, state
        try:
            out = super().generate(inputs, generation_config, numeric_values=numeric_values, **kwargs)
            state = self._numeric_state
        finally:
            self._numeric_state = outer_state
        if isinstance(out, GenerateBeamDecoderOnlyOutput):
            values = self._beam_values(out, state.step_values)
            output_class = CausalQwenGenerateBeamOutput
        elif isinstance(out, GenerateDecoderOnlyOutput):
            values = state.track[:, : out.sequences.shape[1]].to(out.sequences.device)
            output_class = CausalQwenGenerateOutput
        else:
            return out
        values, formats = self._prompt_exact(out.sequences, values, prompt_values, numeric_formats)
        return output_class(**_output_fields(out), numeric_values=values, numeric_formats=formats)

    def _prompt_exact(
        self,
        sequences: torch.LongTensor,
        values: torch.Tensor,
        prompt_values: torch.Tensor,
        prompt_formats: torch.LongTensor | None,
    ) -> tuple[torch.Tensor, torch.LongTensor]:
        """The value track of ``sequences`` with the prompt's own values (dtype and all) and formats put back.

        The loop ran on a float32 copy of the prompt values; the caller's (the tokenizer's exact float64) are what
        its decode needs to write the prompt back as written. Generated values are float32 predictions: in a
        float64 track each is stored as the shortest decimal that round-trips it, the decimal it stands for.
        """
        rows, prompt_len = sequences.shape[0], prompt_values.shape[1]
        per_prompt = rows // max(prompt_values.shape[0], 1)
        dtype = torch.float64 if prompt_values.dtype == torch.float64 else torch.float32
        is_num = sequences == self.config.num_token_id
        exact = values.to(dtype)
        exact[:, :prompt_len] = prompt_values.repeat_interleave(per_prompt, dim=0).to(exact.device, dtype)
        exact = torch.where(is_num, exact, 0.0)
        if dtype == torch.float64:
            generated = is_num.clone()
            generated[:, :prompt_len] = False
            exact[generated] = _shortest_decimals(values[generated].float())
        formats = torch.zeros(sequences.shape, dtype=torch.long, device=sequences.device)
        if prompt_formats is not None:
            formats[:, :prompt_len] = prompt_formats.repeat_interleave(per_prompt, dim=0).to(formats.device)
        return exact, torch.where(is_num, formats, 0)

    def _refuse_hub_strategies(self, generation_config: GenerationConfig | None, kwargs: dict) -> None:
        """Contrastive search, group and constrained beam search and DoLa moved to Hub repos (``custom_generate``)
        in transformers 5; their loops keep candidates the value track does not follow, so they are refused up
        front (with a clear message) rather than run with possibly wrong values."""
        config = copy.deepcopy(generation_config if generation_config is not None else self.generation_config)
        for key, value in kwargs.items():
            if hasattr(config, key):
                setattr(config, key, value)
        mode = config.get_generation_mode(kwargs.get("assistant_model"))
        if config.dola_layers is not None:
            mode = GenerationMode.DOLA_GENERATION
        if mode in _HUB_ONLY_MODES:
            raise ValueError(
                f"CausalQwen does not support {mode.value.replace('_', ' ')}: transformers 5 runs it from a Hub "
                "repository (custom_generate) whose loop does not carry the <NUM> value track. Supported: greedy, "
                "sampling, beam search and beam sampling (num_beams), assisted and prompt-lookup decoding"
            )

    def _beam_values(
        self, out: GenerateBeamDecoderOnlyOutput, step_values: list[torch.Tensor]
    ) -> torch.Tensor:
        """Generated values aligned with the returned beams: the value of the token chosen at step s of a beam is
        the ``value_loc`` that its source row (``beam_indices[:, s]``) predicted at that step. The prompt part and
        the masking to ``<NUM>`` positions are :meth:`_prompt_exact`'s."""
        sequences, beam_indices = out.sequences, out.beam_indices
        prompt_len = sequences.shape[1] - beam_indices.shape[1]
        values = torch.zeros(sequences.shape, dtype=torch.float32, device=sequences.device)
        for step in range(beam_indices.shape[1]):
            source = beam_indices[:, step]
            chosen = step_values[step].to(values.device)[source.clamp_min(0).long()]
            values[:, prompt_len + step] = torch.where(source >= 0, chosen, torch.zeros_like(chosen))
        return values

    # ------------------------------------------------------------------------------- knowledge inheritance

    @classmethod
    def from_qwen2(
        cls,
        path_or_model: str | os.PathLike | PreTrainedModel,
        *,
        calibration_input_ids: torch.LongTensor | None = None,
        **config_overrides,
    ):
        """Build a CausalQwen from a Qwen2 causal LM (a local path or a loaded ``Qwen2ForCausalLM``).

        Backbone weights are copied and the token head starts as the base ``lm_head``, so the
        ``deterministic`` mode reproduces the base logits. ``<NUM>`` takes id 151665 when the vocabulary has
        Qwen2.5's reserved rows; otherwise ``num_token_id`` (default: the first id past the embedding) gets a
        new row initialised to the mean embedding (and mean head row, whose logit is the mean logit, so it
        never wins the deterministic argmax). Embeddings only ever grow.

        Unless ``ovr_threshold_init`` is given, the One-vs-Rest threshold is calibrated on the base model: the
        median over positions of the top base logit, on ``calibration_input_ids`` (default: 8 x 128 random
        tokens, fixed seed). See the module docstring for why and for the measured agreement.
        """
        if isinstance(path_or_model, (str, os.PathLike)):
            base = Qwen2ForCausalLM.from_pretrained(path_or_model)
        elif isinstance(path_or_model, PreTrainedModel):
            base = path_or_model
        else:
            raise TypeError(
                f"from_qwen2 needs a path or a Qwen2 causal LM, got {type(path_or_model).__name__}"
            )
        if not (hasattr(base, "model") and hasattr(base, "lm_head") and base.config.model_type in ("qwen2",)):
            raise TypeError(
                f"from_qwen2 needs a Qwen2 causal LM (model_type 'qwen2'), got {type(base).__name__}"
            )

        base_rows = base.get_input_embeddings().weight.shape[0]
        default_num_id = QWEN25_NUM_TOKEN_ID if base_rows > QWEN25_NUM_TOKEN_ID else base_rows
        num_token_id = config_overrides.pop("num_token_id", default_num_id)
        if "ovr_threshold_init" not in config_overrides:
            config_overrides["ovr_threshold_init"] = _calibrated_threshold(base, calibration_input_ids)
        field_names = {f.name for f in fields(CausalQwenConfig)}
        base_dict = {
            k: v for k, v in base.config.to_dict().items() if k in field_names and k != "architectures"
        }
        base_dict.update(config_overrides)
        base_dict.update(num_token_id=num_token_id, vocab_size=max(base_rows, num_token_id + 1))
        config = CausalQwenConfig(**base_dict)

        model = cls(config)
        src_dtype = base.lm_head.weight.dtype
        with torch.no_grad():
            state = {k: v for k, v in base.model.state_dict().items() if k != "embed_tokens.weight"}
            missing, unexpected = model.model.load_state_dict(state, strict=False)
            if unexpected or any(
                not k.startswith("value_encoding.") and k != "embed_tokens.weight" for k in missing
            ):
                raise ValueError(f"backbone mismatch: missing {missing}, unexpected {unexpected}")
            embed = base.get_input_embeddings().weight.float()
            new_embed = model.model.embed_tokens.weight
            new_embed[:base_rows] = embed
            if new_embed.shape[0] > base_rows:
                new_embed[base_rows:] = embed.mean(0)
            if not config.tie_word_embeddings:
                head = base.lm_head.weight.float()
                width = min(config.causal_size, head.shape[1])
                new_head = model.lm_head.weight
                new_head.zero_()
                new_head[:base_rows, :width] = head[:, :width]
                if new_head.shape[0] > base_rows:
                    new_head[base_rows:, :width] = head[:, :width].mean(0)
        model.generation_config = copy.deepcopy(base.generation_config)
        return model.to_backbone_dtype(src_dtype)

    def to_backbone_dtype(self, dtype: torch.dtype) -> CausalQwenForNumericCausalLM:
        """Cast to ``dtype`` except the float32 value path (:data:`FP32_VALUE_PATH`); ``model.to(dtype)`` casts
        everything, as for any ``nn.Module``."""
        self.to(dtype)
        for name, module in self.named_modules():
            if name.rsplit(".", 1)[-1] in FP32_VALUE_PATH:
                module.float()
        return self
