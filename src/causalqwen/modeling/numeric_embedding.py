"""Numeric input embedding: the value of each ``<NUM>`` token is fused into its embedding.

The tokenizer replaces every number by ``<NUM>`` and returns ``numeric_values`` [B, S]. At ``<NUM>`` positions
the embedding becomes ``encoding(embed(<NUM>), v)``; elsewhere it is untouched. Four encodings are
pluggable through ``config.value_encoding`` (``benchmarks/numeric.py`` compares them):

* ``"multiscale"`` (seed 002): features of v (sign, ``ln|v|``, decade, position in the decade, sin/cos of
  ``ln|v|`` at geometric frequencies ``f * 10000^(-k/K)``, f = ``config.value_encoding_max_frequency``, the seed's
  1 by default) are projected to H and fused with ``embed(<NUM>)`` by
  sigmoid gates and a projection. At init the value block of the projection is zero and the embedding
  block is ``I / sigmoid(b)``, so the fused vector equals ``embed(<NUM>)`` (to float rounding) whatever the
  (half-open) value gate: a pretrained backbone sees exactly what it saw before.
* ``"multiscale_linear"`` (default): the same fusion, with two more features of the *normalised* value t
  (``config.value_normalization``): ``symlog(t)`` and ``t / (1 + |t|)``. The seed's features are all
  logarithmic, so a target linear in an input needed an exponential of them; measured (docs/causal_qwen.md),
  the linear features are what lets the tiny benchmark models learn tables such as diabetes.
* Either multiscale encoding can add log-magnitude bins (``config.value_encoding_bin_width`` > 0): signed hat
  functions of ``ln|v|`` (:func:`log_bin_features`), features that vary by order one across every column's own
  range, which is what a table written in its raw units needs (docs/causal_qwen.md, "Raw tables").
* ``"xval"`` (xVal): ``embed(<NUM>) * t`` with t the normalised value (``config.value_normalization``);
  like the xVal paper it needs values of order one, so pair it with an ``affine`` or ``symlog`` normalisation
  when the data spans large magnitudes (an un-normalised 1e12 multiplies the embedding by 1e12).
* ``"log_additive"``: ``embed(<NUM>) + symlog(t) * a`` with a learned direction a (zero at init).

Values are always handled in float32 (bf16 cannot even tell 1000 from 1001); NaN/inf raise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..configuration.configuration_causal_qwen import CausalQwenConfig
from ._checks import check_finite

__all__ = [
    "LogAdditiveEncoding",
    "MultiScaleValueEncoding",
    "ValueNormalizer",
    "XValEncoding",
    "LOG_BIN_RANGE",
    "build_value_encoding",
    "check_numeric_values",
    "embed_numbers",
    "fit_log_standardization",
    "fit_symlog_normalization",
    "frequency_ladder",
    "log_bin_centres",
    "log_bin_features",
    "multiscale_feature_count",
    "multiscale_features",
    "perturb_input_values",
]

# sigmoid(4) = 0.982: the token-embedding gate starts almost open, away from saturation so that it still
# receives usable gradients.
_GATE_BIAS = 4.0
# The value gate starts half open (sigmoid(0)). The fused vector still equals embed(<NUM>) at init, because
# the value block of the fusion projection is zero; the gate only sets how strongly that block's gradient
# sees the value features. Starting it nearly closed (sigmoid(-4) = 0.018, as first written) let the value
# signal in so slowly that tiny models settled on a constant value prediction: on y = 2x + 3 (H=32, 1,000
# steps) 2 of 3 seeds ended at the training-mean MAE (48); half open, all 3 reach MAE 0.43-0.69.
_VALUE_GATE_BIAS = 0.0
# float32 expm1 overflows above ~88.7; symlog inverses clamp there instead of returning inf.
_MAX_LOG = 88.0
_MAX_NORMALISED = 1e30
# Range of ln|v| covered by the log-magnitude bins (config.value_encoding_bin_width): 1e-3 ... 1.2e6 at full
# resolution; a value outside it lights the end bin (the other features still tell its magnitude).
LOG_BIN_RANGE = (-7.0, 14.0)


_NOT_FINITE = "numeric_values contains NaN or infinite entries; numbers must be finite"


def check_numeric_values(
    numeric_values: torch.Tensor, input_ids: torch.Tensor | None, finite: bool = True
) -> None:
    """Raise a clear error for a malformed ``numeric_values`` tensor (shape, dtype, and NaN/inf unless
    ``finite=False``: the caller checks the entries it uses)."""
    if not isinstance(numeric_values, torch.Tensor):
        raise TypeError(f"numeric_values must be a torch.Tensor, got {type(numeric_values).__name__}")
    if not numeric_values.is_floating_point():
        raise TypeError(f"numeric_values must be a floating-point tensor, got {numeric_values.dtype}")
    if input_ids is not None and numeric_values.shape != input_ids.shape:
        raise ValueError(
            f"numeric_values must have the shape of input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(numeric_values.shape)}"
        )
    if finite:
        check_finite(numeric_values, _NOT_FINITE)


def _symlog(t: torch.Tensor) -> torch.Tensor:
    return torch.sign(t) * torch.log1p(t.abs())


def log_bin_centres(bin_width: float) -> torch.Tensor:
    """Centres of the log-magnitude bins: every ``bin_width`` over :data:`LOG_BIN_RANGE` (none when 0)."""
    if bin_width <= 0:
        return torch.empty(0)
    low, high = LOG_BIN_RANGE
    return low + bin_width * torch.arange(int(math.floor((high - low) / bin_width + 1e-9)) + 1)


def multiscale_feature_count(num_frequencies: int, linear: bool = False, bin_width: float = 0.0) -> int:
    """The width of :func:`multiscale_features`: 4 scalars, a sine and a cosine per frequency, with a
    normalizer (``linear``) the two features of the normalised value, and one feature per log-magnitude bin."""
    return 4 + 2 * num_frequencies + (2 if linear else 0) + len(log_bin_centres(bin_width))


def log_bin_features(values: torch.Tensor, bin_width: float) -> torch.Tensor:
    """``sign(v) * max(0, 1 - |ln|v| - c| / bin_width)`` for every bin centre c: hat functions of the log
    magnitude, so at most two are nonzero and they interpolate linearly between centres (a piecewise-linear
    encoding, Gorishniy et al., NeurIPS 2022). Zero gives all zeros; ln|v| is clamped into the bins' range."""
    centres = log_bin_centres(bin_width).to(values.device)
    v = values.float()
    nonzero = v != 0
    log_abs = torch.log(torch.where(nonzero, v.abs(), 1.0)).clamp(float(centres[0]), float(centres[-1]))
    hats = (1.0 - (log_abs.unsqueeze(-1) - centres).abs() / bin_width).clamp_min(0.0)
    return hats * torch.sign(v).unsqueeze(-1)


def frequency_ladder(num_frequencies: int, max_frequency: float, device=None) -> torch.Tensor:
    """The sinusoids' frequencies [K], ``max_frequency * 10000^(-i / K)``: geometric from ``max_frequency`` down."""
    steps = torch.arange(num_frequencies, device=device, dtype=torch.float32)
    return max_frequency * torch.pow(10000.0, -steps / num_frequencies)


def multiscale_features(
    values: torch.Tensor,
    num_frequencies: int,
    normalizer: ValueNormalizer | None = None,
    max_frequency: float = 1.0,
    bin_width: float = 0.0,
) -> torch.Tensor:
    """Features [..., 4 + 2K (+ 2) (+ bins)] of finite ``values``: sign, ln|v|/10, decade/10, position in the
    decade, sin, cos; with a ``normalizer``, also ``symlog(t)`` and ``t / (1 + |t|)`` of the normalised value t;
    with ``bin_width`` > 0, the :func:`log_bin_features`.

    Zero has sign 0 and ``ln|v|`` treated as 0, so it never produces ``-inf``.
    """
    v = values.float()
    nonzero = v != 0
    safe_abs = torch.where(nonzero, v.abs(), 1.0)
    log_abs = torch.log(safe_abs)
    log10 = torch.log10(safe_abs)
    decade = torch.floor(log10)
    angles = log_abs.unsqueeze(-1) * frequency_ladder(num_frequencies, max_frequency, v.device)
    scalars = [torch.sign(v), log_abs / 10.0, decade / 10.0, log10 - decade]
    if normalizer is not None:
        # A tiny normalisation scale can overflow float32 to inf; clamped, both features saturate instead.
        t = normalizer(v).clamp(-_MAX_NORMALISED, _MAX_NORMALISED)
        scalars += [_symlog(t), t / (1.0 + t.abs())]
    features = [torch.stack(scalars, dim=-1), torch.sin(angles), torch.cos(angles)]
    if bin_width > 0:
        features.append(log_bin_features(v, bin_width))
    return torch.cat(features, dim=-1)


def fit_log_standardization(values, shift: float, scale: float) -> tuple[float, float]:
    """``(log_shift, log_scale)`` for a ``symlog`` normalisation: the mean and standard deviation (1 if zero) of
    ``symlog((values - shift) / scale)`` over the finite ``values`` (the training targets)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    logs = _symlog((v[torch.isfinite(v)] - shift) / scale)
    if logs.numel() == 0:
        return 0.0, 1.0
    std = float(logs.std(unbiased=False))
    return float(logs.mean()), std if std > 0 else 1.0


def fit_symlog_normalization(values) -> dict[str, float | str]:
    """Config settings of a ``symlog`` normalisation fitted to training targets spanning many decades: shift 0,
    scale = the 5th percentile of the nonzero finite |y| (1 when there is none), and the log-space
    standardisation of :func:`fit_log_standardization`. The numeric benchmark's and the CLI's recipe."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    nonzero = v[torch.isfinite(v) & (v != 0)].abs()
    # numpy's percentile (linear interpolation), which the recorded benchmark figures were fitted with.
    scale = float(np.percentile(nonzero.numpy(), 5)) if nonzero.numel() else 1.0
    log_shift, log_scale = fit_log_standardization(v, 0.0, scale)
    return dict(value_normalization="symlog", value_norm_shift=0.0, value_norm_scale=scale,
                value_norm_log_shift=log_shift, value_norm_log_scale=log_scale)  # fmt: skip


class ValueNormalizer:
    """Config-driven transform of values: ``t = (y - shift) / scale``, then optionally ``symlog`` followed by
    ``(t - log_shift) / log_scale`` (a standardisation of the log-space value).

    Regression targets are normalised before the loss; predicted Cauchy (loc, scale) are mapped back with
    :meth:`inverse_cauchy`, so the model reports values in the data's units.
    """

    def __init__(
        self,
        kind: str = "none",
        shift: float = 0.0,
        scale: float = 1.0,
        log_shift: float = 0.0,
        log_scale: float = 1.0,
    ):
        if kind not in ("none", "affine", "symlog"):
            raise ValueError(f"unknown value normalisation {kind!r}")
        for name, value in (("scale", scale), ("log scale", log_scale)):
            if not value > 0:
                raise ValueError(f"value normalisation {name} must be positive, got {value}")
        self.kind, self.shift, self.scale = kind, float(shift), float(scale)
        self.log_shift, self.log_scale = float(log_shift), float(log_scale)

    @property
    def _standardises_logs(self) -> bool:
        # Skipped at the defaults so that a checkpoint without standardisation computes exactly as before.
        return self.kind == "symlog" and (self.log_shift, self.log_scale) != (0.0, 1.0)

    @classmethod
    def from_config(cls, config: CausalQwenConfig) -> ValueNormalizer:
        return cls(
            config.value_normalization,
            config.value_norm_shift,
            config.value_norm_scale,
            config.value_norm_log_shift,
            config.value_norm_log_scale,
        )

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return y
        t = (y - self.shift) / self.scale
        if self.kind == "symlog":
            t = _symlog(t)
        if self._standardises_logs:
            t = (t - self.log_shift) / self.log_scale
        return t

    def inverse(self, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return t
        if self._standardises_logs:
            t = t * self.log_scale + self.log_shift
        if self.kind == "symlog":
            t = torch.sign(t) * torch.expm1(t.abs().clamp_max(_MAX_LOG))
        return t * self.scale + self.shift

    def inverse_cauchy(self, loc: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map a normalised Cauchy (loc, scale) to data units.

        A monotone map sends quantiles to quantiles: the median maps to the median, and the Cauchy scale (half
        the inter-quartile range) is reported as half the mapped inter-quartile range, which is exact for the
        affine map and the natural spread for ``symlog``.
        """
        if self.kind == "none":
            return loc, scale
        if self.kind == "affine":
            return self.inverse(loc), scale * self.scale
        lo, hi = self.inverse(loc.float() - scale.float()), self.inverse(loc.float() + scale.float())
        return self.inverse(loc.float()).to(loc.dtype), ((hi - lo) / 2).to(scale.dtype)


class MultiScaleValueEncoding(nn.Module):
    """Gated fusion of ``embed(<NUM>)`` with a projection of :func:`multiscale_features` (seed 002)."""

    def __init__(
        self,
        hidden_size: int,
        num_frequencies: int,
        normalizer: ValueNormalizer | None = None,
        max_frequency: float = 1.0,
        bin_width: float = 0.0,
    ):
        super().__init__()
        self.num_frequencies, self.max_frequency = num_frequencies, float(max_frequency)
        self.normalizer, self.bin_width = normalizer, float(bin_width)
        num_features = multiscale_feature_count(num_frequencies, normalizer is not None, self.bin_width)
        h = hidden_size
        self.value_proj_weight = nn.Parameter(torch.empty(h, num_features))
        self.value_proj_bias = nn.Parameter(torch.empty(h))
        self.num_gate_weight = nn.Parameter(torch.empty(h, h))
        self.num_gate_bias = nn.Parameter(torch.empty(h))
        self.value_gate_weight = nn.Parameter(torch.empty(h, h))
        self.value_gate_bias = nn.Parameter(torch.empty(h))
        self.fusion_weight = nn.Parameter(torch.empty(h, 2 * h))
        self.fusion_bias = nn.Parameter(torch.empty(h))

    def _init_causal_weights(self, config: CausalQwenConfig) -> None:
        h = self.num_gate_bias.shape[0]
        # Unit-variance projection (std 1/sqrt(features)), not the backbone's initializer_range (0.02): the
        # fusion's value block starts at zero, so its first gradients are proportional to this projection's
        # output; at 0.02 they were ~50x weaker and the value path escaped its zero start too late on some seeds.
        init.normal_(self.value_proj_weight, std=self.value_proj_weight.shape[1] ** -0.5)
        init.zeros_(self.value_proj_bias)
        init.zeros_(self.num_gate_weight)
        init.constant_(self.num_gate_bias, _GATE_BIAS)
        init.zeros_(self.value_gate_weight)
        init.constant_(self.value_gate_bias, _VALUE_GATE_BIAS)
        # [I / sigmoid(b) | 0]: undoes the open gate exactly, ignores the value until training moves it.
        identity = torch.eye(h, dtype=self.fusion_weight.dtype, device=self.fusion_weight.device)
        block = torch.cat(
            [identity / torch.sigmoid(torch.tensor(_GATE_BIAS)), torch.zeros_like(identity)], dim=1
        )
        init.copy_(self.fusion_weight, block)
        init.zeros_(self.fusion_bias)

    def forward(self, num_embeds: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        dtype = self.value_proj_weight.dtype
        h = F.linear(
            multiscale_features(
                values, self.num_frequencies, self.normalizer, self.max_frequency, self.bin_width
            ).to(dtype),
            self.value_proj_weight,
            self.value_proj_bias,
        )
        e = num_embeds.to(dtype)
        w_num = torch.sigmoid(F.linear(h, self.num_gate_weight, self.num_gate_bias))
        w_val = torch.sigmoid(F.linear(e, self.value_gate_weight, self.value_gate_bias))
        return F.linear(torch.cat([w_num * e, w_val * h], dim=-1), self.fusion_weight, self.fusion_bias)


class XValEncoding(nn.Module):
    """xVal: the ``<NUM>`` embedding scaled by the (normalised) value; no parameters of its own."""

    def __init__(self, normalizer: ValueNormalizer):
        super().__init__()
        self.normalizer = normalizer

    def _init_causal_weights(self, config: CausalQwenConfig) -> None:
        pass

    def forward(self, num_embeds: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return num_embeds * self.normalizer(values.float()).to(num_embeds.dtype).unsqueeze(-1)


class LogAdditiveEncoding(nn.Module):
    """``embed(<NUM>) + symlog(t) * a``: one learned direction, zero at init."""

    def __init__(self, hidden_size: int, normalizer: ValueNormalizer):
        super().__init__()
        self.normalizer = normalizer
        self.direction = nn.Parameter(torch.empty(hidden_size))

    def _init_causal_weights(self, config: CausalQwenConfig) -> None:
        init.zeros_(self.direction)

    def forward(self, num_embeds: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        t = self.normalizer(values.float())
        return num_embeds + _symlog(t).to(num_embeds.dtype).unsqueeze(-1) * self.direction.to(
            num_embeds.dtype
        )


def build_value_encoding(config: CausalQwenConfig) -> nn.Module:
    """The encoding module named by ``config.value_encoding``."""
    normalizer = ValueNormalizer.from_config(config)
    if config.value_encoding in ("multiscale", "multiscale_linear"):
        return MultiScaleValueEncoding(
            config.hidden_size,
            config.value_encoding_frequencies,
            normalizer if config.value_encoding == "multiscale_linear" else None,
            config.value_encoding_max_frequency,
            config.value_encoding_bin_width,
        )
    if config.value_encoding == "xval":
        return XValEncoding(normalizer)
    if config.value_encoding == "log_additive":
        return LogAdditiveEncoding(config.hidden_size, normalizer)
    raise ValueError(f"unknown value_encoding {config.value_encoding!r}")


def perturb_input_values(
    numeric_values: torch.Tensor, num_mask: torch.Tensor, std: float, relative: bool = False
) -> torch.Tensor:
    """The training-time input noise of ``config.numeric_input_noise`` at the ``<NUM>`` positions
    (``num_mask``), other entries kept: ``v + std * e`` or, ``relative``, ``v * exp(std * e)`` with e ~ N(0, 1)
    (log-normal: keeps the sign and zero, and is the same fraction of every column's values whatever their unit).
    Only the embedding side sees it; the caller keeps the clean values as targets. Non-finite values are left
    for :func:`check_numeric_values`."""
    noise = torch.randn_like(numeric_values) * std
    noisy = numeric_values * torch.exp(noise) if relative else numeric_values + noise
    return torch.where(num_mask, noisy, numeric_values)


def embed_numbers(
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    numeric_values: torch.Tensor | None,
    num_token_id: int,
    encoding: nn.Module,
) -> torch.Tensor:
    """Replace the embeddings at ``<NUM>`` positions by ``encoding(embed(<NUM>), value)``.

    Only the ``<NUM>`` rows are encoded (no [B, S, H] work for ordinary tokens), except under torch.compile,
    where every position is encoded and the ``<NUM>`` rows selected (no dynamic shapes). ``numeric_values`` may
    be ``None`` only when there is no ``<NUM>``. Only the values of ``<NUM>`` tokens are read, so only they
    must be finite (one check fewer per decoding step without a ``<NUM>``; the prompt's whole track is checked
    by ``generate`` and a training batch's by the loss).
    """
    mask = input_ids == num_token_id
    if numeric_values is None:
        # A <NUM> stands for a number; encoding a made-up 0 would be silently wrong (the tokenizer returns the
        # values). Not checkable under torch.compile (data-dependent), where generate has already checked.
        if not torch.compiler.is_compiling() and mask.any():
            raise ValueError(
                f"input_ids contain <NUM> (id {num_token_id}) but numeric_values is None: pass the value of every "
                "<NUM> as numeric_values [B, S] (the tokenizer returns it beside input_ids); to train, the same "
                "values are the targets, or pass numeric_labels aligned with labels (docs/training.md)"
            )
        numeric_values = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    else:
        check_numeric_values(numeric_values, input_ids, finite=False)
    if torch.compiler.is_compiling():
        # Static shapes for torch.compile: encode every position and select (decoding steps are [B, 1]).
        fused = encoding(inputs_embeds, numeric_values.to(inputs_embeds.device))
        return torch.where(mask.unsqueeze(-1), fused.to(inputs_embeds.dtype), inputs_embeds)
    if not mask.any():
        if torch.is_grad_enabled() and any(p.requires_grad for p in encoding.parameters()):
            # No <NUM> here, but a training step must still give every encoding parameter a (zero) gradient: under
            # DDP/FSDP a process whose batch has no number would otherwise skip them and the gradient reduction
            # would wait or fail (find_unused_parameters=False). Encoding no rows costs nothing.
            empty = encoding(inputs_embeds[:0, 0], numeric_values[:0, 0])
            return inputs_embeds + empty.sum().to(inputs_embeds.dtype)
        return inputs_embeds
    values = numeric_values[mask]
    check_finite(values, _NOT_FINITE)
    fused = encoding(inputs_embeds[mask], values)
    out = inputs_embeds.clone()
    out[mask] = fused.to(out.dtype)
    return out
