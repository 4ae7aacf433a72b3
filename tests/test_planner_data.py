"""The synthetic multi-step planning set (labels, text, budgets, determinism) and the plan metrics."""

from __future__ import annotations

import math
import re
from collections import Counter

import pytest

from causalqwen.training import planner_data as pd
from causalqwen.training import router_data as rd

SIZES = {size[0]: size for size in rd._SIZES}
NUMBER = re.compile(r"\d+(?:\.\d+)?")


@pytest.fixture(scope="module")
def small():
    return pd.build_synthetic_planning_dataset(200, 50, 50, seed=3)


@pytest.fixture(scope="module")
def default_train():
    return pd.build_synthetic_planning_dataset()["train"]


# ------------------------------------------------------------------------------------------- dataset
def test_deterministic_for_a_seed_and_different_across_seeds(small):
    again = pd.build_synthetic_planning_dataset(200, 50, 50, seed=3)
    for split in ("train", "dev", "test"):
        assert small[split].to_list() == again[split].to_list()
    assert [len(small[s]) for s in ("train", "dev", "test")] == [200, 50, 50]
    other = pd.build_synthetic_planning_dataset(200, 50, 50, seed=4)
    assert small["train"]["query"] != other["train"]["query"]
    assert small["train"]["plan"] != other["train"]["plan"]
    # Splits draw from their own generators: dev is not a prefix of train.
    assert small["dev"]["query"] != small["train"]["query"][:50]
    assert small["train"][7]["id"] == "planning_train_7"


def _family_and_size(name):
    family, size = name.rsplit("_", 1)
    return family, SIZES[size]


def test_every_row_satisfies_the_plan_invariants(small):
    abstained = 0
    for split in ("train", "dev", "test"):
        for row in small[split]:
            names, plan, steps = row["tool_names"], row["plan"], row["step_families"]
            kind, value, load = row["budget_kind"], row["budget_value"], row["runtime_load"]
            assert len(names) == len(row["tool_texts"]) == len(row["resource_vectors"]) == 16
            assert len(row["latency"]) == len(row["compliant"]) == 16
            assert len(set(names)) == 16 and all(len(v) == 6 for v in row["resource_vectors"])
            assert all(text.startswith(f"{name}: ") for name, text in zip(names, row["tool_texts"]))
            assert row["num_steps"] == len(steps) == len(set(steps)) and 1 <= len(steps) <= 3
            assert set(steps) <= {_family_and_size(n)[0] for n in names}
            assert 0.0 <= load <= 1.0 and kind in pd.BUDGET_KINDS
            members = {}
            for j, name in enumerate(names):
                members.setdefault(_family_and_size(name)[0], []).append(j)
            assert all(len(m) == 4 for m in members.values())
            # compliant is the budget predicate at this load, recomputed from the size table.
            columns = zip(names, row["compliant"], row["resource_vectors"], row["latency"])
            for name, fits, vector, observed in columns:
                size = _family_and_size(name)[1]
                effective = rd._effective_latency(size, load)
                assert fits == rd._satisfies(kind, value, size, effective)
                expected = [size[1], size[2], size[3], effective, size[5], size[6]]
                assert vector == pytest.approx(expected, abs=1e-5)
                assert observed >= effective - 1e-5
            if plan:
                assert len(plan) == len(set(plan)) == len(steps)
                assert all(0 <= t < 16 for t in plan)
                assert [_family_and_size(names[t])[0] for t in plan] == steps
                for t, family in zip(plan, steps):
                    assert row["compliant"][t]
                    rivals = [j for j in members[family] if row["compliant"][j]]
                    assert row["resource_vectors"][t][5] == max(row["resource_vectors"][j][5] for j in rivals)
            else:
                abstained += 1
                assert kind in ("latency", "memory", "cost")
                assert any(not any(row["compliant"][j] for j in members[family]) for family in steps)
    assert abstained > 0


def test_arguments_restate_the_language_and_the_budget_as_written(small):
    import json

    for row in small["train"]:
        assert len(row["arguments"]) == len(row["plan"])
        number = pd.format_budget_value(row["budget_value"])
        for family, text in zip(row["step_families"], row["arguments"]):
            fields = json.loads(text)
            key = pd._BUDGET_ARGUMENTS.get(row["budget_kind"])
            if key:
                # The number as the request writes it, so the text can be copied.
                assert f'"{key}": {number}' in text and f" {number} " in row["query"] + " "
                assert fields[key] == row["budget_value"]
            assert ("target" in fields) == (family == "translate")
            if family == "translate":
                assert fields["target"] in row["query"]
            assert (fields.get("device") == "cpu") == (row["budget_kind"] == "cpu_only")


def test_argument_metrics_count_tools_and_tolerate_number_digits():
    rows = [{"plan": [2, 0], "arguments": ['{"target": "French", "timeout_ms": 350}', '{"timeout_ms": 350}']},
            {"plan": [], "arguments": []}, {"plan": [1], "arguments": ['{"max_cost": 0.25}']}]  # fmt: skip
    predicted = [[2, 1], [], [1]]
    texts = [['{"target": "French", "timeout_ms": 349.9}', '{"timeout_ms": 350}'], [], ['{"max_cost": 0.3}']]
    # 3 gold steps: step 1 of row 0 has the wrong tool; row 0 step 0 is within 1 %, row 2 is 20 % off.
    assert pd.argument_metrics(predicted, texts, rows) == {"argument_exact": 0.0, "argument_match": 1 / 3}
    gold = [r["arguments"] for r in rows]
    assert pd.argument_metrics([r["plan"] for r in rows], gold, rows) == {"argument_exact": 1.0,
                                                                          "argument_match": 1.0}  # fmt: skip
    assert not pd.arguments_equal("{not json", "{}") and not pd.arguments_equal(None, "{}")
    assert not pd.arguments_equal('{"a": true}', '{"a": 1}') and pd.arguments_equal(
        '{"a": [1, "x"]}', '{"a": [1.001, "x"]}'
    )
    with pytest.raises(ValueError, match="2 argument texts"):
        pd.argument_metrics([[2]], [["{}", "{}"]], rows[:1])


def test_query_states_the_steps_in_order_and_the_budget_value(small):
    kinds = Counter()
    for row in small["train"]:
        query, kind, value = row["query"], row["budget_kind"], row["budget_value"]
        kinds[kind] += 1
        numbers = [float(n) for n in NUMBER.findall(query)]
        if kind in ("latency", "memory", "cost"):
            assert numbers == [value], query
            assert "e" not in pd.format_budget_value(value) and value == float(f"{value:.1e}")
            low, high = pd._BUDGET_RANGES[kind]
            assert low <= value <= high
        else:
            assert numbers == [] and value == 0.0, query
        assert query.endswith(pd._BUDGET_PHRASES[kind].format(v=pd.format_budget_value(value)))
        assert query.count(", ") == row["num_steps"] + (kind == "cpu_only")
    assert set(kinds) == set(pd.DEFAULT_BUDGET_MIX) == set(pd.BUDGET_KINDS) - {"total_latency"}
    row = next(r for r in small["train"] if r["num_steps"] == 3 and r["budget_kind"] == "latency")
    first, *follow_ups, budget = row["query"].split(", ")
    assert len(follow_ups) == 2 and budget.startswith("with every step under ")
    assert not first.startswith(pd._CONNECTORS)
    assert all(part.startswith(pd._CONNECTORS) for part in follow_ups)


@pytest.mark.parametrize(
    "value, text",
    [(350.0, "350"), (0.25, "0.25"), (1.5, "1.5"), (0.0042, "0.0042"), (5000.0, "5000"), (12.0, "12"),
     (0.003, "0.003")],
)  # fmt: skip
def test_format_budget_value_has_no_trailing_zeros_or_exponent(value, text):
    assert pd.format_budget_value(value) == text
    assert float(text) == value


def test_default_train_split_abstain_share_steps_and_budget_mix(default_train):
    n = len(default_train)
    abstain = sum(not plan for plan in default_train["plan"]) / n
    assert 0.10 <= abstain <= 0.30
    steps = Counter(default_train["num_steps"])
    assert sorted(steps) == [1, 2, 3] and min(steps.values()) > 0.25 * n
    kinds = Counter(default_train["budget_kind"])
    assert 0.15 <= (kinds["none"] + kinds["cpu_only"]) / n <= 0.25
    # The budget decides the size: every size is chosen somewhere, and a plan uses one size for all its steps.
    chosen = Counter()
    for names, plan in zip(default_train["tool_names"], default_train["plan"]):
        sizes = {names[t].rsplit("_", 1)[1] for t in plan}
        assert len(sizes) <= 1
        chosen.update(sizes)
    assert set(chosen) == set(SIZES)


def test_num_steps_covers_one_to_max_steps():
    ds = pd.build_synthetic_planning_dataset(200, 1, 1, num_families=5, max_steps=5, seed=1)["train"]
    assert sorted(Counter(ds["num_steps"])) == [1, 2, 3, 4, 5]
    assert all(len(names) == 20 for names in ds["tool_names"])
    single = pd.build_synthetic_planning_dataset(5, 1, 1, num_families=1, max_steps=1)["train"]
    assert single["num_steps"] == [1] * 5 and all(len(names) == 4 for names in single["tool_names"])


def test_an_all_abstained_split_keeps_integer_plan_type():
    train = pd.build_synthetic_planning_dataset(1, 1, 1, seed=5)["train"]
    assert train["plan"] == [[]]
    assert train.features["plan"].feature.dtype == "int64"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_train=0), "num_train"),
        (dict(num_dev=-1), "num_dev"),
        (dict(num_test=2.5), "num_test"),
        (dict(num_train=True), "num_train"),
        (dict(num_families=0), "num_families"),
        (dict(num_families=len(rd._FAMILIES) + 1, max_steps=1), "num_families"),
        (dict(max_steps=0), "max_steps"),
        (dict(num_families=2, max_steps=3), "max_steps"),
        (dict(max_steps=2.0), "max_steps"),
    ],
)
def test_arguments_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pd.build_synthetic_planning_dataset(**{"num_train": 3, "num_dev": 1, "num_test": 1, **kwargs})


# ------------------------------------------------------------------------------------------- metrics
def _rows():
    # Four requests over 4 tools each: two plans, one single step, one abstained.
    return [
        {"plan": [2, 0], "compliant": [True, False, True, True]},
        {"plan": [1, 3, 0], "compliant": [True, True, False, True]},
        {"plan": [1], "compliant": [False, True, True, False]},
        {"plan": [], "compliant": [False, False, False, False]},
    ]


def test_plan_metrics_on_hand_written_cases():
    predicted = [[2, 0], [1, 2, 3], [], [3]]
    m = pd.plan_metrics(predicted, _rows())
    assert m["exact_match"] == 0.25
    # Non-empty predictions: [2, 0] complies; [1, 2, 3] has one non-compliant tool of three; [3] has one of one.
    assert m["budget_compliance"] == pytest.approx(1 / 3)
    # Gold steps 2 + 3 + 1 = 6; hits: 2 (first) + 1 (index 0 of the second) + 0 + 0.
    assert m["step_accuracy"] == pytest.approx(3 / 6)
    # Abstains predicted on row 2 (gold non-empty: false positive), missed on row 3 (false negative).
    assert m["abstain_precision"] == 0.0 and m["abstain_recall"] == 0.0 and m["abstain_f1"] == 0.0
    assert m["length_accuracy"] == 0.5
    assert set(m) == {"exact_match", "budget_compliance", "step_accuracy", "abstain_precision",
                      "abstain_recall", "abstain_f1", "length_accuracy"}  # fmt: skip


def test_plan_metrics_abstain_scores_and_perfect_predictions():
    rows = _rows() + [{"plan": [], "compliant": [True]}, {"plan": [0], "compliant": [True]}]
    # Abstain: tp = rows 3 and 4, fp = row 5, fn = none.
    m = pd.plan_metrics([[2, 0], [1, 3, 0], [1], [], [], []], rows)
    assert m["exact_match"] == pytest.approx(5 / 6)
    assert m["abstain_precision"] == pytest.approx(2 / 3) and m["abstain_recall"] == 1.0
    assert m["abstain_f1"] == pytest.approx(0.8)
    assert m["budget_compliance"] == 1.0 and m["length_accuracy"] == pytest.approx(5 / 6)
    assert m["step_accuracy"] == pytest.approx(6 / 7)
    # Gold plans score 1 everywhere; a dataset split works like a list of rows.
    perfect = pd.plan_metrics([row["plan"] for row in rows], rows)
    assert all(v == 1.0 for v in perfect.values())
    from datasets import Dataset

    rows = [{"plan": [0, 1], "compliant": [True, True]}, {"plan": [], "compliant": [False, True]}]
    split = Dataset.from_list(rows)
    assert pd.plan_metrics([[0, 1], [1]], split) == {
        "exact_match": 0.5, "budget_compliance": 1.0, "step_accuracy": 1.0, "abstain_precision": 0.0,
        "abstain_recall": 0.0, "abstain_f1": 0.0, "length_accuracy": 0.5,
    }  # fmt: skip


def test_plan_metrics_without_non_empty_predictions_or_gold_steps():
    rows = [{"plan": [], "compliant": [True, False]}, {"plan": [1], "compliant": [True, True]}]
    m = pd.plan_metrics([[], []], rows)
    # No tool called: compliance is vacuously 1.0; abstain precision 1/2, recall 1/1.
    assert m["budget_compliance"] == 1.0 and m["step_accuracy"] == 0.0
    assert m["abstain_precision"] == 0.5 and m["abstain_recall"] == 1.0
    assert m["abstain_f1"] == pytest.approx(2 / 3)
    # tp = row 0, fp = row 1 (gold [0]), fn = row 2 (gold abstains, a tool was called): P = R = F1 = 1/2.
    mixed = [{"plan": plan, "compliant": [True]} for plan in ([], [0], [])]
    m = pd.plan_metrics([[], [], [0]], mixed)
    assert (m["abstain_precision"], m["abstain_recall"], m["abstain_f1"]) == (0.5, 0.5, 0.5)
    assert m["exact_match"] == pytest.approx(1 / 3) and m["budget_compliance"] == 1.0
    # An extra step keeps the gold steps right but the length and the plan wrong.
    longer = pd.plan_metrics([[0, 1]], [{"plan": [0], "compliant": [True, True]}])
    assert (longer["step_accuracy"], longer["length_accuracy"], longer["exact_match"]) == (1.0, 0.0, 0.0)
    only_abstain = pd.plan_metrics([[0]], [{"plan": [], "compliant": [False]}])
    assert only_abstain["step_accuracy"] == 1.0 and only_abstain["budget_compliance"] == 0.0
    assert only_abstain["abstain_recall"] == 0.0 and only_abstain["abstain_f1"] == 0.0


def test_plan_metrics_on_a_generated_split_scores_gold_as_perfect(small):
    dev = small["dev"]
    assert all(v == 1.0 for v in pd.plan_metrics(dev["plan"], dev).values())
    always_abstain = pd.plan_metrics([[]] * len(dev), dev)
    share = sum(not p for p in dev["plan"]) / len(dev)
    assert always_abstain["exact_match"] == pytest.approx(share)
    assert always_abstain["abstain_recall"] == 1.0
    assert always_abstain["abstain_precision"] == pytest.approx(share)


def test_plan_metrics_errors():
    with pytest.raises(ValueError, match="2 predicted plans for 4 examples"):
        pd.plan_metrics([[0], []], _rows())
    with pytest.raises(ValueError, match="outside its 4 tools"):
        pd.plan_metrics([[2, 4], [], [], []], _rows())
    with pytest.raises(ValueError, match="outside"):
        pd.plan_metrics([[-1], [], [], []], _rows())
    with pytest.raises(ValueError, match="at least one"):
        pd.plan_metrics([], [])


def test_tool_needs_reproduce_every_compliance_flag(small):
    checked = set()
    for row in small["train"]:
        needs = pd.tool_needs(row)
        if needs is None:
            assert row["budget_kind"] in ("cpu_only", "none") and pd.budget_margin(row) is None
            continue
        checked.add(row["budget_kind"])
        assert [need <= row["budget_value"] for need in needs] == row["compliant"]
    assert checked == {"latency", "memory", "cost"}


def _margin_row(kind: str, value: float, needs: list[float], plan: list[int]) -> dict:
    # where tool_needs reads each kind's need (that mapping is checked against every compliance flag above)
    index, unit = pd._BUDGET_NEEDS.get(kind, (0, 1.0))
    vectors = []
    for need in needs:
        vector = [1.0] * 6
        vector[index] = need / unit
        vectors.append(vector)
    return {"budget_kind": kind, "budget_value": value, "resource_vectors": vectors, "plan": plan}


def test_budget_margin_is_the_log_distance_to_the_nearest_need():
    row = _margin_row("latency", 100.0, [50.0, 103.0, 400.0], [0])
    assert pd.budget_margin(row) == pytest.approx(math.log(103.0 / 100.0))
    assert pd.budget_margin(_margin_row("memory", 2.0, [0.5, 2.0], [1])) == 0.0
    assert pd.budget_margin(_margin_row("cost", 0.1, [0.2], [])) == pytest.approx(math.log(2.0))


def test_errors_by_budget_margin_counts_each_group():
    rows = [
        _margin_row("latency", 100.0, [98.0, 300.0], [0]),  # 2 %: right
        _margin_row("latency", 100.0, [97.0, 300.0], [0]),  # 3 %: wrong (abstained)
        _margin_row("memory", 2.0, [1.6, 8.0], [0]),  # 22 %: wrong (another tool)
        _margin_row("cost", 0.1, [0.01, 1.0], [0]),  # far: right
        _margin_row("cpu_only", 0.0, [1.0, 1.0], [1]),  # no number: wrong
    ]
    result = pd.errors_by_budget_margin([[0], [], [1], [0], [0]], rows)
    assert result == {
        "errors_within_5pct": 0.5, "errors_within_25pct": 1.0, "errors_beyond_25pct": 0.0, "errors_no_number": 1.0,
        "rows_within_5pct": 2.0, "rows_within_25pct": 1.0, "rows_beyond_25pct": 1.0, "rows_no_number": 1.0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="1 predicted plans for 5 examples"):
        pd.errors_by_budget_margin([[0]], rows)


# ----------------------------------------------------------------------------- BFCL as plans
def test_bfcl_planning_rows_keep_repeated_calls_and_drop_long_training_answers(tmp_path):
    from causalqwen.training.planner_data import build_bfcl_planning_dataset, multiset_exact_match
    from test_router_data import EMAIL, WEATHER, fake_files, q, write_wheel

    files, answers = fake_files()
    files["parallel"] = [
        {"id": "parallel_0", "question": q("weather in Oslo and Rome"), "function": [EMAIL, WEATHER]},
        {"id": "parallel_1", "question": q("weather in 4 cities"), "function": [WEATHER]},
    ]
    answers["parallel"] = [
        {
            "id": "parallel_0",
            "ground_truth": [
                {"get_weather": {"city": ["Oslo", "oslo"], "unit": ["", "C"]}},
                {"get_weather": {"city": ["Rome"], "days": [3]}},
            ],
        },
        {"id": "parallel_1", "ground_truth": [{"get_weather": {}}] * 4},
    ]
    files["live_parallel"] = [{"id": "live_parallel_0-0-0", "question": q("mail Ann and Bo, weather in Oslo"),
                               "function": [WEATHER, EMAIL]}]  # fmt: skip
    answers["live_parallel"] = [{"id": "live_parallel_0-0-0",
                                 "ground_truth": [{"send_email": {}}, {"get_weather": {}}, {"send_email": {}}]}]  # fmt: skip
    wheel = write_wheel(tmp_path / "bfcl_eval-0-py3-none-any.whl", files, answers)
    ds = build_bfcl_planning_dataset(wheel, dev_fraction=0.25, seed=0, max_steps=3,
                                     train_categories=("simple_python", "parallel", "irrelevance"),
                                     test_categories=("live_parallel", "live_irrelevance"))  # fmt: skip
    rows = {r["id"]: r for split in ("train", "dev") for r in ds[split]}
    assert "parallel_1" not in rows  # 4 calls > max_steps
    assert rows["parallel_0"]["plan"] == [1, 1] and rows["parallel_0"]["calls"] == ["get_weather"] * 2
    # The first accepted value of each argument; "may be left out" ("" first) is left out.
    assert rows["parallel_0"]["arguments"] == ['{"city": "Oslo"}', '{"city": "Rome", "days": 3}']
    assert rows["irrelevance_0"]["arguments"] == []
    assert rows["irrelevance_0"]["plan"] == [] and rows["simple_python_2"]["plan"] == [0]
    test = ds["test"]
    assert test["id"] == ["live_parallel_0-0-0", "live_irrelevance_0-0-0"]
    assert test[0]["plan"] == [1, 0, 1] and test[0]["compliant"] == [True, True]
    # Multiset: order free, repeats counted; abstain matches abstain.
    assert multiset_exact_match([[0, 1, 1], []], test) == 1.0
    assert multiset_exact_match([[0, 1], []], test) == 0.5
    assert multiset_exact_match([[1, 0, 1], [0]], test) == 0.5
    with pytest.raises(ValueError, match="out of range"):
        multiset_exact_match([[2], []], test)
    with pytest.raises(ValueError, match="1 predictions for 2 examples"):
        multiset_exact_match([[]], test)


# ------------------------------------------------------------------------------------------- total budgets
@pytest.fixture(scope="module")
def total():
    return pd.build_synthetic_planning_dataset(300, 20, 20, seed=5, budget_mix=pd.TOTAL_BUDGET_MIX)["train"]


def test_total_budget_rows_share_the_largest_size_whose_summed_latency_fits(total):
    rows = [row for row in total if row["budget_kind"] == "total_latency"]
    assert 40 <= len(rows) <= 80  # a fifth of 300
    assert {len(row["plan"]) > 0 for row in rows} == {True, False}
    assert {row["num_steps"] for row in rows if row["plan"]} == {1, 2, 3}
    for row in rows:
        k, budget, load = row["num_steps"], row["budget_value"], row["runtime_load"]
        assert row["query"].endswith(f"all under {pd.format_budget_value(budget)} ms in total")
        assert [float(n) for n in NUMBER.findall(row["query"])] == [budget]
        sizes = [_family_and_size(name)[1] for name in row["tool_names"]]
        # A size fits when it can serve all k steps: k times its latency at this load within the total.
        fitting = [k * rd._effective_latency(size, load) * 1000.0 <= budget for size in sizes]
        assert row["compliant"] == fitting
        assert [need <= budget for need in pd.tool_needs(row)] == fitting
        if not row["plan"]:
            assert not any(fitting) and row["arguments"] == []
            continue
        chosen = {row["tool_names"][t].rsplit("_", 1)[1] for t in row["plan"]}
        best = max((size for size, fits in zip(sizes, fitting) if fits), key=lambda size: size[6])
        assert chosen == {best[0]} and [_family_and_size(row["tool_names"][t])[0] for t in row["plan"]] == \
            row["step_families"]  # fmt: skip
        assert pd.plan_within_budget(row["plan"], row)
        assert all(f'"total_timeout_ms": {pd.format_budget_value(budget)}' in a for a in row["arguments"])


def test_the_default_mix_draws_the_same_set_as_before_total_budgets():
    # Passing the default mix explicitly, or none, gives the same rows (the README's tables stay valid).
    plain = pd.build_synthetic_planning_dataset(60, 5, 5, seed=2)["train"]
    explicit = pd.build_synthetic_planning_dataset(60, 5, 5, seed=2, budget_mix=pd.DEFAULT_BUDGET_MIX)[
        "train"
    ]
    assert plain.to_list() == explicit.to_list()
    assert "total_latency" not in set(plain["budget_kind"])


def _total_row(budget: float, latencies_s: list[float], num_steps: int) -> dict:
    vectors = [[1.0, 1.0, 0.0, lat, 0.1, 1.0] for lat in latencies_s]
    compliant = [num_steps * lat * 1000.0 <= budget for lat in latencies_s]
    return {"plan": [0, 1], "compliant": compliant, "budget_kind": "total_latency", "budget_value": budget,
            "resource_vectors": vectors, "num_steps": num_steps}  # fmt: skip


def test_plan_metrics_sum_the_steps_under_a_total_budget():
    # 1,000 ms for 2 steps: 0.3 s + 0.6 s = 900 ms fits although the 0.6 s size could not serve both steps.
    row = _total_row(1000.0, [0.3, 0.6, 0.8], 2)
    assert row["compliant"] == [True, False, False]
    assert pd.plan_within_budget([0, 1], row) and not pd.plan_within_budget([1, 2], row)
    assert pd.plan_within_budget([0, 0], row) and not pd.plan_within_budget([0, 0, 0, 0], row)
    per_step = {"plan": [0], "compliant": [True, False], "budget_kind": "latency", "budget_value": 100.0,
                "resource_vectors": [[1.0] * 6] * 2}  # fmt: skip
    assert pd.plan_within_budget([0], per_step) and not pd.plan_within_budget([0, 1], per_step)
    m = pd.plan_metrics([[0, 1], [1, 2], [0]], [row, row, per_step])
    assert m["budget_compliance"] == pytest.approx(2 / 3) and m["exact_match"] == pytest.approx(2 / 3)
    from datasets import Dataset

    assert pd.plan_metrics([[0, 1], [1, 2]], Dataset.from_list([row, row]))["budget_compliance"] == 0.5


@pytest.mark.parametrize(
    "mix, match",
    [({"latency": 1.0, "monthly": 1.0}, "unknown budget kinds \\['monthly'\\]"),
     ({"latency": -1.0, "none": 2.0}, "non-negative"), ({"latency": 0.0}, "not all zero"),
     ({"latency": float("nan")}, "finite")],
)  # fmt: skip
def test_budget_mix_errors_name_the_problem(mix, match):
    with pytest.raises(ValueError, match=match):
        pd.build_synthetic_planning_dataset(5, 5, 5, budget_mix=mix)
