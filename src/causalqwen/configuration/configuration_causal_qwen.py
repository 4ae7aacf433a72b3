"""CausalQwen configuration: a Qwen2 configuration plus the abduction-action settings.

Unknown keys (``configuration/_keys.py``): an error naming the closest field when a user builds the config
(``CausalQwenConfig(gama_init=2.0)``), a warning when a saved config carries attributes that tooling added
(they load as attributes, as with ``PreTrainedConfig``).

``causal_temperature`` is the noise temperature of the action network. It is deliberately not called
``temperature``: transformers copies a model config's ``temperature`` into the generation config (where it
means softmax temperature) and refuses to save a model config that carries one.
"""

import math
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import Qwen2Config

from ._keys import TRANSFORMERS_EXTRA_KEYS, KnownKeysMixin

__all__ = [
    "CLS_REDUCTIONS",
    "FROM_SCRATCH_TOKEN_PRIOR",
    "INFERENCE_MODES",
    "QWEN25_NUM_TOKEN_ID",
    "TRANSFORMERS_EXTRA_KEYS",
    "VALUE_ENCODINGS",
    "VALUE_NORMALIZATIONS",
    "CausalQwenConfig",
]

# First unused reserved id of the Qwen2.5 vocabulary (151,643 BPE ranks + 22 special tokens): <NUM>'s id.
QWEN25_NUM_TOKEN_ID = 151665
CLS_REDUCTIONS = ("sum", "balanced", "hard_negatives")
INFERENCE_MODES = ("standard", "deterministic", "exogenous", "endogenous", "sampling")
VALUE_ENCODINGS = ("multiscale", "multiscale_linear", "xval", "log_additive")
VALUE_NORMALIZATIONS = ("none", "affine", "symlog")
# Narrowest log-magnitude bin: 2,101 bins over ln|v| in [-7, 14]; narrower ones only add features that overfit.
MIN_BIN_WIDTH = 0.01
# Initialisation for a CausalQwen trained from scratch to write text (not converted with ``from_qwen2``, whose
# thresholds are calibrated on the base). With the defaults (C = 0, gamma = 1) every token starts at P = 1/2 and
# the rank z = W.h / (|W|_1 scale_U) is bounded by loc_U / scale_U, so nothing is ranked until scale_U shrinks:
# over a 151,670-token vocabulary a fresh model memorising two sentences stayed at 6 % token accuracy after
# 400 Adam steps; with this prior 100 % (plain Qwen2: 100 % at 200). Not the default: on the numeric benchmark
# it helps the wide-range and unit tasks and costs the linear and diabetes ones (docs/causal_qwen.md).
FROM_SCRATCH_TOKEN_PRIOR = {"ovr_threshold_init": 8.0, "gamma_init": 0.1}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_interval_table(table: dict | None) -> None:
    """A ``value_interval_table`` is None or ``{"levels", "half_widths"}``: levels strictly increasing in
    (0, 1), widths finite, >= 0 and non-decreasing (a wider level never gets a narrower interval)."""
    if table is None:
        return
    _check(
        isinstance(table, dict) and set(table) == {"levels", "half_widths"},
        f"value_interval_table must be a dict with keys 'levels' and 'half_widths', got {table!r}",
    )
    levels, widths = list(table["levels"]), list(table["half_widths"])
    _check(
        len(levels) == len(widths) > 0,
        f"value_interval_table needs as many half_widths as levels (>= 1), got {len(levels)} and {len(widths)}",
    )
    _check(
        all(0.0 < lv < 1.0 for lv in levels) and all(a < b for a, b in zip(levels, levels[1:])),
        f"value_interval_table levels must increase strictly inside (0, 1), got {levels}",
    )
    _check(
        all(math.isfinite(w) and w >= 0 for w in widths) and all(a <= b for a, b in zip(widths, widths[1:])),
        f"value_interval_table half_widths must be finite, >= 0 and non-decreasing, got {widths}",
    )


@strict
class CausalQwenConfig(KnownKeysMixin, Qwen2Config):
    """A Qwen2 configuration plus the abduction-action settings of CausalQwen.

    Args (beyond :class:`~transformers.Qwen2Config`):
        causal_size: size C of the latent causal vector U (``None``: equal to ``hidden_size``, which makes the
            abduction an exact identity at init and allows tying ``lm_head`` to the embeddings).
        num_token_id: id of the ``<NUM>`` token (151665, the first free reserved id of Qwen2.5).
        gamma_init: exact initial scale of U (``softplus(b_s)`` with zero weights).
        b_noise_init: initial value of every entry of the exogenous noise scale ``b_noise`` (>= 0).
        ovr_threshold_init: initial One-vs-Rest threshold C_k of every token.
        inference_mode: default decision rule, one of :data:`INFERENCE_MODES`.
        causal_temperature: factor on the exogenous noise (>= 0).
        value_encoding: ``"multiscale_linear"`` (default: gated fusion of sign / log-magnitude / sinusoidal
            features and two linear features of the normalised value), ``"multiscale"`` (seed 002's fusion,
            logarithmic features only), ``"xval"`` (``embed(<NUM>) * value``) or ``"log_additive"``
            (``embed(<NUM>) + symlog(value) a``).
        value_encoding_frequencies: number of sinusoidal frequencies of ``ln|v|`` in the multiscale encoding.
        value_encoding_max_frequency: the highest of those frequencies (the others fall geometrically below it
            by ``10000^(-k/K)``). At the seed's 1.0 the fastest sinusoid turns once per factor e^(2 pi) = 535 of
            the value, so two values 5 % apart differ by at most 0.05 in any feature; a comparison that must
            resolve a few percent (a budget against a tool's need) needs a higher one.
        value_encoding_bin_width: with a multiscale encoding, > 0 adds log-magnitude bins: hat functions of
            ``ln|v|`` centred every ``bin_width`` over [-7, 14] (values 1e-3 ... 1.2e6), times the sign, so each
            value lights at most two bins and the projection reads a piecewise-linear function of ln|v|
            (``numeric_embedding.log_bin_features``). Unlike the sinusoids these features change by order one
            across a factor of e^bin_width whatever the magnitude, so a table whose columns live at different
            magnitudes (bmi 18-42 beside s5 3.3-6.1) gives each column features that vary across its own range.
            0.0 (default) = off; 0.25 is what the raw-table recipe uses (docs/causal_qwen.md). Must be 0 or
            >= 0.01.
        value_normalization: ``"none"``, ``"affine"`` (``(y - shift) / scale``) or ``"symlog"``
            (``sign(y') log1p(|y'|)`` of the affine-normalised value); applied to regression targets and
            inverted for predictions, so outputs are in the data's units.
        value_norm_shift / value_norm_scale: the affine part of the normalisation.
        value_norm_log_shift / value_norm_log_scale: with ``"symlog"``, the log-space value is standardised
            too, ``t = (symlog((y - shift) / scale) - log_shift) / log_scale`` (``ValueNormalizer``), so that
            values over many decades reach the value head and the ``<NUM>`` encoding's linear features at order
            one instead of spanning 0 ... 20 (the mean and standard deviation of the training targets' symlog:
            ``numeric_embedding.fit_log_standardization``). Defaults 0 / 1: no standardisation.
        gate_alpha: floor of the regression gate ``alpha + (1 - alpha) P_NUM`` in [0, 1].
        reg_lambda: weight of the regression term (>= 0). The default 5 was chosen by the 5-seed ablation of
            ``benchmarks/numeric.py`` (docs/causal_qwen.md): 1 left the value head at a constant prediction
            on some seeds, 20 learned values best but cost the ``<NUM>`` decision on wide-range data.
        reg_beta: beta-NLL weighting of the value term (Seitzer et al., ICLR 2022) in [0, 1]: each ``<NUM>``
            position's Cauchy NLL is weighted by its own predicted value scale to the power beta (detached),
            normalised so the weights average 1 over the batch's ``<NUM>`` positions. The NLL's gradient with
            respect to the value's loc is ``2r / (s^2 + r^2)`` (r the residual, s the scale): rows the model
            already fits tightly (small s) dominate it by ``1/s``, and rows it fits badly (the extremes of a
            range, a hard row of a table) are left behind; ``s^beta`` evens that out (beta = 1: the gradient
            depends on r/s only). The scale's own fixed point ``s = |r|`` is unchanged. 0 (default) = plain NLL.
            Because the weights are normalised over the batch, the value term of a batch is no longer a sum over
            its rows: gradient accumulation and data-parallel processes each normalise their own weights, so
            they equal one big batch only at 0 (where ``CausalQwenTrainer``'s accumulation is exact). 0.5 gave a
            better worst seed than 0 on every task of ``benchmarks/numeric.py`` in one 5-seed run and not in an
            equivalent second one (docs/causal_qwen.md), so it is an option, not the default.
        loss_chunk_size: positions per chunk in the chunked loss (bounds the [positions x V] working set);
            with a small vocabulary a chunk takes more positions, up to 512K elements per [chunk x V] tensor
            (``modeling.loss.chunk_rows``).
        cls_reduction: ``"sum"`` (the exact OvR negative log-likelihood: every token's "no" term summed over
            the vocabulary) or ``"balanced"`` (the target's "yes" term plus the *mean* of the others' "no"
            terms, so the token loss and hence ``reg_lambda`` do not scale with V; measured: better values,
            worse ``<NUM>`` decisions, so not the default) or ``"hard_negatives"`` (the target's term plus the
            ``cls_hard_negatives`` largest "no" terms of each position: the most probable wrong tokens, as
            softmax cross-entropy's gradient concentrates on them; bounded by k + 1 terms whatever V. For a
            model trained from scratch on a large vocabulary, measured in docs/causal_qwen.md).
        cls_hard_negatives: k of ``cls_reduction="hard_negatives"`` (capped at V - 1, where it is the sum).
        isotropic_scale: one scale per position instead of one per latent dimension: the action's scale
            ``scale_U'`` [C] is replaced by its mean ``s`` over C, so the token scale is the closed form
            ``scale_S[k] = s * ||W_k||_1`` (row L1 norms of the token head) and the second vocabulary-sized
            matmul ``|W| scale_U'`` disappears. Off by default: it saves about a fifth of a 0.5B train step but
            the token head can no longer say which latent directions it is unsure about (measured cost in
            docs/causal_qwen.md). The value head uses the same ``s``.
        loss_compile: run the One-vs-Rest loss's [chunk x V] elementwise passes (the forward's row sums of
            log-angles, the backward's closed-form gradients) as ``torch.compile``-d kernels, compiled once on
            first use (seconds) with a dynamic row count. Off by default: compiling needs a C++ compiler on CPU
            (Triton on CUDA) and changes the float rounding of the sums (agreement ~1e-6 relative, tested);
            where compiling fails a warning is given and the eager kernels run. Measured on 2 CPU cores at
            256 x 151,936 (docs/benchmarks.md): the chunk's One-vs-Rest forward + backward about 3x faster, a small
            part of a 0.5B step whose head matmuls dominate there.
        numeric_input_noise: standard deviation of Gaussian noise added to every input ``<NUM>`` value while
            the model is in training mode (``model.train()``), in the units the numbers are written in; the
            value *targets* stay exact and evaluation / generation never add noise. A regulariser for small
            tables: noisy inputs, clean targets. Meant for inputs on a common scale, e.g. tables written as
            z-scores (``build_table_dataset(standardize=True)``), where 0.5 (half a standard deviation) took
            the z-scored diabetes benchmark from 45.7 to 41.4 MAE (docs/causal_qwen.md). 0.0 (default) = off, and
            the forward pass is then exactly as without the option.
        numeric_input_noise_relative: make that noise multiplicative, ``v * exp(sigma * e)`` (log-normal: a
            fraction sigma of each value, sign and zero kept) instead of ``v + sigma * e``. For tables written in
            their raw units, where one absolute sigma cannot suit bmi (18-42) and s5 (3.3-6.1) at once.
        value_scale_factor: post-hoc calibration of the value's Cauchy scale (``value_scale`` in the outputs is
            multiplied by it; the loss is not). Fitted by ``training.evaluation.calibrate_value_scale`` so that the
            median interval covers half the calibration rows; 1.0 = as trained.
        value_interval_table: post-hoc calibrated interval widths, ``{"levels": [...], "half_widths": [...]}``:
            the central ``level`` interval of a predicted value is ``value_loc +- half_width * value_scale``
            (``CausalQwenForNumericCausalLM.value_interval``; ``modeling.cauchy.interval_half_width``
            interpolates between levels). Fitted by ``training.evaluation.calibrate_value_intervals`` as the
            empirical quantiles of ``|y - loc| / scale`` (split-conformal), so every level is calibrated, not
            only the median. ``None`` (default) = the Cauchy's own ``tan(pi level / 2)``. Outputs only, never
            the loss.
    """

    model_type = "causal_qwen"

    causal_size: int | None = None
    num_token_id: int = QWEN25_NUM_TOKEN_ID
    gamma_init: float | int = 1.0
    b_noise_init: float | int = 0.1
    ovr_threshold_init: float | int = 0.0
    inference_mode: str = "standard"
    causal_temperature: float | int = 1.0
    value_encoding: str = "multiscale_linear"
    value_encoding_frequencies: int = 16
    value_encoding_max_frequency: float | int = 1.0
    value_encoding_bin_width: float | int = 0.0
    value_normalization: str = "none"
    value_norm_shift: float | int = 0.0
    value_norm_scale: float | int = 1.0
    value_norm_log_shift: float | int = 0.0
    value_norm_log_scale: float | int = 1.0
    gate_alpha: float | int = 0.1
    reg_lambda: float | int = 5.0
    reg_beta: float | int = 0.0
    loss_chunk_size: int = 256
    cls_reduction: str = "sum"
    cls_hard_negatives: int = 64
    isotropic_scale: bool = False
    loss_compile: bool = False
    numeric_input_noise: float | int = 0.0
    numeric_input_noise_relative: bool = False
    value_scale_factor: float | int = 1.0
    value_interval_table: dict | None = None

    def __post_init__(self, **kwargs: Any):
        self._reject_unknown_keys(kwargs)
        if self.causal_size is None:
            self.causal_size = self.hidden_size
        super().__post_init__(**kwargs)
        # Checked here rather than in a ``validate_*`` class validator, which strict dataclasses would wrap
        # in a non-ValueError exception type.
        self._validate_causal_settings()

    def _validate_causal_settings(self) -> None:
        _check(self.causal_size > 0, f"causal_size must be positive, got {self.causal_size}")
        _check(
            0 <= self.num_token_id < self.vocab_size,
            f"num_token_id must lie in [0, vocab_size={self.vocab_size}), got {self.num_token_id}",
        )
        for name in ("gamma_init", "value_norm_scale", "value_norm_log_scale", "value_scale_factor",
                     "value_encoding_max_frequency"):  # fmt: skip
            value = getattr(self, name)
            _check(
                math.isfinite(value) and value > 0, f"{name} must be a positive finite number, got {value}"
            )
        for name in ("b_noise_init", "causal_temperature", "reg_lambda", "numeric_input_noise"):
            value = getattr(self, name)
            _check(math.isfinite(value) and value >= 0, f"{name} must be finite and >= 0, got {value}")
        for name in ("ovr_threshold_init", "value_norm_shift", "value_norm_log_shift"):
            value = getattr(self, name)
            _check(math.isfinite(value), f"{name} must be finite, got {value}")
        _check(0.0 <= self.gate_alpha <= 1.0, f"gate_alpha must lie in [0, 1], got {self.gate_alpha}")
        _check(0.0 <= self.reg_beta <= 1.0, f"reg_beta must lie in [0, 1], got {self.reg_beta}")
        _check(self.loss_chunk_size > 0, f"loss_chunk_size must be positive, got {self.loss_chunk_size}")
        _check(
            self.cls_hard_negatives > 0, f"cls_hard_negatives must be positive, got {self.cls_hard_negatives}"
        )
        _check(
            self.value_encoding_bin_width == 0 or MIN_BIN_WIDTH <= self.value_encoding_bin_width < math.inf,
            f"value_encoding_bin_width must be 0 (no bins) or a finite number >= {MIN_BIN_WIDTH}, "
            f"got {self.value_encoding_bin_width}",
        )
        _check(
            self.value_encoding_bin_width == 0 or self.value_encoding in ("multiscale", "multiscale_linear"),
            f"value_encoding_bin_width needs a multiscale value_encoding, got {self.value_encoding!r}",
        )
        _check(
            self.value_encoding_frequencies > 0,
            f"value_encoding_frequencies must be positive, got {self.value_encoding_frequencies}",
        )
        for name, allowed in (
            ("inference_mode", INFERENCE_MODES),
            ("value_encoding", VALUE_ENCODINGS),
            ("value_normalization", VALUE_NORMALIZATIONS),
            ("cls_reduction", CLS_REDUCTIONS),
        ):
            value = getattr(self, name)
            _check(value in allowed, f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")
        _check_interval_table(self.value_interval_table)
        _check(
            not (self.tie_word_embeddings and self.causal_size != self.hidden_size),
            "tie_word_embeddings needs causal_size == hidden_size "
            f"(got causal_size={self.causal_size}, hidden_size={self.hidden_size})",
        )
