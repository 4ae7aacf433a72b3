"""Routing benchmark (issue #7): the ToolRouter against BM25, all-MiniLM-L6-v2 zero-shot and random on BFCL.

Protocol
--------
* Data: :func:`causalqwen.training.router_data.build_bfcl_dataset`. The router trains on ``train``
  (non-live BFCL categories); every threshold is tuned on ``dev``; all figures are on ``test`` (the
  ``live_*`` categories), which nothing tunes on.
* **Top-1 accuracy within the candidate set**: over test queries with a correct tool, the best-scored
  candidate is correct. ``top1_multi`` restricts to queries offering >= 2 candidates (with one candidate
  top-1 is trivially right).
* **Recall@1/@5, NDCG@5 over the global catalogue**: every distinct test tool (by full text) is a
  document; the relevant ones for a query are its correct candidates.
* **Abstain precision/recall/F1**: the positive class is "no tool fits" (``*irrelevance`` queries). A
  method abstains when ``abstain_score - best candidate score > tau``, tau maximising F1 on ``dev``.
  The router has an abstain logit (its own rule is tau = 0, reported as ``abstain_f1_untuned``);
  baselines have none (abstain score 0), so they abstain when the best candidate scores below ``-tau``.
* **Latency per query vs catalogue size** (10, 100, 1k, 10k tools): the catalogue is indexed once (BM25
  statistics, MiniLM embeddings, router :class:`ToolEmbeddingCache`; index time reported apart), then each
  query is routed alone (batch 1) against all tools; median over queries after one warm-up.

Run::

    HF_HUB_OFFLINE=1 USE_HUB_KERNELS=0 .venv/bin/python benchmarks/routing.py          # ~10 min, 2 CPUs
    ... benchmarks/routing.py --quick     # shorter training, sizes up to 1k
    ... benchmarks/routing.py --smoke     # seconds (tests)

Prints markdown tables and writes ``bench_results/routing.json``.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import BASELINES, Scorer  # noqa: E402
from causalqwen.modeling.modeling_tool_router import ToolEmbeddingCache, ToolRouterModel  # noqa: E402
from causalqwen.training.router_data import (  # noqa: E402
    build_bfcl_dataset,
    build_tool_catalogue,
    catalogue_targets,
)
from causalqwen.training.router_trainer import RouterDataCollator, train_router  # noqa: E402
from common import apply_threads, base_parser, environment_info, markdown_table, write_results  # noqa: E402

CATALOGUE_SIZES = (10, 100, 1000, 10000)
RETRIEVAL_KS = (1, 5)
# MiniLM distillation before the supervised stage (docs/routing.md, "Attempts"): steps, time cap,
# the supervised learning rate after it, and the weight of the teacher score KL kept during it.
DISTIL_STEPS = 0  # off: no gain on dev-selected settings (docs/routing.md, "Attempts"); --distil-steps N
DISTIL_BUDGET_S = 240
FINETUNE_LR = 5e-4
DISTIL_WEIGHT = 0.0


# ------------------------------------------------------------------------------------------- metrics
def top1_accuracy(
    candidate_scores: Sequence[np.ndarray], labels: Sequence[Sequence[int]]
) -> dict[str, float]:
    """Top-1 within each query's candidate set, over queries with a correct tool (all / >= 2 candidates)."""
    if len(candidate_scores) != len(labels):
        raise ValueError(f"{len(candidate_scores)} score rows for {len(labels)} label rows")
    hits, multi = [], []
    for scores, label in zip(candidate_scores, labels):
        if len(scores) != len(label):
            raise ValueError(f"a query has {len(scores)} scores for {len(label)} candidates")
        if any(label):
            hit = bool(label[int(np.argmax(scores))])
            hits.append(hit)
            if len(label) >= 2:
                multi.append(hit)
    return {
        "top1": float(np.mean(hits)) if hits else math.nan,
        "top1_multi": float(np.mean(multi)) if multi else math.nan,
        "n_top1": len(hits),
        "n_top1_multi": len(multi),
    }


def retrieval_metrics(
    matrix: np.ndarray, targets: Sequence[Sequence[int]], ks=RETRIEVAL_KS
) -> dict[str, float]:
    """Recall@k and NDCG@max(k) (binary gains) over the catalogue, for queries with relevant tools."""
    if matrix.shape[0] != len(targets):
        raise ValueError(f"{matrix.shape[0]} score rows for {len(targets)} target rows")
    top = max(ks)
    order = np.argsort(-matrix, axis=1, kind="stable")[:, :top]
    recalls = {k: [] for k in ks}
    ndcg = []
    discounts = 1.0 / np.log2(np.arange(2, top + 2))
    for ranked, relevant in zip(order, targets):
        if not relevant:
            continue
        gains = np.isin(ranked, list(relevant)).astype(float)
        for k in ks:
            recalls[k].append(gains[:k].sum() / len(relevant))
        ndcg.append((gains * discounts).sum() / discounts[: min(top, len(relevant))].sum())
    out = {f"recall@{k}": float(np.mean(v)) for k, v in recalls.items()}
    out[f"ndcg@{top}"] = float(np.mean(ndcg))
    out["n_retrieval"] = len(ndcg)
    return out


def abstain_metrics(margins: np.ndarray, should_abstain: np.ndarray, tau: float) -> dict[str, float]:
    """Precision/recall/F1 of "abstain" (positive class = no tool fits); abstain iff margin > tau."""
    predicted = margins > tau
    tp = float((predicted & should_abstain).sum())
    precision = tp / predicted.sum() if predicted.any() else 0.0
    recall = tp / should_abstain.sum() if should_abstain.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"abstain_precision": precision, "abstain_recall": recall, "abstain_f1": f1, "tau": float(tau)}


def tune_threshold(margins: np.ndarray, should_abstain: np.ndarray) -> float:
    """The tau maximising abstain F1 on these (dev) margins; midpoints between sorted margins are tried."""
    values = np.unique(margins)
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    f1 = [abstain_metrics(margins, should_abstain, t)["abstain_f1"] for t in candidates]
    return float(candidates[int(np.argmax(f1))])


def margins_of(
    candidate_scores: Sequence[np.ndarray], abstain_scores: np.ndarray | None = None
) -> np.ndarray:
    """``abstain score - best candidate score`` per query (abstain score 0 for methods without one)."""
    best = np.array([float(np.max(s)) for s in candidate_scores])
    return (abstain_scores if abstain_scores is not None else 0.0) - best


# ------------------------------------------------------------------------------------------- router
@torch.no_grad()
def encode_catalogue(
    model: ToolRouterModel,
    tokenizer,
    texts: Sequence[str],
    max_length: int = 64,
    chunk_size: int = 256,
) -> ToolEmbeddingCache:
    """``model.encode_tools`` for a large catalogue (zero resource vectors, as BFCL has none), in chunks.

    The Mamba reference path materialises [tools, inner, length, state] tensors (5 GB for 10k tools), so
    the text encoder runs ``chunk_size`` tools at a time; right padding makes each tool's pooled state
    independent of its chunk. Tool-set attention then sees the whole catalogue at once, as in
    ``encode_tools`` (without attention weights, so the fused attention path is used).
    """
    if not texts:
        raise ValueError("empty catalogue")
    pieces = []
    for start in range(0, len(texts), chunk_size):
        enc = tokenizer(
            list(texts[start : start + chunk_size]), max_length=max_length, truncation=True,
            padding="longest", return_tensors="pt",
        )  # fmt: skip
        pieces.append(model.tool_encoder(enc["input_ids"], enc["attention_mask"]))
    text_states = torch.cat(pieces)
    resources = torch.zeros(len(texts), model.config.resource_dim, dtype=text_states.dtype)
    resource_states = model.resource_mlp(resources)
    mask = torch.ones(len(texts), dtype=torch.bool)
    tool_states = model.tool_set_encoder(
        torch.cat([text_states, resource_states], -1), key_padding_mask=~mask
    )
    return ToolEmbeddingCache(tool_states=tool_states, resource_states=resource_states, tool_mask=mask)


class RouterScorer(Scorer):
    """The trained router as a catalogue scorer (``index`` builds its tool-embedding cache)."""

    name = "router"

    def __init__(self, model: ToolRouterModel, tokenizer, max_query_length: int = 64, batch_size: int = 64):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_query_length, self.batch_size, self.cache = max_query_length, batch_size, None

    def index(self, texts: Sequence[str]) -> None:
        self.cache = encode_catalogue(self.model, self.tokenizer, self._check_texts(texts, "catalogue"))

    @torch.no_grad()
    def score_with_abstain(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.cache is None:
            raise ValueError("call index() before score()")
        queries = self._check_texts(queries, "queries")
        scores, abstain = [], []
        for start in range(0, len(queries), self.batch_size):
            enc = self.tokenizer(
                queries[start : start + self.batch_size], max_length=self.max_query_length, truncation=True,
                padding="longest", return_tensors="pt",
            )  # fmt: skip
            out = self.model(enc["input_ids"], enc["attention_mask"], tool_cache=self.cache)
            scores.append(out.scores.float().numpy())
            abstain.append(out.abstain_score.float().numpy())
        return np.concatenate(scores), np.concatenate(abstain)

    def score(self, queries: Sequence[str]) -> np.ndarray:
        return self.score_with_abstain(queries)[0]


@torch.no_grad()
def router_candidate_scores(model: ToolRouterModel, tokenizer, split, batch_size: int = 16):
    """Per query, the router's scores over its own candidate set (encoded as that set, as in training),
    and its abstain logits."""
    collator = RouterDataCollator(tokenizer, use_runtime_context=model.config.runtime_context_dim > 0)
    model.eval()
    scores, abstain = [], []
    for start in range(0, len(split), batch_size):
        rows = [split[i] for i in range(start, min(start + batch_size, len(split)))]
        batch = collator(rows)
        batch.pop("labels"), batch.pop("latency_labels")
        out = model(**batch)
        for row, s in zip(rows, out.scores.float().numpy()):
            scores.append(s[: len(row["tool_texts"])])
        abstain.append(out.abstain_score.float().numpy())
    return scores, np.concatenate(abstain)


# ------------------------------------------------------------------------------------------- evaluation
def candidate_scores_from(matrix: np.ndarray, split, catalogue_index: dict[str, int]) -> list[np.ndarray]:
    """Gather each query's candidate scores from its row of a [Q, catalogue] score matrix."""
    return [row[[catalogue_index[t] for t in texts]] for row, texts in zip(matrix, split["tool_texts"])]


def evaluate_split(scorer: Scorer, split) -> dict:
    """Catalogue matrix, candidate scores, margins and targets of one split for one method."""
    catalogue = build_tool_catalogue([split])
    index = {t: i for i, t in zip(catalogue["tool_id"], catalogue["text"])}
    scorer.index(catalogue["text"])
    if isinstance(scorer, RouterScorer):
        matrix, _ = scorer.score_with_abstain(split["query"])
        candidates, abstain = router_candidate_scores(scorer.model, scorer.tokenizer, split)
        margins = margins_of(candidates, abstain)
    else:
        matrix = scorer.score(split["query"])
        candidates = candidate_scores_from(matrix, split, index)
        margins = margins_of(candidates)
    return {
        "matrix": matrix,
        "candidates": candidates,
        "margins": margins,
        "targets": catalogue_targets(split, catalogue),
        "catalogue_size": len(catalogue),
    }


def benchmark_method(scorer: Scorer, dataset) -> dict[str, float]:
    """All quality figures of one method on ``test``; its abstain threshold tau is tuned on ``dev``.

    Every method gets the same protocol (tau maximising dev F1). The router also reports its own rule
    (abstain logit above every candidate, tau = 0) as ``abstain_f1_untuned``.
    """
    start = time.perf_counter()
    test = evaluate_split(scorer, dataset["test"])
    should_abstain_test = np.array([not any(y) for y in dataset["test"]["labels"]])
    dev = evaluate_split(scorer, dataset["dev"])
    tau = tune_threshold(dev["margins"], np.array([not any(y) for y in dataset["dev"]["labels"]]))
    result = {"method": scorer.name, "catalogue_size": test["catalogue_size"]}
    result.update(top1_accuracy(test["candidates"], dataset["test"]["labels"]))
    result.update(retrieval_metrics(test["matrix"], test["targets"]))
    result.update(abstain_metrics(test["margins"], should_abstain_test, tau))
    if isinstance(scorer, RouterScorer):
        result["abstain_f1_untuned"] = abstain_metrics(test["margins"], should_abstain_test, 0.0)[
            "abstain_f1"
        ]
    result["n_abstain_true"] = int(should_abstain_test.sum())
    result["eval_seconds"] = time.perf_counter() - start
    return result


def synthetic_catalogue(pool: Sequence[str], size: int) -> list[str]:
    """``size`` distinct tool texts: the pool first, then numbered copies (timing needs size, not meaning)."""
    if not pool:
        raise ValueError("empty tool pool")
    return [
        pool[i % len(pool)] + ("" if i < len(pool) else f" (variant {i // len(pool)})") for i in range(size)
    ]


def latency_sweep(
    scorers: Sequence[Scorer], pool: Sequence[str], queries: Sequence[str], sizes, n_queries: int
):
    """Index time and median per-query routing latency (batch 1, score + top-5) per method and size."""
    rows = []
    queries = list(queries)[: n_queries + 1]
    for size in sizes:
        catalogue = synthetic_catalogue(pool, size)
        for scorer in scorers:
            start = time.perf_counter()
            scorer.index(catalogue)
            index_s = time.perf_counter() - start
            times = []
            for i, query in enumerate(queries):
                start = time.perf_counter()
                scores = scorer.score([query])[0]
                np.argpartition(-scores, min(5, size - 1))[:5]
                if i:  # the first query warms caches and lazy initialisation up
                    times.append(time.perf_counter() - start)
            rows.append({"method": scorer.name, "tools": size, "index_s": index_s,
                         "ms_per_query": 1000 * statistics.median(times)})  # fmt: skip
            print(f"  latency {scorer.name:>7} {size:>6} tools: index {index_s:.2f}s, "
                  f"{rows[-1]['ms_per_query']:.2f} ms/query", flush=True)  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------- main
def build_arg_parser():
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument(
        "--bfcl-wheel", type=Path, default=None, help="bfcl-eval wheel (default: cached download)"
    )
    parser.add_argument(
        "--router-dir", type=Path, default=None, help="trained router (default: train one now)"
    )
    parser.add_argument("--train-dir", type=Path, default=Path("runs/router_bench"))
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--methods", default="router,bm25,minilm,random", help="comma-separated subset")
    parser.add_argument("--latency-queries", type=int, default=None)
    parser.add_argument(
        "--distil-steps", type=int, default=None, help="MiniLM distillation steps before training (0 = off)"
    )
    return parser


def budget(args) -> dict:
    """Training epochs / time budget, data subsets and sweep sizes per mode (full must fit 20 min on 2 CPUs)."""
    if args.smoke:
        return {"epochs": 1, "max_steps": 3, "time_budget": 60, "subset": 48, "sizes": (10, 100), "n_q": 3,
                "distil_steps": 2, "distil_budget": 30}  # fmt: skip
    if args.quick:
        return {
            "epochs": 4,
            "max_steps": -1,
            "time_budget": 120,
            "subset": None,
            "sizes": (10, 100, 1000),
            "n_q": 10,
            "distil_steps": DISTIL_STEPS // 3,
            "distil_budget": DISTIL_BUDGET_S / 3,
        }
    return {
        "epochs": 8,
        "max_steps": -1,
        "time_budget": 360,
        "subset": None,
        "sizes": CATALOGUE_SIZES,
        "n_q": 20,
        "distil_steps": DISTIL_STEPS,
        "distil_budget": DISTIL_BUDGET_S,
    }


def load_or_train_router(args, dataset, plan):
    from transformers import AutoTokenizer

    if args.router_dir is not None:
        model = ToolRouterModel.from_pretrained(str(args.router_dir)).eval()
        return model, AutoTokenizer.from_pretrained(str(args.router_dir), local_files_only=True), None
    distil_steps = plan["distil_steps"] if args.distil_steps is None else args.distil_steps
    model, tokenizer, summary = train_router(
        dataset,
        args.train_dir,
        num_train_epochs=args.epochs or plan["epochs"],
        max_steps=plan["max_steps"],
        time_budget_s=plan["time_budget"],
        logging_steps=20,
        shared_tool_set=True,
        batch_size=64,
        learning_rate=FINETUNE_LR if distil_steps else 2e-3,
        distil_steps=distil_steps,
        distil_time_budget_s=plan["distil_budget"],
        distil_weight=DISTIL_WEIGHT if distil_steps else 0.0,
    )
    summary.pop("log_history")
    return model.eval(), tokenizer, summary


def main(argv: list[str] | None = None) -> dict:
    args = build_arg_parser().parse_args(argv)
    apply_threads(args.threads)
    plan = budget(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - {"router", *BASELINES}
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from router,{','.join(BASELINES)}")
    torch.manual_seed(0)
    dataset = build_bfcl_dataset(args.bfcl_wheel)
    if plan["subset"]:
        for split in dataset:
            dataset[split] = dataset[split].select(range(min(plan["subset"], len(dataset[split]))))
    print({split: len(rows) for split, rows in dataset.items()}, flush=True)

    results = {
        "environment": environment_info(torch.device("cpu")),
        "splits": {s: len(d) for s, d in dataset.items()},
    }
    scorers: list[Scorer] = []
    if "router" in methods:
        model, tokenizer, summary = load_or_train_router(args, dataset, plan)
        results["router_training"] = summary
        scorers.append(RouterScorer(model, tokenizer))
    scorers += [BASELINES[m]() for m in methods if m in BASELINES]

    quality = []
    for scorer in scorers:
        quality.append(benchmark_method(scorer, dataset))
        print(f"  {scorer.name}: done in {quality[-1]['eval_seconds']:.1f}s", flush=True)
    results["quality"] = quality
    pool = list(build_tool_catalogue([dataset[s] for s in ("test", "dev", "train")])["text"])
    results["latency"] = latency_sweep(
        scorers, pool, dataset["test"]["query"], plan["sizes"], args.latency_queries or plan["n_q"]
    )

    columns = ["method", "top1", "top1_multi", "recall@1", "recall@5", "ndcg@5", "abstain_precision",
               "abstain_recall", "abstain_f1", "tau"]  # fmt: skip
    print(f"\n### Routing quality on BFCL live (test), catalogue of {quality[0]['catalogue_size']} tools\n")
    print(markdown_table(columns, [[q[c] for c in columns] for q in quality]))
    print("\n### Per-query routing latency (ms, batch 1, cached tool index)\n")
    names = [s.name for s in scorers]
    by_size = {(r["method"], r["tools"]): r for r in results["latency"]}
    print(
        markdown_table(
            ["tools", *names], [[n, *(by_size[(m, n)]["ms_per_query"] for m in names)] for n in plan["sizes"]]
        )
    )
    print("\n### Index build time (s, once per catalogue)\n")
    print(
        markdown_table(
            ["tools", *names], [[n, *(by_size[(m, n)]["index_s"] for m in names)] for n in plan["sizes"]]
        )
    )
    write_results("routing", results, args.out)
    return results


if __name__ == "__main__":
    main()
