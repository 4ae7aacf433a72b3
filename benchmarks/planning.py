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

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/planning.py --quick
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import apply_threads, base_parser, markdown_table, mean_std, write_results  # noqa: E402

PLANNERS = {"planner-causalqwen": "causal_qwen", "planner-qwen2-digits": "qwen2"}


def train_and_plan(
    kind: str, data, tokenizer, seed: int, steps: int, batch_size: int, lr: float
) -> dict[str, Any]:
    """Build (``build_planner``), train through the ``Trainer`` (``train_planner``) and decode the test split."""
    import tempfile

    from causalqwen.training.planner_data import plan_metrics
    from causalqwen.training.planner_trainer import build_planner, rows_tools, train_planner

    model, processor = build_planner(PLANNERS[kind], tokenizer=tokenizer, seed=seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        trainer = train_planner(model, processor, data["train"], folder, batch_size=batch_size, learning_rate=lr,
                                max_steps=steps, seed=seed, logging_steps=20)  # fmt: skip
    train_s = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    model.eval()
    test = data["test"]
    plans = []
    for begin in range(0, len(test), 64):
        rows = [test[i] for i in range(begin, min(begin + 64, len(test)))]
        decoded = model.plan(processor, [r["query"] for r in rows], [rows_tools(r) for r in rows],
                             runtime_context=[[r["runtime_load"]] for r in rows])  # fmt: skip
        plans.extend(p.tools for p in decoded)
    return {**plan_metrics(plans, test), "train_s": train_s, "first_loss": losses[0], "last_loss": losses[-1]}


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


def router_results(data, seed: int, steps: int, batch_size: int, max_steps: int) -> dict[str, dict[str, Any]]:
    """ToolRouter v2 (MiniLM encoders frozen, heads trained on the planning rows as multi-label routing: the
    plan's tools are the positives, an empty plan trains abstain), read as top-1 and dev-tuned threshold plans."""
    from causalqwen import ToolRouterModel
    from causalqwen.lexical import BM25Index
    from causalqwen.tokenization.processing_tool_planner import ToolTextCache
    from causalqwen.tool_index import embed_texts
    from causalqwen.training.minilm import load_router_tokenizer, minilm_path
    from causalqwen.training.planner_data import plan_metrics

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
        key=lambda t: plan_metrics(router_plans(*dev_out, t, max_steps), data["dev"])["exact_match"],
    )
    return {
        "router-top1": {
            **plan_metrics(router_plans(*test_out, None, max_steps), data["test"]),
            "train_s": train_s,
        },
        "router-threshold": {
            **plan_metrics(router_plans(*test_out, best, max_steps), data["test"]),
            "threshold": best,
            "train_s": train_s,
        },
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


def bm25_results(data, max_steps: int) -> dict[str, dict[str, Any]]:
    from causalqwen.training.planner_data import plan_metrics

    dev, test = data["dev"], data["test"]
    fractions = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    best = max(fractions, key=lambda f: plan_metrics(bm25_plans(dev, f, max_steps), dev)["exact_match"])
    return {
        "bm25-top1": plan_metrics(bm25_plans(test, None, max_steps), test),
        "bm25-threshold": {**plan_metrics(bm25_plans(test, best, max_steps), test), "fraction": best},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", default=None, help="comma list (default: 0,1,2; smoke: 0)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per planner")
    parser.add_argument("--models", default=",".join([*PLANNERS, "router", "bm25"]))
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    from causalqwen.tokenization.tokenization_causal_qwen import CausalQwenTokenizer
    from causalqwen.training.planner_data import build_synthetic_planning_dataset
    from causalqwen.training.planner_trainer import CPU_BACKBONE

    if args.smoke:
        sizes, steps, seeds = (64, 32, 32), args.steps or 4, [0]
    elif args.quick:
        sizes, steps, seeds = (2000, 300, 500), args.steps or 600, [0, 1, 2]
    else:
        sizes, steps, seeds = (4000, 300, 500), args.steps or 1500, [0, 1, 2, 3, 4]
    if args.seeds:
        seeds = [int(s) for s in args.seeds.split(",")]
    models = args.models.split(",")
    data = build_synthetic_planning_dataset(*sizes, seed=0)
    tokenizer = CausalQwenTokenizer.from_qwen_vocab()
    results: dict[str, Any] = {"settings": {"sizes": sizes, "steps": steps, "seeds": seeds, "batch_size": 16,
                                            "lr": 2e-3, "backbone": CPU_BACKBONE}, "models": {}}  # fmt: skip
    if "bm25" in models:
        results["models"].update(bm25_results(data, 3))
    if "router" in models:
        runs = [router_results(data, seed, steps, 16, 3) for seed in seeds]
        for name in runs[0]:
            results["models"][name] = {"per_seed": [run[name] for run in runs]}
            print(f"{name}: " + " / ".join(f"{run[name]['exact_match']:.3f}" for run in runs), flush=True)
    for kind in (m for m in models if m in PLANNERS):
        per_seed = []
        for seed in seeds:
            run = train_and_plan(kind, data, tokenizer, seed, steps, 16, 2e-3)
            print(f"{kind} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in run.items()), flush=True)
            per_seed.append(run)
        results["models"][kind] = {"per_seed": per_seed}
    headers = ["model", "exact match", "budget compliance", "step accuracy", "abstain F1", "train s"]
    table = []
    for name, entry in results["models"].items():
        runs = entry.get("per_seed", [entry])

        def cell(key: str, runs=runs) -> str:
            values = [r[key] for r in runs]
            if len(values) == 1:
                return f"{values[0]:.3f}"
            mean, std = mean_std(values)
            return f"{mean:.3f} ± {std:.3f} ({' / '.join(f'{v:.3f}' for v in values)})"

        table.append([name, cell("exact_match"), cell("budget_compliance"), cell("step_accuracy"),
                      cell("abstain_f1"), cell("train_s") if "train_s" in runs[0] else "—"])  # fmt: skip
    print(markdown_table(headers, table))
    results["table"] = {"headers": headers, "rows": table}
    write_results("planning", results, args.out)
    return results


if __name__ == "__main__":
    main()
