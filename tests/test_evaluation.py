"""Evaluation helpers: exact metrics, Cauchy coverage, teacher-forced values, generation, digits baseline."""

import math

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM
from causalqwen.tokenization.tiny_vocab import build_tiny_tokenizer
from causalqwen.training.baselines import (
    BackendDigitsView,
    feature_matrix,
    parse_leading_number,
    predict_digits,
    target_prefix,
)
from causalqwen.training.evaluation import (
    CALIBRATION_LEVELS,
    calibrate_value_intervals,
    calibrate_value_scale,
    cauchy_interval_coverage,
    coverage_key,
    fit_interval_table,
    generate_examples,
    predict_values,
    regression_metrics,
)

TINY = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=256,
)


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    torch.manual_seed(0)
    config = CausalQwenConfig(
        vocab_size=len(tok),
        num_token_id=tok.convert_tokens_to_ids("<NUM>"),
        pad_token_id=tok.pad_token_id,
        value_normalization="affine",
        value_norm_shift=150.0,
        value_norm_scale=75.0,
        **TINY,
    )
    return CausalQwenForNumericCausalLM(config).eval()


# ---------------------------------------------------------------------------------------------- metrics


def test_regression_metrics_hand_computed():
    y = [1.0, 2.0, 3.0, 4.0]
    pred = [2.0, 2.0, 2.0, 6.0]
    # errors 1, 0, -1, 2: |e| mean 1, e^2 = 1, 0, 1, 4 -> MSE 1.5; SS_tot = 5; median |e| = 1
    m = regression_metrics(y, pred, lower=[0.5, 2.5, 2.0, 3.0], upper=[1.5, 3.0, 3.0, 5.0])
    assert m["mae"] == 1.0
    assert m["rmse"] == math.sqrt(1.5)
    assert m["r2"] == 1.0 - 6.0 / 5.0
    assert m["median_ae"] == 1.0
    # covered: 1 in [0.5,1.5] yes, 2 in [2.5,3] no, 3 in [2,3] yes (closed), 4 in [3,5] yes
    assert m["coverage"] == 0.75
    assert "coverage" not in regression_metrics(y, pred)


def test_regression_metrics_perfect_and_constant_targets():
    perfect = regression_metrics([1.0, 5.0], [1.0, 5.0])
    assert perfect == {"mae": 0.0, "rmse": 0.0, "r2": 1.0, "median_ae": 0.0}
    assert regression_metrics([3.0, 3.0], [3.0, 4.0])["r2"] is None  # undefined, not NaN


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(y_true=[1.0, 2.0], y_pred=[1.0]), "y_pred has 1 entries, expected 2"),
        (dict(y_true=[1.0, float("nan")], y_pred=[1.0, 2.0]), "y_true contains NaN or inf at index 1"),
        (dict(y_true=[], y_pred=[]), "y_true is empty"),
        (dict(y_true=[[1.0]], y_pred=[[1.0]]), "one-dimensional"),
        (dict(y_true=[1.0], y_pred=[1.0], lower=[0.0]), "lower and upper go together"),
        (dict(y_true=[1.0], y_pred=[1.0], lower=[2.0], upper=[0.0]), "lower > upper at index 0"),
    ],
)
def test_regression_metrics_rejects_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        regression_metrics(**kwargs)


def test_cauchy_coverage_exact_on_constructed_points():
    # Cauchy(0, 1): the central 50% interval is [-1, 1], the 90% one is [-tan(0.45 pi), tan(0.45 pi)] ≈ ±6.31.
    y = np.array([0.0, 0.99, 1.01, 6.3, 6.32, -7.0])
    cov = cauchy_interval_coverage(y, np.zeros(6), np.ones(6))
    assert cov == {"cover50": 2 / 6, "cover90": 4 / 6}
    assert coverage_key(0.95) == "cover95"


def test_cauchy_coverage_matches_level_on_seeded_draws():
    gen = torch.Generator().manual_seed(0)
    n = 20000
    loc = torch.linspace(-50, 50, n, dtype=torch.float64)
    scale = torch.linspace(0.1, 10, n, dtype=torch.float64)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    draws = loc + scale * torch.tan(math.pi * (u - 0.5))
    cov = cauchy_interval_coverage(draws.numpy(), loc.numpy(), scale.numpy(), levels=(0.5, 0.8, 0.9))
    # Binomial std at n=20000 is <= 0.0036; 0.015 is > 4 std.
    assert cov["cover50"] == pytest.approx(0.5, abs=0.015)
    assert cov["cover80"] == pytest.approx(0.8, abs=0.015)
    assert cov["cover90"] == pytest.approx(0.9, abs=0.015)


def test_cauchy_coverage_rejects_bad_levels_and_scales():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        cauchy_interval_coverage([0.0], [0.0], [1.0], levels=(1.0,))
    with pytest.raises(ValueError, match="scale must be >= 0"):
        cauchy_interval_coverage([0.0], [0.0], [-1.0])
    with pytest.raises(ValueError, match="loc has 2 entries, expected 1"):
        cauchy_interval_coverage([0.0], [0.0, 1.0], [1.0, 1.0])


# ------------------------------------------------------------------------------------------ predictions


PROMPTS = ["Patient: age 59, bmi 32.1.", "Patient: age 23, bmi 21.6.", "Patient: age 47, bmi 30.5."]
TARGETS = [" Disease progression is 151.", " Disease progression is 75.", " Disease progression is 141."]


def test_predict_values_shapes_and_matches_a_full_forward(tok, model):
    out = predict_values(model, tok, PROMPTS, TARGETS, batch_size=2)
    assert out["value_loc"].shape == out["value_scale"].shape == out["num_hit"].shape == (3,)
    assert np.isfinite(out["value_loc"]).all() and (out["value_scale"] > 0).all()
    assert out["num_accuracy"] == float(out["num_hit"].mean())
    # Reference: the full prompt + target sequence, read at the position just before <NUM>.
    enc_p, enc_t = tok(PROMPTS[1], add_special_tokens=False), tok(TARGETS[1], add_special_tokens=False)
    ids = enc_p["input_ids"] + enc_t["input_ids"]
    vals = enc_p["numeric_values"] + enc_t["numeric_values"]
    pos = len(enc_p["input_ids"]) + enc_t["input_ids"].index(tok.convert_tokens_to_ids("<NUM>")) - 1
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids]), numeric_values=torch.tensor([vals]))
    assert out["value_loc"][1] == pytest.approx(float(ref.value_loc[0, pos]), rel=1e-5)
    assert out["value_scale"][1] == pytest.approx(float(ref.value_scale[0, pos]), rel=1e-5)
    assert out["num_hit"][1] == bool(ref.logits[0, pos].argmax() == tok.convert_tokens_to_ids("<NUM>"))
    # A shared template gives the same values (the number itself is never fed).
    shared = predict_values(model, tok, PROMPTS, " Disease progression is 0.")
    np.testing.assert_allclose(shared["value_loc"], out["value_loc"], rtol=1e-5)


def test_predict_values_rejects_bad_input(tok, model):
    with pytest.raises(ValueError, match="has no number"):
        predict_values(model, tok, PROMPTS[:1], [" No value here."])
    with pytest.raises(ValueError, match="3 prompts but 2 targets"):
        predict_values(model, tok, PROMPTS, TARGETS[:2])


def test_generate_examples_writes_generated_values(tok, model):
    out = generate_examples(model, tok, PROMPTS[:2], max_new_tokens=6)
    assert [e["prompt"] for e in out] == PROMPTS[:2]
    for example in out:
        assert isinstance(example["completion"], str)
        assert all(math.isfinite(v) for v in example["values"])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_examples(model, tok, PROMPTS, max_new_tokens=0)


# -------------------------------------------------------------------------------------- digits baseline


@pytest.mark.parametrize(
    "text, value",
    [(" 151.", 151.0), ("is -2.5e3 kg", -2500.0), ("1,234.5", 1234.5), ("none", None), (".5", 0.5)],
)
def test_parse_leading_number(text, value):
    assert parse_leading_number(text) == value


def test_target_prefix_stops_before_the_number():
    assert target_prefix(" The target is 151.") == " The target is "
    with pytest.raises(ValueError, match="contains no number"):
        target_prefix("no number here")


def test_predict_digits_parses_or_imputes(tok):
    view = BackendDigitsView(tok)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **TINY))
    texts = [p + target_prefix(t) for p, t in zip(PROMPTS, TARGETS)]
    out = predict_digits(model, view, texts, fallback=123.0, batch_size=2, max_new_tokens=4)
    assert out["pred"].shape == (3,) and len(out["outputs"]) == 3
    for text, pred in zip(out["outputs"], out["pred"]):
        parsed = parse_leading_number(text)
        assert pred == (123.0 if parsed is None else parsed)
    assert out["fail_rate"] == sum(parse_leading_number(t) is None for t in out["outputs"]) / 3
    assert view("is 151")["input_ids"][-3:] == [view("1")["input_ids"][0], view("5")["input_ids"][0]] + [
        view("1")["input_ids"][0]
    ]


def test_feature_matrix_reads_the_prompt_numbers(tok):
    X = feature_matrix(tok, PROMPTS + ["Patient: age 5."])
    np.testing.assert_array_equal(X, [[59, 32.1], [23, 21.6], [47, 30.5], [5, 0]])
    assert feature_matrix(tok, PROMPTS, width=1).shape == (3, 1)


# ---------------------------------------------------------------------------------------- calibration


def _untrained_model_and_rows(tok, n: int):
    """A fresh tiny CausalQwen (seed 0) and ``n`` rows ``x is X.`` -> ``y is 2X + 3.`` with their values."""
    torch.manual_seed(0)
    config = CausalQwenConfig(vocab_size=len(tok), num_token_id=tok.convert_tokens_to_ids("<NUM>"),
                              pad_token_id=tok.pad_token_id, **TINY)  # fmt: skip
    xs = range(1, n + 1)
    rows = [f"x is {x}." for x in xs], [f"y is {2 * x + 3}." for x in xs], np.array([2.0 * x + 3 for x in xs])
    return CausalQwenForNumericCausalLM(config).eval(), *rows


def test_calibrate_value_scale_centres_the_median_interval(tok, tmp_path):
    model, prompts, targets, y = _untrained_model_and_rows(tok, 21)
    before = predict_values(model, tok, prompts, targets)
    ratio = np.abs(y - before["value_loc"]) / before["value_scale"]
    factor = calibrate_value_scale(model, tok, prompts, targets, y)
    assert factor == pytest.approx(np.median(ratio), rel=1e-6) and model.config.value_scale_factor == factor
    after = predict_values(model, tok, prompts, targets)
    np.testing.assert_allclose(
        after["value_loc"], before["value_loc"], rtol=0, atol=0
    )  # only the scale moves
    np.testing.assert_allclose(after["value_scale"], before["value_scale"] * factor, rtol=1e-6)
    assert cauchy_interval_coverage(y, after["value_loc"], after["value_scale"], (0.5,))["cover50"] == 11 / 21
    # saved with the model; the loss ignores it (it calibrates outputs, not training)
    model.save_pretrained(tmp_path)
    assert CausalQwenForNumericCausalLM.from_pretrained(tmp_path).config.value_scale_factor == factor
    enc = tok(prompts[0] + " " + targets[0], return_tensors="pt")
    calibrated_loss = model(**enc, labels=enc["input_ids"]).loss
    model.config.value_scale_factor = 1.0
    assert torch.equal(model(**enc, labels=enc["input_ids"]).loss, calibrated_loss)
    with pytest.raises(ValueError, match="needs >= 2 rows"):
        calibrate_value_scale(model, tok, prompts[:1], targets[:1], y[:1])


def test_fit_interval_table_takes_the_conformal_quantiles():
    # ratios |y - loc| / scale = 1, 2, ..., 9 (shuffled): the level-l width is the ceil(10 l)-th smallest
    ratios = np.array([4.0, 9.0, 1.0, 7.0, 2.0, 8.0, 3.0, 6.0, 5.0])
    y, loc, scale = ratios * 2.0 + 1.0, np.ones(9), np.full(9, 2.0)
    table = fit_interval_table(y, loc, scale, levels=(0.1, 0.5, 0.85, 0.95))
    assert table == {"levels": [0.1, 0.5, 0.85, 0.95], "half_widths": [1.0, 5.0, 9.0, 9.0]}
    cover = cauchy_interval_coverage(y, loc, scale, (0.1, 0.5), table=table)
    assert cover == {"cover10": 1 / 9, "cover50": 5 / 9}
    assert cauchy_interval_coverage(y, loc, scale, (0.5,))["cover50"] == 1 / 9  # raw Cauchy: loc +- scale
    with pytest.raises(ValueError, match="needs >= 2 rows"):
        fit_interval_table(y[:1], loc[:1], scale[:1])
    with pytest.raises(ValueError, match="scale must be > 0"):
        fit_interval_table(y, loc, np.zeros(9))
    with pytest.raises(ValueError, match="distinct, increasing"):
        fit_interval_table(y, loc, scale, levels=(0.9, 0.5))


def test_calibrate_value_intervals_covers_every_level_and_is_saved(tok, tmp_path):
    model, prompts, targets, y = _untrained_model_and_rows(tok, 40)
    before = predict_values(model, tok, prompts, targets)
    raw = cauchy_interval_coverage(y, before["value_loc"], before["value_scale"], (0.5, 0.9))
    table = calibrate_value_intervals(model, tok, prompts, targets, y)
    assert model.config.value_interval_table == table and table["levels"] == list(CALIBRATION_LEVELS)
    calibrated = cauchy_interval_coverage(y, before["value_loc"], before["value_scale"], (0.5, 0.9), table)
    # an untrained model's intervals are off; the fitted ones cover ceil(41 l) / 40 of the same rows
    assert raw != calibrated
    assert calibrated == {"cover50": 21 / 40, "cover90": 37 / 40}
    lo, hi = model.value_interval(
        torch.as_tensor(before["value_loc"]), torch.as_tensor(before["value_scale"]), 0.5
    )
    assert float(((torch.as_tensor(y) >= lo) & (torch.as_tensor(y) <= hi)).double().mean()) == 21 / 40
    # saved with the model (to the bit), outputs and loss untouched
    model.save_pretrained(tmp_path)
    loaded = CausalQwenForNumericCausalLM.from_pretrained(tmp_path)
    assert loaded.config.value_interval_table == table
    after = predict_values(loaded, tok, prompts, targets)
    np.testing.assert_array_equal(after["value_scale"], before["value_scale"])
    with pytest.raises(ValueError, match="one prompt, target and value per row"):
        calibrate_value_intervals(model, tok, prompts[:3], targets, y)
