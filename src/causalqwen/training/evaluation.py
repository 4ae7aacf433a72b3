"""Numeric evaluation of CausalQwen (issue #5; used by the CLI, the demo and the benchmarks).

* :func:`regression_metrics`: MAE, RMSE, R², median absolute error, and coverage of given intervals.
* :func:`cauchy_interval_coverage`: coverage of the central Cauchy intervals (quantiles from
  ``modeling/cauchy.py``) at several levels, or of the calibrated ones given a fitted table.
* :func:`fit_interval_table` / :func:`calibrate_value_intervals`: split-conformal interval calibration (the
  empirical quantiles of ``|y - loc| / scale`` at every level, saved as ``config.value_interval_table``).
* :func:`predict_values`: teacher-forced value prediction. The input is the prompt followed by the target
  sentence up to its first ``<NUM>``; the last position is the one whose next token is ``<NUM>``, so its
  ``value_loc``/``value_scale`` are the predicted value's Cauchy median and scale, and ``<NUM>`` being the
  argmax there is the ``<NUM>`` decision (``num_accuracy``). Prompt and target are tokenized separately and
  concatenated, exactly as ``tokenize_numeric_dataset`` builds training rows, so no BPE merge crosses the
  boundary and the positions match training.
* :func:`generate_examples`: greedy generations with the generated values written into the text
  (``tokenizer.decode(numeric_values=...)``).
* The baselines it is compared with (digits-as-text, scikit-learn features) are in :mod:`.baselines`.

Decisions: R² is ``None`` (not NaN) when the true values are constant, where it is undefined; inputs with a
NaN/inf or mismatched lengths raise ``ValueError``. Coverage counts the closed interval ``[lower, upper]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..modeling.cauchy import interval_half_width

__all__ = [
    "CALIBRATION_LEVELS",
    "calibrate_value_intervals",
    "calibrate_value_scale",
    "cauchy_interval_coverage",
    "coverage_key",
    "fit_interval_table",
    "generate_examples",
    "predict_values",
    "regression_metrics",
]


def _as_vector(name: str, values, length: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if length is not None and array.shape[0] != length:
        raise ValueError(f"{name} has {array.shape[0]} entries, expected {length}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf at index {int(np.flatnonzero(~np.isfinite(array))[0])}")
    return array


def coverage_key(level: float) -> str:
    """``0.5 -> "cover50"``, ``0.9 -> "cover90"``, ``0.95 -> "cover95"``."""
    return f"cover{level * 100:g}"


def regression_metrics(y_true, y_pred, *, lower=None, upper=None) -> dict[str, float | None]:
    """MAE, RMSE, R², median AE of point predictions; ``coverage`` of ``[lower, upper]`` when given."""
    y = _as_vector("y_true", y_true)
    if y.size == 0:
        raise ValueError("y_true is empty")
    pred = _as_vector("y_pred", y_pred, y.size)
    err = pred - y
    ss_tot = float(((y - y.mean()) ** 2).sum())
    out: dict[str, float | None] = {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": 1.0 - float((err**2).sum()) / ss_tot if ss_tot > 0 else None,
        "median_ae": float(np.median(np.abs(err))),
    }
    if (lower is None) != (upper is None):
        raise ValueError("lower and upper go together (the two ends of each interval)")
    if lower is not None:
        lo, hi = _as_vector("lower", lower, y.size), _as_vector("upper", upper, y.size)
        if (lo > hi).any():
            raise ValueError(f"lower > upper at index {int(np.flatnonzero(lo > hi)[0])}")
        out["coverage"] = float(((y >= lo) & (y <= hi)).mean())
    return out


def cauchy_interval_coverage(
    y, loc, scale, levels: Sequence[float] = (0.5, 0.9), table: dict | None = None
) -> dict[str, float]:
    """Share of ``y`` inside the central ``level`` interval ``loc +- half_width * scale``, per level.

    ``half_width`` is the Cauchy's ``tan(pi level / 2)`` (the ``(1 -+ level) / 2`` quantiles), or the calibrated
    width of a fitted ``table`` (:func:`fit_interval_table`; ``modeling.cauchy.interval_half_width``).
    """
    y = _as_vector("y", y)
    loc_np = _as_vector("loc", loc, y.size)
    scale_np = _as_vector("scale", scale, y.size)
    if (scale_np < 0).any():
        raise ValueError("scale must be >= 0")
    out = {}
    for level in levels:
        half = scale_np * interval_half_width(level, table)
        out[coverage_key(level)] = float(((y >= loc_np - half) & (y <= loc_np + half)).mean())
    return out


# The levels a calibration table is fitted at: every 5 %, so the 50 % and 90 % intervals and the reliability
# diagram's 10 %...90 % are fitted points, not interpolations.
CALIBRATION_LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20))


def fit_interval_table(y, loc, scale, levels: Sequence[float] = CALIBRATION_LEVELS) -> dict[str, list[float]]:
    """Calibrated interval widths (split-conformal): for each level, the ``ceil((n + 1) level)``-th smallest of
    the ``n`` ratios ``|y - loc| / scale`` (capped at the largest).

    On rows exchangeable with the calibration rows, ``loc +- width * scale`` then covers at least ``level`` of
    them; the widths follow the errors' own shape, so a model whose errors have lighter tails than its Cauchy
    gets every level right, not only the median (which one scale factor, :func:`calibrate_value_scale`, fixes).
    Returns ``{"levels": [...], "half_widths": [...]}`` for ``config.value_interval_table``.
    """
    y = _as_vector("y", y)
    if y.size < 2:
        raise ValueError(f"fit_interval_table needs >= 2 rows, got {y.size}")
    loc_np = _as_vector("loc", loc, y.size)
    scale_np = _as_vector("scale", scale, y.size)
    if (scale_np <= 0).any():
        raise ValueError(f"scale must be > 0 to calibrate, got {float(scale_np.min())}")
    levels = [float(lv) for lv in levels]
    if not levels or any(not 0.0 < lv < 1.0 for lv in levels) or levels != sorted(set(levels)):
        raise ValueError(f"levels must be distinct, increasing and inside (0, 1), got {levels}")
    ratios = np.sort(np.abs(y - loc_np) / scale_np)
    n = ratios.size
    ranks = [min(n, math.ceil((n + 1) * lv)) for lv in levels]
    return {"levels": levels, "half_widths": [float(ratios[k - 1]) for k in ranks]}


# ------------------------------------------------------------------------------------------ CausalQwen


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _encode(tokenizer, text: str) -> tuple[list[int], list[float]]:
    enc = tokenizer(text, add_special_tokens=False)
    return list(enc["input_ids"]), [float(v) for v in enc["numeric_values"]]


@torch.no_grad()
def predict_values(
    model, tokenizer, prompts: Sequence[str], targets: str | Sequence[str], *, batch_size: int = 64
) -> dict[str, Any]:
    """Teacher-forced value prediction at the position that predicts the target's first ``<NUM>``.

    ``targets`` are the target sentences (one per prompt, or one shared template such as
    ``" Disease progression is 0."``); only their text before the first number is fed. Returns numpy
    arrays ``value_loc``, ``value_scale`` (data units), ``num_hit`` (``<NUM>`` is the argmax) and the float
    ``num_accuracy``.
    """
    if isinstance(targets, str):
        targets = [targets] * len(prompts)
    if len(targets) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
    if not prompts:
        raise ValueError("prompts is empty")
    num_id = model.config.num_token_id
    rows = []
    for prompt, target in zip(prompts, targets):
        p_ids, p_vals = _encode(tokenizer, prompt)
        t_ids, t_vals = _encode(tokenizer, target)
        if num_id not in t_ids:
            raise ValueError(f"target {target!r} has no number (no <NUM> after tokenization)")
        cut = t_ids.index(num_id)
        rows.append((p_ids + t_ids[:cut], p_vals + t_vals[:cut]))
    was_training = model.training
    model.eval()
    device = _device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    locs, scales, hits = [], [], []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            lengths = torch.tensor([len(ids) for ids, _ in chunk])
            width = int(lengths.max())
            # Right padding: every row keeps positions 0..n-1, as in training; read position n-1.
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            values = torch.zeros((len(chunk), width), dtype=torch.float32)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for i, (r_ids, r_vals) in enumerate(chunk):
                ids[i, : len(r_ids)] = torch.tensor(r_ids)
                values[i, : len(r_ids)] = torch.tensor(r_vals)
                mask[i, : len(r_ids)] = 1
            out = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), numeric_values=values.to(device)
            )
            index = torch.arange(len(chunk), device=device)
            last = (lengths - 1).to(device)
            locs.append(out.value_loc[index, last].double().cpu())
            scales.append(out.value_scale[index, last].double().cpu())
            hits.append((out.logits[index, last].argmax(-1) == num_id).cpu())
    finally:
        model.train(was_training)
    num_hit = torch.cat(hits).numpy()
    return {
        "value_loc": torch.cat(locs).numpy(),
        "value_scale": torch.cat(scales).numpy(),
        "num_hit": num_hit,
        "num_accuracy": float(num_hit.mean()),
    }


@torch.no_grad()
def generate_examples(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 24) -> list[dict]:
    """Greedy continuations of each prompt, with generated numbers written in.

    Returns one dict per prompt: ``prompt``, ``completion`` (decoded with
    ``tokenizer.decode(numeric_values=...)``) and ``values`` (the generated numbers, in order, at float32
    precision). Prompts run
    one at a time: a handful of examples does not need batching, and no padding means no left-padding
    position subtleties.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    was_training = model.training
    model.eval()
    device = _device(model)
    num_id = model.config.num_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    examples = []
    try:
        for prompt in prompts:
            enc = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
            out = model.generate(
                input_ids=enc["input_ids"].to(device),
                attention_mask=enc["attention_mask"].to(device),
                numeric_values=enc["numeric_values"].to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                return_dict_in_generate=True,
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            start = enc["input_ids"].shape[1]
            ids = out.sequences[0, start:].tolist()
            # The value track is float32: render each value by its shortest float32 repr (129.7, not
            # 129.6999969482422, the float64 view of the same float32).
            values = [float(str(v)) for v in out.numeric_values[0, start:].float().numpy()]
            examples.append(
                {
                    "prompt": prompt,
                    "completion": tokenizer.decode(ids, skip_special_tokens=True, numeric_values=values),
                    "values": [v for i, v in zip(ids, values) if i == num_id],
                }
            )
    finally:
        model.train(was_training)
    return examples


def calibrate_value_scale(model, tokenizer, prompts: Sequence[str], targets: Sequence[str], values) -> float:
    """Fit ``config.value_scale_factor`` so the central 50 % Cauchy interval covers half of the given rows.

    For a calibrated Cauchy, ``|y - loc| / scale`` has median 1 (the 50 % interval is ``loc +- scale``), so the
    factor is multiplied by the median of that ratio over the rows (teacher-forced, :func:`predict_values`).
    A single factor calibrates the median interval; the tails keep the Cauchy shape, so with lighter-tailed
    errors the 90 % interval still covers more than 90 % (measured in docs/causal_qwen.md). Returns the new
    factor (also set on the model's config, so it is saved with the model).
    """
    y = _as_vector("values", values)
    if len(y) < 2 or len(prompts) != len(y) or len(targets) != len(y):
        raise ValueError(f"calibrate_value_scale needs >= 2 rows with prompt, target and value; got {len(y)}")
    pred = predict_values(model, tokenizer, list(prompts), list(targets))  # in eval mode, restored after
    ratio = np.abs(y - pred["value_loc"]) / np.maximum(pred["value_scale"], 1e-30)
    median = float(np.median(ratio))
    if not (math.isfinite(median) and median > 0):
        raise ValueError(f"cannot calibrate: the median of |y - loc| / scale is {median}")
    model.config.value_scale_factor = float(model.config.value_scale_factor) * median
    return model.config.value_scale_factor


def calibrate_value_intervals(
    model, tokenizer, prompts: Sequence[str], targets: Sequence[str], values, levels=CALIBRATION_LEVELS
) -> dict[str, list[float]]:
    """Fit ``config.value_interval_table`` (:func:`fit_interval_table`) on the given rows, teacher-forced
    (:func:`predict_values`), and return it. Saved with the model; ``model.value_interval`` and
    :func:`cauchy_interval_coverage` (``table=``) use it. The widths are in units of the current
    ``value_scale`` (after ``value_scale_factor``): refit after changing the factor. Rows the model did not
    train on give the conformal guarantee; its training rows are what the CLI, the demo and the benchmark use
    (measured in docs/causal_qwen.md).
    """
    y = _as_vector("values", values)
    if len(prompts) != len(y) or len(targets) != len(y):
        raise ValueError(
            f"calibrate_value_intervals needs one prompt, target and value per row; got {len(prompts)}, "
            f"{len(targets)} and {len(y)}"
        )
    pred = predict_values(model, tokenizer, list(prompts), list(targets))  # in eval mode, restored after
    table = fit_interval_table(y, pred["value_loc"], pred["value_scale"], levels)
    model.config.value_interval_table = table
    return table
