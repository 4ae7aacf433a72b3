"""Cauchy distribution arithmetic shared by CausalQwen and ToolRouter.

The Cauchy family is closed under linear maps: if ``U_j ~ Cauchy(mu_j, gamma_j)`` independently, then
``S = W U + b ~ Cauchy(W mu + b, |W| gamma)``. Every head in this package propagates (loc, scale) pairs
analytically with these functions instead of sampling.

All functions are written to stay finite for huge ``|loc|`` and tiny ``scale``:

* the CDF / One-vs-Rest probability is ``atan2(scale, threshold - loc) / pi``, which equals
  ``1/2 + atan((loc - threshold) / scale) / pi`` but never divides by the scale and never cancels
  ``pi/2 - pi/2`` in the far tail;
* the negative log-likelihood uses ``hypot`` so ``((y - loc) / scale) ** 2`` is never formed.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "ABS_BLOCK_ELEMENTS",
    "LOG_PI",
    "SCALE_EPS",
    "STREAM_BLOCK_BYTES",
    "WeightGradientSink",
    "abs_linear",
    "cauchy_cdf",
    "cauchy_interval",
    "cauchy_log_prob",
    "cauchy_nll",
    "cauchy_quantile",
    "cauchy_sample",
    "interval_half_width",
    "linear_cauchy",
    "ovr_log_probs",
    "ovr_probability",
    "softplus_inverse",
    "spans_stream_blocks",
    "streamed_linear_cauchy",
]

LOG_PI = math.log(math.pi)
# Scales are clamped to at least this before any log or division-like use.
SCALE_EPS = 1e-6


def _safe_scale(scale: torch.Tensor) -> torch.Tensor:
    return scale.clamp_min(SCALE_EPS)


def softplus_inverse(x: float | torch.Tensor) -> float | torch.Tensor:
    """Inverse of ``softplus``: the bias that makes ``softplus(bias) == x`` exactly (x > 0)."""
    if isinstance(x, torch.Tensor):
        if (x <= 0).any():
            raise ValueError("softplus_inverse needs strictly positive inputs")
        return x + torch.log(-torch.expm1(-x))
    if not x > 0:
        raise ValueError(f"softplus_inverse needs a strictly positive input, got {x}")
    return x + math.log(-math.expm1(-x))


# Row blocks of at most this many weight elements (16 MB in float32) when |W| is formed on the fly: a
# vocabulary head (151,936 x 896 for Qwen2.5-0.5B) never gets a full-size |W| copy, only one block at a time.
ABS_BLOCK_ELEMENTS = 1 << 22


class _AbsLinear(torch.autograd.Function):
    """``x |W|^T`` without ever materialising ``|W|`` (or ``sign(W)``) at full size.

    ``F.linear(x, W.abs())`` writes a full ``|W|`` in forward, keeps it for backward and adds a full
    ``sign(W) * grad`` tensor there: for a vocabulary head that is three extra [V x C] tensors per call.
    Here forward and backward walk ``W`` in row blocks, taking ``abs``/``sign`` of one block at a time;
    the gradient is the same as autograd's (``sgn(W) * (grad^T x)``, 0 where ``W == 0``).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        flat = x.reshape(-1, x.shape[-1])
        out = flat.new_empty(flat.shape[0], weight.shape[0])
        for rows in _row_blocks(weight):
            out[:, rows] = F.linear(flat, weight[rows].abs())
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        flat = x.reshape(-1, x.shape[-1])
        grad = grad_out.reshape(-1, weight.shape[0])
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = flat.new_zeros(flat.shape)
            for rows in _row_blocks(weight):
                grad_x.addmm_(grad[:, rows], weight[rows].abs())
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros_like(weight)
            _add_sign_weighted(grad_w, grad, flat, weight)
        return None if grad_x is None else grad_x.view_as(x), grad_w


def _add_sign_weighted(
    grad_weight: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> None:
    """``grad_weight += sgn(W) * (grad^T x)``, the gradient ``|W|`` passes on to ``W`` (``grad`` [n, V], ``x``
    [n, C] or [n, 1]), a row block at a time through one block-sized buffer: no [V x C] temporary."""
    blocks = _row_blocks(weight)
    buffer = weight.new_empty(min(blocks[0].stop, weight.shape[0]), x.shape[1])
    for rows in blocks:
        part = buffer[: grad_weight[rows].shape[0]]
        torch.mm(grad[:, rows].t(), x, out=part)
        grad_weight[rows].addcmul_(part, weight[rows].sign())


def _row_blocks(weight: torch.Tensor, block_elements: int | None = None) -> list[slice]:
    """Row slices of ``weight`` holding at most ``block_elements`` elements each (at least one row);
    ``ABS_BLOCK_ELEMENTS`` when not given (read at call time, so tests can shrink it)."""
    limit = ABS_BLOCK_ELEMENTS if block_elements is None else block_elements
    rows = max(1, limit // max(weight.shape[1], 1))
    return [slice(start, start + rows) for start in range(0, weight.shape[0], rows)]


def abs_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight.abs())``; weights over ``ABS_BLOCK_ELEMENTS`` go through the blocked kernel."""
    if weight.numel() <= ABS_BLOCK_ELEMENTS:
        return F.linear(x, weight.abs())
    return _AbsLinear.apply(x, weight)


class WeightGradientSink:
    """Where :class:`_LinearCauchy` adds its weight's gradient instead of returning it.

    A chunked loss differentiates each chunk on its own (``loss._SumsWithForwardGradients``); returned, every
    chunk's weight gradient is a fresh [V x C] tensor that the loss then adds to its running sum (16 chunks of a
    0.5B step at 4 x 1,024 tokens: 16 allocations of 545 MB, each page-faulted in on the CPU, and 16 additions).
    With a sink attached to the weight (:meth:`attach`), the first chunk's gradient becomes the buffer and later
    chunks accumulate into it in place (``addmm_``). ``key`` names the sum the current backward pass belongs to
    (the loss sets it before each ``torch.autograd.grad``: the token and the value terms are kept apart).
    """

    _ATTRIBUTE = "_causalqwen_gradient_sink"

    def __init__(self) -> None:
        self.key: str | None = None
        self.buffers: dict[str | None, torch.Tensor] = {}

    def attach(self, weight: torch.Tensor) -> None:
        """Route the gradient of ``weight`` (a tensor the caller made for this purpose, e.g. a detached alias)
        through this sink wherever :class:`_LinearCauchy` receives it."""
        setattr(weight, self._ATTRIBUTE, self)

    @classmethod
    def of(cls, weight: torch.Tensor) -> WeightGradientSink | None:
        return getattr(weight, cls._ATTRIBUTE, None)


class _LinearCauchy(torch.autograd.Function):
    """``(loc W^T, scale |W|^T)`` from a given ``|W|``, with ``W``'s gradient formed in one buffer.

    Composed from ``F.linear`` twice and ``W.abs()``, autograd gives ``W`` two vocabulary-sized gradients (one
    per matmul), multiplies the second by a full ``sgn(W)`` and adds them: four more [V x C] allocations per step
    than here (``|W|``'s gradient, ``sgn(W)``, the product, the sum; 545 MB each for the Qwen2.5-0.5B head, and on
    the CPU every fresh one is page-faulted in again). Here backward writes ``g_loc^T loc`` into the gradient and adds
    ``sgn(W) * (g_scale^T scale)`` to it a row block at a time through one block-sized buffer; the result is
    autograd's (``sgn(W)``, 0 where ``W == 0``), and ``|W|`` (an input, formed once per forward by the caller)
    gets no gradient of its own: it reaches ``W`` here. ``abs_weight`` may also be the row L1 norms as a column
    [V x 1] with a one-column ``scale`` (the isotropic scale, ``s ||W_k||_1``): the same formulas, broadcast.
    With a :class:`WeightGradientSink` attached to ``weight`` the gradient is added to the sink's buffer and
    ``None`` is returned for it.
    """

    @staticmethod
    def forward(ctx, loc: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, abs_weight: torch.Tensor):
        ctx.save_for_backward(loc, scale, weight, abs_weight)
        ctx.sink = WeightGradientSink.of(weight)
        return F.linear(loc, weight), F.linear(scale, abs_weight)

    @staticmethod
    @once_differentiable  # backward accumulates in place: a second-order graph through it would be wrong
    def backward(ctx, grad_loc_out: torch.Tensor | None, grad_scale_out: torch.Tensor | None):
        loc, scale, weight, abs_weight = ctx.saved_tensors
        # An unused output's gradient arrives as None; zeros keep one code path (only the rare unused case pays).
        if grad_loc_out is None:
            grad_loc_out = loc.new_zeros(*loc.shape[:-1], weight.shape[0])
        if grad_scale_out is None:
            grad_scale_out = scale.new_zeros(*scale.shape[:-1], weight.shape[0])
        grad_loc = grad_loc_out @ weight if ctx.needs_input_grad[0] else None
        grad_scale = grad_scale_out @ abs_weight if ctx.needs_input_grad[1] else None
        grad_weight = None
        if ctx.needs_input_grad[2]:
            g_loc, g_scale = (
                grad_loc_out.reshape(-1, weight.shape[0]),
                grad_scale_out.reshape(-1, weight.shape[0]),
            )
            flat_loc, flat_scale = loc.reshape(-1, loc.shape[-1]), scale.reshape(-1, scale.shape[-1])
            sink = ctx.sink
            total = None if sink is None else sink.buffers.get(sink.key)
            if total is None:
                total = g_loc.t() @ flat_loc
                if sink is not None:
                    sink.buffers[sink.key] = total
            else:
                total.addmm_(g_loc.t(), flat_loc)
            _add_sign_weighted(total, g_scale, flat_scale, weight)
            grad_weight = total if sink is None else None  # with a sink the gradient stays in its buffer
        return grad_loc, grad_scale, grad_weight, None


def linear_cauchy(
    loc: torch.Tensor,
    scale: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    abs_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Push independent Cauchy variables through ``y = x W^T + b``.

    Returns ``(W loc + b, |W| scale)``; ``scale=None`` stands for a point mass (deterministic input).
    ``abs_weight`` is a precomputed ``|W|`` (e.g. formed once per forward and shared by loss chunks, or cached
    between evaluation batches); it must equal ``weight.abs()``, or be the row L1 norms ``||W_k||_1`` as a
    [V x 1] column with a one-column ``scale`` (the isotropic scale): when ``weight`` needs a gradient, the scale
    path's share of it is computed from ``weight`` itself (:class:`_LinearCauchy`), and ``abs_weight`` gets none.
    Without it ``|W|`` is formed block by block (:func:`abs_linear`).
    """
    if scale is None:
        return F.linear(loc, weight, bias), None
    if abs_weight is None:
        return F.linear(loc, weight, bias), abs_linear(scale, weight)
    if weight.requires_grad and torch.is_grad_enabled():
        out_loc, out_scale = _LinearCauchy.apply(loc, scale, weight, abs_weight.detach())
        return (out_loc if bias is None else out_loc + bias), out_scale
    return F.linear(loc, weight, bias), F.linear(scale, abs_weight)


# Row blocks of about this many bytes in :func:`streamed_linear_cauchy`: a block and its |block| must stay in cache
# between the two matmuls. At the Qwen2.5-0.5B head (151,936 x 896, float32, 2 cores with 1 MiB of L2 each and
# 32 MiB of L3) 1.8 and 3.7 MB blocks both ran one decoding position's head in 47-52 ms against 39 ms for W alone
# and 77 ms for W then a cached |W|; 7.3 MB blocks 59 ms.
STREAM_BLOCK_BYTES = 2 << 20


def spans_stream_blocks(weight: torch.Tensor) -> bool:
    """Whether ``weight`` is larger than one block of :func:`streamed_linear_cauchy` (a smaller head is
    cache-sized: streaming it saves no memory traffic)."""
    return weight.numel() * weight.element_size() > STREAM_BLOCK_BYTES


def streamed_linear_cauchy(
    loc: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`linear_cauchy` for inference: ``(W loc + b, |W| scale)`` reading ``W`` from memory once.

    With a precomputed ``|W|`` a decoding step reads two vocabulary-sized matrices, and at a few positions both
    matmuls are bound by memory bandwidth, so the scale path doubles the head's time. Here ``W`` is walked in
    row blocks of about ``STREAM_BLOCK_BYTES``: each block feeds the location matmul, its ``abs`` is written into
    one reused cache-sized buffer, and the scale matmul reads that buffer while it is still in cache. No full
    ``|W|`` exists, cached or not. Each output is the same dot product as the dense matmul's, summed in the
    order the BLAS picks for the block's shape: equal up to rounding (to the bit at the 0.5B head here).
    Refuses inputs that need gradients (no autograd graph is built; training uses :func:`linear_cauchy`).
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in (loc, scale, weight)):
        raise RuntimeError(
            "streamed_linear_cauchy is inference-only; use linear_cauchy when gradients are needed"
        )
    if loc.shape != scale.shape or loc.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"loc {tuple(loc.shape)} and scale {tuple(scale.shape)} must match and end in the weight's input "
            f"size {weight.shape[1]}"
        )
    flat_loc, flat_scale = loc.reshape(-1, loc.shape[-1]), scale.reshape(-1, scale.shape[-1])
    vocab = weight.shape[0]
    out_loc = flat_loc.new_empty(flat_loc.shape[0], vocab)
    out_scale = flat_scale.new_empty(flat_scale.shape[0], vocab)
    blocks = _row_blocks(weight, STREAM_BLOCK_BYTES // weight.element_size())
    buffer = weight.new_empty(min(blocks[0].stop, vocab), weight.shape[1])
    for rows in blocks:
        block = weight[rows]
        absolute = buffer[: block.shape[0]]
        torch.abs(block, out=absolute)
        torch.mm(flat_loc, block.t(), out=out_loc[:, rows])
        torch.mm(flat_scale, absolute.t(), out=out_scale[:, rows])
    if bias is not None:
        out_loc += bias
    batch_shape = loc.shape[:-1]
    return out_loc.view(*batch_shape, vocab), out_scale.view(*batch_shape, vocab)


def cauchy_cdf(x: torch.Tensor | float, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``P(X <= x)`` for ``X ~ Cauchy(loc, scale)``."""
    return torch.atan2(_safe_scale(scale), loc - x) / math.pi


def ovr_probability(
    loc: torch.Tensor, scale: torch.Tensor, threshold: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """One-vs-Rest probability ``P(S > threshold) = 1/2 + atan((loc - threshold)/scale)/pi``."""
    return torch.atan2(_safe_scale(scale), threshold - loc) / math.pi


def ovr_log_probs(
    loc: torch.Tensor, scale: torch.Tensor, threshold: torch.Tensor | float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log P, log(1 - P))`` of the One-vs-Rest probability, finite in both tails.

    ``1 - P(S > c) = P(S <= c) = atan2(scale, loc - c) / pi``; both angles lie in (0, pi) for a
    positive scale, so the logs are finite up to the float range (clamped at the smallest normal).
    """
    scale = _safe_scale(scale)
    diff = threshold - loc
    tiny = torch.finfo(loc.dtype).tiny
    log_p = torch.log(torch.atan2(scale, diff).clamp_min(tiny)) - LOG_PI
    log_q = torch.log(torch.atan2(scale, -diff).clamp_min(tiny)) - LOG_PI
    return log_p, log_q


class _OvRBCESum(torch.autograd.Function):
    """Sum over rows of the One-vs-Rest binary cross-entropy against one target per row, with a closed-form
    backward (see :func:`ovr_bce_sum`). Temporaries are released as soon as used: a [n, V] chunk never has more
    than three of them alive in forward and four in backward."""

    @staticmethod
    def forward(ctx, loc, scale, threshold, labels, negative_weight, hard_negatives, compiled):
        idx = labels.unsqueeze(-1)
        log_p_y, log_q_y = ovr_log_probs(
            loc.gather(-1, idx), scale.gather(-1, idx), threshold[labels].unsqueeze(-1)
        )
        if hard_negatives is None:
            row_sums = _run_ovr_kernel("no_log_row_sums", compiled, loc, scale, threshold)
            sum_no = -(row_sums - loc.shape[-1] * LOG_PI) + log_q_y.squeeze(-1)
            selected = None
        else:
            # The k wrong tokens with the largest "no" loss -log(1 - P) = log pi - log a: the smallest log a,
            # the target excluded.
            log_a = _no_log_angles(loc, scale, threshold)
            log_a.scatter_(-1, idx, math.inf)
            smallest, selected = log_a.topk(hard_negatives, dim=-1, largest=False)
            sum_no = hard_negatives * LOG_PI - smallest.sum(-1)
            del log_a
        bce = negative_weight * sum_no - log_p_y.squeeze(-1)
        ctx.save_for_backward(loc, scale, threshold, labels, selected)
        ctx.negative_weight, ctx.compiled = negative_weight, compiled
        return bce.sum()

    @staticmethod
    def backward(ctx, grad_out):
        loc, scale, threshold, labels, selected = ctx.saved_tensors
        idx = labels.unsqueeze(-1)
        weight = ctx.negative_weight * grad_out
        if selected is None:
            grad_loc, grad_scale = _run_ovr_kernel(
                "negative_grads", ctx.compiled, loc, scale, threshold, weight
            )
        else:
            # Only the selected negatives have a gradient; the rest of the row stays zero.
            sel_loc, sel_scale = _ovr_negative_grads(
                loc.gather(-1, selected), scale.gather(-1, selected), threshold[selected], weight
            )
            grad_loc = torch.zeros_like(loc).scatter_(-1, selected, sel_loc)
            grad_scale = torch.zeros_like(scale).scatter_(-1, selected, sel_scale)
        # The target's column: -log p (a_p = atan2(s, -e)) gives -s / (r^2 a_p) and e / (r^2 a_p); with every
        # token summed, the target's "no" term, counted above, cancels, so it is overwritten.
        raw_s_y = scale.gather(-1, idx)
        s_y = raw_s_y.clamp_min(SCALE_EPS)
        e_y = loc.gather(-1, idx) - threshold[labels].unsqueeze(-1)
        coef = grad_out / ((s_y * s_y + e_y * e_y) * torch.atan2(s_y, -e_y))
        grad_loc.scatter_(-1, idx, -coef * s_y)
        # A scale under the clamp gets no gradient (as the clamp's own backward would give).
        grad_scale.scatter_(-1, idx, torch.where(raw_s_y < SCALE_EPS, 0.0, coef * e_y))
        grad_threshold = -grad_loc.sum(0) if ctx.needs_input_grad[2] else None
        return grad_loc, grad_scale, grad_threshold, None, None, None, None


def _ovr_negative_grads(loc, scale, threshold, weight) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``weight * -log(1 - P)`` with respect to loc and scale, elementwise.

    With e = loc - c, r^2 = s^2 + e^2 and a_q = atan2(s, e): d log a_q / d loc = -s / (r^2 a_q) and
    d log a_q / d s = e / (r^2 a_q), so the "no" term gives w s / (r^2 a_q) and -w e / (r^2 a_q).
    """
    # Three [n, V] temporaries at most beside the inputs (the chunk's memory peak in a training step): the angle
    # overwrites ``excess``, ``loc - c`` is recomputed for the scale's gradient and the loc gradient takes the
    # clamped scale's buffer, where a fourth buffer for the angle made CausalQwen's step peak 1.1x plain Qwen2's
    # at the tiny 4 x 128 shape. Same arithmetic, so the same bits.
    safe = scale.clamp_min(SCALE_EPS)
    excess = loc - threshold
    base = (safe * safe).addcmul_(excess, excess)
    base.mul_(torch.atan2(safe, excess, out=excess)).reciprocal_().mul_(weight)
    del excess
    grad_loc = safe.mul_(base)
    # A scale under the clamp gets no gradient (as the clamp's own backward would give).
    return grad_loc, base.mul_(loc - threshold).neg_().masked_fill_(scale < SCALE_EPS, 0.0)


def _no_log_angles(loc: torch.Tensor, scale: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``log atan2(s, loc - c)`` elementwise: log(pi (1 - P)), the "no" term's angle, exact in both tails
    (:func:`ovr_log_probs`), clamped at the smallest normal."""
    difference = loc - threshold
    log_a = torch.atan2(scale.clamp_min(SCALE_EPS), difference, out=difference)  # no third [n, V] buffer
    return log_a.clamp_min_(torch.finfo(loc.dtype).tiny).log_()


def _no_log_row_sums(loc: torch.Tensor, scale: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """:func:`_no_log_angles` summed over the vocabulary, per row."""
    return _no_log_angles(loc, scale, threshold).sum(-1)


# The [n x V] passes of the One-vs-Rest loss, eager, and compiled on first use when asked (``compiled=True``:
# ``CausalQwenConfig.loss_compile``). Eager, each op of a kernel is one pass over the chunk with a [n x V]
# temporary; compiled (torch.compile, dynamic row count), a kernel is one fused loop: measured at 256 x 151,936
# on 2 CPU cores, the forward's row sums 0.28 s -> 0.055 s and the backward's gradients 0.32 s -> 0.12 s.
_OVR_KERNELS = {"no_log_row_sums": _no_log_row_sums, "negative_grads": _ovr_negative_grads}
_compiled_kernels: dict[str, object] = {}
_compile_failure: list[str] = []


def _run_ovr_kernel(name: str, compiled: bool, *args: torch.Tensor):
    """Run the kernel ``name`` of :data:`_OVR_KERNELS`, compiled when ``compiled`` and ``torch.compile`` works.

    Compiling needs a working backend (a C++ compiler on CPU, Triton on CUDA); when the first compiled call
    fails, a warning names the error and every later call runs eager (the results agree to float rounding).
    Inside an outer ``torch.compile`` the eager function is traced into the caller's graph anyway.
    """
    eager = _OVR_KERNELS[name]
    if not compiled or _compile_failure or torch.compiler.is_compiling():
        return eager(*args)
    if name not in _compiled_kernels:
        _compiled_kernels[name] = torch.compile(eager, dynamic=True, fullgraph=True)
    try:
        return _compiled_kernels[name](*args)
    except Exception as error:  # any backend failure: compiler missing, unsupported device, ...
        _compile_failure.append(f"{type(error).__name__}: {error}")
        warnings.warn(
            f"loss_compile: torch.compile of the One-vs-Rest loss kernels failed ({_compile_failure[0]}); "
            "running them eager from now on (same results, slower)",
            RuntimeWarning,
            stacklevel=2,
        )
        return eager(*args)


def ovr_bce_sum(
    loc: torch.Tensor,
    scale: torch.Tensor,
    threshold: torch.Tensor,
    labels: torch.Tensor,
    negative_weight: float = 1.0,
    hard_negatives: int | None = None,
    compiled: bool = False,
) -> torch.Tensor:
    """``sum_i [w * sum_{k != y_i} -log(1 - P_ik) - log P_{i y_i}]`` for [n, V] ``loc``/``scale``, [V] thresholds.

    Equals the sum over rows of :func:`ovr_log_probs`' binary cross-entropy against one-hot targets (the loss's
    token term), but as one autograd node: forward takes one ``atan2`` and one ``log`` over [n, V] and keeps only
    its inputs; backward recomputes one ``atan2`` and writes the gradient in closed form, instead of autograd
    saving every [n, V] intermediate (difference, clamped scale, two angles, two logs) and replaying each op.
    Angles below the smallest normal (``|loc - c| > ~1e32 scale``), which the reference clamps and gives a zero
    gradient, get the analytic one here.

    ``hard_negatives=k`` sums the "no" terms of only the k wrong tokens with the largest ones in each row (the
    most probable wrong tokens: hard-negative mining), so the token gradient no longer grows with V; ``k`` is
    capped at V - 1 (where it equals the full sum).

    ``compiled=True`` runs the [n, V] passes (the forward's row sums, the backward's gradients) as
    ``torch.compile``-d kernels (:func:`_run_ovr_kernel`; eager where compiling fails).
    """
    if hard_negatives is not None:
        if hard_negatives < 1:
            raise ValueError(f"hard_negatives must be >= 1, got {hard_negatives}")
        hard_negatives = min(int(hard_negatives), loc.shape[-1] - 1)
        if hard_negatives < 1:
            hard_negatives = None
    return _OvRBCESum.apply(
        loc, scale, threshold, labels, float(negative_weight), hard_negatives, bool(compiled)
    )


def cauchy_nll(y: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood ``log(pi scale) + log1p(((y - loc)/scale)^2)``, elementwise.

    Rewritten as ``log(pi) + 2 log(hypot(y - loc, scale)) - log(scale)``, which is the same quantity
    but never squares the standardised residual, so it stays finite for ``|y| ~ 1e12`` and
    ``scale ~ 1e-6`` in float32.
    """
    scale = _safe_scale(scale)
    return LOG_PI + 2.0 * torch.log(torch.hypot(y - loc, scale)) - torch.log(scale)


def cauchy_log_prob(y: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Log density; the negation of :func:`cauchy_nll`."""
    return -cauchy_nll(y, loc, scale)


def cauchy_quantile(loc: torch.Tensor, scale: torch.Tensor, q: float | torch.Tensor) -> torch.Tensor:
    """Inverse CDF: ``loc + scale * tan(pi (q - 1/2))`` for ``0 < q < 1``."""
    q_t = torch.as_tensor(q, dtype=loc.dtype, device=loc.device)
    if ((q_t <= 0) | (q_t >= 1)).any():
        raise ValueError(f"quantile level must lie strictly between 0 and 1, got {q}")
    return loc + scale * torch.tan(math.pi * (q_t - 0.5))


def cauchy_interval(
    loc: torch.Tensor, scale: torch.Tensor, coverage: float = 0.9
) -> tuple[torch.Tensor, torch.Tensor]:
    """Central interval holding ``coverage`` of the mass: ``loc -/+ scale * tan(pi coverage / 2)``."""
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must lie strictly between 0 and 1, got {coverage}")
    half = scale * interval_half_width(coverage)
    return loc - half, loc + half


def interval_half_width(level: float, table: dict | None = None) -> float:
    """Half-width of the central ``level`` interval in units of the predicted scale.

    Without ``table`` it is the Cauchy's own ``tan(pi level / 2)``. With a fitted table (``{"levels": [...],
    "half_widths": [...]}``, ``training.evaluation.calibrate_value_intervals``: empirical quantiles of
    ``|y - loc| / scale``) it is the table's width at a fitted level, linear in the level between fitted
    levels (the widths are non-decreasing, so the interval grows with the level), and outside them the Cauchy
    width times the nearest fitted level's ratio to it.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval level must lie strictly between 0 and 1, got {level}")
    cauchy = math.tan(math.pi * level / 2.0)
    if table is None:
        return cauchy
    levels, widths = table["levels"], table["half_widths"]
    if level <= levels[0]:
        return widths[0] * cauchy / math.tan(math.pi * levels[0] / 2.0)
    if level >= levels[-1]:
        return widths[-1] * cauchy / math.tan(math.pi * levels[-1] / 2.0)
    k = next(i for i in range(1, len(levels)) if level <= levels[i])
    t = (level - levels[k - 1]) / (levels[k] - levels[k - 1])
    return (1.0 - t) * widths[k - 1] + t * widths[k]


def cauchy_sample(
    loc: torch.Tensor, scale: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Reparameterised sample ``loc + scale * tan(pi (u - 1/2))``, ``u ~ U(0, 1)``."""
    u = torch.rand(loc.shape, dtype=loc.dtype, device=loc.device, generator=generator)
    # Keep u off the end points, where tan is infinite.
    eps = torch.finfo(loc.dtype).eps
    u = u.clamp(eps, 1.0 - eps)
    return loc + scale * torch.tan(math.pi * (u - 0.5))
