"""``make demo``: fine-tune a tiny CausalQwen on scikit-learn's diabetes table written as sentences (and on a
synthetic linear task), next to a digits-as-text Qwen2 of the same size, and print their test metrics and
example generations.

    python -m causalqwen.demo [--task diabetes|linear|all] [--steps N] [--seed S] [--table-recipe auto|off]
                              [--output-dir DIR]

What runs (CPU, nothing downloaded, deterministic given ``--seed``):

1. Data: ``build_table_dataset("sklearn:diabetes")`` (T-DATA's builder): 442 patients, prompt
   ``"Patient: age 59, sex 2, bmi 32.1, bp 101, s1 157, ... s6 87."``, target ``" Disease progression is 151."``;
   a fixed 80/20 split (split seed 0 whatever ``--seed``, so seeds compare on the same test rows). Tokenizer:
   the package's tiny byte-level BPE (301 tokens, Qwen2 pre-tokenizer; decision: the real 151,936-row
   vocabulary would make the embedding the whole model and every step slower, while the diabetes sentences
   only use a few dozen symbols). Second task (``--task linear``): ``build_synthetic_dataset("linear")``,
   1,000 rows, y = 2x + 3, where a linear fit is exact: it shows how precisely the value path reads and
   transforms one number. Steps: 1,200 on diabetes, 600 on linear (issue #13's measured recipe).
2. CausalQwen: :class:`CausalQwenForNumericCausalLM` with the :data:`BACKBONE` shape and the default
   :class:`CausalQwenConfig` (``multiscale_linear`` value encoding, ``reg_lambda=5``), value normalisation
   ``affine`` with the training targets' mean and std, trained by :class:`CausalQwenTrainer` (lr 1e-3, cosine).
   On diabetes, a table in raw units, ``--table-recipe auto`` (default) adds what ``causalqwen-train`` adds
   to such a table (:data:`~causalqwen.training.cli.TABLE_RECIPE`: log-magnitude bins in the ``<NUM>``
   encoding, relative input noise 0.08, 2,400 steps); the default config alone underfits the raw columns
   (docs/causal_qwen.md, "Raw tables"). Why the demo shows it: it is what a user gets from the CLI on a table.
3. Baseline: ``Qwen2ForCausalLM`` of the same shape reading and writing numbers as digit tokens (the same
   vocabulary through its backend, without number parsing), trained by ``transformers.Trainer`` with the
   same ``TrainingArguments`` (batch, learning rate, schedule, seed; steps: the task's, 1,200 on diabetes
   whatever the recipe, its better budget: at 2,400 it overfits, docs/causal_qwen.md).
4. Evaluation on the test rows: CausalQwen teacher-forced (:func:`predict_values`: the value's Cauchy median
   is the point prediction, its quantiles give the 50%/90% intervals, ``<NUM>`` accuracy is whether
   ``<NUM>`` is the argmax where the number starts); Qwen2 by greedy generation after the target's prefix,
   first number parsed (an output with no number is a failure, counted and imputed with the training
   mean). References: the training mean, and ``LinearRegression`` on the prompt's numbers (with Gaussian
   intervals from its training residuals).

Figures are printed honestly whatever they say; docs/training.md ("Demo and stability") records a run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

from .configuration.configuration_causal_qwen import CausalQwenConfig
from .modeling.loss import IGNORE_INDEX
from .modeling.modeling_causal_qwen import CausalQwenForNumericCausalLM
from .tokenization.tiny_vocab import build_tiny_tokenizer
from .training.baselines import BackendDigitsView, feature_matrix, predict_digits, target_prefix
from .training.cli import TABLE_RECIPE, table_recipe_config
from .training.collator import NumericDataCollator
from .training.data import build_synthetic_dataset, build_table_dataset, tokenize_numeric_dataset
from .training.evaluation import (
    calibrate_value_intervals,
    cauchy_interval_coverage,
    coverage_key,
    generate_examples,
    predict_values,
    regression_metrics,
)
from .training.presets import TINY_BACKBONE
from .training.trainer import CausalQwenTrainer, numeric_training_arguments

__all__ = ["BACKBONE", "LEVELS", "main", "task_plan"]

# The shared backbone of both language models (0.09-0.13 M parameters with the 301-token vocabulary).
BACKBONE = dict(TINY_BACKBONE, max_position_embeddings=512, tie_word_embeddings=True)
LEVELS = (0.5, 0.9)
DEFAULTS = dict(steps=None, batch_size=16, lr=1e-3, seed=0, examples=3, threads=1, table_recipe="auto")
# Steps per task when --steps is not given (issue #13's recipe, docs/causal_qwen.md): the linear task is
# learned on every seed in 600 steps; diabetes needs 1,200 (at 600, one seed in five stayed at the mean). Under
# the raw-table recipe CausalQwen takes the recipe's 2,400 on diabetes; the digits model keeps 1,200, its better
# budget (at 2,400 it overfits: mean test MAE 69.0 against 62.4 in benchmarks/numeric.py, docs/causal_qwen.md).
TASK_STEPS = {"diabetes": 1200, "linear": 600}
# Tasks that are tables in raw units: there --table-recipe auto trains CausalQwen with the CLI's raw-table recipe.
TABLE_TASKS = ("diabetes",)
# Two tasks: the real table the issue asks for, and a noise-free one that shows what the value path can learn
# when the function is within a tiny model's reach (one number in, y = 2x + 3 out).
TASKS = ("diabetes", "linear")
TASK_TITLES = {
    "diabetes": "scikit-learn diabetes (442 patients, 10 clinical numbers -> disease progression)",
    "linear": "synthetic linear ('x is 12.5. Give y.' -> ' y is 28.', y = 2x + 3, x in [-50, 50])",
}
LINEAR_ROWS = 1000
METRIC_KEYS = ("mae", "rmse", "r2", "median_ae", "num_accuracy", *map(coverage_key, LEVELS), "fail_rate")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m causalqwen.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULTS["steps"],
        help="optimizer steps per model (default: 1200 on diabetes, 600 on linear)",
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="peak learning rate (both models)")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="model init and data order")
    parser.add_argument("--examples", type=int, default=DEFAULTS["examples"], help="example generations")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULTS["threads"],
        help="torch intra-op threads (default 1: faster for this model size, and robust on shared cores)",
    )
    parser.add_argument(
        "--task", choices=[*TASKS, "all"], default="all", help="which task(s) to run (default: both)"
    )
    parser.add_argument(
        "--table-recipe",
        choices=["auto", "off"],
        default=DEFAULTS["table_recipe"],
        help="auto: on diabetes, CausalQwen trains with the raw-table recipe that causalqwen-train applies to "
        "tables (log-magnitude bins, relative input noise, 2400 steps); off: the default config at 1200 steps",
    )
    parser.add_argument("--output-dir", type=Path, default=None, help="write demo_results.json here")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    for name in ("steps", "batch_size", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a positive number, got {args.lr}")
    if args.examples < 0:
        raise ValueError(f"--examples must be >= 0, got {args.examples}")


def _digits_dataset(split, view: BackendDigitsView, eos_id: int):
    """Prompt + target as plain digit text: ``input_ids``, ``attention_mask``, ``labels`` (-100 on the prompt).

    The same layout as :func:`tokenize_numeric_dataset` (prompt and target tokenized separately, EOS
    appended to the target) so the two models see the same sentences and the same supervision.
    """

    def encode(row: dict[str, Any]) -> dict[str, list[int]]:
        p_ids = view(row["prompt"])["input_ids"]
        t_ids = view(row["target"])["input_ids"] + [eos_id]
        ids = p_ids + t_ids
        return {
            "input_ids": ids,
            "attention_mask": [1] * len(ids),
            "labels": [IGNORE_INDEX] * len(p_ids) + t_ids,
        }

    return split.map(encode, remove_columns=split.column_names, desc="Tokenizing digits rows")


class _DigitsCollator:
    """Right-pads the digits rows (pad id, mask 0, label -100)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        fills = {"input_ids": self.pad_id, "attention_mask": 0, "labels": IGNORE_INDEX}
        return {
            key: torch.tensor([f[key] + [fill] * (width - len(f[key])) for f in features])
            for key, fill in fills.items()
        }


def _train(
    trainer_cls, model, dataset, collator, args: argparse.Namespace, steps: int, workdir: str
) -> dict[str, Any]:
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    training_args = numeric_training_arguments(
        workdir,
        max_steps=steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=0.0,
        logging_steps=max(steps // 10, 1),
        seed=args.seed,
        data_seed=args.seed,
        disable_tqdm=True,
    )
    trainer = trainer_cls(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    model.eval()
    return {
        "train_seconds": seconds,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "log": trainer.state.log_history,
    }


def _normal_coverage(y: np.ndarray, pred: np.ndarray, sigma: float) -> dict[str, float]:
    out = {}
    for level in LEVELS:
        half = sigma * statistics.NormalDist().inv_cdf((1 + level) / 2)
        out[coverage_key(level)] = regression_metrics(y, pred, lower=pred - half, upper=pred + half)[
            "coverage"
        ]
    return out


def _row(metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    row = {key: None for key in METRIC_KEYS}
    row.update(metrics)
    row.update(extra)
    return row


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _table(metrics: dict[str, dict[str, Any]]) -> str:
    headers = ["model", "MAE", "RMSE", "R2", "median AE", "<NUM> acc", "cover50", "cover90", "no number"]
    lines = [" | ".join(headers), " | ".join("---" for _ in headers)]
    for name, row in metrics.items():
        lines.append(" | ".join([name, *(_fmt(row[k]) for k in METRIC_KEYS)]))
    return "\n".join("| " + line + " |" for line in lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the demo; returns the results (``metrics`` per model, ``examples``, ``config``, ``seconds``)."""
    args = _parser().parse_args(argv)
    _check_args(args)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    bars = is_progress_bar_enabled()
    disable_progress_bar()
    try:
        return _run(args, started)
    finally:
        torch.set_num_threads(threads)
        if bars:
            enable_progress_bar()


def _task_rows(task: str):
    """Train/test rows of a demo task (fixed split seed 0 whatever ``--seed``, so seeds share test rows)."""
    if task == "diabetes":
        return build_table_dataset("sklearn:diabetes", seed=0)
    return build_synthetic_dataset("linear", n=LINEAR_ROWS, seed=0)


def _run(args: argparse.Namespace, started: float) -> dict[str, Any]:
    tok = build_tiny_tokenizer()
    results: dict[str, Any] = {
        "config": {**vars(args), "output_dir": None if args.output_dir is None else str(args.output_dir)},
        "backbone": BACKBONE,
        "tasks": {},
    }
    training: dict[str, Any] = {}
    for task in TASKS if args.task == "all" else (args.task,):
        print(f"\n=== {task}: {TASK_TITLES[task]}")
        results["tasks"][task], training[task] = _run_task(task, tok, args)
    results["seconds"] = time.perf_counter() - started
    print(f"\ntotal {results['seconds']:.1f} s")
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        path = args.output_dir / "demo_results.json"
        path.write_text(json.dumps({**results, "training": training}, indent=2, default=float))
        print(f"results written to {path}")
    return results


def task_plan(task: str, args: argparse.Namespace) -> tuple[dict[str, Any], int, int]:
    """(CausalQwen's extra config, its steps, the digits model's steps) for a task: under ``--table-recipe
    auto`` a raw-units table gets the CLI's recipe and its steps; ``--steps`` is an explicit budget for both."""
    recipe = table_recipe_config() if task in TABLE_TASKS and args.table_recipe == "auto" else {}
    if args.steps is not None:
        return recipe, args.steps, args.steps
    return recipe, TABLE_RECIPE["steps"] if recipe else TASK_STEPS[task], TASK_STEPS[task]


def _run_task(task: str, tok, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train both language models on one task, evaluate them and the references; (results, training logs)."""
    num_id = tok.convert_tokens_to_ids("<NUM>")
    rows = _task_rows(task)
    train_rows, test_rows = rows["train"], rows["test"]
    y_train, y_test = np.asarray(train_rows["value"]), np.asarray(test_rows["value"])
    print(f"{len(train_rows)} train / {len(test_rows)} test rows, e.g.")
    print(f"  {test_rows[0]['prompt']!r} -> {test_rows[0]['target']!r}")

    recipe, steps, digits_steps = task_plan(task, args)
    common = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **BACKBONE)
    norm = dict(
        value_normalization="affine",
        value_norm_shift=float(y_train.mean()),
        value_norm_scale=float(y_train.std()),
    )
    torch.manual_seed(args.seed)
    causal = CausalQwenForNumericCausalLM(CausalQwenConfig(num_token_id=num_id, **common, **norm, **recipe))
    from transformers import Qwen2Config, Qwen2ForCausalLM, Trainer

    torch.manual_seed(args.seed)
    digits = Qwen2ForCausalLM(Qwen2Config(**common))
    params = {
        "causalqwen": sum(p.numel() for p in causal.parameters()),
        "qwen2-digits": sum(p.numel() for p in digits.parameters()),
    }
    print(f"parameters: CausalQwen {params['causalqwen']:,}, Qwen2 digits {params['qwen2-digits']:,}")

    view = BackendDigitsView(tok)
    results: dict[str, Any] = {
        "normalization": norm,
        "steps": {"causalqwen": steps, "qwen2-digits": digits_steps},
        "table_recipe": recipe,
        "parameters": params,
        "n_train": len(train_rows),
        "n_test": len(test_rows),
    }
    training: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as workdir:
        settings = ", ".join(f"{key}={value}" for key, value in recipe.items())
        print(
            f"training CausalQwen{f' (raw-table recipe: {settings})' if recipe else ''}: {steps} steps x batch "
            f"{args.batch_size}, lr {args.lr} ...",
            flush=True,
        )
        training["causalqwen"] = _train(
            CausalQwenTrainer,
            causal,
            tokenize_numeric_dataset(train_rows, tok),
            NumericDataCollator(tok),
            args,
            steps,
            os.path.join(workdir, "causalqwen"),
        )
        print(
            f"training Qwen2 digits: {digits_steps} steps x batch {args.batch_size}, lr {args.lr} ...",
            flush=True,
        )
        training["qwen2-digits"] = _train(
            Trainer,
            digits,
            _digits_dataset(train_rows, view, tok.eos_token_id),
            _DigitsCollator(tok.pad_token_id),
            args,
            digits_steps,
            os.path.join(workdir, "qwen2-digits"),
        )
    for name, info in training.items():
        print(
            f"  {name}: loss {info['first_loss']:.3f} -> {info['last_loss']:.3f} in {info['train_seconds']:.1f} s"
        )

    # The intervals are calibrated on the training rows, as the references' Gaussian bands are fitted there.
    table = calibrate_value_intervals(
        causal, tok, list(train_rows["prompt"]), list(train_rows["target"]), y_train
    )
    prompts, targets = list(test_rows["prompt"]), list(test_rows["target"])
    cq = predict_values(causal, tok, prompts, targets)
    metrics: dict[str, dict[str, Any]] = {}
    metrics["causalqwen"] = _row(
        regression_metrics(y_test, cq["value_loc"]),
        num_accuracy=cq["num_accuracy"],
        **cauchy_interval_coverage(y_test, cq["value_loc"], cq["value_scale"], LEVELS, table),
    )
    raw_cover = cauchy_interval_coverage(y_test, cq["value_loc"], cq["value_scale"], LEVELS)
    metrics["causalqwen"].update({f"{k}_raw": v for k, v in raw_cover.items()})
    fallback = float(y_train.mean())
    dg = predict_digits(digits, view, [p + target_prefix(t) for p, t in zip(prompts, targets)], fallback)
    metrics["qwen2-digits"] = _row(regression_metrics(y_test, dg["pred"]), fail_rate=dg["fail_rate"])
    mean_pred = np.full_like(y_test, fallback)
    metrics["mean predictor"] = _row(
        regression_metrics(y_test, mean_pred), **_normal_coverage(y_test, mean_pred, float(y_train.std()))
    )
    from sklearn.linear_model import LinearRegression

    X_train = feature_matrix(tok, list(train_rows["prompt"]), num_id)
    X_test = feature_matrix(tok, prompts, num_id, X_train.shape[1])
    linear = LinearRegression().fit(X_train, y_train)
    residual_sigma = float(np.std(y_train - linear.predict(X_train)))
    linear_pred = linear.predict(X_test)
    metrics["LinearRegression"] = _row(
        regression_metrics(y_test, linear_pred), **_normal_coverage(y_test, linear_pred, residual_sigma)
    )
    for name, info in training.items():
        metrics[name].update(train_seconds=info["train_seconds"], last_loss=info["last_loss"])

    examples = generate_examples(causal, tok, prompts[: args.examples], max_new_tokens=24)
    for example, value in zip(examples, y_test):
        example["true_value"] = float(value)
    # Per-row predictions, so the metrics can be checked (tests/test_demo.py recomputes them independently).
    predictions = {
        "y": y_test.tolist(),
        "causalqwen": np.asarray(cq["value_loc"], dtype=np.float64).tolist(),
        "causalqwen_scale": np.asarray(cq["value_scale"], dtype=np.float64).tolist(),
        "causalqwen_interval_table": table,
        "qwen2-digits": np.asarray(dg["pred"], dtype=np.float64).tolist(),
    }
    results.update(metrics=metrics, examples=examples, predictions=predictions)

    print()
    print(
        f"Test metrics on {len(test_rows)} rows. CausalQwen intervals: calibrated on the training rows (the raw "
        f"Cauchy's cover {raw_cover['cover50']:.3f} / {raw_cover['cover90']:.3f});"
    )
    print(
        "references: Gaussian bands of the training residuals. 'no number': Qwen2 outputs without a number."
    )
    print(_table(metrics))
    print()
    print("CausalQwen generations (greedy; generated values written in):")
    for example in examples:
        print(f"  {example['prompt']}")
        print(f"    -> {example['completion']!r}   (true: {example['true_value']:g})")
    return results, training


if __name__ == "__main__":
    main()
