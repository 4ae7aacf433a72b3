import json
import math
import re
import struct

import pytest
from datasets import Dataset

from causalqwen.training.data import (
    SYNTHETIC_KINDS,
    build_synthetic_dataset,
    build_table_dataset,
    table_standardization,
    tokenize_numeric_dataset,
)

DIABETES_ROW0 = "Patient: age 59, sex 2, bmi 32.1, bp 101, s1 157, s2 93.2, s3 38, s4 4, s5 4.8598, s6 87."


def bits(split):
    """Rows with values as their IEEE bytes (NaN compares equal to itself, -0.0 differs from 0.0)."""
    return [(r["prompt"], r["target"], struct.pack("<d", r["value"])) for r in split]


def assert_round_trip(tokenizer, split):
    """Tokenizing prompt + target gives back ``value`` exactly at the target's last <NUM>."""
    num = tokenizer.convert_tokens_to_ids("<NUM>")
    for row in split:
        enc = tokenizer(row["prompt"] + row["target"])
        target = tokenizer(row["target"])
        target_values = [v for i, v in zip(target["input_ids"], target["numeric_values"]) if i == num]
        if math.isnan(row["value"]):
            assert target_values == [], row
            continue
        values = [v for i, v in zip(enc["input_ids"], enc["numeric_values"]) if i == num]
        assert values[-1] == row["value"], row
        assert target_values[-1] == row["value"], row


@pytest.mark.parametrize("kind", sorted(SYNTHETIC_KINDS))
def test_synthetic_is_deterministic_and_round_trips(kind, tiny_tokenizer):
    first = build_synthetic_dataset(kind, n=300, seed=7)
    again = build_synthetic_dataset(kind, n=300, seed=7)
    other = build_synthetic_dataset(kind, n=300, seed=8)
    assert (first["train"].num_rows, first["test"].num_rows) == (240, 60)
    for name in ("train", "test"):
        assert bits(first[name]) == bits(again[name])
        assert bits(first[name]) != bits(other[name])
        assert all(r["target"].startswith(" ") for r in first[name])
        assert_round_trip(tiny_tokenizer, first[name])


def test_synthetic_kinds_cover_their_ranges():
    linear = build_synthetic_dataset("linear", n=500, seed=0)["train"]
    for row in linear:
        x = float(row["prompt"].split()[2].rstrip("."))
        assert row["value"] == round(2 * x + 3, 1)
    wide = build_synthetic_dataset("wide", n=2000, seed=0)["train"]["value"]
    assert 1e-5 <= min(wide) < 1e-4 and 1e4 < max(wide) <= 1e5
    unit = build_synthetic_dataset("unit", n=500, seed=0)["train"]["value"]
    assert min(unit) == 0.0 and max(unit) == 1.0
    mixed = build_synthetic_dataset("mixed", n=1000, seed=0)["train"]
    text_only = [r for r in mixed if math.isnan(r["value"])]
    assert 300 < len(text_only) < 500
    assert {r["target"] for r in text_only} <= {
        " The sign is positive.",
        " The sign is negative.",
        " The sign is zero.",
    }


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="unknown synthetic kind 'cubic'"):
        build_synthetic_dataset("cubic")
    with pytest.raises(ValueError, match="test_size"):
        build_synthetic_dataset(test_size=1.0)
    with pytest.raises(ValueError, match="n must be"):
        build_synthetic_dataset(n=1)


def test_diabetes_sentences(tiny_tokenizer):
    data = build_table_dataset("sklearn:diabetes", "target", seed=3)
    assert (data["train"].num_rows, data["test"].num_rows) == (354, 88)
    rows = list(data["train"]) + list(data["test"])
    first = next(r for r in rows if r["prompt"] == DIABETES_ROW0)
    assert first["target"] == " Disease progression is 151." and first["value"] == 151.0
    assert bits(data["train"]) == bits(build_table_dataset("sklearn:diabetes", seed=3)["train"])
    assert bits(data["train"]) != bits(build_table_dataset("sklearn:diabetes", seed=4)["train"])
    assert_round_trip(tiny_tokenizer, rows)


def test_diabetes_feature_subset_and_template():
    data = build_table_dataset(
        "sklearn:diabetes",
        feature_columns=["age", "bmi"],
        template="A patient aged {age} with a BMI of {bmi}.",
    )
    prompts = set(data["train"]["prompt"]) | set(data["test"]["prompt"])
    assert "A patient aged 59 with a BMI of 32.1." in prompts
    short = build_table_dataset("sklearn:diabetes", feature_columns=["age", "bmi"], entity="Person")
    assert "Person: age 59, bmi 32.1." in set(short["train"]["prompt"]) | set(short["test"]["prompt"])
    with pytest.raises(ValueError, match="template field 'sex'"):
        build_table_dataset("sklearn:diabetes", feature_columns=["age"], template="{age} {sex}")


CSV = "city,rooms,area_m2,sale_price\nLyon,3,72.5,310000\nNice,,55,\nParis,2,41.25,455000.5\nOslo,4,nan,1e6\n"


def test_csv_rows(tmp_path, tiny_tokenizer):
    path = tmp_path / "homes.csv"
    path.write_text(CSV)
    data = build_table_dataset(path, "sale_price", test_size=0.34, seed=1)
    rows = sorted(list(data["train"]) + list(data["test"]), key=lambda r: r["prompt"])
    assert (data["train"].num_rows, data["test"].num_rows) == (2, 1)  # Nice has no price: dropped
    assert rows == [
        {
            "prompt": "Row: city Lyon, rooms 3, area_m2 72.5.",
            "target": " Sale price is 310000.",
            "value": 310000.0,
        },
        {
            "prompt": "Row: city Oslo, rooms 4, area_m2 unknown.",
            "target": " Sale price is 1000000.",
            "value": 1e6,
        },
        {
            "prompt": "Row: city Paris, rooms 2, area_m2 41.25.",
            "target": " Sale price is 455000.5.",
            "value": 455000.5,
        },
    ]
    assert_round_trip(tiny_tokenizer, rows)
    named = build_table_dataset(
        str(path), "rooms", feature_columns=["city"], entity="Flat", target_name="Rooms"
    )
    assert set(named["train"]["target"]) | set(named["test"]["target"]) == {
        " Rooms is 2.",
        " Rooms is 3.",
        " Rooms is 4.",
    }


def test_dataframe_matches_csv(tmp_path):
    pandas = pytest.importorskip("pandas")
    path = tmp_path / "homes.csv"
    path.write_text(CSV)
    from_csv = build_table_dataset(path, "sale_price", test_size=0.34)
    from_frame = build_table_dataset(pandas.read_csv(path), "sale_price", test_size=0.34)
    for name in ("train", "test"):
        assert bits(from_frame[name]) == bits(from_csv[name])


def test_table_errors(tmp_path):
    path = tmp_path / "homes.csv"
    path.write_text(CSV)
    with pytest.raises(ValueError, match="target column 'price' not in the table"):
        build_table_dataset(path, "price")
    with pytest.raises(ValueError, match="feature column 'floor' not in the table"):
        build_table_dataset(path, "sale_price", feature_columns=["rooms", "floor"])
    with pytest.raises(ValueError, match="'sale_price' is also a feature column"):
        build_table_dataset(path, "sale_price", feature_columns=["rooms", "sale_price"])
    with pytest.raises(ValueError, match="target column 'city' holds 'Lyon'"):
        build_table_dataset(path, "city")
    with pytest.raises(ValueError, match="target_column is required"):
        build_table_dataset(path)
    with pytest.raises(ValueError, match="unknown scikit-learn table 'iris'"):
        build_table_dataset("sklearn:iris")
    with pytest.raises(ValueError, match="neither 'sklearn:<name>' nor an existing CSV file"):
        build_table_dataset(tmp_path / "missing.csv", "x")
    with pytest.raises(TypeError, match="CSV path, a pandas DataFrame"):
        build_table_dataset([[1, 2]], "x")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2\n3\n")
    with pytest.raises(ValueError, match="line 3 has 1 fields"):
        build_table_dataset(ragged, "b")


def test_tokenize_labels_and_values(tiny_tokenizer):
    num, eos = tiny_tokenizer.convert_tokens_to_ids("<NUM>"), tiny_tokenizer.eos_token_id
    rows = Dataset.from_list([{"prompt": "x is 4.5. Give y.", "target": " y is 12.", "value": 12.0}])
    out = tokenize_numeric_dataset(rows, tiny_tokenizer)[0]
    prompt = tiny_tokenizer("x is 4.5. Give y.")
    target = tiny_tokenizer(" y is 12.")
    n = len(prompt["input_ids"])
    assert out["input_ids"] == prompt["input_ids"] + target["input_ids"] + [eos]
    assert out["labels"] == [-100] * n + target["input_ids"] + [eos]
    assert out["attention_mask"] == [1] * len(out["input_ids"])
    assert (
        out["numeric_values"]
        == out["numeric_labels"]
        == prompt["numeric_values"] + target["numeric_values"] + [0.0]
    )
    assert [v for i, v in zip(out["input_ids"], out["numeric_values"]) if i == num] == [4.5, 12.0]
    # The <NUM> label of the target carries its value at the same position (the model shifts both).
    label_at = out["labels"].index(num)
    assert out["numeric_labels"][label_at] == 12.0
    unmasked = tokenize_numeric_dataset(rows, tiny_tokenizer, mask_prompt=False, add_eos=False)[0]
    assert unmasked["labels"] == unmasked["input_ids"] == prompt["input_ids"] + target["input_ids"]
    assert sorted(unmasked) == [
        "attention_mask",
        "input_ids",
        "labels",
        "numeric_formats",
        "numeric_labels",
        "numeric_values",
    ]


def test_tokenize_dataset_dict_keeps_splits(tiny_tokenizer):
    data = tokenize_numeric_dataset(build_synthetic_dataset("mixed", n=50), tiny_tokenizer)
    assert (data["train"].num_rows, data["test"].num_rows) == (40, 10)
    num = tiny_tokenizer.convert_tokens_to_ids("<NUM>")
    for row in data["train"]:
        # Only the target is labelled; the prompt's number (x) is input only.
        assert row["labels"].count(num) <= 1
        assert row["input_ids"].count(num) == 1 + row["labels"].count(num)


def test_left_truncation_keeps_numbers_and_target(tiny_tokenizer):
    num = tiny_tokenizer.convert_tokens_to_ids("<NUM>")
    data = build_table_dataset("sklearn:diabetes", seed=0)["test"].select(range(8))
    full = tokenize_numeric_dataset(data, tiny_tokenizer)
    for max_length in (40, 30, 21):
        cut = tokenize_numeric_dataset(data, tiny_tokenizer, max_length=max_length)
        for a, b in zip(full, cut):
            assert len(b["input_ids"]) == max_length
            for key in ("input_ids", "numeric_values", "labels", "numeric_labels"):
                assert b[key] == a[key][-max_length:]  # the prompt's tail, the whole target
            assert b["labels"][-1] == tiny_tokenizer.eos_token_id
            values = [v for i, v in zip(b["input_ids"], b["numeric_values"]) if i == num]
            assert all(v != 0.0 for v in values)  # every surviving <NUM> kept its own value
    with pytest.raises(ValueError, match="the target alone is 21 tokens, more than max_length=20"):
        tokenize_numeric_dataset(data, tiny_tokenizer, max_length=20)


def test_tokenize_errors(tiny_tokenizer):
    wrong = Dataset.from_list([{"prompt": "a", "target": " y is 3.", "value": 4.0}])
    with pytest.raises(ValueError, match="row 0: the target's last number is 3.0 but value is 4.0"):
        tokenize_numeric_dataset(wrong, tiny_tokenizer)
    missing = Dataset.from_list([{"prompt": "a", "target": " y is big.", "value": 4.0}])
    with pytest.raises(ValueError, match="row 0: value 4.0 is given but the target holds no number"):
        tokenize_numeric_dataset(missing, tiny_tokenizer)
    with pytest.raises(ValueError, match="no 'target' column"):
        tokenize_numeric_dataset(Dataset.from_list([{"prompt": "a"}]), tiny_tokenizer)
    with pytest.raises(ValueError, match="max_length must be a positive integer"):
        tokenize_numeric_dataset(wrong, tiny_tokenizer, max_length=0)
    with pytest.raises(TypeError, match="datasets.Dataset or DatasetDict"):
        tokenize_numeric_dataset([{"prompt": "a", "target": " b"}], tiny_tokenizer)


def test_keep_cells_gives_the_raw_cells_per_row(tmp_path):
    path = tmp_path / "homes.csv"
    path.write_text(CSV)
    data = build_table_dataset(path, "sale_price", test_size=0.34, seed=1, keep_cells=True)
    rows = sorted(list(data["train"]) + list(data["test"]), key=lambda r: r["prompt"])
    assert [json.loads(r["cells"]) for r in rows] == [
        {"city": "Lyon", "rooms": 3.0, "area_m2": 72.5},
        {"city": "Oslo", "rooms": 4.0, "area_m2": None},
        {"city": "Paris", "rooms": 2.0, "area_m2": 41.25},
    ]
    assert "cells" not in build_table_dataset(path, "sale_price", test_size=0.34).column_names["train"]


def _prompt_numbers(prompt: str) -> list[float]:
    """The numbers of a default-template prompt ``"Entity: col v, col v."``, in column order."""
    return [float(part.rsplit(" ", 1)[1]) for part in prompt.split(": ", 1)[1].rstrip(".").split(", ")]


def test_standardize_writes_training_split_z_scores(tiny_tokenizer):
    stats = table_standardization("sklearn:diabetes", seed=2)
    assert list(stats) == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    assert stats["bmi"][0] == pytest.approx(26.3, abs=0.3) and stats["sex"][1] == pytest.approx(0.5, abs=0.01)
    data = build_table_dataset("sklearn:diabetes", seed=2, standardize=True, keep_cells=True)
    raw = build_table_dataset("sklearn:diabetes", seed=2)
    for name in ("train", "test"):
        # the same rows, targets and values in the same order; only the features' writing changes
        assert list(data[name]["target"]) == list(raw[name]["target"])
        assert list(data[name]["value"]) == list(raw[name]["value"])
        for row in data[name]:
            cells = json.loads(row["cells"])  # the table's own values, not the z-scores
            expected = [round((cells[c] - mean) / std, 2) for c, (mean, std) in stats.items()]
            assert _prompt_numbers(row["prompt"]) == expected
            assert re.search(r"-0(?![.\d])", row["prompt"]) is None  # a z-score rounding to -0 is written 0
    # the statistics are the training split's: its z-scores have mean 0 and std 1 (to the rounding)
    train = [_prompt_numbers(p) for p in data["train"]["prompt"]]
    for j in range(10):
        column = [row[j] for row in train]
        mean = sum(column) / len(column)
        std = (sum((v - mean) ** 2 for v in column) / len(column)) ** 0.5
        assert abs(mean) < 0.005 and abs(std - 1) < 0.005
    assert stats != table_standardization("sklearn:diabetes", seed=3)  # another split, other statistics
    assert_round_trip(tiny_tokenizer, list(data["test"]))


def test_standardize_keeps_text_and_missing_cells(tmp_path):
    path = tmp_path / "homes.csv"
    path.write_text(CSV + "Rome,3,80,500000\n")
    stats = table_standardization(path, "sale_price", test_size=0.25, seed=1)
    data = build_table_dataset(path, "sale_price", test_size=0.25, seed=1, standardize=True)
    train = build_table_dataset(path, "sale_price", test_size=0.25, seed=1, keep_cells=True)["train"]
    cells = [json.loads(c) for c in train["cells"]]
    assert set(stats) == {"rooms", "area_m2"}  # city is text
    rooms = [c["rooms"] for c in cells]
    mean = sum(rooms) / len(rooms)
    assert stats["rooms"] == pytest.approx((mean, (sum((r - mean) ** 2 for r in rooms) / len(rooms)) ** 0.5))
    areas = [c["area_m2"] for c in cells if c["area_m2"] is not None]  # the missing area is left out
    assert stats["area_m2"][0] == pytest.approx(sum(areas) / len(areas))
    prompts = list(data["train"]["prompt"]) + list(data["test"]["prompt"])
    oslo = next(p for p in prompts if "Oslo" in p)
    assert oslo.startswith("Row: city Oslo, rooms ") and oslo.endswith("area_m2 unknown.")


def test_standardize_with_given_statistics_and_bad_ones(tmp_path):
    path = tmp_path / "homes.csv"
    path.write_text(CSV)
    data = build_table_dataset(
        path, "sale_price", test_size=0.34, seed=1, standardize={"rooms": (3.0, 0.5), "area_m2": [50, 10]}
    )
    prompts = sorted(list(data["train"]["prompt"]) + list(data["test"]["prompt"]))
    assert prompts == [
        "Row: city Lyon, rooms 0, area_m2 2.25.",  # (3 - 3) / 0.5 is 0, not -0
        "Row: city Oslo, rooms 2, area_m2 unknown.",
        "Row: city Paris, rooms -2, area_m2 -0.88.",  # (41.25 - 50) / 10 = -0.875 rounds half to even
    ]
    constant = tmp_path / "constant.csv"
    constant.write_text("k,y\n5,1\n5,2\n5,3\n")
    assert table_standardization(constant, "y", test_size=0.34) == {"k": (5.0, 1.0)}
    for stats, message in [
        ({"nope": (0.0, 1.0)}, "standardize names column 'nope', not a feature column"),
        ({"rooms": (0.0, 0.0)}, r"standardize\['rooms'\] must be \(mean, std\)"),
        ({"rooms": (float("nan"), 1.0)}, r"standardize\['rooms'\] must be"),
        ({"rooms": (1.0,)}, r"standardize\['rooms'\] must be"),
        ({"rooms": 2.0}, r"standardize\['rooms'\] must be"),
        ({"rooms": ("3", "1")}, r"standardize\['rooms'\] must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            build_table_dataset(path, "sale_price", standardize=stats)
