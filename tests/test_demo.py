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


def test_demo_trains_causalqwen_on_diabetes_with_the_clis_table_recipe(run):
    """--table-recipe auto (default): diabetes is a table in raw units, so CausalQwen gets the recipe that
    causalqwen-train applies to it (its log-magnitude bins are extra input features: exactly H weights each);
    the synthetic linear task keeps the default configuration."""
    from causalqwen.modeling.numeric_embedding import multiscale_feature_count
    from causalqwen.training import cli

    tasks = run[0]["tasks"]
    recipe = tasks["diabetes"]["table_recipe"]
    assert recipe == cli.table_recipe_config() and tasks["linear"]["table_recipe"] == {}
    assert recipe["value_encoding_bin_width"] == cli.TABLE_RECIPE["value_bin_width"] == 0.25
    bins = multiscale_feature_count(16, True, 0.25) - multiscale_feature_count(16, True, 0.0)
    extra = tasks["diabetes"]["parameters"]["causalqwen"] - tasks["linear"]["parameters"]["causalqwen"]
    assert bins > 50 and extra == demo.BACKBONE["hidden_size"] * bins
    # --steps is an explicit budget for both models; without it the recipe's 2,400 steps go to CausalQwen only
    assert tasks["diabetes"]["steps"] == {"causalqwen": 5, "qwen2-digits": 5}


@pytest.mark.parametrize(
    "argv, task, steps",
    [
        ([], "diabetes", (2400, 1200)),  # the recipe's budget for CausalQwen, the digits model's better one
        ([], "linear", (600, 600)),
        (["--table-recipe", "off"], "diabetes", (1200, 1200)),
        (["--steps", "300"], "diabetes", (300, 300)),
    ],
)
def test_demo_task_plan(argv, task, steps):
    recipe, *plan = demo.task_plan(task, demo._parser().parse_args(argv))
    assert tuple(plan) == steps
    assert bool(recipe) == (task == "diabetes" and "off" not in argv)


def test_demo_table_recipe_off_keeps_the_default_config():
    results = demo.main(["--steps", "1", "--examples", "0", "--task", "diabetes", "--table-recipe", "off"])
    diabetes = results["tasks"]["diabetes"]
    assert diabetes["table_recipe"] == {}
    assert diabetes["parameters"]["causalqwen"] == 121_089  # the linear task's model: no bins


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


def test_tiny_models_share_one_backbone_shape():
    """The demo, the CLI's --base tiny and the planner's CPU backbone are one preset (the docs call all three
    "the tiny backbone"): 64 wide, 2 layers, 4/2 heads, MLP 128."""
    from causalqwen.training import cli, planner_trainer, presets

    names = (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
    )
    expected = dict(zip(names, (64, 128, 2, 4, 2)))
    assert expected == presets.TINY_BACKBONE
    assert cli.TINY_BACKBONE is presets.TINY_BACKBONE  # --base tiny builds from the preset itself
    for shape in (demo.BACKBONE, planner_trainer.CPU_BACKBONE):
        assert {key: shape[key] for key in expected} == expected
