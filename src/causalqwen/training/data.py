"""Datasets of numeric sentences for CausalQwen: synthetic sets, tables as text, and their tokenization.

Every builder returns a ``datasets.DatasetDict`` with ``train``/``test`` splits of rows

* ``prompt`` (str): the context, e.g. ``"Patient: age 59, sex 2, bmi 32.1, bp 101, ... s6 87."``;
* ``target`` (str): the continuation that holds the answer, starting with a space, e.g.
  ``" Disease progression is 151."``;
* ``value`` (float64): the number written in ``target`` (its last number), NaN for text-only targets.

Numbers are written with :func:`~causalqwen.tokenization.numbers.format_number`, so tokenizing a target
gives back ``value`` bit for bit at its last ``<NUM>``. Values are rounded to a few decimals or significant
digits when drawn (``round(2 * 1.1 + 3, 1)`` instead of ``5.200000000000001``): the text stays short and the
float stays exact.

Determinism: rows come from ``random.Random(seed)`` (stable across platforms and Python versions), and the
split shuffles row indices with the same seed; the same arguments give the same rows bit for bit.

:func:`tokenize_numeric_dataset` turns rows into the model's ``forward`` arguments (``input_ids``,
``attention_mask``, ``numeric_values``, ``labels``, ``numeric_labels``) without padding; pad with
:class:`~causalqwen.training.collator.NumericDataCollator`.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import os
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from datasets import Dataset, DatasetDict, Features, Value

from ..tokenization.numbers import format_number

__all__ = [
    "SYNTHETIC_KINDS",
    "build_synthetic_dataset",
    "build_table_dataset",
    "table_standardization",
    "tokenize_numeric_dataset",
]

IGNORE_INDEX = -100
ROW_FEATURES = Features({"prompt": Value("string"), "target": Value("string"), "value": Value("float64")})

# "linear": y = LINEAR_SLOPE * x + LINEAR_INTERCEPT. Fixed (not drawn per row) so that a tiny model can
# learn the map from the prompt's number in a few hundred steps; the seed changes the rows, not the rule.
LINEAR_SLOPE = 2.0
LINEAR_INTERCEPT = 3.0


# ------------------------------------------------------------------------------------------- synthetic
def _linear_row(rng: random.Random) -> tuple[str, str, float]:
    x = round(rng.uniform(-50.0, 50.0), 1)
    y = round(LINEAR_SLOPE * x + LINEAR_INTERCEPT, 1)
    return f"x is {format_number(x)}. Give y.", f" y is {format_number(y)}.", y


def _wide_row(rng: random.Random) -> tuple[str, str, float]:
    # x has 4 significant digits, so 2x has at most 5 and ".5g" keeps it exact; 2x spans 1e-5 ... 1e5.
    x = float(format(10.0 ** rng.uniform(math.log10(5e-6), math.log10(5e4)), ".4g"))
    y = float(format(2.0 * x, ".5g"))
    return f"The amount is {format_number(x)}.", f" Twice the amount is {format_number(y)}.", y


def _unit_row(rng: random.Random) -> tuple[str, str, float]:
    total = rng.randint(1, 50)
    red = rng.randint(0, total)
    share = round(red / total, 4)
    return f"{red} of {total} balls are red.", f" The red share is {format_number(share)}.", share


def _mixed_row(rng: random.Random) -> tuple[str, str, float]:
    # Half the rows ask for the sign instead of y: text-only targets (value NaN) teach the gate that not
    # every answer is a number, while the prompt says which answer is wanted.
    if rng.random() < 0.5:
        return _linear_row(rng)
    x = round(rng.uniform(-50.0, 50.0), 1)
    sign = "positive" if x > 0 else "negative" if x < 0 else "zero"
    return f"x is {format_number(x)}. Give the sign.", f" The sign is {sign}.", math.nan


SYNTHETIC_KINDS: dict[str, Callable[[random.Random], tuple[str, str, float]]] = {
    "linear": _linear_row,
    "wide": _wide_row,
    "unit": _unit_row,
    "mixed": _mixed_row,
}


def build_synthetic_dataset(
    kind: str = "linear", n: int = 2000, seed: int = 0, test_size: float = 0.2
) -> DatasetDict:
    """``n`` synthetic rows of one kind, split into train/test.

    Kinds: ``"linear"`` (``x is 12.5. Give y.`` -> `` y is 28.``, y = 2x + 3, x in [-50, 50]), ``"wide"``
    (values log-uniform over 1e-5 ... 1e5, four to five significant digits), ``"unit"`` (shares in [0, 1]),
    ``"mixed"`` (half linear rows, half text-only answers about the sign of x with ``value`` NaN).
    """
    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r}; expected one of {', '.join(SYNTHETIC_KINDS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (one row per split at least), got {n!r}")
    rng = random.Random(seed)
    rows = [SYNTHETIC_KINDS[kind](rng) for _ in range(n)]
    return _split([{"prompt": p, "target": t, "value": v} for p, t, v in rows], test_size, seed)


def _split(
    rows: list[dict[str, Any]], test_size: float, seed: int, features: Features = ROW_FEATURES
) -> DatasetDict:
    """Seeded shuffle, then the first ``round(len * test_size)`` rows (at least one) are the test split."""
    train, test = _split_indices(len(rows), test_size, seed)

    def subset(indices: list[int]) -> Dataset:
        return Dataset.from_list([rows[i] for i in indices], features=features)

    return DatasetDict(train=subset(train), test=subset(test))


def _split_indices(n: int, test_size: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, test) row indices of :func:`_split`."""
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not 0 < test_size < 1:
        raise ValueError(f"test_size must be a fraction in (0, 1), got {test_size!r}")
    if n < 2:
        raise ValueError(f"need at least 2 rows to make a train and a test split, got {n}")
    order = list(range(n))
    random.Random(f"split-{seed}").shuffle(order)
    n_test = min(max(round(n * test_size), 1), n - 1)
    return order[n_test:], order[:n_test]


# ------------------------------------------------------------------------------------------- tables
# Bundled or cache-only scikit-learn regression tables: loader, entity word, display name of the target.
_SKLEARN_TABLES = {
    "diabetes": ("Patient", "Disease progression"),
    "california_housing": ("District", "Median house value"),
}


def _load_sklearn(name: str) -> tuple[list[str], list[list[Any]], str]:
    """(columns, rows, target column) of a scikit-learn table; never downloads."""
    if name not in _SKLEARN_TABLES:
        raise ValueError(
            f"unknown scikit-learn table {name!r}; supported: {', '.join(_SKLEARN_TABLES)} "
            "(california_housing only when already in the scikit-learn data cache)"
        )
    from sklearn import datasets as sk_datasets

    if name == "diabetes":
        # scaled=False: the clinical units (age in years, bmi, ...) read as sentences; scaled values do not.
        bunch = sk_datasets.load_diabetes(scaled=False)
    else:
        try:
            bunch = sk_datasets.fetch_california_housing(download_if_missing=False)
        except OSError as error:
            raise ValueError(
                "sklearn:california_housing is not in the scikit-learn data cache and downloads are off; "
                "use sklearn:diabetes (bundled) or a CSV file"
            ) from error
    columns = [*bunch.feature_names, "target"]
    rows = [[*features, target] for features, target in zip(bunch.data.tolist(), bunch.target.tolist())]
    return columns, rows, "target"


def _load_csv(path: str | os.PathLike) -> tuple[list[str], list[list[Any]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise ValueError(f"CSV file {os.fspath(path)!r} is empty; it needs a header row")
        rows = []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"CSV file {os.fspath(path)!r} line {line} has {len(row)} fields, the header {len(header)}"
                )
            rows.append(row)
    return [name.strip() for name in header], rows


def _cell_value(cell: Any) -> float | str | None:
    """A table cell as a float, a text, or None when missing (empty, NaN, None)."""
    if cell is None:
        return None
    if isinstance(cell, bool):
        return "yes" if cell else "no"
    if isinstance(cell, str):
        text = cell.strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            return text
        return None if math.isnan(number) else number
    if hasattr(cell, "__float__"):
        number = float(cell)
        return None if math.isnan(number) else number
    return str(cell)


def _display(column: str) -> str:
    text = column.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def build_table_dataset(
    source: Any,
    target_column: str | None = None,
    *,
    feature_columns: Sequence[str] | None = None,
    template: str | None = None,
    test_size: float = 0.2,
    seed: int = 0,
    entity: str | None = None,
    target_name: str | None = None,
    keep_cells: bool = False,
    standardize: bool | Mapping[str, Sequence[float]] = False,
) -> DatasetDict:
    """Rows of a table as sentences: prompt ``"<entity>: col1 v1, col2 v2, ... ."``, target
    ``" <target name> is <value>."``.

    ``source``: a CSV path (with a header row), a pandas DataFrame (only if pandas is installed; it is not a
    dependency), or ``"sklearn:diabetes"`` (bundled, raw clinical units) / ``"sklearn:california_housing"``
    (only if already cached: nothing downloads). ``target_column`` defaults to ``"target"`` for scikit-learn
    tables and is required otherwise. ``feature_columns`` defaults to every other column, in table order.

    ``template`` replaces the default prompt: a ``str.format`` string over the column names, e.g.
    ``"A patient aged {age} with a BMI of {bmi}."``; numbers are filled in already formatted.
    ``entity`` (default ``"Patient"``/``"District"`` for the scikit-learn tables, ``"Row"`` otherwise) and
    ``target_name`` (default: the column name, ``_`` as spaces, capitalised) shape the default sentences.

    ``keep_cells=True`` adds a ``cells`` column: the row's feature cells as a JSON object (number, text, or
    ``null`` when missing), so that a tabular baseline can see the same information as the language model
    (categorical columns one-hot, missing cells as such) instead of the numbers parsed from the sentence.
    The cells are always the table's own values, standardised or not.

    ``standardize=True`` writes every numeric feature column as z-scores ``(x - mean) / std``, rounded to two
    decimals, with mean and standard deviation of the column over the *training* split
    (:func:`table_standardization` returns them; a mapping ``{column: (mean, std)}`` applies given statistics
    instead, e.g. to write new rows as the model was trained). Why: a small model reads a number through
    features of its magnitude, and the columns of a table live at different magnitudes (diabetes: bmi 18-42,
    s5 3.3-6.1, s1 97-301), so a 10 % change inside one column barely moves its features; written on one
    common scale, the tiny benchmark model fits the diabetes relation far better (training MAE 50 -> 28-43,
    docs/causal_qwen.md). Text columns and missing cells are written as without it.

    Decisions: a missing feature (empty cell, NaN) is written ``unknown`` so the prompt keeps its shape; a
    row with a missing target is dropped (nothing to learn from), a non-numeric or infinite target raises.
    """
    table = _read_feature_rows(source, target_column, feature_columns)
    entity = entity if entity is not None else table.default_entity or "Row"
    target_name = target_name if target_name is not None else table.target_name
    if isinstance(standardize, Mapping):
        stats = _check_standardization(standardize, table.feature_columns)
    elif standardize:
        stats = _fit_standardization(table, test_size, seed)
    else:
        stats = {}

    examples = []
    for raw, target in zip(table.cells, table.targets):
        cells = {column: _cell_text(cell, stats.get(column)) for column, cell in raw.items()}
        if template is None:
            prompt = f"{entity}: " + ", ".join(f"{column} {text}" for column, text in cells.items()) + "."
        else:
            try:
                prompt = template.format(**cells)
            except KeyError as error:
                raise ValueError(
                    f"template field {error.args[0]!r} is not a feature column "
                    f"({', '.join(table.feature_columns)})"
                ) from None
        example = {"prompt": prompt, "target": f" {target_name} is {format_number(target)}.", "value": target}
        if keep_cells:
            example["cells"] = json.dumps(raw)
        examples.append(example)
    features = Features({**ROW_FEATURES, "cells": Value("string")}) if keep_cells else ROW_FEATURES
    return _split(examples, test_size, seed, features)


def table_standardization(
    source: Any,
    target_column: str | None = None,
    *,
    feature_columns: Sequence[str] | None = None,
    test_size: float = 0.2,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """``{column: (mean, std)}`` of every numeric feature column over the training split that
    :func:`build_table_dataset` makes with the same arguments: what ``standardize=True`` writes with.

    A column is numeric when every non-missing training cell is a number. The standard deviation is the
    population one; a constant column gets 1.0 (its z-scores are then the offsets from the mean, 0 in training).
    """
    return _fit_standardization(_read_feature_rows(source, target_column, feature_columns), test_size, seed)


@dataclass
class _FeatureRows:
    """A table's rows that have a target: feature cells (float, text or None) and the target values."""

    feature_columns: list[str]
    cells: list[dict[str, float | str | None]]
    targets: list[float]
    default_entity: str | None
    target_name: str


def _read_feature_rows(
    source: Any, target_column: str | None, feature_columns: Sequence[str] | None
) -> _FeatureRows:
    columns, rows, default_target, default_entity, default_name = _read_table(source)
    target_column = target_column if target_column is not None else default_target
    if target_column is None:
        raise ValueError("target_column is required for CSV files and DataFrames")
    if target_column not in columns:
        raise ValueError(f"target column {target_column!r} not in the table; columns: {', '.join(columns)}")
    if feature_columns is None:
        feature_columns = [c for c in columns if c != target_column]
    else:
        feature_columns = list(feature_columns)
        for column in feature_columns:
            if column not in columns:
                raise ValueError(f"feature column {column!r} not in the table; columns: {', '.join(columns)}")
        if target_column in feature_columns:
            raise ValueError(f"target column {target_column!r} is also a feature column (it would leak)")
    if not feature_columns:
        raise ValueError("the table has no feature columns besides the target")
    target_name = (
        default_name if target_column == default_target and default_name else _display(target_column)
    )

    index = {column: i for i, column in enumerate(columns)}
    cells, targets = [], []
    for number, row in enumerate(rows):
        target = _cell_value(row[index[target_column]])
        if target is None:
            continue
        if isinstance(target, str) or not math.isfinite(target):
            raise ValueError(
                f"data row {number + 1} (1-based, header excluded): target column {target_column!r} holds "
                f"{target!r}, not a finite number"
            )
        cells.append({column: _cell_value(row[index[column]]) for column in feature_columns})
        targets.append(target)
    return _FeatureRows(feature_columns, cells, targets, default_entity, target_name)


def _fit_standardization(table: _FeatureRows, test_size: float, seed: int) -> dict[str, tuple[float, float]]:
    train, _ = _split_indices(len(table.cells), test_size, seed)
    stats = {}
    for column in table.feature_columns:
        values = [table.cells[i][column] for i in train if table.cells[i][column] is not None]
        if not values or any(isinstance(v, str) for v in values):
            continue
        mean = math.fsum(values) / len(values)
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
        stats[column] = (mean, std if std > 0 else 1.0)
    return stats


def _check_standardization(
    stats: Mapping[str, Sequence[float]], feature_columns: list[str]
) -> dict[str, tuple[float, float]]:
    checked = {}
    for column, pair in stats.items():
        if column not in feature_columns:
            raise ValueError(
                f"standardize names column {column!r}, not a feature column ({', '.join(feature_columns)})"
            )
        real = isinstance(pair, Sequence) and all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in pair
        )
        if not real or len(pair) != 2 or not all(math.isfinite(v) for v in pair) or not pair[1] > 0:
            raise ValueError(
                f"standardize[{column!r}] must be (mean, std) with a finite mean and std > 0, got {pair!r}"
            )
        checked[column] = (float(pair[0]), float(pair[1]))
    return checked


def _cell_text(cell: float | str | None, stats: tuple[float, float] | None) -> str:
    """A feature cell as written in the prompt: ``unknown``, the text, the number, or its z-score."""
    if cell is None:
        return "unknown"
    if isinstance(cell, str):
        return cell
    if stats is not None:
        return format_number(round((cell - stats[0]) / stats[1], 2))  # (-0.0 is written "0")
    return format_number(cell)


def _read_table(source: Any) -> tuple[list[str], list[list[Any]], str | None, str | None, str | None]:
    """(columns, rows, default target column, default entity, default target display name)."""
    if isinstance(source, str) and source.startswith("sklearn:"):
        name = source.split(":", 1)[1]
        columns, rows, target = _load_sklearn(name)
        entity, display = _SKLEARN_TABLES[name]
        return columns, rows, target, entity, display
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise ValueError(
                f"table source {os.fspath(source)!r} is neither 'sklearn:<name>' nor an existing CSV file"
            )
        columns, rows = _load_csv(source)
        return columns, rows, None, None, None
    # A DataFrame can only exist if pandas was imported, so this never imports pandas itself.
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(source, pandas.DataFrame):
        columns = [str(c) for c in source.columns]
        return columns, source.itertuples(index=False, name=None), None, None, None
    raise TypeError(
        f"source must be a CSV path, a pandas DataFrame or 'sklearn:<name>', got {type(source).__name__}"
    )


# ------------------------------------------------------------------------------------------- tokenization
def tokenize_numeric_dataset(
    dataset: Dataset | DatasetDict,
    tokenizer,
    *,
    max_length: int | None = None,
    mask_prompt: bool = True,
    add_eos: bool = True,
) -> Dataset | DatasetDict:
    """Rows (``prompt``, ``target``[, ``value``]) -> ``input_ids``, ``attention_mask``, ``numeric_values``,
    ``numeric_formats``, ``labels``, ``numeric_labels`` (unpadded; the model shifts labels itself).
    ``numeric_formats`` (how each number was written) lets the tokenizer decode a row back to its exact text.

    Prompt and target are tokenized separately and concatenated, so the boundary never merges tokens and
    the target's tokens are the same whatever the prompt. ``labels`` are the ids, ``-100`` on the prompt when
    ``mask_prompt``; ``numeric_labels`` equal ``numeric_values`` (a ``<NUM>`` label's value sits at the same
    position as the label). ``add_eos`` appends the tokenizer's EOS to the target, labelled, so generation
    learns to stop after the answer.

    ``max_length`` cuts the prompt from the left (the context farthest from the answer goes first); every
    number is one ``<NUM>`` token carrying its own value, so a cut never separates a number from its value.
    A target longer than ``max_length`` on its own raises. Rows with a finite ``value`` are checked: the
    target's last number must be that value (otherwise the regression would learn another number).
    The input columns are removed: what is left are ``forward`` argument names, which the Trainer keeps.
    """
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
    ):
        raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")
    eos = None
    if add_eos:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("add_eos=True but the tokenizer has no eos_token; pass add_eos=False")
    if isinstance(dataset, DatasetDict):
        return DatasetDict(
            {
                name: tokenize_numeric_dataset(
                    split, tokenizer, max_length=max_length, mask_prompt=mask_prompt, add_eos=add_eos
                )
                for name, split in dataset.items()
            }
        )
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset or DatasetDict, got {type(dataset).__name__}")
    for column in ("prompt", "target"):
        if column not in dataset.column_names:
            raise ValueError(f"dataset has no {column!r} column (columns: {', '.join(dataset.column_names)})")
    num_id = tokenizer.convert_tokens_to_ids("<NUM>")

    def encode(batch: Mapping[str, list], indices: list[int]) -> dict[str, list]:
        prompts = tokenizer(batch["prompt"], add_special_tokens=False)
        targets = tokenizer(batch["target"], add_special_tokens=False)
        values = batch["value"] if "value" in batch else [None] * len(indices)
        columns = (
            "input_ids",
            "attention_mask",
            "numeric_values",
            "numeric_formats",
            "labels",
            "numeric_labels",
        )
        out = {key: [] for key in columns}
        for i, row in enumerate(indices):
            t_ids = list(targets["input_ids"][i]) + ([eos] if eos is not None else [])
            t_vals = list(targets["numeric_values"][i]) + ([0.0] if eos is not None else [])
            t_fmts = _formats(targets, i) + ([0] if eos is not None else [])
            _check_value(row, values[i], t_ids, t_vals, num_id)
            p_ids, p_vals = list(prompts["input_ids"][i]), list(prompts["numeric_values"][i])
            p_fmts = _formats(prompts, i)
            if max_length is not None:
                if len(t_ids) > max_length:
                    raise ValueError(
                        f"row {row}: the target alone is {len(t_ids)} tokens, more than max_length={max_length}"
                    )
                cut = max(len(p_ids) + len(t_ids) - max_length, 0)
                p_ids, p_vals, p_fmts = p_ids[cut:], p_vals[cut:], p_fmts[cut:]
            ids, vals = p_ids + t_ids, p_vals + t_vals
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["numeric_values"].append(vals)
            out["numeric_formats"].append(p_fmts + t_fmts)
            out["labels"].append(([IGNORE_INDEX] * len(p_ids) if mask_prompt else p_ids) + t_ids)
            out["numeric_labels"].append(vals)
        return out

    return dataset.map(
        encode,
        batched=True,
        with_indices=True,
        remove_columns=dataset.column_names,
        desc="Tokenizing numeric rows",
    )


def _formats(encoded: Mapping[str, list], row: int) -> list[int]:
    """Row ``row``'s format codes; zeros (canonical writing) from a tokenizer that returns none."""
    if "numeric_formats" in encoded:
        return list(encoded["numeric_formats"][row])
    return [0] * len(encoded["input_ids"][row])


def _check_value(row: int, value: float | None, ids: list[int], values: list[float], num_id: int) -> None:
    if value is None or math.isnan(value):
        return
    found = [v for i, v in zip(ids, values) if i == num_id]
    if not found:
        raise ValueError(f"row {row}: value {value!r} is given but the target holds no number")
    if not math.isclose(found[-1], value, rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(f"row {row}: the target's last number is {found[-1]!r} but value is {value!r}")
