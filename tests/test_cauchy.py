import math

import pytest
import torch
from torch.distributions import Cauchy

from causalqwen.modeling import cauchy
from causalqwen.modeling.cauchy import (
    abs_linear,
    cauchy_cdf,
    cauchy_interval,
    cauchy_log_prob,
    cauchy_nll,
    cauchy_quantile,
    cauchy_sample,
    interval_half_width,
    linear_cauchy,
    ovr_log_probs,
    ovr_probability,
    softplus_inverse,
    streamed_linear_cauchy,
)

torch.manual_seed(0)
LOC = torch.randn(64, dtype=torch.float64) * 3
SCALE = torch.rand(64, dtype=torch.float64) * 2 + 0.05
Y = torch.randn(64, dtype=torch.float64) * 5


def test_nll_matches_torch_distributions():
    ref = -Cauchy(LOC, SCALE).log_prob(Y)
    torch.testing.assert_close(cauchy_nll(Y, LOC, SCALE), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(cauchy_log_prob(Y, LOC, SCALE), -ref, rtol=1e-12, atol=1e-12)


def test_nll_closed_form():
    # At the median the NLL is log(pi * scale).
    torch.testing.assert_close(cauchy_nll(LOC, LOC, SCALE), torch.log(math.pi * SCALE))


def test_cdf_and_ovr_match_torch_distributions():
    ref = Cauchy(LOC, SCALE).cdf(Y)
    torch.testing.assert_close(cauchy_cdf(Y, LOC, SCALE), ref, rtol=1e-12, atol=1e-12)
    # OvR probability is the survival function at the threshold.
    torch.testing.assert_close(ovr_probability(LOC, SCALE, Y), 1 - ref, rtol=1e-12, atol=1e-12)
    closed = 0.5 + torch.atan((LOC - Y) / SCALE) / math.pi
    torch.testing.assert_close(ovr_probability(LOC, SCALE, Y), closed, rtol=1e-12, atol=1e-12)


def test_ovr_log_probs_are_logs_of_p_and_one_minus_p():
    log_p, log_q = ovr_log_probs(LOC, SCALE, 0.3)
    p = ovr_probability(LOC, SCALE, 0.3)
    torch.testing.assert_close(log_p.exp(), p)
    torch.testing.assert_close(log_q.exp(), 1 - p)


def test_quantile_inverts_cdf_and_matches_icdf():
    for q in (0.05, 0.25, 0.5, 0.9):
        x = cauchy_quantile(LOC, SCALE, q)
        torch.testing.assert_close(cauchy_cdf(x, LOC, SCALE), torch.full_like(x, q))
        torch.testing.assert_close(x, Cauchy(LOC, SCALE).icdf(torch.tensor(q, dtype=torch.float64)))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        cauchy_quantile(LOC, SCALE, 1.0)


def test_interval_coverage_is_exact():
    lo, hi = cauchy_interval(LOC, SCALE, 0.9)
    mass = cauchy_cdf(hi, LOC, SCALE) - cauchy_cdf(lo, LOC, SCALE)
    torch.testing.assert_close(mass, torch.full_like(mass, 0.9))
    with pytest.raises(ValueError, match="coverage"):
        cauchy_interval(LOC, SCALE, 0.0)


def test_linear_propagation_matches_closed_form_and_monte_carlo():
    w = torch.tensor([[2.0, -3.0], [0.5, 0.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loc = torch.tensor([0.5, -1.0], dtype=torch.float64)
    scale = torch.tensor([0.2, 0.1], dtype=torch.float64)
    out_loc, out_scale = linear_cauchy(loc, scale, w, b)
    torch.testing.assert_close(
        out_loc, torch.tensor([2.0 * 0.5 + 3.0 + 1.0, 0.25 - 1.0], dtype=torch.float64)
    )
    torch.testing.assert_close(out_scale, torch.tensor([2 * 0.2 + 3 * 0.1, 0.5 * 0.2], dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    u = cauchy_sample(loc.expand(200_000, 2), scale.expand(200_000, 2), generator=g)
    s = u @ w.T + b
    # Median and half inter-quartile range of the sampled output equal loc and scale.
    med = s.median(dim=0).values
    iqr_half = (s.quantile(0.75, dim=0) - s.quantile(0.25, dim=0)) / 2
    torch.testing.assert_close(med, out_loc, atol=0.02, rtol=0)
    torch.testing.assert_close(iqr_half, out_scale, atol=0.02, rtol=0)
    assert linear_cauchy(loc, None, w, b)[1] is None


def test_sampling_matches_distribution():
    g = torch.Generator().manual_seed(0)
    x = cauchy_sample(torch.full((100_000,), 2.0), torch.full((100_000,), 0.5), generator=g)
    assert torch.isfinite(x).all()
    assert abs(x.median().item() - 2.0) < 0.02
    frac_inside = ((x > 1.5) & (x < 2.5)).float().mean().item()
    assert abs(frac_inside - 0.5) < 0.01


def test_extreme_values_stay_finite_float32():
    loc = torch.tensor([0.0, 1e12, -1e12, 3.0], requires_grad=True)
    scale = torch.tensor([1e-9, 1e-6, 1e-6, 1e-7], requires_grad=True)
    y = torch.tensor([1e12, -1e12, 1e12, 3.0])
    nll = cauchy_nll(y, loc, scale)
    log_p, log_q = ovr_log_probs(loc, scale, 0.0)
    p = ovr_probability(loc, scale, 0.0)
    total = nll.sum() + log_p.sum() + log_q.sum()
    total.backward()
    for t in (nll, log_p, log_q, p, loc.grad, scale.grad):
        assert torch.isfinite(t).all()
    # Far tails: P is tiny but positive on the negative side and ~1 on the positive side.
    assert 0 < p[2].item() < 1e-17 and p[1].item() == pytest.approx(1.0)
    # 1e12 away with scale 1e-6: NLL ~ log(pi) + 2 log(2e12) - log(1e-6)
    expected = math.log(math.pi) + 2 * math.log(2e12) - math.log(1e-6)
    assert nll[1].item() == pytest.approx(expected, rel=1e-5)


def test_softplus_inverse_round_trip():
    for x in (1e-4, 0.1, 1.0, 20.0):
        assert torch.nn.functional.softplus(
            torch.tensor(softplus_inverse(x), dtype=torch.float64)
        ).item() == (pytest.approx(x, rel=1e-12))
    t = torch.tensor([0.5, 2.0], dtype=torch.float64)
    torch.testing.assert_close(torch.nn.functional.softplus(softplus_inverse(t)), t)
    with pytest.raises(ValueError):
        softplus_inverse(0.0)


def test_blocked_abs_linear_matches_dense_value_and_gradient(monkeypatch):
    # 10 rows of 6 columns in blocks of 2 rows (the last block is short); a zero entry checks sgn(0) = 0.
    monkeypatch.setattr(cauchy, "ABS_BLOCK_ELEMENTS", 12)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(10, 6, generator=g, dtype=torch.float64)
    w[3, 2] = 0.0
    x = torch.rand(2, 4, 6, generator=g, dtype=torch.float64)
    w_ref, x_ref = w.clone().requires_grad_(), x.clone().requires_grad_()
    w.requires_grad_()
    x.requires_grad_()
    got = abs_linear(x, w)
    want = torch.nn.functional.linear(x_ref, w_ref.abs())
    assert got.shape == (2, 4, 10)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(2, 4, 10, generator=g, dtype=torch.float64)
    got_grads = torch.autograd.grad(got, [x, w], upstream)
    want_grads = torch.autograd.grad(want, [x_ref, w_ref], upstream)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert got_grads[1][3, 2] == 0.0
    assert torch.autograd.gradcheck(
        lambda a, b: abs_linear(a, b), (x[0].detach().requires_grad_(), w.detach().requires_grad_())
    )


def test_linear_cauchy_uses_a_precomputed_abs_weight():
    w = torch.tensor([[2.0, -3.0], [0.5, 0.0]])
    loc, scale = torch.tensor([0.5, -1.0]), torch.tensor([0.2, 0.1])
    _, out_scale = linear_cauchy(loc, scale, w, abs_weight=w.abs())
    torch.testing.assert_close(out_scale, torch.tensor([0.7, 0.1]))


@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_cauchy_with_gradients_folds_the_scale_path_into_one_weight_gradient(monkeypatch, with_bias):
    # Training form (W needs a gradient, |W| given): values and every gradient equal autograd's through
    # F.linear(loc, W) + F.linear(scale, W.abs()), including sgn(0) = 0; blocks of 3 rows over 10 (short last).
    monkeypatch.setattr(cauchy, "ABS_BLOCK_ELEMENTS", 3 * 6)
    g = torch.Generator().manual_seed(7)
    w = torch.randn(10, 6, generator=g, dtype=torch.float64)
    w[4, 1] = 0.0
    loc, scale = (
        torch.randn(2, 3, 6, generator=g, dtype=torch.float64),
        torch.rand(2, 3, 6, generator=g, dtype=torch.float64),
    )
    bias = torch.randn(10, generator=g, dtype=torch.float64) if with_bias else None
    inputs = [t.clone().requires_grad_() for t in (loc, scale, w)]
    ref = [t.clone().requires_grad_() for t in (loc, scale, w)]
    got = linear_cauchy(*inputs[:2], inputs[2], bias, abs_weight=inputs[2].abs())
    want = (
        torch.nn.functional.linear(ref[0], ref[2], bias),
        torch.nn.functional.linear(ref[1], ref[2].abs()),
    )
    assert got[0].grad_fn is not None and "LinearCauchy" in type(got[1].grad_fn).__name__
    up = [torch.randn(2, 3, 10, generator=g, dtype=torch.float64) for _ in range(2)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs, up), torch.autograd.grad(want, ref, up)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # One output unused (its gradient arrives as None); only W needs a gradient.
    w_only = w.clone().requires_grad_()
    (grad_w,) = torch.autograd.grad(linear_cauchy(loc, scale, w_only, abs_weight=w.abs())[1].sum(), [w_only])
    torch.testing.assert_close(
        grad_w, w.sign() * scale.reshape(-1, 6).sum(0).expand(10, 6), rtol=1e-12, atol=0
    )
    assert grad_w[4, 1] == 0.0
    with pytest.raises(RuntimeError, match="double backward|once_differentiable|does not require grad"):
        (g,) = torch.autograd.grad(
            linear_cauchy(loc, scale, w_only, abs_weight=w.abs())[1].sum(), [w_only], create_graph=True
        )
        g.sum().backward()
    assert torch.autograd.gradcheck(
        lambda a, b, c: linear_cauchy(a, b, c, abs_weight=c.detach().abs()), [t[0].detach().requires_grad_()
        if t.dim() == 3 else t.detach().requires_grad_() for t in (loc, scale, w)]
    )  # fmt: skip


def test_linear_cauchy_with_gradients_takes_row_norms_for_an_isotropic_scale(monkeypatch):
    # abs_weight = ||W_k||_1 as a [V, 1] column, one scale per position: s ||W_k||_1 and its gradients, as
    # autograd gives them through s * W.abs().sum(-1).
    monkeypatch.setattr(cauchy, "ABS_BLOCK_ELEMENTS", 3 * 6)
    g = torch.Generator().manual_seed(8)
    w = torch.randn(10, 6, generator=g, dtype=torch.float64)
    w[2, 5] = 0.0
    loc, scale = (
        torch.randn(4, 6, generator=g, dtype=torch.float64),
        torch.rand(4, 1, generator=g, dtype=torch.float64),
    )
    inputs = [t.clone().requires_grad_() for t in (loc, scale, w)]
    ref = [t.clone().requires_grad_() for t in (loc, scale, w)]
    got = linear_cauchy(*inputs, abs_weight=w.abs().sum(-1, keepdim=True))
    want = (torch.nn.functional.linear(ref[0], ref[2]), ref[1] * ref[2].abs().sum(-1))
    up = [torch.randn(4, 10, generator=g, dtype=torch.float64) for _ in range(2)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got, inputs, up), torch.autograd.grad(want, ref, up)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_linear_cauchy_equals_linear_cauchy_in_every_row_block(monkeypatch, dtype):
    # Blocks of 3 rows over 10 (the last block is short) and inputs with two leading dims: each output is the
    # same dot product as the dense matmul's, summed in the order the BLAS picks for the block's shape (so equal
    # up to rounding, not always to the bit); a bias is added afterwards.
    monkeypatch.setattr(cauchy, "STREAM_BLOCK_BYTES", 3 * 6 * torch.empty((), dtype=dtype).element_size())
    g = torch.Generator().manual_seed(5)
    w = torch.randn(10, 6, generator=g).to(dtype)
    w[4, 1] = 0.0
    loc = torch.randn(2, 3, 6, generator=g).to(dtype)
    scale = torch.rand(2, 3, 6, generator=g).to(dtype)
    got_loc, got_scale = streamed_linear_cauchy(loc, scale, w)
    want_loc, want_scale = linear_cauchy(loc, scale, w, abs_weight=w.abs())
    assert got_loc.shape == got_scale.shape == (2, 3, 10) and got_loc.dtype == dtype
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got_loc, want_loc, **tol)
    torch.testing.assert_close(got_scale, want_scale, **tol)
    assert not torch.allclose(got_scale, got_loc.abs())  # |W| s, not |W s|
    bias = torch.randn(10, generator=g).to(dtype)
    torch.testing.assert_close(streamed_linear_cauchy(loc, scale, w, bias)[0], want_loc + bias, **tol)


def test_streamed_linear_cauchy_refuses_gradients_and_mismatched_inputs():
    w, x = torch.randn(4, 3), torch.rand(2, 3)
    with pytest.raises(RuntimeError, match="inference-only"):
        streamed_linear_cauchy(x, x, w.requires_grad_())
    with torch.no_grad():  # the same call without a graph to record is fine
        assert streamed_linear_cauchy(x, x, w)[1].shape == (2, 4)
    with pytest.raises(ValueError, match="must match"):
        streamed_linear_cauchy(torch.rand(2, 3), torch.rand(2, 2), w.detach())
    with pytest.raises(ValueError, match="input size 3"):
        streamed_linear_cauchy(torch.rand(2, 5), torch.rand(2, 5), w.detach())


def test_interval_half_width_reads_a_calibration_table():
    table = {"levels": [0.5, 0.9], "half_widths": [0.6, 1.4]}
    assert interval_half_width(0.5) == pytest.approx(1.0)  # tan(pi/4): the Cauchy's quartiles
    assert interval_half_width(0.9, None) == pytest.approx(math.tan(0.45 * math.pi))
    assert interval_half_width(0.5, table) == 0.6 and interval_half_width(0.9, table) == 1.4
    assert interval_half_width(0.7, table) == pytest.approx(1.0)  # linear between fitted levels
    # outside the fitted levels: the Cauchy width times the nearest fitted level's ratio to it
    assert interval_half_width(0.2, table) == pytest.approx(0.6 * math.tan(0.1 * math.pi))
    assert interval_half_width(0.95, table) == pytest.approx(
        1.4 * math.tan(0.475 * math.pi) / math.tan(0.45 * math.pi)
    )
    widths = [interval_half_width(lv / 100, table) for lv in range(1, 100)]
    assert all(a <= b for a, b in zip(widths, widths[1:]))
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        interval_half_width(1.0, table)
