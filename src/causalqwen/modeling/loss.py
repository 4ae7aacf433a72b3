"""Gated CausalQwen loss, computed chunk by chunk from hidden states (DESIGN.md section 2).

With shifted labels (ignore index -100)::

    L = mean_cls + lambda * sum_i m_i (alpha + (1 - alpha) P_NUM,i) NLL_i / max(sum_i m_i, 1)

* ``mean_cls``: One-vs-Rest binary cross-entropy of the target token against ``P_k`` (every token k is its
  own binary event ``S_k > C_k``), **summed over the vocabulary** and averaged over labelled positions.
  Summing is the exact negative log-likelihood of the V independent decisions the OvR model makes; a mean
  over V would divide the target token's gradient by V (1/151936 for Qwen), so the classifier would barely
  learn next to the regression term. ``reg_lambda`` rebalances the two terms if needed.
  ``cls_reduction="balanced"`` keeps the target's term whole and averages the V - 1 "no" terms instead of
  summing them, so the token loss no longer grows with V (with summed Cauchy tails it does) and a
  ``reg_lambda`` tuned on one vocabulary transfers to another; its cost is weaker pressure on wrong tokens.
  ``cls_reduction="hard_negatives"`` keeps the target's term and the ``hard_negatives`` (k) largest "no" terms of
  each position (the most probable wrong tokens), like softmax cross-entropy, whose gradient also concentrates
  on the strongest competitors: the token loss is bounded by k + 1 terms whatever V, and the thousands of
  improbable tokens no longer add up to a pull that dominates the one "yes".
* ``NLL``: Cauchy negative log-likelihood of the value at positions whose target token is ``<NUM>`` (m_i).
  With ``reg_beta`` = beta > 0 (beta-NLL) the sum and the count become weighted: ``w_i = sg(scale_i)^beta``, the
  position's own predicted value scale, detached, and the term is ``sum_i m_i w_i gate_i NLL_i / sum_i m_i w_i``.
  The weights' normaliser is a sum over the whole batch, so each chunk returns its share of it and the division
  happens once, after the chunks: the result does not depend on the chunking.
* ``P_NUM`` **is detached** in the gate: the gate is a curriculum ("learn to predict <NUM> first, then its
  value"), not a path for gradients. Without the detach, the cheapest way to lower a large NLL early in
  training would be to push ``P_NUM`` down, i.e. the regression term would teach the classifier to *not*
  predict numbers. With ``alpha = 1`` the gate is constant (plain NLL); with ``alpha = 0`` it is ``P_NUM``.

Memory: only positions with a label are gathered, and the head matmuls ([n x C] @ [C x V]) run inside
chunks of ``chunk_size`` positions, so no [positions x V] tensor larger than one chunk exists, as in fused
linear cross-entropy kernels: with the default chunk of 256 positions each float32 [chunk x V] tensor is
155 MB at Qwen's V = 151,936, against 2.5 GB per tensor for an unchunked 4 x 1024 batch.

Gradients in the forward (``parameters=`` given, the model's path): a chunk's [chunk x V] tensors must not
outlive it, so its gradients are computed right away, inside the forward, and kept: with respect to its hidden
rows ([chunk x H]), the head's parameters and ``head_inputs`` (the token head's weight as the forward read it,
and its ``|W|``, formed once per forward),
separately for the token and the value term (callers weight ``loss_cls`` and ``loss_reg`` differently, e.g.
the Trainer's exact gradient accumulation). Backward then only scales the kept gradients. Before, each chunk
ran under ``torch.utils.checkpoint`` and backward recomputed it: at the 0.5B head that was two more
vocabulary-sized matmuls per chunk (8 per step where plain Qwen2 does 3). Without ``parameters`` (a bare
``head`` closure) and more than one chunk, the checkpointed path remains (RNG state is preserved, so the
``sampling`` mode's noise is identical in the recomputation).

The token term of a chunk is one autograd node (:func:`~.cauchy.ovr_bce_sum`): forward runs one ``atan2`` and
one ``log`` over [chunk x V] and keeps only ``loc_S``/``scale_S``; backward recomputes one ``atan2`` and writes
the gradient in closed form. Composed from elementwise ops, autograd kept about six [chunk x V] intermediates
and replayed each op: at V = 151,936 and 256 rows (H = 896) the chunk's forward + backward took 8.8 s on the
2 shared CPU cores, 4.6 s fused, where its two matmuls alone take 4.4 s.

All terms stay finite for huge values and tiny scales: ``cauchy.ovr_log_probs`` and ``cauchy.cauchy_nll``
never divide by the scale and clamp it at ``SCALE_EPS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from ..configuration.configuration_causal_qwen import CLS_REDUCTIONS
from .cauchy import SCALE_EPS, WeightGradientSink, cauchy_nll, ovr_bce_sum, ovr_log_probs

__all__ = [
    "GRADIENTS_IN_FORWARD",
    "IGNORE_INDEX",
    "MIN_CHUNK_ELEMENTS",
    "CauchyHeads",
    "GatedLoss",
    "chunk_rows",
    "gated_loss",
]

IGNORE_INDEX = -100

# A [chunk x V] float32 tensor of this many elements (2 MB) is cheap to keep alive: with a small vocabulary a
# chunk takes more positions than ``loss_chunk_size`` asks, up to this size, so a tiny model's ordinary batch is
# one chunk (the demo's and the numeric benchmark's, up to 1,741 positions at their V = 301: no per-chunk
# overhead). It was 4M elements (16 MB) while backward recomputed every chunk; since chunk gradients are computed
# in the forward more chunks cost no recompute, and at 4M a tiny model's 8 x 512 batch was one chunk whose
# [4,088 x 512] intermediates took its peak memory to 1.33-1.47x plain Qwen2; at 2 MB it is 4 chunks: 0.91x, and
# the step 1.25-1.30x instead of 1.30-1.47x (benchmarks/perf.py shapes, measured interleaved, 2026-12-05). A
# Qwen-sized vocabulary (151,936) keeps ``loss_chunk_size``.
MIN_CHUNK_ELEMENTS = 1 << 19
# Compute chunk gradients in the forward when the caller names the head's parameters (module docstring); off
# only to compare against the checkpointed path in tests.
GRADIENTS_IN_FORWARD = True


def chunk_rows(chunk_size: int, vocab_size: int) -> int:
    """Positions per loss chunk: ``chunk_size``, or more while a [chunk x V] tensor stays within
    :data:`MIN_CHUNK_ELEMENTS`."""
    return max(chunk_size, MIN_CHUNK_ELEMENTS // max(vocab_size, 1))


@dataclass
class CauchyHeads:
    """What a head function returns for a chunk of n hidden states (regression in normalised units).

    ``scale_S`` / ``scale_Y`` may be ``None`` (deterministic mode: a point mass, scored with scale ``SCALE_EPS``).
    """

    loc_S: torch.Tensor  # [n, V]
    scale_S: torch.Tensor | None  # [n, V]
    loc_Y: torch.Tensor  # [n]
    scale_Y: torch.Tensor | None  # [n]


@dataclass
class GatedLoss:
    total: torch.Tensor
    cls: torch.Tensor
    reg: torch.Tensor


def _chunk_sums(
    head: Callable[[torch.Tensor], CauchyHeads],
    thresholds: torch.Tensor,
    num_token_id: int,
    gate_alpha: float,
    negative_weight: float,
    hard_negatives: int | None,
    reg_beta: float,
    hidden: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    compile_kernels: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed OvR BCE, summed (weighted) gated NLL and the summed NLL weights over one chunk of labelled
    positions (the weights are 1 at every ``<NUM>`` position unless ``reg_beta`` > 0)."""
    out = head(hidden)
    loc_S = out.loc_S.float()
    scale_S = torch.zeros_like(loc_S) if out.scale_S is None else out.scale_S.float()
    thresholds = thresholds.float()
    # -sum_k [y_k log P_k + (1 - y_k) log(1 - P_k)] with one-hot y: every token's "no" term, with the
    # target's swapped for its "yes" term; one fused node with a closed-form backward (cauchy.ovr_bce_sum).
    bce_sum = ovr_bce_sum(
        loc_S, scale_S, thresholds, labels, negative_weight, hard_negatives, compile_kernels
    )

    is_num = labels == num_token_id
    with torch.no_grad():
        log_p_num, _ = ovr_log_probs(
            loc_S[:, num_token_id], scale_S[:, num_token_id], thresholds[num_token_id]
        )
    p_num = log_p_num.exp()
    gate = gate_alpha + (1.0 - gate_alpha) * p_num
    loc_Y = out.loc_Y.float()
    scale_Y = torch.zeros_like(loc_Y) if out.scale_Y is None else out.scale_Y.float()
    # Positions that are not <NUM> may carry any placeholder target; score them against loc_Y so the
    # (discarded) NLL is finite and contributes no gradient.
    y = torch.where(is_num, targets.float(), loc_Y.detach())
    nll = cauchy_nll(y, loc_Y, scale_Y)
    # 1 at every <NUM> position (their sum is then the count), or the detached scale^beta (beta-NLL).
    weight = is_num.float()
    if reg_beta:
        weight = torch.where(is_num, scale_Y.detach().clamp_min(SCALE_EPS) ** reg_beta, 0.0)
    reg = torch.where(is_num, gate * nll * weight, torch.zeros_like(nll))
    return bce_sum, reg.sum(), weight.sum()


@dataclass
class _ChunkSpec:
    """Everything a chunk needs besides its hidden rows and the head's tensors."""

    head: Callable[..., CauchyHeads]
    thresholds: torch.Tensor
    num_token_id: int
    gate_alpha: float
    negative_weight: float
    hard_negatives: int | None
    reg_beta: float
    chunk_size: int
    labels: torch.Tensor
    targets: torch.Tensor
    compile_kernels: bool = False

    def starts(self) -> range:
        # A batch with no labelled position still runs one (empty) chunk: its zero loss then depends on every
        # head parameter, so backward works and, under DDP, every process contributes a gradient to every
        # parameter (a process whose rows are all ignored would otherwise leave the others waiting or raise).
        return range(0, max(self.labels.shape[0], 1), self.chunk_size)

    def sums(
        self, hidden: torch.Tensor, start: int, head_inputs
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Summed token and value terms and value weights of the chunk at ``start`` (``hidden`` holds that
        chunk's rows)."""
        end = start + self.chunk_size
        return _chunk_sums(
            lambda rows: self.head(rows, *head_inputs), self.thresholds, self.num_token_id, self.gate_alpha,
            self.negative_weight, self.hard_negatives, self.reg_beta, hidden, self.labels[start:end],
            self.targets[start:end], self.compile_kernels,
        )  # fmt: skip


def _checkpointed_sums(
    spec: _ChunkSpec, hidden: torch.Tensor, head_inputs
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chunk by chunk; with autograd on and several chunks, each under ``checkpoint`` (recomputed in backward).
    One chunk gains nothing from checkpointing (its activations are alive for the same span either way)."""
    use_checkpoint = (
        torch.is_grad_enabled() and hidden.requires_grad and spec.labels.shape[0] > spec.chunk_size
    )
    cls_sum = hidden.new_zeros((), dtype=torch.float32)
    reg_sum = hidden.new_zeros((), dtype=torch.float32)
    weight_sum = hidden.new_zeros((), dtype=torch.float32)
    for start in spec.starts():
        rows = hidden[start : start + spec.chunk_size]
        if use_checkpoint:
            c, r, w = checkpoint(spec.sums, rows, start, head_inputs, use_reentrant=False)
        else:
            c, r, w = spec.sums(rows, start, head_inputs)
        cls_sum = cls_sum + c
        reg_sum = reg_sum + r
        weight_sum = weight_sum + w
    return cls_sum, reg_sum, weight_sum


def _add_kept(kept: list[torch.Tensor | None], index: int, grad: torch.Tensor | None) -> None:
    """Sum one chunk's ``grad`` into ``kept[index]``, which is added to in place afterwards, so the first one
    kept is made contiguous (autograd may return an expanded view, which in-place addition cannot write)."""
    if grad is None:
        return
    if kept[index] is None:
        kept[index] = grad.contiguous()
    else:
        kept[index].add_(grad)


class _SumsWithForwardGradients(torch.autograd.Function):
    """The summed token and value terms over all chunks, with each chunk's gradients computed in the forward.

    Inputs: the spec, ``hidden`` [N, H], the number of head inputs, then the head inputs and the parameters.
    Per chunk, under ``enable_grad``, the chunk's two sums are differentiated (``torch.autograd.grad``) with
    respect to its hidden rows, detached aliases of the head inputs (so a gradient reaches e.g. ``|W|`` once,
    through its own autograd node, not also through the parameters it was computed from) and the parameters;
    the gradients are summed over chunks and kept, and the chunk's [chunk x V] tensors are freed. Backward
    returns ``grad_cls * G_cls + grad_reg * G_reg`` for every input. The third output, the summed value
    weights, is detached (not differentiable).
    """

    @staticmethod
    def forward(ctx, spec: _ChunkSpec, hidden: torch.Tensor, n_inputs: int, *tensors: torch.Tensor):
        head_inputs = [t.detach().requires_grad_(t.requires_grad) for t in tensors[:n_inputs]]
        # A head input the head multiplies through cauchy.linear_cauchy (the token head's weight) gets its chunks'
        # gradients summed in place in one buffer, not one fresh [V x C] tensor per chunk.
        sinks = [WeightGradientSink() if t.requires_grad else None for t in head_inputs]
        for alias, sink in zip(head_inputs, sinks):
            if sink is not None:
                sink.attach(alias)
        wrt = [*head_inputs, *tensors[n_inputs:]]
        wanted = [i for i, t in enumerate(wrt) if t.requires_grad]
        grads = {"cls": [None] * len(wrt), "reg": [None] * len(wrt)}
        grad_hidden = {name: torch.zeros_like(hidden) for name in grads} if hidden.requires_grad else None
        cls_sum = hidden.new_zeros((), dtype=torch.float32)
        reg_sum = hidden.new_zeros((), dtype=torch.float32)
        weight_sum = hidden.new_zeros((), dtype=torch.float32)
        for start in spec.starts():
            with torch.enable_grad():
                rows = hidden[start : start + spec.chunk_size].detach().requires_grad_(hidden.requires_grad)
                *chunk_sums, chunk_weights = spec.sums(rows, start, head_inputs)
                sums = dict(zip(grads, chunk_sums))
                inputs = [rows] * hidden.requires_grad + [wrt[i] for i in wanted]
                for name, value in sums.items():
                    for sink in sinks:
                        if sink is not None:
                            sink.key = name
                    chunk_grads = torch.autograd.grad(
                        value, inputs, allow_unused=True, retain_graph=name == "cls"
                    ) if inputs and value.requires_grad else [None] * len(inputs)  # fmt: skip
                    if hidden.requires_grad:
                        grad_rows, *chunk_grads = chunk_grads
                        if grad_rows is not None:
                            grad_hidden[name][start : start + spec.chunk_size] += grad_rows
                    for i, g in zip(wanted, chunk_grads):
                        _add_kept(grads[name], i, g)
            cls_sum += sums["cls"].detach()
            reg_sum += sums["reg"].detach()
            weight_sum += chunk_weights.detach()
        for i, sink in enumerate(sinks):
            for name, grad in ({} if sink is None else sink.buffers).items():
                _add_kept(grads[name], i, grad)
        ctx.grads, ctx.grad_hidden = grads, grad_hidden
        ctx.mark_non_differentiable(weight_sum)
        return cls_sum, reg_sum, weight_sum

    @staticmethod
    def backward(ctx, grad_cls: torch.Tensor, grad_reg: torch.Tensor, _grad_weights: torch.Tensor | None):
        if ctx.grads is None:
            raise RuntimeError(
                "the chunked CausalQwen loss keeps its gradients for one backward; to backpropagate twice, "
                "compute the loss twice (or set causalqwen.modeling.loss.GRADIENTS_IN_FORWARD = False)"
            )
        scale = {"cls": grad_cls, "reg": grad_reg}

        def combine(parts: dict[str, torch.Tensor | None]) -> torch.Tensor | None:
            # In place on the kept buffers (they are ours and used once): at the 0.5B head a copy would be
            # another 545 MB while every backbone activation is still alive.
            terms = [g.mul_(scale[name].to(g.dtype)) for name, g in parts.items() if g is not None]
            return terms[0].add_(terms[1]) if len(terms) == 2 else (terms[0] if terms else None)

        hidden = None if ctx.grad_hidden is None else combine(ctx.grad_hidden)
        others = [combine({name: ctx.grads[name][i] for name in scale}) for i in range(len(ctx.grads["cls"]))]
        ctx.grads = ctx.grad_hidden = None
        return None, hidden, None, *others


def gated_loss(
    hidden_states: torch.Tensor,
    labels: torch.Tensor,
    numeric_targets: torch.Tensor | None,
    head: Callable[[torch.Tensor], CauchyHeads],
    thresholds: torch.Tensor,
    *,
    num_token_id: int,
    gate_alpha: float,
    reg_lambda: float,
    chunk_size: int = 1024,
    shift: bool = True,
    cls_reduction: str = "sum",
    hard_negatives: int = 64,
    reg_beta: float = 0.0,
    head_inputs: tuple[torch.Tensor, ...] = (),
    parameters: list[torch.Tensor] | None = None,
    compile_kernels: bool = False,
) -> GatedLoss:
    """Gated loss from hidden states [B, S, H], unshifted ``labels`` [B, S] and value targets [B, S].

    ``head(hidden, *head_inputs)`` maps [n, H] hidden states to :class:`CauchyHeads`; ``numeric_targets``
    holds the (normalised) value wherever the label is ``<NUM>`` and may be ``None`` only when no label is
    ``<NUM>``. With ``shift=True`` position t is scored against label t + 1, as in Hugging Face causal LMs.
    ``parameters``: every tensor the head uses that may need a gradient, apart from ``hidden`` and
    ``head_inputs`` (the head's module parameters); given, chunk gradients are computed in the forward
    (module docstring). ``reg_beta``: beta-NLL weighting of the value term (module docstring).
    ``compile_kernels``: the One-vs-Rest [chunk x V] passes as compiled kernels (``cauchy.ovr_bce_sum``).
    """
    if labels.shape != hidden_states.shape[:-1]:
        raise ValueError(
            f"labels must have shape {tuple(hidden_states.shape[:-1])} (batch, sequence), got {tuple(labels.shape)}"
        )
    if not 0.0 <= gate_alpha <= 1.0:
        raise ValueError(f"gate_alpha must lie in [0, 1], got {gate_alpha}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if not 0.0 <= reg_beta <= 1.0:
        raise ValueError(f"reg_beta must lie in [0, 1], got {reg_beta}")
    if numeric_targets is None:
        if (labels == num_token_id).any():
            raise ValueError(
                "labels contain <NUM> but no numeric targets were given: pass the value of every <NUM> as "
                "numeric_values=[B, S] (the input numbers, which are the targets in causal-LM training) or "
                "numeric_labels=[B, S] aligned with labels; the tokenizer returns numeric_values and "
                "NumericDataCollator pads them (docs/training.md)"
            )
        numeric_targets = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    elif numeric_targets.shape != labels.shape:
        raise ValueError(
            f"numeric targets must have the shape of labels {tuple(labels.shape)}, got {tuple(numeric_targets.shape)}"
        )
    if shift:
        hidden_states, labels, numeric_targets = hidden_states[:, :-1], labels[:, 1:], numeric_targets[:, 1:]

    valid = labels != IGNORE_INDEX
    hidden = hidden_states[valid]
    flat_labels = labels[valid]
    flat_targets = numeric_targets[valid]
    vocab = thresholds.shape[0]
    if cls_reduction not in CLS_REDUCTIONS:
        raise ValueError(
            f"unknown cls_reduction {cls_reduction!r}; expected one of {', '.join(CLS_REDUCTIONS)}"
        )
    negative_weight = 1.0 / max(vocab - 1, 1) if cls_reduction == "balanced" else 1.0
    hard = hard_negatives if cls_reduction == "hard_negatives" else None
    if flat_labels.numel() and (flat_labels.min() < 0 or flat_labels.max() >= vocab):
        raise ValueError(f"labels must be token ids in [0, {vocab}) or {IGNORE_INDEX}")
    is_num = flat_labels == num_token_id
    if not torch.isfinite(flat_targets[is_num]).all():
        raise ValueError("numeric targets at <NUM> labels must be finite (got NaN or inf)")

    spec = _ChunkSpec(head, thresholds, num_token_id, gate_alpha, negative_weight, hard, float(reg_beta),
                      chunk_size, flat_labels, flat_targets, bool(compile_kernels))  # fmt: skip
    differentiable = [t for t in (hidden, *head_inputs, *(parameters or ())) if t.requires_grad]
    if parameters is not None and GRADIENTS_IN_FORWARD and torch.is_grad_enabled() and differentiable:
        cls_sum, reg_sum, weight_sum = _SumsWithForwardGradients.apply(
            spec, hidden, len(head_inputs), *head_inputs, *parameters
        )
    else:
        cls_sum, reg_sum, weight_sum = _checkpointed_sums(spec, hidden, head_inputs)

    cls = cls_sum / max(flat_labels.shape[0], 1)
    if reg_beta and is_num.any():
        # A detached normaliser: the weights redistribute the value term over positions, never rescale it.
        reg = reg_sum / weight_sum.detach()
    else:
        # The count of the labels' <NUM> positions, not the chunks' (their sums agree unless a chunk was
        # skipped, the failure the distributed negative control injects: it must show as lost rows, not NaN).
        reg = reg_sum / max(int(is_num.sum()), 1)
    return GatedLoss(total=cls + reg_lambda * reg, cls=cls, reg=reg)
