"""Numeric evaluation of CausalQwen (issue #5; used by the CLI, the demo and the benchmarks).

* :func:`regression_metrics`: MAE, RMSE, R², median absolute error, and coverage of given intervals.
* :func:`cauchy_interval_coverage`: coverage of the central Cauchy intervals (quantiles from
  ``modeling/cauchy.py``) at several levels.
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

from ..modeling.cauchy import cauchy_quantile

__all__ = [
    "calibrate_value_scale",
    "cauchy_interval_coverage",
    "coverage_key",
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


def cauchy_interval_coverage(y, loc, scale, levels: Sequence[float] = (0.5, 0.9)) -> dict[str, float]:
    """Share of ``y`` inside the central ``level`` interval of ``Cauchy(loc, scale)``, per level.

    The ends are the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (computed in float64).
    """
    y = _as_vector("y", y)
    loc_t = torch.as_tensor(_as_vector("loc", loc, y.size))
    scale_np = _as_vector("scale", scale, y.size)
    if (scale_np < 0).any():
        raise ValueError("scale must be >= 0")
    scale_t = torch.as_tensor(scale_np)
    out = {}
    for level in levels:
        if not 0.0 < level < 1.0:
            raise ValueError(f"coverage level must lie strictly between 0 and 1, got {level}")
        lo = cauchy_quantile(loc_t, scale_t, (1.0 - level) / 2).numpy()
        hi = cauchy_quantile(loc_t, scale_t, (1.0 + level) / 2).numpy()
        out[coverage_key(level)] = float(((y >= lo) & (y <= hi)).mean())
    return out


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
    was_training = model.training
    pred = predict_values(model.eval(), tokenizer, list(prompts), list(targets))
    model.train(was_training)
    ratio = np.abs(y - pred["value_loc"]) / np.maximum(pred["value_scale"], 1e-30)
    median = float(np.median(ratio))
    if not (math.isfinite(median) and median > 0):
        raise ValueError(f"cannot calibrate: the median of |y - loc| / scale is {median}")
    model.config.value_scale_factor = float(model.config.value_scale_factor) * median
    return model.config.value_scale_factor
