"""``causalqwen-train``: fine-tune CausalQwen on numeric sentences with :class:`.trainer.CausalQwenTrainer`.

Examples::

    causalqwen-train --dataset synthetic:linear --output-dir runs/linear        # tiny model, CPU, 600 steps
    causalqwen-train --dataset sklearn:diabetes --base /models/Qwen2.5-0.5B --lora --lr 2e-4 --output-dir runs/dia
    causalqwen-train --dataset csv:houses.csv --target price --config train.json --output-dir runs/houses
    causalqwen-train --quick --output-dir /tmp/cq                                             # seconds (tests)
    accelerate launch -m causalqwen.training.cli --dataset synthetic:linear --output-dir runs/ddp

What is written to ``--output-dir``: ``model.safetensors`` + ``config.json`` (+ ``generation_config.json``), the
tokenizer files and ``metrics.json`` (train/eval losses, the numeric metrics of the log, teacher-forced test
MAE/RMSE/R2/``<NUM>`` accuracy/interval coverage, parameter counts, the resolved arguments). The model reloads
with ``AutoModelForCausalLM.from_pretrained(dir)`` after ``import causalqwen`` (or with ``trust_remote_code``).
With ``--lora`` the same directory holds the **merged** model, ``adapter/`` the PEFT adapter (and tokenizer),
and ``base/`` the model the adapter applies to, unless the base was already a CausalQwen directory on disk
(then the adapter points there). Why save the base: the default base is a freshly initialised tiny model and a
``from_qwen2`` conversion is not a checkpoint either, so without ``base/`` the adapter could not be reloaded.

Decisions:

* ``--base``: ``tiny`` (default; a 2-layer, width-64 CausalQwen built for the tokenizer's vocabulary), a
  directory whose ``config.json`` says ``qwen2`` (converted with ``from_qwen2``) or ``causal_qwen`` (loaded).
* ``--tokenizer auto`` (default): the base directory's tokenizer when it has one, else the tiny test tokenizer
  for ``--base tiny``; ``tiny``/``qwen`` (the offline Qwen2.5 vocabulary) force one. The model's
  ``num_token_id`` must be the tokenizer's ``<NUM>`` id (checked).
* ``--value-normalization auto`` (fresh models only; a CausalQwen base keeps its own): ``affine`` with the median
  and half the inter-quartile range of the training targets, or ``symlog`` (shift 0, scale = the 5th percentile
  of the nonzero |y|, the log-space value standardised by the mean and standard deviation of the training
  targets' symlog: the numeric benchmark's recipe, ``fit_symlog_normalization``) when the targets span more than
  four decades. On ``synthetic:wide`` (seeds 0-2, 600 steps) that gave test MAE 902 / 1,938 / 1,166 against
  5,895 / 4,891 / 2,557 with the median |y| as the scale and no standardisation (before 2026-12-05), at a
  ``<NUM>`` accuracy of 0.92 / 1.00 / 0.80 instead of 1.00: over ten decades the value loss now weighs more
  against the token loss. Cauchy regression on raw targets in the hundreds starts with a huge NLL and moves
  slowly; normalised targets of order one train like the synthetic sets.
* ``--freeze-backbone`` trains only what CausalQwen adds (abduction, action noise, value head, numeric fusion);
  the Qwen2 backbone and the inherited token head stay frozen. It excludes ``--lora`` (which already freezes
  the backbone and trains those modules in full).
* ``--calibration-rows N`` (default 2000): after training, the value intervals are calibrated on up to N
  training rows (``calibrate_value_intervals``: the empirical quantiles of ``|y - loc| / scale``, saved as
  ``config.value_interval_table``). The trained Cauchy's intervals are far too wide where the value is learnt
  precisely (50 % intervals covering 0.84-1.0 of the test rows); calibrated, the 50 % and 90 % intervals of
  the benchmark's tasks cover 0.47-0.52 and 0.89-0.94 on average (docs/causal_qwen.md). The training rows,
  not a held-out split, so the model trains on every row; ``metrics.json`` reports both coverages
  (``cover50`` / ``cover50_raw``). ``0`` keeps the Cauchy's own intervals.
* ``main(argv)`` returns the metrics dict (for Python callers and tests). The console script and
  ``python -m`` call ``main()`` with no argument: then it reads ``sys.argv`` and returns ``0``, because console
  scripts pass ``main()``'s return value to ``sys.exit``, which treats a dict as a failure.
* ``--table-recipe auto`` (default): a table in raw units (``sklearn:`` / ``csv:`` without ``--standardize``) on
  ``--base tiny`` trains with the raw-table recipe, :data:`TABLE_RECIPE` (log-magnitude bins of width 0.25 in the
  ``<NUM>`` encoding, relative input noise 0.08, 2,400 steps), each part only where its flag is not given;
  ``metrics.json`` records what was filled in (``args.table_recipe_applied``). Why by default: with the synthetic
  sets' defaults a tiny model reading raw diabetes rows underfits (columns at different magnitudes barely move
  the magnitude features; docs/causal_qwen.md, "Raw tables"): test MAE 50.3 mean over seeds 0-4 at 1,200 steps
  against 45.7 with the recipe, better on every seed. Why not for everything: the bins halve the accuracy on the synthetic linear set
  and cost a ``<NUM>`` decision on a wide seed; why not on other bases: a CausalQwen base brings its encoding,
  and the recipe was measured on the tiny model only. ``off`` keeps the plain defaults.
* ``--config file.json``: a JSON object whose keys are flag names (``"batch_size"`` or ``"batch-size"``); flags
  given on the command line win over it. Unknown keys raise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState

from ..configuration.configuration_causal_qwen import VALUE_NORMALIZATIONS, CausalQwenConfig
from ..modeling.modeling_causal_qwen import CausalQwenForNumericCausalLM
from ..modeling.numeric_embedding import fit_symlog_normalization
from .cli_errors import UsageError, add_debug_flag, exit_on_usage_error, require_positive
from .collator import NumericDataCollator
from .data import (
    SYNTHETIC_KINDS,
    build_synthetic_dataset,
    build_table_dataset,
    table_standardization,
    tokenize_numeric_dataset,
)
from .evaluation import (
    calibrate_value_intervals,
    cauchy_interval_coverage,
    predict_values,
    regression_metrics,
)
from .lora import apply_lora, full_training_modules
from .presets import TINY_BACKBONE
from .trainer import CausalQwenTrainer, numeric_training_arguments

__all__ = ["build_parser", "main", "run"]

# What --table-recipe auto fills in, for a table in raw units on --base tiny, where the flag is not given: the
# raw-table recipe (docs/causal_qwen.md, "Raw tables"). Through this CLI on sklearn:diabetes, seeds 0-4, 1 thread
# (2026-12-05): test MAE 46.1 / 43.2 / 47.2 / 48.0 / 43.9 (mean 45.7) against 56.1 / 49.0 / 53.8 / 48.7 / 44.1
# (mean 50.3) with --table-recipe off at 1,200 steps.
TABLE_RECIPE = dict(
    value_bin_width=0.25, numeric_input_noise=0.08, numeric_input_noise_relative=True, steps=2400
)
# TABLE_RECIPE's keys that are CausalQwenConfig fields, by flag name (the rest, ``steps``, is the budget).
_RECIPE_CONFIG_KEYS = dict(
    value_bin_width="value_encoding_bin_width",
    numeric_input_noise="numeric_input_noise",
    numeric_input_noise_relative="numeric_input_noise_relative",
)


def table_recipe_config() -> dict[str, Any]:
    """:data:`TABLE_RECIPE`'s model part as ``CausalQwenConfig`` keyword arguments (for callers that build the
    configuration themselves, such as ``python -m causalqwen.demo``)."""
    return {field: TABLE_RECIPE[flag] for flag, field in _RECIPE_CONFIG_KEYS.items()}


DEFAULT_STEPS = 600
# --quick: enough to prove the pipeline end to end in seconds.
QUICK = dict(steps=4, rows=64, batch_size=4, logging_steps=1, eval_rows=8)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="causalqwen-train",
        description="Fine-tune CausalQwen on numeric sentences (synthetic sets, sklearn tables or a CSV) with the "
        "Hugging Face Trainer; writes the model, tokenizer and metrics.json to --output-dir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=None, help="JSON file of flag values (flags win)")
    parser.add_argument("--base", default="tiny", help="'tiny', a Qwen2 checkpoint dir or a CausalQwen dir")
    parser.add_argument(
        "--dataset",
        default="synthetic:linear",
        help=f"synthetic:<{'|'.join(SYNTHETIC_KINDS)}>, sklearn:diabetes or csv:PATH (with --target)",
    )
    parser.add_argument("--target", default=None, help="target column of a table dataset")
    parser.add_argument(
        "--standardize",
        action="store_true",
        help="table datasets: write numeric features as z-scores over the training split (saved to "
        "table_standardization.json, to write new rows the same way)",
    )
    parser.add_argument("--rows", type=int, default=2000, help="rows of a synthetic dataset")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        # "%(default).0s" prints nothing but stops the help formatter from appending "(default: None)".
        help=f"optimizer steps (default: {DEFAULT_STEPS}; {TABLE_RECIPE['steps']} under the table recipe)"
        "%(default).0s",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="rows per device and step")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--max-length", type=int, default=256, help="prompt is cut from the left beyond it")
    parser.add_argument("--freeze-backbone", action="store_true", help="train only the CausalQwen modules")
    parser.add_argument(
        "--loss-compile",
        action="store_true",
        help="compile the loss's One-vs-Rest kernels (config.loss_compile; needs a C++ compiler on CPU)",
    )
    parser.add_argument(
        "--numeric-input-noise",
        type=float,
        default=None,
        help="std of Gaussian noise on input <NUM> values while training (config.numeric_input_noise; "
        "for z-scored tables, e.g. 0.5 with --standardize); default: the base's setting",
    )
    parser.add_argument(
        "--numeric-input-noise-relative",
        action="store_true",
        help="make --numeric-input-noise a fraction of each value, v * exp(sigma * e) "
        "(config.numeric_input_noise_relative; for tables in raw units, e.g. 0.08 with --value-bin-width 0.25)",
    )
    parser.add_argument(
        "--value-bin-width",
        type=float,
        default=None,
        help="--base tiny: log-magnitude bins of this width in the <NUM> encoding "
        "(config.value_encoding_bin_width; 0.25 for raw tables); default: none",
    )
    parser.add_argument(
        "--table-recipe",
        choices=("auto", "off"),
        default="auto",
        help="auto: a table in raw units (sklearn:/csv:, no --standardize) on --base tiny trains with the raw-table "
        "recipe (log-magnitude bins 0.25, relative input noise 0.08, 2,400 steps) where those flags are not given",
    )
    parser.add_argument("--lora", action="store_true", help="PEFT LoRA (see causalqwen.training.lora)")
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--lora-alpha", type=int, default=16, help="LoRA alpha")
    parser.add_argument(
        "--value-normalization",
        choices=("auto", *VALUE_NORMALIZATIONS),
        default="auto",
        help="how targets are normalised for a fresh model (auto: affine, or symlog over > 4 decades)",
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="where the model and metrics go")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data split, init and training")
    parser.add_argument(
        "--tokenizer",
        choices=("auto", "tiny", "qwen"),
        default="auto",
        help="auto: the base's own, the tiny demo vocabulary for --base tiny, else the Qwen2.5 one",
    )
    parser.add_argument("--logging-steps", type=int, default=10, help="log every N steps")
    parser.add_argument("--eval-rows", type=int, default=200, help="test rows for the teacher-forced metrics")
    parser.add_argument(
        "--calibration-rows",
        type=int,
        default=2000,
        help="training rows the value intervals are calibrated on after training "
        "(config.value_interval_table, split-conformal); 0: keep the Cauchy's own intervals",
    )
    parser.add_argument("--report-to", default="none", help="'none', 'tensorboard', ...")
    parser.add_argument("--quick", action="store_true", help="a few steps on a small subset (tests)")
    add_debug_flag(parser)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config is not None:
        try:
            values = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise UsageError(f"--config {args.config}: cannot read a JSON object ({err})") from err
        if not isinstance(values, dict):
            raise UsageError(f"--config {args.config}: expected a JSON object of flag values")
        values = {key.replace("-", "_"): value for key, value in values.items()}
        known = {a.dest for a in parser._actions} - {"help", "config"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"--config {args.config}: unknown key(s) {', '.join(unknown)}")
        parser.set_defaults(**values)
        args = parser.parse_args(argv)
    args.table_recipe_applied = apply_table_recipe(args)
    if args.steps is None:
        args.steps = DEFAULT_STEPS
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    require_positive(
        args, "steps", "batch_size", "grad_accum", "rows", "logging_steps", "lora_r", "max_length"
    )
    if not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if args.calibration_rows < 0:
        raise UsageError(f"--calibration-rows must be >= 0 (0: no calibration), got {args.calibration_rows}")
    noise = args.numeric_input_noise
    if noise is not None and not (math.isfinite(noise) and noise >= 0):
        raise UsageError(f"--numeric-input-noise must be finite and >= 0, got {noise}")
    if args.value_bin_width is not None:
        if args.base != "tiny":
            raise UsageError(
                "--value-bin-width applies to a fresh --base tiny model (it sizes the encoding's weights)"
            )
        # The config's own rule, checked before any data is read; a bad width is a usage error, not a traceback.
        try:
            CausalQwenConfig(value_encoding_bin_width=args.value_bin_width)
        except ValueError as err:
            raise UsageError(f"--value-bin-width: {err}") from err
    if args.lora and args.freeze_backbone:
        raise UsageError(
            "--freeze-backbone and --lora exclude each other (LoRA already freezes the backbone)"
        )
    return args


def apply_table_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """Fill in :data:`TABLE_RECIPE` for a raw-units table on ``--base tiny`` (``--table-recipe auto``), key by
    key where the flag is neither on the command line nor in ``--config`` (both leave it not None); returns what
    it set. Input noise and its relative form go together: a given ``--numeric-input-noise`` keeps its form."""
    table = args.dataset.partition(":")[0] in ("sklearn", "csv")
    if args.table_recipe == "off" or not table or args.standardize or args.base != "tiny":
        return {}
    applied = {}
    for key, value in TABLE_RECIPE.items():
        if key == "numeric_input_noise_relative":
            given = args.numeric_input_noise_relative or "numeric_input_noise" not in applied
        else:
            given = getattr(args, key) is not None
        if not given:
            setattr(args, key, value)
            applied[key] = value
    return applied


# ------------------------------------------------------------------------------------------ pieces


def load_rows(args: argparse.Namespace):
    """The DatasetDict (train/test rows of prompt/target/value) named by ``--dataset``, and the
    ``{column: (mean, std)}`` its features were written with under ``--standardize`` (else ``None``); a missing
    file or column and a target that is not a number are usage errors."""
    try:
        return _load_rows(args)
    except (OSError, KeyError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise UsageError(f"--dataset {args.dataset}: {message}") from err


def _load_rows(args: argparse.Namespace):
    kind, _, rest = args.dataset.partition(":")
    if kind == "synthetic":
        if args.standardize:
            raise UsageError("--standardize applies to table datasets (sklearn:<name>, csv:PATH)")
        return build_synthetic_dataset(rest or "linear", n=args.rows, seed=args.seed), None
    if kind == "sklearn":
        source = args.dataset
    elif kind == "csv":
        if not rest or args.target is None:
            raise UsageError("--dataset csv:PATH needs a path and --target COLUMN")
        source = rest
    else:
        raise UsageError(
            f"--dataset must be synthetic:<kind>, sklearn:<name> or csv:PATH, got {args.dataset!r}"
        )
    # Fitted once and passed on, so the saved statistics are exactly the ones the rows were written with.
    stats = table_standardization(source, args.target, seed=args.seed) if args.standardize else None
    return build_table_dataset(source, args.target, seed=args.seed, standardize=stats or False), stats


def _base_kind(base: str) -> str:
    if base == "tiny":
        return "tiny"
    config = Path(base) / "config.json"
    if not config.is_file():
        raise UsageError(f"--base {base!r}: not 'tiny' and no config.json there")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type not in ("qwen2", "causal_qwen"):
        raise UsageError(f"--base {base!r}: model_type {model_type!r}, expected 'qwen2' or 'causal_qwen'")
    return model_type


def load_tokenizer(args: argparse.Namespace, base_kind: str):
    from ..tokenization.tokenization_causal_qwen import CausalQwenTokenizer

    choice = args.tokenizer
    if choice == "auto":
        has_files = base_kind != "tiny" and any(
            (Path(args.base) / name).is_file() for name in ("tokenizer.json", "vocab.json")
        )
        if has_files:
            return CausalQwenTokenizer.from_pretrained(args.base)
        choice = "tiny" if base_kind == "tiny" else "qwen"
    if choice == "tiny":
        from ..tokenization.tiny_vocab import build_tiny_tokenizer

        return build_tiny_tokenizer()
    return CausalQwenTokenizer.from_qwen_vocab()


def value_normalization(values: np.ndarray, kind: str) -> dict[str, Any]:
    """Config overrides for ``--value-normalization`` from the finite training targets (module docstring)."""
    values = values[np.isfinite(values)]
    if kind == "none" or values.size == 0:
        return {"value_normalization": "none"}
    nonzero = np.abs(values[values != 0])
    wide = nonzero.size > 0 and nonzero.max() / nonzero.min() > 1e4
    if kind == "symlog" or (kind == "auto" and wide):
        return fit_symlog_normalization(values)
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    scale = float(q75 - q25) / 2 or float(np.abs(values).max()) or 1.0
    return {"value_normalization": "affine", "value_norm_shift": float(q50), "value_norm_scale": scale}


def build_model(
    args, base_kind: str, tokenizer, normalization: dict[str, Any]
) -> CausalQwenForNumericCausalLM:
    torch.manual_seed(args.seed)
    if base_kind == "causal_qwen":
        model = CausalQwenForNumericCausalLM.from_pretrained(args.base)
    elif base_kind == "qwen2":
        model = CausalQwenForNumericCausalLM.from_qwen2(args.base, **normalization)
    else:
        config = CausalQwenConfig(
            vocab_size=len(tokenizer),
            num_token_id=tokenizer.num_token_id,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **TINY_BACKBONE,
            **normalization,
            **({} if args.value_bin_width is None else {"value_encoding_bin_width": args.value_bin_width}),
        )
        model = CausalQwenForNumericCausalLM(config)
    if model.config.num_token_id != tokenizer.num_token_id:
        raise UsageError(
            f"the model's num_token_id {model.config.num_token_id} is not the tokenizer's <NUM> id "
            f"{tokenizer.num_token_id}; pick the tokenizer that matches --base"
        )
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise UsageError(f"the tokenizer has {len(tokenizer)} tokens, more than the model's embedding rows")
    if args.loss_compile:
        # A training-speed choice, whatever the base: saved with the model (off again by config edit or flag).
        model.config.loss_compile = True
    if args.numeric_input_noise is not None:
        # A training regulariser: saved with the model, inert outside training mode.
        model.config.numeric_input_noise = args.numeric_input_noise
    if args.numeric_input_noise_relative:
        model.config.numeric_input_noise_relative = True
    return model


def freeze_backbone(model: CausalQwenForNumericCausalLM) -> None:
    """Train only the CausalQwen modules (the names :func:`.lora.full_training_modules` gives)."""
    model.requires_grad_(False)
    for name in full_training_modules(model):
        module = model.model.value_encoding if name == "value_encoding" else model.get_submodule(name)
        module.requires_grad_(True)


def _numeric_rows(rows, limit: int):
    """The first ``limit`` rows with a finite numeric target."""
    rows = rows.filter(lambda r: r["value"] is not None and math.isfinite(r["value"]))
    return rows.select(range(min(limit, len(rows))))


def calibrate_intervals(model, tokenizer, rows, limit: int) -> dict[str, list[float]] | None:
    """Fit ``config.value_interval_table`` on up to ``limit`` training rows (``None`` with fewer than 2)."""
    rows = _numeric_rows(rows, limit)
    if len(rows) < 2:
        return None
    return calibrate_value_intervals(model, tokenizer, rows["prompt"], rows["target"], rows["value"])


def teacher_forced_metrics(
    model, tokenizer, rows, limit: int, train_mean: float | None = None
) -> dict[str, Any]:
    """Teacher-forced value metrics on up to ``limit`` test rows that have a numeric target; with ``train_mean``
    also the MAE of predicting it everywhere (``mean_predictor_mae``), the floor a model must beat. Coverage
    (``cover50``/``cover90``) is of the model's intervals (calibrated when ``config.value_interval_table`` is
    set); ``cover50_raw``/``cover90_raw`` of the trained Cauchy's own."""
    rows = _numeric_rows(rows, limit)
    if len(rows) == 0:
        return {}
    model.eval()
    pred = predict_values(model, tokenizer, rows["prompt"], rows["target"])
    y = np.asarray(rows["value"], dtype=np.float64)
    out = {"rows": len(rows), "num_accuracy": float(pred["num_accuracy"])}
    out.update(regression_metrics(y, pred["value_loc"]))
    loc, scale = pred["value_loc"], pred["value_scale"]
    out.update(cauchy_interval_coverage(y, loc, scale, table=model.config.value_interval_table))
    out.update({f"{k}_raw": v for k, v in cauchy_interval_coverage(y, loc, scale).items()})
    if train_mean is not None:
        out["mean_predictor_mae"] = float(np.mean(np.abs(y - train_mean)))
    return out


def _training_mean(rows) -> float | None:
    values = np.asarray([v for v in rows["value"] if v is not None], dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def learning_warning(test: dict[str, Any]) -> str | None:
    """A one-line warning when the test MAE is no better than predicting the training mean."""
    mae, floor = test.get("mae"), test.get("mean_predictor_mae")
    if mae is None or floor is None or mae < floor:
        return None
    return (
        f"warning: test MAE {mae:.4g} is not better than predicting the training mean ({floor:.4g}): the model "
        "has not learned the values; train longer (--steps), or check the learning rate and the data"
    )


def _finite(value):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------ main


def run(argv: list[str]) -> dict[str, Any]:
    """Train as the flags say, save everything to ``--output-dir`` and return the metrics dict."""
    args = parse_args(argv)
    out_dir = Path(args.output_dir)
    base_kind = _base_kind(args.base)
    tokenizer = load_tokenizer(args, base_kind)
    rows, table_stats = load_rows(args)
    if args.quick:
        rows["train"] = rows["train"].select(range(min(QUICK["rows"], len(rows["train"]))))
        rows["test"] = rows["test"].select(range(min(QUICK["rows"] // 4, len(rows["test"]))))
    normalization = {}
    if base_kind != "causal_qwen":
        kind = args.value_normalization
        normalization = value_normalization(np.asarray(rows["train"]["value"], dtype=np.float64), kind)
    model = build_model(args, base_kind, tokenizer, normalization)
    tokenized = tokenize_numeric_dataset(rows, tokenizer, max_length=args.max_length)

    adapter_dir = out_dir / "adapter"
    is_main = PartialState().is_main_process  # under accelerate launch, one process writes files
    if args.lora:
        base_path = args.base if base_kind == "causal_qwen" else str(out_dir / "base")
        if base_kind != "causal_qwen" and is_main:
            model.save_pretrained(base_path)
            tokenizer.save_pretrained(base_path)
        model = apply_lora(model, r=args.lora_r, alpha=args.lora_alpha)
    elif args.freeze_backbone:
        freeze_backbone(model)

    training_args = numeric_training_arguments(
        str(out_dir),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.lr,
        logging_steps=args.logging_steps,
        seed=args.seed,
        report_to=args.report_to,
        disable_tqdm=args.quick or None,
    )
    trainer = CausalQwenTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["test"],
        data_collator=NumericDataCollator(tokenizer),
    )
    train_output = trainer.train()
    eval_metrics = trainer.evaluate()

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if args.lora:
        if is_main:
            model.save_pretrained(adapter_dir)
            if base_kind != "causal_qwen":
                _point_adapter_at(adapter_dir, base_path)
            tokenizer.save_pretrained(adapter_dir)
        model = model.merge_and_unload()
    interval_table = calibrate_intervals(model, tokenizer, rows["train"], args.calibration_rows)
    metrics: dict[str, Any] = {
        "train": train_output.metrics,
        "eval": eval_metrics,
        "test": teacher_forced_metrics(
            model, tokenizer, rows["test"], args.eval_rows, _training_mean(rows["train"])
        ),
        "value_interval_table": interval_table,
        "log_history": trainer.state.log_history,
        "parameters": {"trainable": trainable, "total": total},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "value_normalization": {
            k: getattr(model.config, k)
            for k in ("value_normalization", "value_norm_shift", "value_norm_scale")
        },
    }
    if is_main:
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        (out_dir / "metrics.json").write_text(json.dumps(_finite(metrics), indent=2, default=str))
        if table_stats is not None:
            saved = {column: list(pair) for column, pair in table_stats.items()}
            (out_dir / "table_standardization.json").write_text(json.dumps(saved, indent=2))
    return metrics


def _point_adapter_at(adapter_dir: Path, base_path: str) -> None:
    """Record the saved base in adapter_config.json (PEFT leaves it empty for a model built in memory)."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = str(Path(base_path).resolve())
    path.write_text(json.dumps(config, indent=2))


def main(argv: list[str] | None = None):
    """Run the CLI; with ``argv`` return the metrics dict, without (console script, ``-m``) return 0.

    Usage errors exit with status 2 and one line on stderr (:mod:`.cli_errors`)."""
    if argv is not None:
        argv = list(argv)
        return exit_on_usage_error("causalqwen-train", argv, lambda: run(argv))
    metrics = exit_on_usage_error("causalqwen-train", sys.argv[1:], lambda: run(sys.argv[1:]))
    test = metrics.get("test") or {}
    print(
        f"train loss {metrics['train'].get('train_loss', float('nan')):.4g}, eval loss "
        f"{metrics['eval'].get('eval_loss', float('nan')):.4g}, test MAE {test.get('mae', float('nan')):.4g}, "
        f"<NUM> accuracy {test.get('num_accuracy', float('nan')):.3f}; saved to {metrics['args']['output_dir']}"
    )
    if (warning := learning_warning(test)) is not None:
        print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
