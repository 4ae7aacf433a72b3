import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from causalqwen.modeling.loss import IGNORE_INDEX, CauchyHeads, gated_loss

B, S, H, V, NUM = 2, 9, 8, 11, 10


class ToyHead(torch.nn.Module):
    """A Cauchy head with the model's structure (loc/scale paths, token and value heads), recording calls."""

    def __init__(self, scale_floor: float = 0.0):
        super().__init__()
        torch.manual_seed(0)
        self.w_loc = torch.nn.Parameter(torch.randn(H, H) * 0.5)
        self.w_scale = torch.nn.Parameter(torch.randn(H, H) * 0.1)
        self.token = torch.nn.Parameter(torch.randn(V, H))
        self.value = torch.nn.Parameter(torch.randn(1, H))
        self.value_bias = torch.nn.Parameter(torch.tensor([0.3]))
        self.scale_floor = scale_floor
        self.call_sizes: list[int] = []

    def forward(self, h):
        self.call_sizes.append(h.shape[0])
        loc = h @ self.w_loc.T
        scale = F.softplus(h @ self.w_scale.T) + self.scale_floor
        return CauchyHeads(
            loc @ self.token.T,
            scale @ self.token.abs().T,
            (loc @ self.value.T).squeeze(-1) + self.value_bias,
            (scale @ self.value.abs().T).squeeze(-1),
        )


def naive_loss(hidden, labels, targets, head, thresholds, alpha, lam, beta=0.0):
    """Full-tensor reference straight from DESIGN.md (no chunks, no stable rewrites); ``beta``: the value term
    weighted by each position's detached value scale to that power (beta-NLL)."""
    h, y_tok, y = hidden[:, :-1].reshape(-1, H), labels[:, 1:].reshape(-1), targets[:, 1:].reshape(-1)
    keep = y_tok != IGNORE_INDEX
    h, y_tok, y = h[keep], y_tok[keep], y[keep]
    out = head(h)
    p = 0.5 + torch.atan((out.loc_S - thresholds) / out.scale_S) / math.pi
    onehot = F.one_hot(y_tok, V).float()
    bce = -(onehot * torch.log(p) + (1 - onehot) * torch.log(1 - p)).sum(-1)
    m = (y_tok == NUM).float()
    nll = torch.log(math.pi * out.scale_Y) + torch.log1p(((y - out.loc_Y) / out.scale_Y) ** 2)
    gate = alpha + (1 - alpha) * p[:, NUM].detach()
    m = m * out.scale_Y.detach() ** beta
    reg = (m * gate * nll).sum() / m.sum().clamp_min(1e-30)
    cls = bce.mean()
    return cls + lam * reg, cls, reg


def make_batch():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(B, S, H, generator=g, requires_grad=True)
    labels = torch.randint(0, V, (B, S), generator=g)
    labels[0, 2] = labels[1, 5] = labels[1, 7] = NUM
    labels[0, 4] = labels[1, 0] = IGNORE_INDEX
    targets = torch.randn(B, S, generator=g) * 5
    thresholds = torch.linspace(-0.5, 0.5, V)
    return hidden, labels, targets, thresholds


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_matches_naive_reference_value_and_gradient(chunk_size, alpha):
    hidden, labels, targets, thresholds = make_batch()
    head = ToyHead()
    ref = naive_loss(hidden, labels, targets, head, thresholds, alpha, 0.7)
    ref_grads = torch.autograd.grad(ref[0], [hidden, *head.parameters()])
    out = gated_loss(
        hidden,
        labels,
        targets,
        head,
        thresholds,
        num_token_id=NUM,
        gate_alpha=alpha,
        reg_lambda=0.7,
        chunk_size=chunk_size,
    )
    for got, want in zip((out.total, out.cls, out.reg), ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.total, [hidden, *head.parameters()])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_parameters", [False, True], ids=["checkpointed", "gradients-in-forward"])
@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_reg_beta_weights_each_value_by_its_detached_scale(beta, chunk_size, with_parameters):
    """beta-NLL: the weighted mean equals the full-batch reference whatever the chunking (the normaliser is a
    sum over the whole batch), in both loss paths, for the loss and every gradient."""
    hidden, labels, targets, thresholds = make_batch()
    head = ToyHead()
    ref = naive_loss(hidden, labels, targets, head, thresholds, 0.3, 0.7, beta)
    ref_grads = torch.autograd.grad(ref[0], [hidden, *head.parameters()])
    out = gated_loss(hidden, labels, targets, head, thresholds, num_token_id=NUM, gate_alpha=0.3,
                     reg_lambda=0.7, chunk_size=chunk_size, reg_beta=beta,
                     parameters=list(head.parameters()) if with_parameters else None)  # fmt: skip
    for got, want in zip((out.total, out.cls, out.reg), ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.total, [hidden, *head.parameters()])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The weights are not constant here (the three <NUM> scales differ), so beta changes the term.
    plain = naive_loss(hidden, labels, targets, head, thresholds, 0.3, 0.7)[2]
    assert abs(out.reg.item() - plain.item()) > 1e-3


def test_reg_beta_evens_out_the_pull_of_tight_and_loose_positions():
    """Two <NUM> positions with the same standardised residual r/s = 1 but scales 0.01 and 1: under the plain
    NLL the tight one pulls its loc 100x harder (gradient 1/s); with beta = 1 both pull equally."""
    head = ToyHead()
    loc = torch.zeros(2, requires_grad=True)
    scale = torch.tensor([0.01, 1.0])
    labels = torch.tensor([[0, NUM, NUM]])
    targets = torch.tensor([[0.0, 0.01, 1.0]])
    thresholds = torch.zeros(V)

    def fixed(h):
        out = head(h)
        return CauchyHeads(out.loc_S, out.scale_S, loc, scale)

    pulls = {}
    for beta in (0.0, 1.0):
        hidden = torch.randn(1, 3, H)
        reg = gated_loss(hidden, labels, targets, fixed, thresholds, num_token_id=NUM, gate_alpha=1.0,
                         reg_lambda=1.0, reg_beta=beta).reg  # fmt: skip
        (grad,) = torch.autograd.grad(reg, [loc])
        pulls[beta] = (grad[0] / grad[1]).item()
    assert pulls[0.0] == pytest.approx(100.0, rel=1e-5)
    assert pulls[1.0] == pytest.approx(1.0, rel=1e-5)


def test_chunks_bound_the_vocab_sized_work_and_backward_recomputes():
    hidden, labels, targets, thresholds = make_batch()
    head = ToyHead()
    n_valid = int((labels[:, 1:] != IGNORE_INDEX).sum())
    out = gated_loss(
        hidden,
        labels,
        targets,
        head,
        thresholds,
        num_token_id=NUM,
        gate_alpha=0.1,
        reg_lambda=1.0,
        chunk_size=5,
    )
    assert max(head.call_sizes) == 5 and sum(head.call_sizes) == n_valid  # only labelled positions, in chunks
    forward_calls = len(head.call_sizes)
    out.total.backward()
    # checkpointing: each chunk's head runs again in backward instead of keeping its [chunk x V] tensors
    assert len(head.call_sizes) == 2 * forward_calls
    with torch.no_grad():
        head.call_sizes.clear()
        gated_loss(
            hidden,
            labels,
            targets,
            head,
            thresholds,
            num_token_id=NUM,
            gate_alpha=0.1,
            reg_lambda=1.0,
            chunk_size=5,
        )
    assert len(head.call_sizes) == forward_calls


def test_a_single_chunk_is_not_recomputed_in_backward():
    hidden, labels, targets, thresholds = make_batch()
    head = ToyHead()
    kw = dict(num_token_id=NUM, gate_alpha=0.1, reg_lambda=1.0, chunk_size=1024)
    gated_loss(hidden, labels, targets, head, thresholds, **kw).total.backward()
    assert len(head.call_sizes) == 1  # forward only: no checkpoint recomputation for one chunk


def test_gate_alpha_one_is_plain_nll_and_alpha_zero_is_weighted_by_p_num():
    hidden, labels, targets, thresholds = make_batch()
    head = ToyHead()
    kw = dict(num_token_id=NUM, reg_lambda=1.0)
    r1 = gated_loss(hidden, labels, targets, head, thresholds, gate_alpha=1.0, **kw).reg
    r0 = gated_loss(hidden, labels, targets, head, thresholds, gate_alpha=0.0, **kw).reg
    # Moving the <NUM> threshold changes P_NUM: the alpha=1 term ignores it, the alpha=0 term follows it.
    shifted = thresholds.clone()
    shifted[NUM] += 50.0
    r1s = gated_loss(hidden, labels, targets, head, shifted, gate_alpha=1.0, **kw).reg
    r0s = gated_loss(hidden, labels, targets, head, shifted, gate_alpha=0.0, **kw).reg
    assert torch.equal(r1, r1s)
    assert r0s.item() < 0.2 * r0.item()
    assert r0.item() < r1.item()  # P_NUM < 1 scales the NLL down


def test_p_num_is_detached_in_the_gate():
    hidden, labels, targets, thresholds = make_batch()
    head = ToyHead()
    out = gated_loss(
        hidden, labels, targets, head, thresholds, num_token_id=NUM, gate_alpha=0.0, reg_lambda=1.0
    )
    (grad_token,) = torch.autograd.grad(out.reg, [head.token], allow_unused=True)
    assert grad_token is None or torch.count_nonzero(grad_token) == 0


def test_finite_for_extreme_values_and_tiny_scales():
    hidden, labels, targets, thresholds = make_batch()
    head = ToyHead()
    with torch.no_grad():
        head.w_scale.fill_(-50.0)  # softplus(-50 * sum h) ~ 0 for positive sums: scales near 0
        head.w_loc.mul_(1e4)
    targets = targets.sign() * 1e12
    out = gated_loss(
        hidden * 3, labels, targets, head, thresholds, num_token_id=NUM, gate_alpha=0.1, reg_lambda=1.0
    )
    assert torch.isfinite(out.total) and torch.isfinite(out.cls) and torch.isfinite(out.reg)
    grads = torch.autograd.grad(out.total, [hidden, *head.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)


def test_point_mass_heads_are_scored_at_scale_eps():
    hidden, labels, targets, thresholds = make_batch()
    head = ToyHead()

    def deterministic(h):
        out = head(h)
        return CauchyHeads(out.loc_S, None, out.loc_Y, None)

    out = gated_loss(
        hidden, labels, targets, deterministic, thresholds, num_token_id=NUM, gate_alpha=0.1, reg_lambda=1.0
    )
    assert torch.isfinite(out.total)


def test_no_labels_and_no_numbers():
    hidden, labels, targets, thresholds = make_batch()
    head = ToyHead()
    out = gated_loss(
        hidden,
        torch.full_like(labels, IGNORE_INDEX),
        None,
        head,
        thresholds,
        num_token_id=NUM,
        gate_alpha=0.1,
        reg_lambda=1.0,
    )
    assert out.total.item() == 0.0 and out.reg.item() == 0.0
    no_num = labels.masked_fill(labels == NUM, 0)
    out = gated_loss(hidden, no_num, None, head, thresholds, num_token_id=NUM, gate_alpha=0.1, reg_lambda=1.0)
    assert out.reg.item() == 0.0 and out.cls.item() > 0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda h, lab, t: (h, lab, None), "labels contain <NUM> but no numeric targets"),
        (lambda h, lab, t: (h, lab[:, :-1], t), "labels must have shape"),
        (lambda h, lab, t: (h, lab, t[:, :-1]), "numeric targets must have the shape of labels"),
        (lambda h, lab, t: (h, lab.masked_fill(lab == 3, V), t), r"labels must be token ids in \[0, 11\)"),
        (lambda h, lab, t: (h, lab, t.masked_fill(lab == NUM, float("nan"))), "must be finite"),
    ],
)
def test_bad_inputs_raise(change, match):
    hidden, labels, targets, thresholds = make_batch()
    labels[0, 3] = 3
    hidden, labels, targets = change(hidden, labels, targets)
    with pytest.raises(ValueError, match=match):
        gated_loss(
            hidden, labels, targets, ToyHead(), thresholds, num_token_id=NUM, gate_alpha=0.1, reg_lambda=1.0
        )


def test_bad_settings_raise():
    hidden, labels, targets, thresholds = make_batch()
    with pytest.raises(ValueError, match=r"gate_alpha must lie in \[0, 1\]"):
        gated_loss(
            hidden, labels, targets, ToyHead(), thresholds, num_token_id=NUM, gate_alpha=2.0, reg_lambda=1.0
        )
    for beta in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError, match=r"reg_beta must lie in \[0, 1\]"):
            gated_loss(hidden, labels, targets, ToyHead(), thresholds, num_token_id=NUM, gate_alpha=0.1,
                       reg_lambda=1.0, reg_beta=beta)  # fmt: skip
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        gated_loss(
            hidden,
            labels,
            targets,
            ToyHead(),
            thresholds,
            num_token_id=NUM,
            gate_alpha=0.1,
            reg_lambda=1.0,
            chunk_size=0,
        )


@pytest.mark.parametrize("chunk_size", [3, 1024])
def test_balanced_reduction_averages_the_wrong_tokens(chunk_size):
    hidden, labels, targets, thresholds = make_batch()
    head = ToyHead()
    h, y_tok = hidden[:, :-1].reshape(-1, H), labels[:, 1:].reshape(-1)
    keep = y_tok != IGNORE_INDEX
    out = head(h[keep])
    p = 0.5 + torch.atan((out.loc_S - thresholds) / out.scale_S) / math.pi
    onehot = F.one_hot(y_tok[keep], V).float()
    positive = -(onehot * torch.log(p)).sum(-1)
    negatives = -((1 - onehot) * torch.log(1 - p)).sum(-1) / (V - 1)
    kw = dict(num_token_id=NUM, gate_alpha=0.1, reg_lambda=0.7, chunk_size=chunk_size)
    balanced = gated_loss(hidden, labels, targets, head, thresholds, cls_reduction="balanced", **kw)
    summed = gated_loss(hidden, labels, targets, head, thresholds, **kw)
    torch.testing.assert_close(balanced.cls, (positive + negatives).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(balanced.reg, summed.reg, rtol=0, atol=0)  # only the token term changes
    assert balanced.cls < summed.cls


def test_balanced_token_loss_does_not_grow_with_the_vocabulary():
    # Appending tokens the head scores like the existing wrong ones: the summed loss grows with V, the
    # balanced one stays put (so a reg_lambda tuned on one vocabulary carries over to another).
    hidden, labels, targets, thresholds = make_batch()
    labels = labels.clamp_max(NUM)

    class Widened(ToyHead):
        def __init__(self, copies):
            super().__init__()
            self.copies = copies

        def forward(self, h):
            out = super().forward(h)
            pad = lambda t: torch.cat([t] + [t[:, :NUM]] * self.copies, dim=-1)  # noqa: E731
            return CauchyHeads(pad(out.loc_S), pad(out.scale_S), out.loc_Y, out.scale_Y)

    def cls(copies, reduction):
        th = torch.cat([thresholds] + [thresholds[:NUM]] * copies)
        return gated_loss(
            hidden,
            labels,
            targets,
            Widened(copies),
            th,
            num_token_id=NUM,
            gate_alpha=0.1,
            reg_lambda=1.0,
            cls_reduction=reduction,
        ).cls.item()

    assert cls(9, "sum") > 5 * cls(0, "sum")
    assert cls(9, "balanced") == pytest.approx(cls(0, "balanced"), rel=0.15)


def test_unknown_cls_reduction_raises():
    hidden, labels, targets, thresholds = make_batch()
    with pytest.raises(ValueError, match="unknown cls_reduction 'mean'"):
        gated_loss(
            hidden,
            labels,
            targets,
            ToyHead(),
            thresholds,
            num_token_id=NUM,
            gate_alpha=0.1,
            reg_lambda=1.0,
            cls_reduction="mean",
        )


def _one_layer_model(**overrides):
    """A seeded one-layer CausalQwen over 64 ids, <NUM> = 63."""
    from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM

    torch.manual_seed(0)
    config = CausalQwenConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_token_id=63, pad_token_id=0, **overrides,
    )  # fmt: skip
    return CausalQwenForNumericCausalLM(config)


def test_batch_without_labels_still_backpropagates_to_every_parameter():
    """A fully ignored batch (a DDP process can get one) has loss 0 and a graph reaching every parameter."""
    model = _one_layer_model()
    ids = torch.randint(1, 60, (2, 6))
    out = model(input_ids=ids, labels=torch.full_like(ids, -100))
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def _reference_bce_sum(loc, scale, threshold, labels, negative_weight, hard_negatives=None, compiled=False):
    """The token term as autograd composes it from ovr_log_probs (the code before the fused node); with
    ``hard_negatives=k`` only the k largest wrong-token "no" terms of each row."""
    from causalqwen.modeling.cauchy import ovr_log_probs

    log_p, log_q = ovr_log_probs(loc, scale, threshold)
    idx = labels.unsqueeze(-1)
    if hard_negatives is None:
        negatives = -log_q.sum(-1) + log_q.gather(-1, idx).squeeze(-1)
    else:
        no = (-log_q).scatter(-1, idx, float("-inf"))
        negatives = no.topk(min(hard_negatives, loc.shape[-1] - 1), dim=-1).values.sum(-1)
    return (negative_weight * negatives - log_p.gather(-1, idx).squeeze(-1)).sum()


@pytest.mark.parametrize(
    ("negative_weight", "hard_negatives"), [(1.0, None), (1.0 / 49, None), (1.0, 7), (1.0, 500)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_ovr_bce_equals_the_reference_and_its_gradients(negative_weight, hard_negatives, dtype):
    from causalqwen.modeling.cauchy import SCALE_EPS, ovr_bce_sum

    g = torch.Generator().manual_seed(0)
    n, V = 37, 50
    loc = (torch.randn(n, V, generator=g, dtype=dtype) * 5).requires_grad_()
    scale = torch.rand(n, V, generator=g, dtype=dtype) * 3
    scale[0, :5] = SCALE_EPS / 10  # clamped entries: no scale gradient
    scale[1, 0] = 1e-9
    scale = scale.requires_grad_()
    loc.data[2, :] = 1e4  # far tails in both directions
    loc.data[3, :] = -1e4
    threshold = (torch.randn(V, generator=g, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, V, (n,), generator=g)
    labels[:4] = 0
    fused = ovr_bce_sum(loc, scale, threshold, labels, negative_weight, hard_negatives)
    grads = torch.autograd.grad(fused, (loc, scale, threshold))
    ref = _reference_bce_sum(loc, scale, threshold, labels, negative_weight, hard_negatives)
    ref_grads = torch.autograd.grad(ref, (loc, scale, threshold))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fused, ref, **tol)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, **tol)
    assert grads[1][0, :5].eq(0).all()
    if hard_negatives == 7:  # the target and its 7 hardest negatives get a gradient, no other token
        assert int(grads[0][10].ne(0).sum()) == 8
    if hard_negatives == 500:  # capped at V - 1: the full sum
        full = ovr_bce_sum(loc, scale, threshold, labels, negative_weight)
        torch.testing.assert_close(fused, full, rtol=0, atol=0)


def _peak_allocated_during(fn) -> int:
    """Peak bytes malloc holds during ``fn`` above its level at entry, read after every tensor operation
    (``benchmarks/common.MemoryMeter``, the perf benchmark's meter)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from common import MemoryMeter, malloc_live_bytes

    if malloc_live_bytes() is None:
        pytest.skip("needs glibc's mallinfo2")
    with MemoryMeter(torch.device("cpu")) as meter:
        result = fn()
        del result
    return meter.peak_bytes


def test_ovr_kernels_keep_few_vocabulary_sized_temporaries():
    """The One-vs-Rest passes bound a training step's peak at small shapes (the loss chunk is the largest thing
    alive then): the gradient kernel holds at most 3 [n, V] buffers beside its inputs at once (safe scale,
    excess, their combination; the angle overwrites the excess), the row sums 2."""
    from causalqwen.modeling.cauchy import _no_log_row_sums, _ovr_negative_grads

    n, vocab = 256, 4096  # 4 MiB per [n, V] float32 buffer
    loc, scale, threshold = torch.randn(n, vocab), torch.rand(n, vocab) + 0.1, torch.zeros(vocab)
    unit = n * vocab * 4
    grads = _peak_allocated_during(lambda: _ovr_negative_grads(loc, scale, threshold, torch.tensor(0.5)))
    # The two outputs are two of the three. The reading is the growth of malloc's total, so memory an earlier
    # test's garbage gives back during the call lowers it a little (seen: 36 KB under 3 units in the full run).
    assert 2.9 * unit <= grads < 3.5 * unit
    assert _peak_allocated_during(lambda: _no_log_row_sums(loc, scale, threshold)) < 2.5 * unit


def test_chunked_loss_allocates_one_head_gradient_whatever_the_chunk_count(monkeypatch):
    """The token head's weight gradient is summed over chunks in place (cauchy.WeightGradientSink): a forward over
    10 chunks makes two vocabulary-sized tensors, |W| and that one gradient, not one gradient per chunk; the
    loss and every gradient stay those of one chunk."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM
    from causalqwen.modeling import cauchy
    from causalqwen.modeling import loss as loss_module

    vocab, hidden = 1024, 32
    monkeypatch.setattr(cauchy, "ABS_BLOCK_ELEMENTS", 64 * hidden)  # the sign is taken 64 rows at a time

    class CountLarge(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {
                a.data_ptr()
                for a in torch.utils._pytree.tree_leaves((args, kwargs))
                if isinstance(a, torch.Tensor)
            }
            for t in torch.utils._pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.numel() >= vocab * hidden and t.data_ptr() not in inputs:
                    self.names.append(func.__name__)
            return out

    torch.manual_seed(0)
    config = CausalQwenConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, num_token_id=vocab - 1, pad_token_id=0, loss_chunk_size=8,
    )  # fmt: skip
    model = CausalQwenForNumericCausalLM(config)
    ids = torch.randint(1, vocab - 1, (2, 41))
    ids[:, ::7] = vocab - 1
    values = torch.where(ids == vocab - 1, torch.randn(ids.shape), 0.0)
    monkeypatch.setattr(loss_module, "MIN_CHUNK_ELEMENTS", 0)  # 80 labelled positions in 10 chunks of 8
    results = {}
    for chunk in (8, 80):
        model.config.loss_chunk_size = chunk
        model.zero_grad()
        with CountLarge() as counter:
            out = model(input_ids=ids, numeric_values=values, labels=ids)
        out.loss.backward()
        results[chunk] = (counter.names, out.loss.detach(), [p.grad.clone() for p in model.parameters()])
    # (One chunk of 80 positions has [80 x V] tensors above the size counted, so only the 10 chunks are counted.)
    assert results[8][0] == ["abs.default", "mm.default"]
    torch.testing.assert_close(results[8][1], results[80][1], rtol=1e-6, atol=1e-6)
    for a, b in zip(results[8][2], results[80][2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_hard_negatives_must_be_positive():
    from causalqwen.modeling.cauchy import ovr_bce_sum

    loc = scale = torch.ones(2, 5)
    with pytest.raises(ValueError, match="hard_negatives must be >= 1, got 0"):
        ovr_bce_sum(loc, scale, torch.zeros(5), torch.tensor([0, 1]), 1.0, 0)


@pytest.mark.parametrize("reduction", ["sum", "hard_negatives"])
@pytest.mark.parametrize("case", ["mixed", "num_only", "no_num", "ignored"])
def test_gated_loss_with_fused_token_term_equals_reference_loss_and_gradients(case, reduction, monkeypatch):
    """The whole gated loss (token + value terms, chunked) against a reference built from ovr_log_probs."""
    from causalqwen.modeling import loss as loss_module

    monkeypatch.setattr(loss_module, "MIN_CHUNK_ELEMENTS", 0)  # chunks of 5 positions even at this tiny V
    model = _one_layer_model(loss_chunk_size=5, cls_reduction=reduction, cls_hard_negatives=6)
    ids = torch.randint(1, 60, (3, 8))
    labels = ids.clone()
    if case in ("mixed", "num_only"):
        labels[:, slice(1, None, 2 if case == "mixed" else 1)] = 63
    if case == "ignored":
        labels[:] = -100
    labels[0, :3] = -100
    values = torch.where(labels == 63, torch.randn(3, 8) * 10, torch.zeros(3, 8))
    ids = torch.where(labels == 63, 63, ids)

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        out = model(input_ids=ids, numeric_values=values, labels=labels)
        out.loss.backward()
        return out.loss.detach(), {
            n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
        }

    fused_loss, fused_grads = loss_and_grads()
    original = loss_module.ovr_bce_sum
    loss_module.ovr_bce_sum = _reference_bce_sum
    try:
        ref_loss, ref_grads = loss_and_grads()
    finally:
        loss_module.ovr_bce_sum = original
    torch.testing.assert_close(fused_loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert fused_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(fused_grads[name], ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_small_vocabularies_take_more_positions_per_chunk():
    from causalqwen.modeling.loss import MIN_CHUNK_ELEMENTS, chunk_rows

    assert chunk_rows(256, 151_936) == 256  # Qwen's vocabulary keeps the configured chunk
    assert chunk_rows(256, 512) == MIN_CHUNK_ELEMENTS // 512 == 1024
    # The demo's and the numeric benchmark's batches (up to 16 x 79 = 1,264 positions at V = 301) stay one chunk.
    assert chunk_rows(256, 301) == 1741
    assert chunk_rows(10_000, 512) == 10_000


@pytest.fixture
def fresh_ovr_kernels(monkeypatch):
    """The compiled-kernel cache and failure flag of cauchy.py, emptied for one test and restored after."""
    from causalqwen.modeling import cauchy

    monkeypatch.setattr(cauchy, "_compiled_kernels", {})
    monkeypatch.setattr(cauchy, "_compile_failure", [])
    return cauchy


@pytest.mark.parametrize("hard_negatives", [None, 7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_ovr_kernels_equal_eager_loss_and_gradients(dtype, hard_negatives, fresh_ovr_kernels):
    """``loss_compile``: the torch.compile-d [n x V] passes give the eager loss and gradients (float rounding
    apart), over row counts that change from call to call (one dynamic compile), tails and clamped scales."""
    from causalqwen.modeling.cauchy import SCALE_EPS, ovr_bce_sum

    g = torch.Generator().manual_seed(1)
    for n in (37, 12, 1):
        V = 50
        loc = (torch.randn(n, V, generator=g, dtype=dtype) * 5).requires_grad_()
        scale = torch.rand(n, V, generator=g, dtype=dtype) * 3
        scale[0, :5] = SCALE_EPS / 10
        scale = scale.requires_grad_()
        loc.data[-1, :3] = 1e4
        threshold = torch.randn(V, generator=g, dtype=dtype).requires_grad_()
        labels = torch.randint(0, V, (n,), generator=g)
        labels[0] = 0  # the target's own scale is clamped: no scale gradient there either
        results = []
        for compiled in (False, True):
            value = ovr_bce_sum(loc, scale, threshold, labels, 1.0 / 49, hard_negatives, compiled)
            results.append((value, *torch.autograd.grad(value, (loc, scale, threshold))))
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
        for got, want in zip(results[1], results[0]):
            torch.testing.assert_close(got, want, **tol)
        assert results[1][2][0, :5].eq(0).all()
    assert fresh_ovr_kernels._compile_failure == []
    if hard_negatives is None:  # the full sum runs both compiled kernels
        assert set(fresh_ovr_kernels._compiled_kernels) == {"no_log_row_sums", "negative_grads"}


@pytest.mark.parametrize("case", ["mixed", "ignored"])
def test_loss_compile_model_loss_and_gradients_equal_eager(case, fresh_ovr_kernels):
    """``CausalQwenConfig.loss_compile=True`` through the model's chunked loss: the same loss and gradients as
    the eager kernels (several chunks; a batch whose labels are all ignored included)."""
    from causalqwen.modeling import loss as loss_module

    torch.manual_seed(0)
    model = _one_layer_model(loss_chunk_size=5)
    ids = torch.randint(1, 60, (3, 8))
    labels = ids.clone()
    labels[:, 1::2] = 63
    labels[0, :3] = -100
    if case == "ignored":
        labels[:] = -100
    values = torch.where(labels == 63, torch.randn(3, 8) * 10, torch.zeros(3, 8))
    ids = torch.where(labels == 63, 63, ids)
    runs = []
    for compiled in (False, True):
        model.config.loss_compile = compiled
        model.zero_grad(set_to_none=True)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(loss_module, "MIN_CHUNK_ELEMENTS", 0)
            out = model(input_ids=ids, numeric_values=values, labels=labels)
        out.loss.backward()
        runs.append(
            (
                out.loss.detach(),
                {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
            )
        )
    (eager_loss, eager_grads), (loss, grads) = runs
    torch.testing.assert_close(loss, eager_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == eager_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], eager_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    assert fresh_ovr_kernels._compile_failure == []


def test_loss_compile_falls_back_to_eager_with_a_warning(fresh_ovr_kernels, monkeypatch):
    """Where compiling fails (here: a backend that raises), the first call warns with the error and every call
    returns the eager result, bit for bit."""
    from causalqwen.modeling.cauchy import ovr_bce_sum

    calls = []

    def broken_compile(fn, **kwargs):
        def run(*args):
            calls.append(fn.__name__)
            raise RuntimeError("no C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    g = torch.Generator().manual_seed(2)
    loc = torch.randn(6, 20, generator=g).requires_grad_()
    scale = (torch.rand(6, 20, generator=g) + 0.1).requires_grad_()
    threshold, labels = torch.zeros(20), torch.randint(0, 20, (6,), generator=g)
    eager = ovr_bce_sum(loc, scale, threshold, labels)
    eager_grads = torch.autograd.grad(eager, (loc, scale))
    with pytest.warns(RuntimeWarning, match="loss_compile: torch.compile .* failed .*no C.. compiler found"):
        value = ovr_bce_sum(loc, scale, threshold, labels, compiled=True)
    grads = torch.autograd.grad(value, (loc, scale))
    assert torch.equal(value, eager) and all(torch.equal(a, b) for a, b in zip(grads, eager_grads))
    assert calls == ["_no_log_row_sums"]  # tried once; the backward's kernel then ran eager without trying
    assert fresh_ovr_kernels._compile_failure == ["RuntimeError: no C++ compiler found"]


def test_loss_compile_is_a_saved_config_flag(tmp_path):
    from causalqwen import CausalQwenConfig

    config = CausalQwenConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, num_token_id=63, loss_compile=True)  # fmt: skip
    config.save_pretrained(tmp_path)
    assert CausalQwenConfig.from_pretrained(tmp_path).loss_compile is True
    assert CausalQwenConfig(vocab_size=64, num_token_id=63).loss_compile is False


def record_chunk_sizes(monkeypatch) -> list[int]:
    """Rows of every chunk the loss scores from now on (``_chunk_sums`` wrapped; its ``hidden`` argument)."""
    from causalqwen.modeling import loss as loss_module

    sizes: list[int] = []
    original = loss_module._chunk_sums
    signature = inspect.signature(original)

    def recording(*args):
        sizes.append(signature.bind(*args).arguments["hidden"].shape[0])
        return original(*args)

    monkeypatch.setattr(loss_module, "_chunk_sums", recording)
    return sizes


def test_a_tiny_model_runs_its_batch_as_one_chunk(monkeypatch):

    sizes = record_chunk_sizes(monkeypatch)
    model = _one_layer_model(loss_chunk_size=5)
    ids = torch.randint(1, 60, (3, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    assert sizes == [21]  # 3 x 7 shifted positions, one chunk, not recomputed in backward


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"isotropic_scale": True},
        {"inference_mode": "sampling"},
        {"tie_word_embeddings": True},
        {"reg_beta": 0.5},
    ],
    ids=["default", "isotropic", "sampling", "tied", "reg_beta"],
)
def test_gradients_computed_in_the_forward_equal_the_checkpointed_path(options, monkeypatch):
    """Token and value terms weighted differently (as the Trainer's exact accumulation does), five chunks."""
    from causalqwen.modeling import loss as loss_module

    monkeypatch.setattr(loss_module, "MIN_CHUNK_ELEMENTS", 0)
    ids = torch.randint(1, 60, (3, 8), generator=torch.Generator().manual_seed(4))
    ids[:, 3] = 63
    values = torch.where(ids == 63, torch.tensor([2.5, -40.0, 7e3]).unsqueeze(1), 0.0)
    runs = {}
    for in_forward in (True, False):
        monkeypatch.setattr(loss_module, "GRADIENTS_IN_FORWARD", in_forward)
        model = _one_layer_model(loss_chunk_size=5, **options).train()
        torch.manual_seed(1)
        out = model(input_ids=ids, numeric_values=values, labels=ids)
        (2.0 * out.loss_cls + 3.0 * out.loss_reg).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        runs[in_forward] = (out.loss_cls.item(), out.loss_reg.item(), grads)
    (cls_a, reg_a, grads_a), (cls_b, reg_b, grads_b) = runs[True], runs[False]
    assert cls_a == pytest.approx(cls_b, rel=1e-6) and reg_a == pytest.approx(reg_b, rel=1e-6)
    assert grads_a.keys() == grads_b.keys()
    assert {"abduction.scale_bias", "value_head.weight", "model.embed_tokens.weight"} <= grads_a.keys()
    for name in grads_b:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_gradients_in_the_forward_run_each_chunk_once(monkeypatch):
    from causalqwen.modeling import loss as loss_module

    monkeypatch.setattr(loss_module, "MIN_CHUNK_ELEMENTS", 0)
    sizes = record_chunk_sizes(monkeypatch)
    model = _one_layer_model(loss_chunk_size=5).train()
    ids = torch.randint(1, 60, (3, 8))
    out = model(input_ids=ids, labels=ids)
    assert sizes == [5, 5, 5, 5, 1]
    out.loss.backward()
    assert sizes == [5, 5, 5, 5, 1]  # backward scales the kept gradients: no chunk is recomputed
    assert model.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_a_second_backward_through_the_kept_gradients_raises_clearly():
    model = _one_layer_model().train()
    ids = torch.randint(1, 60, (2, 6))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="keeps its gradients for one backward"):
        out.loss.backward()


def test_the_config_reg_beta_reaches_the_model_loss():
    """The same weights with reg_beta 0 and 0.5: the token term is identical, the value term is the mean / the
    scale^0.5-weighted mean of the gated per-number NLLs (no value normalisation: data units are model units)."""
    ids = torch.randint(1, 60, (3, 8), generator=torch.Generator().manual_seed(4))
    ids[:, 3] = 63
    values = torch.where(ids == 63, torch.tensor([2.5, -40.0, 7e3]).unsqueeze(1), 0.0)
    outs = {}
    for beta in (0.0, 0.5):
        model = _one_layer_model(reg_beta=beta).train()
        with torch.no_grad():  # scales that differ between positions (at init they are all equal)
            model.abduction.scale_weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(2))
        outs[beta] = model(input_ids=ids, numeric_values=values, labels=ids, return_logits=True)
    plain, weighted = outs[0.0], outs[0.5]
    assert torch.equal(plain.loss_cls, weighted.loss_cls)
    loc, scale = (
        plain.value_loc[:, 2].detach(),
        plain.value_scale[:, 2].detach(),
    )  # position 2 predicts the <NUM>
    nll = torch.log(math.pi * scale) + torch.log1p(((values[:, 3] - loc) / scale) ** 2)
    p_num = (
        0.5 + torch.atan(plain.loc_S[:, 2, 63] / plain.scale_S[:, 2, 63]).detach() / math.pi
    )  # thresholds 0
    gated = (0.1 + 0.9 * p_num) * nll
    torch.testing.assert_close(plain.loss_reg, gated.mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        weighted.loss_reg, (scale**0.5 * gated).sum() / (scale**0.5).sum(), rtol=1e-4, atol=1e-5
    )
    assert abs(weighted.loss_reg.item() - plain.loss_reg.item()) > 1e-3
