"""Tool planning under numeric budgets (issue #17): ToolPlanner on CausalQwen vs on a digits-as-text Qwen2 vs BM25.

The synthetic resource-aware planning set (``causalqwen.training.planner_data``): requests of 1-3 ordered steps
("transcribe ..., then translate it ..., with every step under 350 ms") over every size of 4 capability families,
budgets drawn log-uniformly (so a model has to compare numbers), heavy-tailed latencies, a runtime load that
changes the effective latency. Models, each trained on the same rows with the same budget and seed:

* ``planner-causalqwen``: ToolPlanner whose backbone is a CausalQwen (the budget reaches it as a ``<NUM>`` value);
* ``planner-qwen2-digits``: the same planner on a plain Qwen2 of the same shape reading the budget as digit text;
* ``router-top1`` / ``router-threshold``: ToolRouter v2 (the same MiniLM tool tower, frozen encoders, heads
  trained on the same rows as multi-label routing: the plan's tools are positives, an empty plan trains abstain),
  read as the best tool (or abstain) / every tool over a dev-tuned probability, best first;
* ``bm25-top1`` / ``bm25-threshold``: BM25 over the tool texts, the best tool / every tool within a dev-tuned
  fraction of the best score, in score order (no budget awareness: what lexical retrieval alone gives).

Both planners share the tool tower: the ToolRouter v2 shape with the pretrained all-MiniLM-L6-v2 text encoder
(frozen; each distinct tool text embedded once), a trained resource MLP and tool-set attention. The backbones are
CPU-sized (H = 64, 2 layers) over the real Qwen2.5 vocabulary. Metrics (``plan_metrics``): exact plan match,
budget compliance (share of non-empty plans whose every tool meets the budget), step accuracy, abstain F1.

``--arguments`` builds the planners with ``generate_arguments``: they are also trained on each call's arguments
(JSON restating the request's language and budget, or BFCL's answer arguments) and write them through the
backbone's LM head; ``argument_metrics`` scores them (right tool and equal text / equal fields with numbers
within 1 %). Only the planners write arguments, so only they run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/planning.py --quick
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/planning.py --quick --arguments
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import apply_threads, base_parser, markdown_table, mean_std, write_results  # noqa: E402

PLANNERS = {"planner-causalqwen": "causal_qwen", "planner-qwen2-digits": "qwen2"}
# The synthetic tasks: ``synthetic-total`` draws the set with budgets on the plan's summed latency too
# (planner_data.TOTAL_BUDGET_MIX). The package is imported inside the functions, as everywhere in this script.
SYNTHETIC_TASKS = ("synthetic", "synthetic-total")


@dataclass
class Task:
    """A planning task: its data, the planner's settings for it, how plans are scored and tuned."""

    name: str
    data: Any
    max_steps: int
    planner_settings: dict[str, Any]
    metrics: Callable[[list[list[int]], Any], dict[str, float]]
    tune_key: str
    columns: tuple[tuple[str, str], ...]


def bfcl_metrics(plans: list[list[int]], split) -> dict[str, float]:
    """Multiset exact match of the called functions on the multi-call questions; abstain over all questions."""
    from causalqwen.training.planner_data import multiset_exact_match, plan_metrics

    multi = [i for i, category in enumerate(split["category"]) if "irrelevance" not in category]
    abstain = plan_metrics(plans, split)
    return {
        "multiset_match": multiset_exact_match([plans[i] for i in multi], split.select(multi)),
        **{k: abstain[k] for k in ("abstain_precision", "abstain_recall", "abstain_f1")},
    }


ARGUMENT_COLUMNS = (("argument match (1 %)", "argument_match"), ("argument exact", "argument_exact"))


def with_arguments(task: Task) -> Task:
    """The task for planners that also write each call's arguments (``generate_arguments``)."""
    from causalqwen.training.planner_data import argument_metrics

    def metrics(decoded, split):
        plans, texts = decoded
        return {**task.metrics(plans, split), **argument_metrics(plans, texts, split)}

    settings = {**task.planner_settings, "generate_arguments": True}
    return Task(task.name, task.data, task.max_steps, settings, metrics, task.tune_key,
                task.columns + ARGUMENT_COLUMNS)  # fmt: skip


# The share of wrong plans by how close the request's budget lies to the nearest tool's need
# (planner_data.errors_by_budget_margin): a model that compares numbers coarsely errs near a need only.
MARGIN_GROUPS = (("within_5pct", "budget within 5 % of a need"), ("within_25pct", "5-25 %"),
                 ("beyond_25pct", "beyond 25 %"), ("no_number", "no number in the budget"))  # fmt: skip
MARGIN_COLUMNS = tuple((f"wrong, {label}", f"errors_{group}") for group, label in MARGIN_GROUPS)


def synthetic_metrics(plans: list[list[int]], split) -> dict[str, float]:
    """``plan_metrics`` and the errors by budget margin."""
    from causalqwen.training.planner_data import errors_by_budget_margin, plan_metrics

    return {**plan_metrics(plans, split), **errors_by_budget_margin(plans, split)}


def build_task(name: str, sizes: tuple[int, int, int]) -> Task:
    from causalqwen.training.planner_data import (
        DEFAULT_BUDGET_MIX,
        TOTAL_BUDGET_MIX,
        build_bfcl_planning_dataset,
        build_synthetic_planning_dataset,
    )

    if name in SYNTHETIC_TASKS:
        columns = (("exact match", "exact_match"), ("budget compliance", "budget_compliance"),
                   ("step accuracy", "step_accuracy"), ("abstain F1", "abstain_f1"))  # fmt: skip
        data = build_synthetic_planning_dataset(
            *sizes, seed=0, budget_mix=TOTAL_BUDGET_MIX if name == "synthetic-total" else DEFAULT_BUDGET_MIX
        )
        return Task(name, data, 3, {"runtime_context_dim": 1}, synthetic_metrics, "exact_match", columns)
    # BFCL: no budgets or load; the pretrained query embedding carries the request's meaning (a backbone trained
    # from scratch on 1,180 questions cannot learn English).
    columns = (("multi-call multiset match", "multiset_match"), ("abstain precision", "abstain_precision"),
               ("abstain recall", "abstain_recall"), ("abstain F1", "abstain_f1"))  # fmt: skip
    # BFCL's functions carry no resource values (all zero), so there is no budget to compare with a need.
    settings = {
        "runtime_context_dim": 0,
        "use_query_state": True,
        "max_plan_steps": 6,
        "budget_frequencies": 0,
    }
    return Task(
        name, build_bfcl_planning_dataset(max_steps=6), 6, settings, bfcl_metrics, "multiset_match", columns
    )


def decode(model, processor, rows):
    """The test plans (tool indices per row); with ``generate_arguments`` also their argument texts."""
    from causalqwen.training.planner_trainer import rows_tools

    plans, texts = [], []
    for begin in range(0, len(rows), 64):
        part = [rows[i] for i in range(begin, min(begin + 64, len(rows)))]
        context = [[r["runtime_load"]] for r in part] if model.config.runtime_context_dim else None
        decoded = model.plan(processor, [r["query"] for r in part], [rows_tools(r) for r in part],
                             runtime_context=context)  # fmt: skip
        plans.extend(p.tools for p in decoded)
        texts.extend([s.arguments for s in p.steps] for p in decoded)
    return (plans, texts) if model.config.generate_arguments else plans


def train_and_plan(kind: str, task: Task, tokenizer, seed: int, steps: int, batch_size: int, lr: float,
                   backbone: str | None = None, lora: bool = False,
                   backbone_settings: dict | None = None) -> dict:  # fmt: skip
    """Build (``build_planner``), train through the ``Trainer`` (``train_planner``) and decode the test split.
    ``backbone`` (a checkpoint directory) replaces the fresh CPU-sized backbone; ``lora`` adapts it with LoRA;
    ``backbone_settings`` are config settings of the fresh backbone."""
    import tempfile

    from causalqwen.training.planner_trainer import apply_planner_lora, build_planner, train_planner

    settings = dict(task.planner_settings)
    if backbone is None:
        settings["tokenizer"] = tokenizer
        settings["backbone_settings"] = backbone_settings
    model, processor = build_planner(backbone or PLANNERS[kind], seed=seed, **settings)
    trained = apply_planner_lora(model) if lora else model
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        trainer = train_planner(trained, processor, task.data["train"], folder, batch_size=batch_size,
                                learning_rate=lr, max_steps=steps, seed=seed, logging_steps=min(20, steps))  # fmt: skip
    train_s = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model.eval()
    metrics = task.metrics(decode(model, processor, task.data["test"]), task.data["test"])
    return {**metrics, "train_s": train_s, "first_loss": losses[0], "last_loss": losses[-1]}


def _router_batches(rows, query_states, text_cache, lexical):
    """ToolRouter forward kwargs for ``rows`` (frozen MiniLM states for queries and tool texts)."""
    n_tools = max(len(r["tool_texts"]) for r in rows)
    batch = len(rows)
    resources = torch.zeros(batch, n_tools, 6)
    mask = torch.zeros(batch, n_tools, dtype=torch.bool)
    labels = torch.zeros(batch, n_tools)
    latency = torch.full((batch, n_tools), -1.0)
    lexical_scores = torch.zeros(batch, n_tools)
    texts = []
    for i, row in enumerate(rows):
        n = len(row["tool_texts"])
        mask[i, :n] = True
        resources[i, :n] = torch.tensor(row["resource_vectors"])
        labels[i, row["plan"]] = 1.0
        latency[i, :n] = torch.tensor(row["latency"])
        lexical_scores[i, :n] = torch.from_numpy(lexical(row)).float()
        texts.extend(row["tool_texts"] + [row["tool_texts"][0]] * (n_tools - n))
    return dict(
        query_embeddings=torch.stack([query_states[r["query"]] for r in rows]),
        tool_text_embeddings=text_cache(texts).reshape(batch, n_tools, -1),
        resource_vectors=torch.log1p(resources),
        tool_mask=mask,
        runtime_context=torch.tensor([[r["runtime_load"]] for r in rows]),
        labels=labels,
        latency_labels=latency,
        lexical_scores=lexical_scores,
    )


def router_plans(scores: torch.Tensor, abstain: torch.Tensor, mask: torch.Tensor, threshold: float | None,
                 max_steps: int) -> list[list[int]]:  # fmt: skip
    """Top-1 plans (the best tool unless the abstain score beats it) or threshold plans (every tool whose
    probability exceeds ``threshold``, best first, at most ``max_steps``; abstain when none does)."""
    plans = []
    for row, a, m in zip(scores, abstain, mask):
        order = [int(i) for i in torch.argsort(row, descending=True) if m[i]]
        if threshold is None:
            plans.append([] if a >= row[order[0]] else order[:1])
        else:
            plans.append([i for i in order if torch.sigmoid(row[i]) > threshold][:max_steps])
    return plans


def router_results(task: Task, seed: int, steps: int, batch_size: int) -> dict[str, dict[str, Any]]:
    """ToolRouter v2 (MiniLM encoders frozen, heads trained on the planning rows as multi-label routing: the
    plan's tools are the positives, an empty plan trains abstain), read as top-1 and dev-tuned threshold plans."""
    from causalqwen import ToolRouterModel
    from causalqwen.lexical import BM25Index
    from causalqwen.tokenization.processing_tool_planner import ToolTextCache
    from causalqwen.tool_index import embed_texts
    from causalqwen.training.minilm import load_router_tokenizer, minilm_path

    data, max_steps = task.data, task.max_steps
    torch.manual_seed(seed)
    router = ToolRouterModel.from_pretrained_encoder(str(minilm_path()), d_resource=32, num_attention_heads=4,
                                                     dropout=0.0, runtime_context_dim=1)  # fmt: skip
    for encoder in (router.query_encoder.mamba, router.tool_encoder.mamba):
        encoder.requires_grad_(False)
    tokenizer = load_router_tokenizer()
    queries = sorted({r["query"] for split in ("train", "dev", "test") for r in data[split]})
    query_states = dict(zip(queries, embed_texts(router.query_encoder, tokenizer, queries)))
    text_cache = ToolTextCache(router, tokenizer)

    def lexical(row):
        return BM25Index(row["tool_texts"]).scores([row["query"]])[0]

    train = data["train"]
    order = np.random.default_rng(seed).permutation(len(train))
    optimizer = torch.optim.AdamW([p for p in router.parameters() if p.requires_grad], lr=2e-3)
    router.train()
    start = time.perf_counter()
    for step in range(steps):
        rows = [train[int(order[(step * batch_size + i) % len(order)])] for i in range(batch_size)]
        loss = router(**_router_batches(rows, query_states, text_cache, lexical)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(router.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    train_s = time.perf_counter() - start
    router.eval()

    def outputs(split):
        rows = [data[split][i] for i in range(len(data[split]))]
        with torch.no_grad():
            inputs = _router_batches(rows, query_states, text_cache, lexical)
            for key in ("labels", "latency_labels"):
                inputs.pop(key)
            out = router(**inputs)
        return out.scores, out.abstain_score, inputs["tool_mask"]

    dev_out, test_out = outputs("dev"), outputs("test")
    thresholds = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    best = max(
        thresholds,
        key=lambda t: task.metrics(router_plans(*dev_out, t, max_steps), data["dev"])[task.tune_key],
    )
    top1 = task.metrics(router_plans(*test_out, None, max_steps), data["test"])
    threshold = task.metrics(router_plans(*test_out, best, max_steps), data["test"])
    return {
        "router-top1": {**top1, "train_s": train_s},
        "router-threshold": {**threshold, "threshold": best, "train_s": train_s},
    }


def bm25_plans(rows, fraction: float | None, max_steps: int) -> list[list[int]]:
    from causalqwen.lexical import BM25Index

    plans = []
    for row in rows:
        scores = BM25Index(row["tool_texts"]).scores([row["query"]])[0]
        order = [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] > 0]
        if fraction is None:
            plans.append(order[:1])
        else:
            plans.append([i for i in order if scores[i] >= fraction * scores[order[0]]][:max_steps])
    return plans


def bm25_results(task: Task) -> dict[str, dict[str, Any]]:
    dev, test = task.data["dev"], task.data["test"]
    fractions = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    best = max(fractions, key=lambda f: task.metrics(bm25_plans(dev, f, task.max_steps), dev)[task.tune_key])
    return {
        "bm25-top1": task.metrics(bm25_plans(test, None, task.max_steps), test),
        "bm25-threshold": {**task.metrics(bm25_plans(test, best, task.max_steps), test), "fraction": best},
    }


def parse_settings(pairs: list[str], flag: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` pairs as config settings; a VALUE that is not JSON is kept as text."""
    import json

    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} {pair!r}: expected KEY=VALUE")
        try:
            settings[key] = json.loads(value)
        except ValueError:
            settings[key] = value
    return settings


def results_table(models: dict[str, Any], columns, with_time: bool) -> tuple[list[str], list[list[str]]]:
    """Headers and rows (mean ± std and every seed) of ``columns`` for each model's runs."""
    headers = ["model", *(header for header, _ in columns), *(["train s"] if with_time else [])]
    table = []
    for name, entry in models.items():
        runs = entry.get("per_seed", [entry])

        def cell(key: str, runs=runs) -> str:
            values = [r[key] for r in runs]
            if len(values) == 1:
                return f"{values[0]:.3f}"
            mean, std = mean_std(values)
            return f"{mean:.3f} ± {std:.3f} ({' / '.join(f'{v:.3f}' for v in values)})"

        time = [cell("train_s") if "train_s" in runs[0] else "—"] if with_time else []
        table.append([name, *(cell(key) for _, key in columns), *time])
    return headers, table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--task", choices=(*SYNTHETIC_TASKS, "bfcl"), default="synthetic",
                        help="synthetic-total: a fifth of the budgets bound the plan's summed latency")  # fmt: skip
    parser.add_argument("--seeds", default=None, help="comma list (default: 0,1,2; smoke: 0)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per planner")
    parser.add_argument("--models", default=None, help="default: both planners, router, bm25 (bfcl: "
                        "planner-causalqwen, router, bm25)")  # fmt: skip
    parser.add_argument("--backbone", default=None, help="a Qwen2 / CausalQwen checkpoint directory for the "
                        "planner (default: the fresh CPU-sized backbone of each planner kind)")  # fmt: skip
    parser.add_argument("--lora", action="store_true", help="LoRA on the planner's backbone")
    parser.add_argument("--arguments", action="store_true", help="planners also write each call's arguments "
                        "(generate_arguments); only the planners run")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a ToolPlannerConfig "
                        "setting for the planners (VALUE read as JSON, else as text), e.g. argument_weight=0.1")  # fmt: skip
    parser.add_argument("--backbone-set", action="append", default=[], metavar="KEY=VALUE", help="a config "
                        "setting of the fresh backbone (CausalQwenConfig / Qwen2Config), e.g. "
                        "ovr_threshold_init=8.0; every planner kind run must accept the key")  # fmt: skip
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    from causalqwen.tokenization.tokenization_causal_qwen import CausalQwenTokenizer
    from causalqwen.training.planner_trainer import CPU_BACKBONE

    if args.smoke:
        sizes, steps, seeds = (64, 32, 32), args.steps or 4, [0]
    elif args.quick:
        sizes, steps, seeds = (2000, 300, 500), args.steps or 1000, [0, 1, 2]
    else:
        sizes, steps, seeds = (4000, 300, 500), args.steps or 2000, [0, 1, 2, 3, 4]
    if args.seeds:
        seeds = [int(s) for s in args.seeds.split(",")]
    default_models = [*PLANNERS, "router", "bm25"] if args.task in SYNTHETIC_TASKS else ["planner-causalqwen", "router",
                                                                                    "bm25"]  # fmt: skip
    if args.arguments:
        default_models = [m for m in default_models if m in PLANNERS]
    models = args.models.split(",") if args.models else default_models
    task = build_task(args.task, sizes)
    if args.arguments:
        task = with_arguments(task)
    task.planner_settings.update(parse_settings(args.set))
    backbone_settings = parse_settings(args.backbone_set, "--backbone-set")
    if backbone_settings and args.backbone:
        raise SystemExit(
            "--backbone-set configures the fresh backbone; --backbone brings a checkpoint's config"
        )
    if args.smoke and args.task == "bfcl":
        task.data = {split: rows.select(range(min(32, len(rows)))) for split, rows in task.data.items()}
    tokenizer = CausalQwenTokenizer.from_qwen_vocab()
    results: dict[str, Any] = {"settings": {"task": args.task, "sizes": {k: len(v) for k, v in task.data.items()},
                                            "steps": steps, "seeds": seeds, "batch_size": 16, "lr": 2e-3,
                                            "backbone": args.backbone or {**CPU_BACKBONE, **backbone_settings}, "lora": args.lora, "planner": task.planner_settings,
                                            "arguments": args.arguments},
                               "models": {}}  # fmt: skip
    if "bm25" in models:
        results["models"].update(bm25_results(task))
    if "router" in models:
        runs = [router_results(task, seed, steps, 16) for seed in seeds]
        for name in runs[0]:
            results["models"][name] = {"per_seed": [run[name] for run in runs]}
            print(f"{name}: " + " / ".join(f"{run[name][task.tune_key]:.3f}" for run in runs), flush=True)
    for kind in (m for m in models if m in PLANNERS):
        per_seed = []
        for seed in seeds:
            run = train_and_plan(kind, task, tokenizer, seed, steps, 16, 2e-3, args.backbone, args.lora,
                                 backbone_settings)  # fmt: skip
            print(f"{kind} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in run.items()), flush=True)
            per_seed.append(run)
        results["models"][kind] = {"per_seed": per_seed}
    headers, table = results_table(results["models"], task.columns, with_time=True)
    print(markdown_table(headers, table))
    results["table"] = {"headers": headers, "rows": table}
    first = next(iter(results["models"].values()), None)
    if task.name in SYNTHETIC_TASKS and first is not None:
        run = first.get("per_seed", [first])[0]
        group_sizes = [int(run[f"rows_{group}"]) for group, _ in MARGIN_GROUPS]
        margin_headers, margin_rows = results_table(results["models"], MARGIN_COLUMNS, with_time=False)
        print(f"\nWrong plans by budget margin (test rows per group: {' / '.join(map(str, group_sizes))})")
        print(markdown_table(margin_headers, margin_rows))
        results["margin_table"] = {
            "headers": margin_headers,
            "rows": margin_rows,
            "rows_per_group": group_sizes,
        }
    write_results(f"planning_{args.task}" + ("_arguments" if args.arguments else ""), results, args.out)
    return results


if __name__ == "__main__":
    main()
