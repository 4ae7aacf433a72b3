"""causalqwen-train: a quick run writes a reloadable model, tokenizer, metrics and (with --lora) an adapter."""

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("datasets")
peft = pytest.importorskip("peft")

from causalqwen.training import cli  # noqa: E402
from test_trainer import one_thread  # noqa: E402,F401


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = cli.main(["--quick", "--dataset", "synthetic:linear", "--output-dir", str(out)])
    finally:
        torch.set_num_threads(threads)
    return out, metrics


def test_quick_run_writes_reloadable_model_and_metrics(quick_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import causalqwen  # noqa: F401  (registers causal_qwen with the Auto classes)
    from causalqwen.training.data import build_synthetic_dataset
    from causalqwen.training.evaluation import CALIBRATION_LEVELS, cauchy_interval_coverage, predict_values

    out, metrics = quick_run
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["train"]["train_loss"] == pytest.approx(metrics["train"]["train_loss"])
    logs = [h for h in metrics["log_history"] if "loss" in h]
    assert len(logs) == cli.QUICK["steps"]
    assert all(
        math.isfinite(h[k]) for h in logs for k in ("loss_cls", "loss_reg", "num_accuracy", "value_mae")
    )
    assert math.isfinite(metrics["eval"]["eval_loss"]) and math.isfinite(metrics["eval"]["eval_value_mae"])
    assert metrics["test"]["rows"] == cli.QUICK["eval_rows"]

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "CausalQwenForNumericCausalLM"
    assert tokenizer.num_token_id == model.config.num_token_id == 300 and len(tokenizer) == 301
    assert model.config.value_normalization == "affine"  # --value-normalization auto on linear targets
    # The reloaded model reproduces the teacher-forced test MAE of the run (same rows, same weights).
    test = build_synthetic_dataset("linear", n=cli.QUICK["rows"], seed=0)["test"]
    test = test.select(range(cli.QUICK["eval_rows"]))
    pred = predict_values(model, tokenizer, test["prompt"], test["target"])
    mae = float(np.abs(pred["value_loc"] - np.asarray(test["value"])).mean())
    assert mae == pytest.approx(metrics["test"]["mae"], rel=1e-6)
    # The intervals were calibrated on the training rows and the table saved: the reloaded model's calibrated
    # and raw coverage are the run's.
    table = model.config.value_interval_table
    assert table == metrics["value_interval_table"] and table["levels"] == list(CALIBRATION_LEVELS)
    y = np.asarray(test["value"])
    assert cauchy_interval_coverage(y, pred["value_loc"], pred["value_scale"], table=table) == {
        k: metrics["test"][k] for k in ("cover50", "cover90")
    }
    raw = cauchy_interval_coverage(y, pred["value_loc"], pred["value_scale"])
    assert raw == {"cover50": metrics["test"]["cover50_raw"], "cover90": metrics["test"]["cover90_raw"]}


def test_lora_run_writes_adapter_that_reloads(tmp_path):
    from transformers import AutoModelForCausalLM

    import causalqwen  # noqa: F401

    out = tmp_path / "lora"
    metrics = cli.main(
        ["--quick", "--lora", "--lora-r", "4", "--calibration-rows", "0", "--output-dir", str(out)]
    )
    assert metrics["value_interval_table"] is None  # 0: the Cauchy's own intervals
    assert metrics["test"]["cover50"] == metrics["test"]["cover50_raw"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "base" / "model.safetensors").is_file() and (out / "model.safetensors").is_file()
    assert metrics["parameters"]["trainable"] < metrics["parameters"]["total"] / 2

    base = AutoModelForCausalLM.from_pretrained(out / "base").eval()
    # PeftModel.from_pretrained injects the adapter into the model it gets: give it its own copy.
    adapted = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(out / "base"), out / "adapter"
    )
    adapted.eval()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()  # the merged model the run saved
    ids = torch.tensor([[5, 17, 300, 9, 300, 11]])
    values = torch.tensor([[0.0, 0.0, 12.5, 0.0, -3.0, 0.0]])
    with torch.no_grad():
        a = adapted(input_ids=ids, numeric_values=values)
        m = merged(input_ids=ids, numeric_values=values)
        b = base(input_ids=ids, numeric_values=values)
    torch.testing.assert_close(m.loc_S, a.loc_S, atol=1e-5, rtol=0)
    torch.testing.assert_close(m.value_loc, a.value_loc, atol=1e-5, rtol=1e-6)
    assert not torch.allclose(b.value_loc, a.value_loc)  # the adapter did change the model


def test_freeze_backbone_trains_only_the_causal_modules(tmp_path):
    from causalqwen.training.lora import full_training_modules

    out = tmp_path / "frozen"
    metrics = cli.main(["--quick", "--freeze-backbone", "--output-dir", str(out)])
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    expected = sum(
        p.numel()
        for name in full_training_modules(model)
        for p in (
            model.model.value_encoding if name == "value_encoding" else model.get_submodule(name)
        ).parameters()
    )
    assert metrics["parameters"]["trainable"] == expected


def test_loss_compile_flag_trains_with_compiled_kernels_and_is_saved(tmp_path, monkeypatch):
    from causalqwen.modeling import cauchy

    monkeypatch.setattr(cauchy, "_compiled_kernels", {})
    monkeypatch.setattr(cauchy, "_compile_failure", [])
    out = tmp_path / "compiled"
    metrics = cli.main(["--quick", "--loss-compile", "--calibration-rows", "0", "--output-dir", str(out)])
    assert set(cauchy._compiled_kernels) == {"no_log_row_sums", "negative_grads"}
    assert cauchy._compile_failure == []
    assert math.isfinite(metrics["train"]["train_loss"])
    assert json.loads((out / "config.json").read_text())["loss_compile"] is True


def test_standardize_flag_writes_z_scores_and_saves_the_statistics(tmp_path):
    from causalqwen.training.data import table_standardization

    out = tmp_path / "std"
    metrics = cli.main(
        [
            "--quick",
            "--dataset",
            "sklearn:diabetes",
            "--standardize",
            "--numeric-input-noise",
            "0.1",
            "--calibration-rows",
            "0",
            "--output-dir",
            str(out),
        ]
    )
    assert math.isfinite(metrics["train"]["train_loss"]) and metrics["args"]["standardize"] is True
    saved = json.loads((out / "table_standardization.json").read_text())
    expected = table_standardization("sklearn:diabetes", seed=0)
    assert saved == {column: list(pair) for column, pair in expected.items()}  # JSON floats: exact
    assert json.loads((out / "config.json").read_text())["numeric_input_noise"] == 0.1


def test_raw_table_recipe_flags_reach_the_saved_config(tmp_path, capsys):
    out = tmp_path / "raw"
    argv = ["--quick", "--dataset", "sklearn:diabetes", "--value-bin-width", "0.25", "--numeric-input-noise"]
    argv += ["0.08", "--numeric-input-noise-relative", "--calibration-rows", "0", "--output-dir", str(out)]
    metrics = cli.main(argv)
    assert math.isfinite(metrics["train"]["train_loss"])
    config = json.loads((out / "config.json").read_text())
    assert config["value_encoding_bin_width"] == 0.25 and config["numeric_input_noise"] == 0.08
    assert config["numeric_input_noise_relative"] is True
    # the bins size the encoding's weights, so a checkpoint base cannot take them
    capsys.readouterr()
    line = usage_error(
        capsys, ["--base", str(out), "--value-bin-width", "0.5", "--output-dir", str(tmp_path / "x")]
    )
    assert "--value-bin-width applies to a fresh --base tiny model" in line
    line = usage_error(capsys, ["--value-bin-width", "-1", "--output-dir", str(tmp_path / "x")])
    assert (
        "--value-bin-width: value_encoding_bin_width must be 0 (no bins) or a finite number >= 0.01" in line
    )


@pytest.mark.parametrize(
    ("extra", "applied"),
    [
        (["--dataset", "sklearn:diabetes"], cli.TABLE_RECIPE),
        (["--dataset", "csv:rows.csv", "--target", "y"], cli.TABLE_RECIPE),
        # given flags win key by key; a given noise keeps its absolute form
        (["--dataset", "sklearn:diabetes", "--steps", "50", "--numeric-input-noise", "0.2"], {"value_bin_width": 0.25}),
        (["--dataset", "sklearn:diabetes", "--value-bin-width", "0.5"],
         {"numeric_input_noise": 0.08, "numeric_input_noise_relative": True, "steps": 2400}),
        (["--dataset", "sklearn:diabetes", "--table-recipe", "off"], {}),
        (["--dataset", "sklearn:diabetes", "--standardize"], {}),  # z-scores: not the raw-units recipe
        (["--dataset", "synthetic:linear"], {}),
    ],
)  # fmt: skip
def test_table_recipe_fills_in_what_is_not_given_on_raw_tables(extra, applied):
    args = cli.parse_args(["--output-dir", "x", *extra])
    assert args.table_recipe_applied == applied
    for key, value in applied.items():
        assert getattr(args, key) == value
    if "steps" not in applied and "--steps" not in extra:
        assert args.steps == cli.DEFAULT_STEPS == 600
    if "--numeric-input-noise" in extra:
        assert (args.numeric_input_noise, args.numeric_input_noise_relative) == (0.2, False)


def test_table_recipe_leaves_a_checkpoint_base_alone(tmp_path):
    from causalqwen.tokenization.tiny_vocab import build_tiny_tokenizer

    tok = build_tiny_tokenizer()
    config = cli.CausalQwenConfig(vocab_size=len(tok), num_token_id=tok.num_token_id, **cli.TINY_BACKBONE)
    cli.CausalQwenForNumericCausalLM(config).save_pretrained(tmp_path)
    args = cli.parse_args(["--output-dir", "x", "--dataset", "sklearn:diabetes", "--base", str(tmp_path)])
    assert args.table_recipe_applied == {} and args.value_bin_width is None and args.steps == 600


def test_config_file_and_console_entry(tmp_path, monkeypatch):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"dataset": "synthetic:unit", "batch-size": 2, "seed": 3}))
    out = tmp_path / "cfg"
    monkeypatch.setattr(
        "sys.argv", ["causalqwen-train", "--config", str(config), "--quick", "--output-dir", str(out)]
    )
    assert cli.main() == 0  # console scripts sys.exit() main's return value
    args = json.loads((out / "metrics.json").read_text())["args"]
    assert (args["dataset"], args["seed"]) == ("synthetic:unit", 3)
    assert args["batch_size"] == cli.QUICK["batch_size"]  # --quick wins over the file


@pytest.fixture
def mixed_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("size,color,price\n1,red,2\n2,blue,3\n3,red,n/a\n")
    return path


def usage_error(capsys, argv):
    """Run the CLI, expect exit status 2, return the single stderr line."""
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("causalqwen-train: error: ")
    return err[0]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lora", "--freeze-backbone"], "exclude each other"),
        (["--dataset", "csv:/nope.csv"], "--target"),
        (
            ["--dataset", "csv:/nope.csv", "--target", "y"],
            "neither 'sklearn:<name>' nor an existing CSV file",
        ),
        (["--dataset", "parquet:x"], "--dataset must be"),
        (["--dataset", "synthetic:cubic"], "--dataset synthetic:cubic: "),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--standardize"], "--standardize applies to table datasets (sklearn:<name>, csv:PATH)"),
        (["--numeric-input-noise", "-1"], "--numeric-input-noise must be finite and >= 0, got -1.0"),
        (["--numeric-input-noise", "nan"], "--numeric-input-noise must be finite and >= 0, got nan"),
        (["--calibration-rows", "-1"], "--calibration-rows must be >= 0 (0: no calibration), got -1"),
        (["--base", "/definitely/not/here"], "no config.json"),
    ],
)
def test_bad_flags_fail_with_one_line_and_status_2(tmp_path, capsys, argv, message):
    assert message in usage_error(capsys, [*argv, "--output-dir", str(tmp_path / "x")])


def test_bad_csv_columns_name_the_problem(tmp_path, capsys, mixed_csv):
    out = ["--output-dir", str(tmp_path / "x"), "--quick"]
    line = usage_error(capsys, ["--dataset", f"csv:{mixed_csv}", "--target", "nope", *out])
    assert "target column 'nope' not in the table; columns: size, color, price" in line
    line = usage_error(capsys, ["--dataset", f"csv:{mixed_csv}", "--target", "color", *out])
    assert "data row 1 (1-based, header excluded): target column 'color' holds 'red'" in line
    line = usage_error(capsys, ["--dataset", f"csv:{mixed_csv}", "--target", "price", *out])
    assert "data row 3 " in line and "'n/a'" in line


def test_debug_shows_the_traceback(tmp_path, mixed_csv):
    argv = ["--dataset", f"csv:{mixed_csv}", "--target", "nope", "--output-dir", str(tmp_path / "x")]
    with pytest.raises(cli.UsageError) as info:
        cli.main([*argv, "--debug"])
    assert isinstance(info.value.__cause__, ValueError)  # the original error is chained


def test_unknown_config_key(tmp_path, capsys):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"batch_sise": 4}))
    line = usage_error(capsys, ["--config", str(config), "--output-dir", str(tmp_path / "x")])
    assert "unknown key(s) batch_sise" in line


def test_help_is_plain_text_with_defaults(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "``" not in text and ":class:" not in text
    assert (
        "optimizer steps (default: 600; 2400 under the table recipe) --" in text
        and "(default: synthetic:linear)" in text
        and "--debug" in text
    )


def test_a_run_that_learns_nothing_says_so(capsys):
    assert cli.learning_warning({"mae": 0.5, "mean_predictor_mae": 2.0}) is None
    warning = cli.learning_warning({"mae": 2.5, "mean_predictor_mae": 2.0})
    assert warning.startswith("warning: test MAE 2.5 is not better than predicting the training mean (2)")


def test_quick_run_reports_the_mean_predictor(quick_run):
    _, metrics = quick_run
    test = metrics["test"]
    assert test["mean_predictor_mae"] > 0 and math.isfinite(test["mean_predictor_mae"])


def test_value_normalization_choice():
    linear = np.array([-97.0, -10.0, 3.0, 20.0, 103.0])
    assert cli.value_normalization(linear, "auto") == {
        "value_normalization": "affine",
        "value_norm_shift": 3.0,
        "value_norm_scale": 15.0,
    }
    wide = np.array([1e-5, 3e-2, 2.0, 5e3, 1e5, np.nan])
    got = cli.value_normalization(wide, "auto")
    finite = np.array([1e-5, 3e-2, 2.0, 5e3, 1e5])
    scale = np.percentile(finite, 5)  # the 5th percentile of the nonzero |y|: 1e-5 + 0.2 * (3e-2 - 1e-5)
    assert got["value_normalization"] == "symlog" and got["value_norm_scale"] == pytest.approx(6.008e-3)
    logs = np.log1p(finite / scale)  # the log-space value standardised
    assert got["value_norm_log_shift"] == pytest.approx(logs.mean())
    assert got["value_norm_log_scale"] == pytest.approx(logs.std())
    assert cli.value_normalization(linear, "none") == {"value_normalization": "none"}
