"""The baselines CausalQwen is measured against in ``make demo`` and ``benchmarks/numeric.py``.

* The digits-as-text baseline: :class:`BackendDigitsView` (the same vocabulary without number parsing),
  :func:`target_prefix`, :func:`parse_leading_number` and :func:`predict_digits` (greedy generation, first
  number parsed; a failure is counted and imputed).
* :func:`feature_matrix`: the prompt's numbers as the CausalQwen tokenizer parses them, for scikit-learn
  references that read exactly the values the language models see.

Kept in the package (not in ``benchmarks/``) because ``make demo`` (``causalqwen.demo``) runs them; the model
evaluation proper is :mod:`.evaluation`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .evaluation import _device

__all__ = ["BackendDigitsView", "feature_matrix", "parse_leading_number", "predict_digits", "target_prefix"]

# Digits, sign, decimals, exponent, thousands commas: what a digits-as-text model may write.
_NUMBER_RE = re.compile(
    r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?"
)


class BackendDigitsView:
    """The same vocabulary as a tokenizers-backed ``CausalQwenTokenizer``, without number parsing.

    Number parsing lives in the Python layer; the Rust backend (``backend_tokenizer``) is the plain Qwen2
    byte-level BPE, so encoding through it gives the digits-as-text view a baseline needs, with the same
    ids and padding id.
    """

    def __init__(self, tok):
        self.source = tok  # the number-parsing tokenizer this views (what a planner saves beside itself)
        self.backend = tok.backend_tokenizer
        self.pad_token_id = tok.pad_token_id

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list]:
        return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)


def parse_leading_number(text: str) -> float | None:
    """The first number in generated text (digits, sign, decimals, exponent, thousands commas) or None."""
    match = _NUMBER_RE.search(text)
    if match is None:
        return None
    try:
        value = float(match.group().replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def target_prefix(target: str) -> str:
    """The target sentence up to its first number (the digits baseline generates from there)."""
    match = _NUMBER_RE.search(target)
    if match is None:
        raise ValueError(f"target sentence {target!r} contains no number")
    return target[: match.start()]


@torch.no_grad()
def predict_digits(
    model,
    tok,
    texts: Sequence[str],
    fallback: float,
    *,
    batch_size: int = 64,
    max_new_tokens: int = 16,
) -> dict[str, Any]:
    """Greedy generation after each text (prompt + target prefix); the first number of the output.

    An output without a number is a failure: counted in ``fail_rate`` and imputed with ``fallback`` (the
    training mean, say) so that the error metrics stay comparable. Returns ``pred`` (numpy), ``fail_rate``
    and the raw ``outputs``.
    """
    if not math.isfinite(fallback):
        raise ValueError(f"fallback must be finite, got {fallback}")
    was_training = model.training
    model.eval()
    device = _device(model)
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    preds, outputs, failures = [], [], 0
    try:
        for start in range(0, len(texts), batch_size):
            rows = [
                list(tok(t, add_special_tokens=False)["input_ids"]) for t in texts[start : start + batch_size]
            ]
            width = max(map(len, rows))
            # Left padding: generation appends after the last real token of every row.
            ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=None,
            )
            for row in out[:, width:]:
                text = tok.decode(row.tolist(), skip_special_tokens=True)
                value = parse_leading_number(text)
                failures += value is None
                preds.append(fallback if value is None else value)
                outputs.append(text)
    finally:
        model.train(was_training)
    return {
        "pred": np.asarray(preds, dtype=np.float64),
        "fail_rate": failures / max(len(texts), 1),
        "outputs": outputs,
    }


def feature_matrix(
    tok, prompts: Sequence[str], num_id: int | None = None, width: int | None = None
) -> np.ndarray:
    """The numbers of each prompt as the CausalQwen tokenizer parses them, zero-padded to ``width`` columns.

    The scikit-learn references read exactly the values the language models see.
    """
    num_id = tok.convert_tokens_to_ids("<NUM>") if num_id is None else num_id
    rows = []
    for prompt in prompts:
        enc = tok(prompt, add_special_tokens=False)
        rows.append([float(v) for i, v in zip(enc["input_ids"], enc["numeric_values"]) if i == num_id])
    width = width or max(map(len, rows), default=0)
    X = np.zeros((len(rows), width))
    for i, row in enumerate(rows):
        X[i, : min(len(row), width)] = row[:width]
    return X
