import math

import pytest
import torch

from causalqwen import CausalQwenConfig, CausalQwenModel
from causalqwen.modeling.numeric_embedding import (
    LogAdditiveEncoding,
    MultiScaleValueEncoding,
    ValueNormalizer,
    XValEncoding,
    check_numeric_values,
    embed_numbers,
    fit_log_standardization,
    fit_symlog_normalization,
    log_bin_centres,
    log_bin_features,
    multiscale_feature_count,
    multiscale_features,
)

NUM = 99
TINY = dict(
    vocab_size=100,
    hidden_size=64,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_token_id=NUM,
)
VALUES = torch.tensor([0.0, 1e-5, -3.5, 1.0, 25.0, 8500.0, -5e4, 1e12, -1e12])


def model_for(encoding: str, **overrides) -> CausalQwenModel:
    torch.manual_seed(0)
    return CausalQwenModel(CausalQwenConfig(**TINY, value_encoding=encoding, **overrides))


def test_multiscale_features_known_values():
    f = multiscale_features(torch.tensor([100.0, -1e-3, 0.0]), num_frequencies=3)
    assert f.shape == (3, 4 + 2 * 3)
    assert f[:, 0].tolist() == [1.0, -1.0, 0.0]  # sign
    assert f[0, 1].item() == pytest.approx(math.log(100.0) / 10, rel=1e-6)
    assert f[:, 2].tolist() == pytest.approx([0.2, -0.3, 0.0])  # decade / 10
    assert f[:, 3].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)  # position in the decade
    assert f[2].tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]  # zero: no -inf
    assert f[0, 4].item() == pytest.approx(math.sin(math.log(100.0)), rel=1e-5)  # frequency 10000^0 = 1


def test_max_frequency_scales_every_sinusoid():
    values = torch.tensor([2.0, 2.1, 30.0])
    f = multiscale_features(values, num_frequencies=4, max_frequency=40.0)
    freqs = 40.0 * 10000.0 ** (-torch.arange(4.0) / 4)
    angles = torch.log(values).unsqueeze(-1) * freqs
    torch.testing.assert_close(f[:, 4:8], torch.sin(angles))
    torch.testing.assert_close(f[:, 8:], torch.cos(angles))
    torch.testing.assert_close(f[:, :4], multiscale_features(values, 4)[:, :4])  # the scalars do not move
    # 5 % apart, 2.0 and 2.1 differ by at most 0.05 in every seed feature, by more than 1 at frequency 40.
    assert (multiscale_features(values, 4)[0] - multiscale_features(values, 4)[1]).abs().max() < 0.06
    assert (f[0] - f[1]).abs().max() > 1.0


def test_the_config_carries_the_max_frequency_into_the_encoding():
    encoding = model_for("multiscale_linear", value_encoding_max_frequency=32.0).value_encoding
    assert encoding.max_frequency == 32.0
    values = torch.tensor([[2.0, 3.0]])
    embeds = torch.randn(1, 2, 64)
    # Fused vectors differ from the default encoding's once the value block moves off its zero start.
    default = model_for("multiscale_linear").value_encoding
    with torch.no_grad():
        for module in (encoding, default):
            module.fusion_weight[:, 64:].fill_(0.01)
    assert not torch.allclose(encoding(embeds, values), default(embeds, values))
    with pytest.raises(ValueError, match="value_encoding_max_frequency must be a positive"):
        CausalQwenConfig(**TINY, value_encoding_max_frequency=0.0)


def test_multiscale_features_are_finite_over_the_float_range():
    f = multiscale_features(torch.tensor([3.0e38, -1.0e-38, 1e-45]), 16)
    assert torch.isfinite(f).all()
    g = multiscale_features(torch.tensor([3.0e38, -3.0e38, 0.0]), 16, ValueNormalizer("affine", 1.0, 1e-30))
    assert torch.isfinite(g).all()


def test_linear_features_see_the_normalised_value():
    normalizer = ValueNormalizer("affine", shift=10.0, scale=4.0)
    f = multiscale_features(torch.tensor([10.0, 14.0, 2.0]), 3, normalizer)
    assert f.shape == (3, 4 + 2 + 2 * 3)
    t = torch.tensor([0.0, 1.0, -2.0])
    torch.testing.assert_close(f[:, 4], torch.sign(t) * torch.log1p(t.abs()))
    torch.testing.assert_close(f[:, 5], t / (1 + t.abs()))
    # The logarithmic block is seed 002's, unchanged, after the two linear features.
    torch.testing.assert_close(
        f[:, [0, 1, 2, 3, 6, 7, 8]], multiscale_features(torch.tensor([10.0, 14.0, 2.0]), 3)[:, :7]
    )


def test_value_projection_starts_at_unit_variance():
    # std 1/sqrt(features), not initializer_range: the value block's first gradients are this projection's output.
    for encoding, features in (("multiscale", 4 + 32), ("multiscale_linear", 4 + 2 + 32)):
        weight = model_for(encoding).value_encoding.value_proj_weight
        assert weight.shape == (64, features)
        assert weight.std().item() == pytest.approx(features**-0.5, rel=0.1)


@pytest.mark.parametrize("encoding", ["multiscale", "multiscale_linear", "log_additive"])
def test_fused_embedding_starts_at_num_embedding(encoding):
    model = model_for(encoding)
    e = model.embed_tokens.weight[NUM].detach().expand(len(VALUES), -1)
    with torch.no_grad():
        fused = model.value_encoding(e, VALUES)
    rel = (fused - e).norm(dim=-1) / e.norm(dim=-1)
    assert rel.max().item() < 1e-3


def test_xval_scales_the_embedding_by_the_normalised_value():
    model = model_for("xval", value_normalization="affine", value_norm_shift=1.0, value_norm_scale=2.0)
    e = torch.randn(3, 64)
    fused = model.value_encoding(e, torch.tensor([1.0, 5.0, -3.0]))
    torch.testing.assert_close(fused, e * torch.tensor([[0.0], [2.0], [-2.0]]), rtol=0, atol=0)


def test_encodings_separate_values_once_trained():
    model = model_for("multiscale")
    enc = model.value_encoding
    with torch.no_grad():
        enc.fusion_weight[:, 64:].normal_(std=0.5)  # what training does to the value block
    e = model.embed_tokens.weight[NUM].detach().expand(6, -1)
    fused = enc(e, torch.tensor([1e-5, 2e-5, 25.0, 26.0, 1e12, -1e12]))
    for a, b in [(0, 1), (2, 3), (4, 5)]:
        assert (fused[a] - fused[b]).abs().max().item() > 1e-4


def test_embed_numbers_touches_only_num_positions():
    model = model_for("multiscale")
    with torch.no_grad():
        model.value_encoding.fusion_weight[:, 64:].normal_(std=0.5)
    ids = torch.tensor([[1, NUM, 2, NUM], [NUM, 3, 4, 5]])
    values = torch.tensor([[0.0, 7.0, 0.0, -2.0], [1e6, 0.0, 0.0, 0.0]])
    base = model.embed_tokens(ids)
    out = embed_numbers(base, ids, values, NUM, model.value_encoding)
    mask = ids == NUM
    assert torch.equal(out[~mask], base[~mask])
    assert (out[mask] - base[mask]).abs().amax(-1).min().item() > 1e-4


def test_embed_numbers_without_num_is_identity():
    model = model_for("multiscale")
    ids = torch.tensor([[1, 2, 3]])
    base = model.embed_tokens(ids)
    with torch.no_grad():
        assert embed_numbers(base, ids, torch.zeros(1, 3), NUM, model.value_encoding) is base
    # With gradients the embeddings are unchanged but every encoding parameter gets a (zero) gradient, so a DDP
    # process whose batch has no number still reduces every parameter (find_unused_parameters=False works).
    fused = embed_numbers(base, ids, torch.zeros(1, 3), NUM, model.value_encoding)
    assert torch.equal(fused, base)
    fused.sum().backward()
    grads = [p.grad for p in model.value_encoding.parameters()]
    assert grads and all(g is not None and not g.any() for g in grads)


@pytest.mark.parametrize(
    ("values", "error", "match"),
    [
        (torch.tensor([[float("nan"), 1.0]]), ValueError, "NaN or infinite"),
        (torch.tensor([[float("inf"), 1.0]]), ValueError, "NaN or infinite"),
        (torch.tensor([[1.0, 2.0, 3.0]]), ValueError, "must have the shape of input_ids"),
        (torch.tensor([[1, 2]]), TypeError, "floating-point"),
        ([[1.0, 2.0]], TypeError, "must be a torch.Tensor"),
    ],
)
def test_bad_numeric_values_raise(values, error, match):
    model = model_for("multiscale")
    ids = torch.tensor([[NUM, 1]])
    with pytest.raises(error, match=match):
        embed_numbers(model.embed_tokens(ids), ids, values, NUM, model.value_encoding)


def test_only_num_values_are_read_and_checked():
    """embed_numbers reads the values of <NUM> tokens only, so a NaN elsewhere changes nothing; the strict check
    (generate's prompt, a loss's targets) still refuses it anywhere."""
    model = model_for("multiscale")
    ids = torch.tensor([[NUM, 1]])
    clean = embed_numbers(model.embed_tokens(ids), ids, torch.tensor([[2.0, 0.0]]), NUM, model.value_encoding)
    noisy = embed_numbers(
        model.embed_tokens(ids), ids, torch.tensor([[2.0, math.nan]]), NUM, model.value_encoding
    )
    assert torch.equal(clean, noisy)
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_numeric_values(torch.tensor([[2.0, math.nan]]), ids)


def test_gradients_reach_the_fusion():
    model = model_for("multiscale")
    ids = torch.tensor([[1, NUM, 2]])
    out = embed_numbers(
        model.embed_tokens(ids), ids, torch.tensor([[0.0, 42.0, 0.0]]), NUM, model.value_encoding
    )
    (out**2).sum().backward()
    enc = model.value_encoding
    assert enc.fusion_weight.grad[:, 64:].abs().sum() > 0  # value block learns from step 0
    assert enc.num_gate_bias.grad.abs().sum() > 0
    assert model.embed_tokens.weight.grad[NUM].abs().sum() > 0


def test_log_additive_direction_gets_gradient_from_zero():
    model = model_for("log_additive")
    assert isinstance(model.value_encoding, LogAdditiveEncoding)
    out = model.value_encoding(torch.randn(2, 64), torch.tensor([10.0, -3.0]))
    out.sum().backward()
    assert model.value_encoding.direction.grad.abs().sum() > 0


def test_encoding_registry():
    assert isinstance(model_for("multiscale").value_encoding, MultiScaleValueEncoding)
    assert model_for("multiscale").value_encoding.normalizer is None
    assert model_for("multiscale_linear").value_encoding.normalizer is not None
    assert isinstance(model_for("xval").value_encoding, XValEncoding)


@pytest.mark.parametrize("kind", ["none", "affine", "symlog"])
def test_value_normalizer_round_trip(kind):
    norm = ValueNormalizer(kind, shift=3.0, scale=10.0)
    y = torch.tensor([-1e6, -2.5, 0.0, 3.0, 1e6], dtype=torch.float64)
    torch.testing.assert_close(norm.inverse(norm(y)), y, rtol=1e-9, atol=1e-9)


def test_value_normalizer_cauchy_inverse():
    affine = ValueNormalizer("affine", shift=3.0, scale=10.0)
    loc, scale = affine.inverse_cauchy(torch.tensor([1.0]), torch.tensor([0.5]))
    assert loc.item() == 13.0 and scale.item() == 5.0
    symlog = ValueNormalizer("symlog")
    loc, scale = symlog.inverse_cauchy(torch.tensor([math.log1p(100.0)]), torch.tensor([0.1]))
    assert loc.item() == pytest.approx(100.0, rel=1e-5)
    # half the mapped inter-quartile range
    expected = (math.expm1(math.log1p(100.0) + 0.1) - math.expm1(math.log1p(100.0) - 0.1)) / 2
    assert scale.item() == pytest.approx(expected, rel=1e-5)
    big, _ = symlog.inverse_cauchy(torch.tensor([1000.0]), torch.tensor([1.0]))
    assert torch.isfinite(big).all()


def test_value_normalizer_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown value normalisation 'log'"):
        ValueNormalizer("log")
    with pytest.raises(ValueError, match="scale must be positive"):
        ValueNormalizer("affine", scale=0.0)
    with pytest.raises(ValueError, match="log scale must be positive"):
        ValueNormalizer("symlog", log_scale=0.0)


def test_symlog_log_space_standardisation():
    """Values over ten decades: the fitted standardisation makes their normalised values mean 0 / std 1 (the
    symlog alone spans 0 ... 22), the round trip and the Cauchy inverse stay exact, and the config carries it."""
    y = torch.logspace(-5, 5, 101, dtype=torch.float64)
    log_shift, log_scale = fit_log_standardization(y.numpy(), 0.0, 2.5e-5)
    plain = ValueNormalizer("symlog", 0.0, 2.5e-5)
    standard = ValueNormalizer("symlog", 0.0, 2.5e-5, log_shift, log_scale)
    assert 0.3 < plain(y).min() < 1.0 and 21.0 < plain(y).max() < 22.5
    t = standard(y)
    assert abs(t.mean().item()) < 1e-9 and t.std(unbiased=False).item() == pytest.approx(1.0, rel=1e-9)
    torch.testing.assert_close(t, (plain(y) - log_shift) / log_scale)
    torch.testing.assert_close(standard.inverse(t), y, rtol=1e-9, atol=0.0)
    loc, scale = standard.inverse_cauchy(torch.tensor([0.5]), torch.tensor([0.1]))
    lo, hi = plain.inverse(torch.tensor([0.4 * log_scale + log_shift, 0.6 * log_scale + log_shift]))
    assert loc.item() == pytest.approx(
        plain.inverse(torch.tensor(0.5 * log_scale + log_shift)).item(), rel=1e-5
    )
    assert scale.item() == pytest.approx(((hi - lo) / 2).item(), rel=1e-4)
    # Defaults (0, 1) are the plain symlog, bit for bit; NaN targets are left out of the fit.
    assert torch.equal(ValueNormalizer("symlog", 0.0, 2.5e-5, 0.0, 1.0)(y), plain(y))
    with_nan = torch.cat([y, torch.tensor([math.nan])]).numpy()
    assert fit_log_standardization(with_nan, 0.0, 2.5e-5) == (log_shift, log_scale)
    assert fit_log_standardization([3.0, 3.0], 0.0, 1.0) == (math.log1p(3.0), 1.0)  # no spread: scale 1
    # The benchmark's and the CLI's recipe: scale = the 5th percentile of the nonzero |y|, then the fit above.
    targets = torch.cat([y, torch.tensor([0.0, math.nan])]).numpy()
    fitted = fit_symlog_normalization(targets)
    assert fitted["value_norm_scale"] == pytest.approx(10 ** (-5 + 0.05 * 10), rel=1e-12)
    assert (fitted["value_norm_log_shift"], fitted["value_norm_log_scale"]) == fit_log_standardization(
        targets, 0.0, fitted["value_norm_scale"]
    )
    assert fit_symlog_normalization([0.0, 0.0])["value_norm_scale"] == 1.0
    config = CausalQwenConfig(**TINY, value_normalization="symlog", value_norm_scale=2.5e-5,
                              value_norm_log_shift=log_shift, value_norm_log_scale=log_scale)  # fmt: skip
    from_config = ValueNormalizer.from_config(config)
    assert (from_config.log_shift, from_config.log_scale) == (log_shift, log_scale)
    with pytest.raises(ValueError, match="value_norm_log_scale must be a positive finite number"):
        CausalQwenConfig(**TINY, value_norm_log_scale=0.0)


def test_log_bin_features_are_signed_hats_of_the_log_magnitude():
    centres = log_bin_centres(0.25)
    assert len(centres) == 85 and centres[0].item() == -7.0 and centres[-1].item() == 14.0
    assert len(log_bin_centres(0.0)) == 0 and len(log_bin_centres(0.01)) == 2101
    values = torch.tensor([math.exp(0.1), -math.exp(3.05), 0.0, 1e30, 1e-10])
    f = log_bin_features(values, 0.25)
    assert f.shape == (5, 85)
    at = {round(c, 2): i for i, c in enumerate(centres.tolist())}
    # ln v = 0.1 sits 0.4 of the way from centre 0 to centre 0.25: weights 0.6 and 0.4, nothing else
    assert f[0, at[0.0]].item() == pytest.approx(0.6, abs=1e-6)
    assert f[0, at[0.25]].item() == pytest.approx(0.4, abs=1e-6)
    assert f[0].sum().item() == pytest.approx(1.0, abs=1e-6) and (f[0] != 0).sum() == 2
    # a negative value lights the same bins as its magnitude, negated
    assert f[1, at[3.0]].item() == pytest.approx(-0.8, abs=1e-5)
    assert f[1, at[3.25]].item() == pytest.approx(-0.2, abs=1e-5)
    assert f[2].abs().sum() == 0  # zero lights nothing
    assert f[3, -1].item() == 1.0 and f[4, 0].item() == 1.0  # outside the range: the end bin
    assert (f[3:] != 0).sum() == 2


def test_bin_width_appends_the_bins_and_leaves_the_other_features_alone():
    values = torch.tensor([2.0, 26.2, -0.5])
    norm = ValueNormalizer("affine", 100.0, 50.0)
    plain = multiscale_features(values, 16, norm)
    binned = multiscale_features(values, 16, norm, bin_width=0.5)
    assert binned.shape[-1] == multiscale_feature_count(16, True, 0.5) == plain.shape[-1] + 43
    assert torch.equal(binned[:, : plain.shape[-1]], plain)
    assert torch.equal(binned[:, plain.shape[-1] :], log_bin_features(values, 0.5))
    assert multiscale_feature_count(16, True) == plain.shape[-1]


def test_the_config_carries_the_bin_width_into_the_encoding():
    encoding = model_for("multiscale_linear", value_encoding_bin_width=0.25).value_encoding
    assert encoding.bin_width == 0.25
    assert encoding.value_proj_weight.shape == (64, multiscale_feature_count(16, True, 0.25))
    assert model_for("multiscale", value_encoding_bin_width=0.25).value_encoding.value_proj_weight.shape[
        1
    ] == (multiscale_feature_count(16, False, 0.25))
    # at init the fused vector is still exactly embed(<NUM>) scaled back: the value block starts at zero
    embeds, values = torch.randn(1, 3, 64), torch.tensor([[2.0, 30.0, -4.0]])
    torch.testing.assert_close(encoding(embeds, values), embeds, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"value_encoding_bin_width": -0.25}, "value_encoding_bin_width must be 0 .no bins. or a finite"),
        ({"value_encoding_bin_width": 0.001}, "value_encoding_bin_width must be 0 .no bins. or a finite"),
        (
            {"value_encoding_bin_width": float("inf")},
            "value_encoding_bin_width must be 0 .no bins. or a finite",
        ),
        (
            {"value_encoding_bin_width": float("nan")},
            "value_encoding_bin_width must be 0 .no bins. or a finite",
        ),
        (
            {"value_encoding_bin_width": 0.25, "value_encoding": "xval"},
            "value_encoding_bin_width needs a multiscale value_encoding",
        ),
    ],
)
def test_bad_bin_widths_are_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        CausalQwenConfig(**TINY, **overrides)


def test_a_binned_encoding_saves_and_loads_bit_exact(tmp_path):
    model = model_for("multiscale_linear", value_encoding_bin_width=0.25, numeric_input_noise_relative=True)
    with torch.no_grad():
        model.value_encoding.fusion_weight[:, 64:].normal_(std=0.1)  # the value block off its zero start
    model.save_pretrained(tmp_path)
    loaded = CausalQwenModel.from_pretrained(tmp_path)
    assert loaded.config.value_encoding_bin_width == 0.25 and loaded.config.numeric_input_noise_relative
    ids = torch.tensor([[5, NUM, 7, NUM]])
    values = torch.tensor([[0.0, 26.2, 0.0, -0.004]])
    out, again = model(ids, numeric_values=values), loaded(ids, numeric_values=values)
    assert torch.equal(out.last_hidden_state, again.last_hidden_state)
