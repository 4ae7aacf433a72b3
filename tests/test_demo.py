"""`python -m causalqwen.demo` end to end on a 5-step budget: every row and metric, the JSON, determinism."""

import json
import math

import numpy as np
import pytest

from causalqwen import demo

ROWS = ("causalqwen", "qwen2-digits", "mean predictor", "LinearRegression")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return demo.main(["--steps", "5", "--seed", "0", "--examples", "2", "--output-dir", str(out)]), out


def test_demo_runs_both_tasks(run):
    results, _ = run
    assert list(results["tasks"]) == ["diabetes", "linear"]
    linear = results["tasks"]["linear"]
    assert (linear["n_train"], linear["n_test"]) == (800, 200)
    # y = 2x + 3 exactly: the linear reference is exact, the training mean is not.
    assert linear["metrics"]["LinearRegression"]["mae"] < 1e-9 < linear["metrics"]["mean predictor"]["mae"]
    assert linear["examples"][0]["prompt"].startswith("x is ")


def test_demo_runs_one_task_on_request():
    results = demo.main(["--steps", "1", "--examples", "0", "--task", "linear"])
    assert list(results["tasks"]) == ["linear"]


def test_demo_returns_every_metric_for_every_row(run):
    results = run[0]["tasks"]["diabetes"]
    assert list(results["metrics"]) == list(ROWS)
    for name in ROWS:
        row = results["metrics"][name]
        assert set(demo.METRIC_KEYS) <= set(row)
        for key in ("mae", "rmse", "r2", "median_ae"):
            assert math.isfinite(row[key]), (name, key)
        assert row["rmse"] >= row["mae"] >= 0
    cq, digits = results["metrics"]["causalqwen"], results["metrics"]["qwen2-digits"]
    assert 0.0 <= cq["num_accuracy"] <= 1.0 and 0.0 <= cq["cover50"] <= cq["cover90"] <= 1.0
    assert digits["num_accuracy"] is None and digits["cover50"] is None and 0.0 <= digits["fail_rate"] <= 1.0
    assert results["n_train"] + results["n_test"] == 442  # sklearn diabetes, every row used
    # The references do not depend on training: a linear fit beats the training mean on diabetes.
    assert (
        results["metrics"]["LinearRegression"]["r2"] > 0.4 > abs(results["metrics"]["mean predictor"]["r2"])
    )
    assert results["parameters"]["causalqwen"] > results["parameters"]["qwen2-digits"] > 50_000


def test_demo_examples_and_json(run):
    everything, out = run
    results = everything["tasks"]["diabetes"]
    assert len(results["examples"]) == 2
    for example in results["examples"]:
        assert example["prompt"].startswith("Patient: age ")
        assert isinstance(example["completion"], str) and math.isfinite(example["true_value"])
    saved = json.loads((out / "demo_results.json").read_text())
    assert saved["tasks"]["diabetes"]["metrics"] == results["metrics"]
    assert saved["config"]["steps"] == 5 and saved["config"]["seed"] == 0
    assert saved["training"]["diabetes"]["causalqwen"]["log"][-1]["step"] == 5


def test_demo_is_deterministic_given_the_seed(run):
    again = demo.main(["--steps", "5", "--seed", "0", "--examples", "0", "--task", "diabetes"])["tasks"][
        "diabetes"
    ]
    first = run[0]["tasks"]["diabetes"]
    assert again["metrics"]["causalqwen"]["mae"] == first["metrics"]["causalqwen"]["mae"]
    assert again["metrics"]["qwen2-digits"]["mae"] == first["metrics"]["qwen2-digits"]["mae"]


@pytest.mark.parametrize(
    "argv, message",
    [(["--steps", "0"], "--steps must be >= 1"), (["--lr", "-1"], "--lr must be a positive number")],
)
def test_demo_rejects_bad_flags(argv, message):
    with pytest.raises(ValueError, match=message):
        demo.main(argv)


def test_demo_metrics_are_those_of_its_predictions(run):
    """Recomputed here from the per-row predictions with plain numpy, not the package's metric code."""
    results = run[0]["tasks"]["diabetes"]
    pred = {k: v if isinstance(v, dict) else np.asarray(v) for k, v in results["predictions"].items()}
    y = pred["y"]
    assert len(y) == results["n_test"]
    for name in ("causalqwen", "qwen2-digits"):
        row, err = results["metrics"][name], pred[name] - y
        assert row["mae"] == pytest.approx(np.abs(err).mean(), rel=1e-9)
        assert row["rmse"] == pytest.approx(np.sqrt((err**2).mean()), rel=1e-9)
        assert row["r2"] == pytest.approx(1 - (err**2).sum() / ((y - y.mean()) ** 2).sum(), rel=1e-9)
    # the raw Cauchy 50% / 90% intervals: |y - loc| <= scale * tan(pi * level / 2); the calibrated ones:
    # |y - loc| <= scale * the table's width at the level (fitted on the training rows)
    z = np.abs(y - pred["causalqwen"]) / pred["causalqwen_scale"]
    cq = results["metrics"]["causalqwen"]
    assert cq["cover50_raw"] == pytest.approx(np.mean(z <= 1.0))
    assert cq["cover90_raw"] == pytest.approx(np.mean(z <= np.tan(0.45 * np.pi)))
    table = pred["causalqwen_interval_table"]
    widths = dict(zip(table["levels"], table["half_widths"]))
    assert cq["cover50"] == pytest.approx(np.mean(z <= widths[0.5]))
    assert cq["cover90"] == pytest.approx(np.mean(z <= widths[0.9]))
