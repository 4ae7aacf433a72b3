"""Pad rows of :func:`~causalqwen.training.data.tokenize_numeric_dataset` into CausalQwen batches.

``NumericDataCollator`` pads the five ``forward`` columns to the batch's longest row (rounded up to
``pad_to_multiple_of``): ``input_ids`` with the pad id, ``attention_mask`` with 0, ``numeric_values`` and
``numeric_labels`` with 0.0, ``labels`` with -100. Labels are padded explicitly rather than derived from the
pad id, because Qwen's pad token is also its EOS token, which a target ends with and must be learned.

Decisions: ``input_ids`` is the only required column (a missing ``attention_mask`` means all ones, missing
``numeric_values`` all zeros); ``labels``/``numeric_labels`` are batched when every row has them and an error
when only some do; so are ``numeric_formats`` (the tokenizer's format codes, padded with 0, for decoding a
batch back to its exact text). Other keys (``prompt``, ``value``...) are left out: the output holds forward
arguments only. Values become float32 (the model's value path runs in float32, and every device has it,
MPS included); any NaN/inf raises here, naming the row, instead of failing later inside the loss. To decode
a batch back to the exact text of numbers beyond float32's 7 digits, pad with the tokenizer instead
(``tokenizer.pad`` keeps the exact float64 values).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["NumericDataCollator"]

IGNORE_INDEX = -100
# column -> (padding value, dtype); input_ids' padding is the pad id (set per collator).
_COLUMNS = {
    "input_ids": (None, torch.long),
    "attention_mask": (0, torch.long),
    "numeric_values": (0.0, torch.float32),
    "labels": (IGNORE_INDEX, torch.long),
    "numeric_labels": (0.0, torch.float32),
    "numeric_formats": (0, torch.long),
}
_OPTIONAL = ("labels", "numeric_labels", "numeric_formats")


class NumericDataCollator:
    """``list[dict]`` rows -> ``dict[str, torch.Tensor]`` for ``CausalQwenForNumericCausalLM.forward``.

    ``pad_token_id`` wins over ``tokenizer.pad_token_id`` (one of the two is required);
    ``padding_side`` is ``"right"`` (training) or ``"left"`` (batched generation).
    """

    def __init__(
        self,
        tokenizer=None,
        *,
        pad_token_id: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str = "right",
    ):
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = tokenizer.pad_token_id
        if pad_token_id is None:
            raise ValueError("NumericDataCollator needs pad_token_id= or a tokenizer with a pad token")
        if isinstance(pad_token_id, bool) or not isinstance(pad_token_id, int) or pad_token_id < 0:
            raise ValueError(f"pad_token_id must be a non-negative integer, got {pad_token_id!r}")
        if pad_to_multiple_of is not None and (
            isinstance(pad_to_multiple_of, bool)
            or not isinstance(pad_to_multiple_of, int)
            or pad_to_multiple_of < 1
        ):
            raise ValueError(
                f"pad_to_multiple_of must be a positive integer or None, got {pad_to_multiple_of!r}"
            )
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        self.tokenizer = tokenizer
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.padding_side = padding_side

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(pad_token_id={self.pad_token_id}, "
            f"pad_to_multiple_of={self.pad_to_multiple_of}, padding_side={self.padding_side!r})"
        )

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("NumericDataCollator got an empty batch")
        rows = [self._columns(i, feature) for i, feature in enumerate(features)]
        optional = [c for c in _OPTIONAL if any(c in row for row in rows)]
        for column in optional:
            missing = [i for i, row in enumerate(rows) if column not in row]
            if missing:
                raise ValueError(f"rows {missing} have no {column!r} while other rows of the batch do")
        width = max(len(row["input_ids"]) for row in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch = {}
        for column in ("input_ids", "attention_mask", "numeric_values", *optional):
            fill, dtype = _COLUMNS[column]
            fill = self.pad_token_id if fill is None else fill
            padded = []
            for row in rows:
                pad = [fill] * (width - len(row[column]))
                padded.append(pad + row[column] if self.padding_side == "left" else row[column] + pad)
            batch[column] = torch.tensor(padded, dtype=dtype)
        return batch

    @staticmethod
    def _columns(index: int, feature: dict[str, Any]) -> dict[str, list]:
        """One row's columns as lists of equal length, checked."""
        if not isinstance(feature, dict) and not hasattr(feature, "keys"):
            raise TypeError(f"row {index} must be a dict of columns, got {type(feature).__name__}")
        if "input_ids" not in feature:
            raise ValueError(f"row {index} has no 'input_ids'")
        row = {c: _as_list(feature[c], index, c) for c in _COLUMNS if c in feature and feature[c] is not None}
        length = len(row["input_ids"])
        if length == 0:
            raise ValueError(f"row {index} is empty (no input_ids)")
        row.setdefault("attention_mask", [1] * length)
        row.setdefault("numeric_values", [0.0] * length)
        for column, values in row.items():
            if len(values) != length:
                raise ValueError(
                    f"row {index}: {column!r} has {len(values)} entries but input_ids has {length}"
                )
        for column in ("numeric_values", "numeric_labels"):
            for position, value in enumerate(row.get(column, ())):
                if not math.isfinite(value):
                    raise ValueError(
                        f"row {index}: {column!r} holds {value} at position {position}; values must be finite"
                    )
        return row


def _as_list(values: Any, index: int, column: str) -> list:
    if hasattr(values, "tolist"):  # torch tensors, numpy arrays
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"row {index}: {column!r} must be a sequence, got {type(values).__name__}")
    if values and isinstance(values[0], (list, tuple)):
        raise ValueError(f"row {index}: {column!r} must be one flat sequence (one row), got nested lists")
    return list(values)
