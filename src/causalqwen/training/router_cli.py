"""``causalqwen-train-router``: train the ToolRouter on BFCL or the synthetic resource-aware set.

Examples::

    causalqwen-train-router --output-dir runs/router                 # BFCL, router v2 (MiniLM), ~8 min on 2 CPUs
    causalqwen-train-router --encoder mamba --output-dir runs/mamba   # v2 recipe, seed-000 Mamba encoder
    causalqwen-train-router --data synthetic --output-dir runs/synth  # v1 recipe (per-query resource labels)
    causalqwen-train-router --quick --output-dir /tmp/router          # seconds: a smoke run for tests

BFCL defaults to the v2 recipe (``router_v2``: encoder stage, then head stage over the whole training
catalogue); ``--recipe v1`` is the earlier Mamba recipe (``router_trainer``), the default for the
synthetic set, whose labels depend on each query's own resource vectors and machine load.
Progress and ``loss``/``grad_norm``/``learning_rate`` logs come from the ``Trainer``; the summary is
written to ``train_summary.json`` next to the saved model and tokenizer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_errors import UsageError, add_debug_flag, exit_on_usage_error, require_positive
from .router_data import build_bfcl_dataset, build_synthetic_routing_dataset
from .router_trainer import train_router
from .router_v2 import train_router_v2

# --quick: a subset and a handful of steps, enough to prove the pipeline end to end in seconds.
QUICK_ROWS = {"train": 64, "dev": 32}
QUICK_STEPS = 4
# Distillation steps before the supervised stage (router_distil); --quick caps them at QUICK_STEPS.
DISTIL_STEPS = 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="causalqwen-train-router",
        description="Train the ToolRouter on BFCL (router v2 recipe by default) or on the synthetic "
        "resource-aware set; writes the model, tokenizer and train_summary.json to --output-dir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", choices=("bfcl", "synthetic"), default="bfcl", help="training data")
    parser.add_argument("--output-dir", type=Path, required=True, help="where the router and summary go")
    parser.add_argument(
        "--bfcl-wheel", type=Path, default=None, help="bfcl-eval wheel (default: cached download)"
    )
    parser.add_argument("--epochs", type=float, default=8.0, help="training epochs (v1 recipe)")
    parser.add_argument("--max-steps", type=int, default=-1, help="overrides --epochs when > 0")
    parser.add_argument("--batch-size", type=int, default=16, help="queries per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="learning rate (v1 recipe)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, init and training")
    parser.add_argument(
        "--time-budget", type=float, default=None, help="stop training after this many seconds"
    )
    parser.add_argument(
        "--no-warm-start", action="store_true", help="random token embeddings instead of MiniLM's"
    )
    parser.add_argument(
        "--matching", choices=("cosine", "kan"), default="cosine", help="matching head (v1 recipe)"
    )
    parser.add_argument("--logging-steps", type=int, default=10, help="log every N steps")
    parser.add_argument(
        "--tool-set",
        choices=("batch", "candidates"),
        default=None,
        help="train on the union of the batch's tools (in-batch negatives; BFCL default) or on each query's "
        "own candidates (synthetic default: its labels depend on each query's resource vectors)",
    )
    parser.add_argument(
        "--distil-steps",
        type=int,
        default=DISTIL_STEPS,
        help="steps distilling all-MiniLM-L6-v2 into the encoders before training on the labels "
        "(train/dev questions and tool texts; 0 = off)",
    )
    parser.add_argument(
        "--distil-time-budget", type=float, default=None, help="stop distillation after this many seconds"
    )
    parser.add_argument(
        "--recipe",
        choices=("v1", "v2"),
        default=None,
        help="training recipe (default: v2 on BFCL, v1 synthetic)",
    )
    parser.add_argument(
        "--encoder",
        default="minilm",
        help="v2: 'minilm', 'mamba' or a transformers encoder directory (default minilm)",
    )
    parser.add_argument(
        "--encoder-epochs", type=float, default=2.0, help="v2: encoder-stage epochs (default 2)"
    )
    parser.add_argument("--head-epochs", type=float, default=5.0, help="v2: head-stage epochs (default 5)")
    parser.add_argument(
        "--separate-encoders", action="store_true", help="v2: separate query and tool encoder weights"
    )
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps on a small subset (tests)")
    add_debug_flag(parser)
    return parser


def load_dataset_for(args: argparse.Namespace):
    """The DatasetDict the flags ask for (train/dev only are used for training)."""
    if args.data == "bfcl":
        dataset = build_bfcl_dataset(args.bfcl_wheel, seed=args.seed)
    else:
        dataset = build_synthetic_routing_dataset(seed=args.seed)
    if args.quick:
        for split, rows in QUICK_ROWS.items():
            dataset[split] = dataset[split].select(range(min(rows, len(dataset[split]))))
    return dataset


def main(argv: list[str] | None = None) -> int:
    """Train as the flags say; usage errors exit with status 2 and one line on stderr (:mod:`.cli_errors`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return exit_on_usage_error("causalqwen-train-router", argv, lambda: _run(argv))


def _run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    require_positive(args, "batch_size")
    if args.bfcl_wheel is not None and not args.bfcl_wheel.is_file():
        raise UsageError(f"--bfcl-wheel {args.bfcl_wheel}: no such file")
    dataset = load_dataset_for(args)
    recipe = args.recipe or ("v2" if args.data == "bfcl" else "v1")
    if recipe == "v2":
        _, _, summary = train_router_v2(
            dataset, args.output_dir, encoder=args.encoder, share_encoder=not args.separate_encoders,
            encoder_epochs=0.1 if args.quick else args.encoder_epochs, encoder_batch_size=args.batch_size * 2,
            head_epochs=1 if args.quick else args.head_epochs, seed=args.seed,
            encoder_time_budget_s=args.time_budget, logging_steps=1 if args.quick else args.logging_steps,
        )  # fmt: skip
    else:
        _, _, summary = train_router(
            dataset,
            args.output_dir,
            config_overrides={"matching": args.matching},
            warm_start=not args.no_warm_start,
            num_train_epochs=args.epochs,
            max_steps=QUICK_STEPS if args.quick else args.max_steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            seed=args.seed,
            time_budget_s=args.time_budget,
            logging_steps=1 if args.quick else args.logging_steps,
            distil_steps=min(args.distil_steps, QUICK_STEPS) if args.quick else args.distil_steps,
            distil_time_budget_s=args.distil_time_budget,
            shared_tool_set=(args.tool_set or ("batch" if args.data == "bfcl" else "candidates")) == "batch",
        )
    summary["data"] = args.data
    (args.output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if recipe == "v2":
        print(
            f"trained in {summary['train_seconds']:.1f}s (encoder stage {summary['encoder_stage']['steps']} steps, "
            f"head stage {summary['head_stage']['steps']} steps); saved to {args.output_dir}"
        )
    else:
        dev = summary["dev"]
        print(
            f"trained {summary['steps']} steps in {summary['train_seconds']:.1f}s; dev top1 "
            f"{dev.get('eval_top1_accuracy', float('nan')):.3f}, abstain acc "
            f"{dev.get('eval_abstain_accuracy', float('nan')):.3f}; saved to {args.output_dir}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
