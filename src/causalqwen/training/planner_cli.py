"""``causalqwen-train-planner``: train the ToolPlanner on the synthetic planning set (issue #17).

Examples::

    causalqwen-train-planner --output-dir runs/planner                          # CausalQwen backbone, ~1-2 min on 2 CPUs
    causalqwen-train-planner --backbone qwen2 --output-dir runs/planner_digits  # plain Qwen2 reading digits
    causalqwen-train-planner --backbone /models/Qwen2.5-7B --router runs/router --lora --output-dir runs/p7b
    causalqwen-train-planner --arguments --output-dir runs/planner_args         # also writes each call's arguments
    causalqwen-train-planner --quick --output-dir /tmp/planner                  # seconds: a smoke run for tests

Trains through the ``Trainer`` (``train_planner``), evaluates plans on the dev split (``plan_metrics``), and
writes the planner, the backbone tokenizer and ``train_summary.json`` to ``--output-dir``; load them back with
``causalqwen.training.planner_trainer.load_planner``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .cli_errors import UsageError, add_debug_flag, exit_on_usage_error, require_positive

QUICK_ROWS = {"train": 48, "dev": 16, "test": 16}
QUICK_STEPS = 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="causalqwen-train-planner",
        description="Train the ToolPlanner on the synthetic resource-aware planning set; writes the planner, "
        "its backbone tokenizer and train_summary.json to --output-dir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="where the planner and summary go")
    parser.add_argument(
        "--backbone",
        default="causal_qwen",
        help="causal_qwen or qwen2 (fresh, CPU-sized) or a local Qwen2 / CausalQwen checkpoint directory",
    )
    parser.add_argument("--router", type=Path, default=None, help="a trained ToolRouter directory (default: "
                        "a fresh v2 router around the offline all-MiniLM-L6-v2)")  # fmt: skip
    parser.add_argument("--steps", type=int, default=1000, help="training steps")
    parser.add_argument("--batch-size", type=int, default=16, help="requests per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine, 5%% warmup)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the data, the init and the training order"
    )
    parser.add_argument("--train-rows", type=int, default=2000, help="synthetic training requests")
    parser.add_argument("--total-budgets", action="store_true", help="draw the set with a fifth of the requests "
                        "under a total latency budget ('all under 2000 ms in total', TOTAL_BUDGET_MIX)")  # fmt: skip
    parser.add_argument("--lora", action="store_true", help="LoRA on the backbone (a checkpoint backbone)")
    parser.add_argument("--lora-r", type=int, default=8, help="LoRA rank")
    parser.add_argument("--freeze-tool-tower", action="store_true", help="keep the whole tool tower fixed")
    parser.add_argument("--arguments", action="store_true", help="also learn to write each call's arguments "
                        "through the backbone's LM head (generate_arguments)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps on a small subset (tests)")
    add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Train as the flags say; usage errors exit with status 2 and one line on stderr (:mod:`.cli_errors`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return exit_on_usage_error("causalqwen-train-planner", argv, lambda: _run(argv))


def _run(argv: list[str]) -> int:
    from .planner_data import (
        DEFAULT_BUDGET_MIX,
        TOTAL_BUDGET_MIX,
        argument_metrics,
        build_synthetic_planning_dataset,
        plan_metrics,
    )
    from .planner_trainer import BACKBONE_KINDS, apply_planner_lora, build_planner, rows_tools, train_planner

    args = build_parser().parse_args(argv)
    require_positive(args, "steps", "batch_size", "train_rows", "lora_r")
    if args.backbone not in BACKBONE_KINDS and not Path(args.backbone).is_dir():
        raise UsageError(
            f"--backbone {args.backbone}: not {' or '.join(BACKBONE_KINDS)} and no such directory"
        )
    if args.router is not None and not args.router.is_dir():
        raise UsageError(f"--router {args.router}: no such directory")
    sizes = (
        (QUICK_ROWS["train"], QUICK_ROWS["dev"], QUICK_ROWS["test"])
        if args.quick
        else (args.train_rows, 300, 500)
    )
    mix = TOTAL_BUDGET_MIX if args.total_budgets else DEFAULT_BUDGET_MIX
    data = build_synthetic_planning_dataset(*sizes, seed=args.seed, budget_mix=mix)
    model, processor = build_planner(
        args.backbone, router=None if args.router is None else str(args.router), seed=args.seed,
        freeze_tool_tower=args.freeze_tool_tower, generate_arguments=args.arguments,
    )  # fmt: skip
    trained = apply_planner_lora(model, r=args.lora_r) if args.lora else model
    start = time.perf_counter()
    trainer = train_planner(
        trained, processor, data["train"], args.output_dir / "trainer", batch_size=args.batch_size,
        learning_rate=args.lr, max_steps=QUICK_STEPS if args.quick else args.steps, seed=args.seed,
        logging_steps=1 if args.quick else 25,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if args.lora:
        model = trained.merge_and_unload()
    model.eval()
    dev = data["dev"]
    rows = [dev[i] for i in range(len(dev))]
    plans = model.plan(processor, [r["query"] for r in rows], [rows_tools(r) for r in rows],
                       runtime_context=[[r["runtime_load"]] for r in rows])  # fmt: skip
    metrics = plan_metrics([p.tools for p in plans], dev)
    if args.arguments:
        metrics.update(
            argument_metrics([p.tools for p in plans], [[s.arguments for s in p.steps] for p in plans], dev)
        )
    model.save_pretrained(args.output_dir)
    # A digits-reading backbone reads through a view of the same vocabulary: save the tokenizer it views.
    getattr(processor.tokenizer, "source", processor.tokenizer).save_pretrained(args.output_dir)
    summary = {
        "backbone": args.backbone,
        "steps": trainer.state.global_step,
        "train_seconds": seconds,
        "budget_mix": mix,
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "dev": metrics,
    }
    (args.output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    print(
        f"trained {summary['steps']} steps in {seconds:.1f}s; dev exact match {metrics['exact_match']:.3f}, "
        f"budget compliance {metrics['budget_compliance']:.3f}, abstain F1 {metrics['abstain_f1']:.3f}"
        + (f", argument match {metrics['argument_match']:.3f}" if args.arguments else "")
        + f"; saved to {args.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
