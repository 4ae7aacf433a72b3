"""Routing benchmark (issues #7, #12): router v2 against BM25, all-MiniLM-L6-v2, their hybrid and random on BFCL.

Protocol
--------
* Data: :func:`causalqwen.training.router_data.build_bfcl_dataset`. The routers train on ``train``
  (non-live BFCL categories; :func:`causalqwen.training.router_v2.train_router_v2`); every threshold and
  the hybrid's weight are tuned on ``dev``; all figures are on ``test`` (the ``live_*`` categories), which
  nothing tunes on and no method sees during training, its tool texts included.
* Methods: ``router`` (v2: all-MiniLM-L6-v2 encoder fine-tuned, BM25 channel, KAN fusion), ``router-mamba``
  (the same recipe with the seed-000 Mamba encoder), ``bm25``, ``minilm`` (zero-shot), ``hybrid``
  (z-normalised BM25 + MiniLM, weight tuned on dev), ``random``. Every method scores the whole catalogue
  once per query; in-candidate routing gathers the candidates' catalogue scores (the routers' one
  definition of tool states: the catalogue is the tool set).
* **Top-1 accuracy within the candidate set**: over test queries with a correct tool, the best-scored
  candidate is correct. ``top1_multi`` restricts to queries offering >= 2 candidates (with one candidate
  top-1 is trivially right).
* **Recall@1/@5, NDCG@5 over the global catalogue**: every distinct test tool (by full text) is a
  document; the relevant ones for a query are its correct candidates (``recall@k``), or any catalogue tool
  carrying a correct function name (``name_recall@k``, ``name_ndcg@5``: the same function offered with
  another description counts as a hit, each correct name once).
* **Abstain precision/recall/F1**: the positive class is "no tool fits" (``*irrelevance`` queries). A
  method abstains when ``abstain_score - best candidate score > tau``, tau maximising F1 on ``dev``.
  The router has an abstain logit (its own rule is tau = 0, reported as ``abstain_f1_untuned``);
  baselines have none (abstain score 0), so they abstain when the best candidate scores below ``-tau``.
* **Latency per query vs catalogue size** (10, 100, 1k, 10k tools): the catalogue is indexed once (BM25
  statistics, MiniLM embeddings, router :class:`ToolEmbeddingCache`; index time reported apart), then each
  query is routed alone (batch 1) against all tools; median over queries after one warm-up.

Run::

    HF_HUB_OFFLINE=1 USE_HUB_KERNELS=0 .venv/bin/python benchmarks/routing.py          # ~25 min, 2 CPUs
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
from causalqwen.modeling.kan import kan_edge_functions  # noqa: E402
from causalqwen.modeling.modeling_tool_router import FUSION_FEATURES, ToolRouterModel  # noqa: E402
from causalqwen.tool_index import ToolIndex  # noqa: E402
from causalqwen.training.minilm import load_router_tokenizer  # noqa: E402
from causalqwen.training.router_data import (  # noqa: E402
    build_bfcl_dataset,
    build_tool_catalogue,
    catalogue_targets,
)
from causalqwen.training.router_v2 import train_router_v2  # noqa: E402
from common import RESULTS_DIR, apply_threads, base_parser, environment_info, markdown_table, write_results  # noqa: E402

CATALOGUE_SIZES = (10, 100, 1000, 10000)
RETRIEVAL_KS = (1, 5)
# Router v2 training budget of the full run (docs/routing.md: measured cost and what was tried).
ENCODER_EPOCHS = 2.0
HEAD_EPOCHS = 5.0
HYBRID_GRID = tuple(i / 10 for i in range(11))


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


def correct_names(split) -> list[list[str]]:
    """Per question, the function names of its correct candidates (empty for "no tool fits")."""
    return [
        [n for n, y in zip(names, labels) if y] for names, labels in zip(split["tool_names"], split["labels"])
    ]


def name_retrieval_metrics(
    matrix: np.ndarray, names: Sequence[str], target_names: Sequence[Sequence[str]], ks=RETRIEVAL_KS
) -> dict[str, float]:
    """Recall@k and NDCG@max(k) counting a catalogue hit by function name, each correct name once.

    ``names[j]`` is the function name of catalogue tool j; a ranked tool is a hit if its name is a correct
    name not already found higher up (so two descriptions of the same function count once).
    """
    if matrix.shape != (len(target_names), len(names)):
        raise ValueError(
            f"matrix {matrix.shape} does not match {len(target_names)} queries x {len(names)} tools"
        )
    top = max(ks)
    order = np.argsort(-matrix, axis=1, kind="stable")
    discounts = 1.0 / np.log2(np.arange(2, top + 2))
    recalls = {k: [] for k in ks}
    ndcg = []
    for ranked, wanted in zip(order, target_names):
        wanted = set(wanted)
        if not wanted:
            continue
        found, gains = set(), np.zeros(top)
        for rank, tool in enumerate(ranked[:top]):
            if names[tool] in wanted and names[tool] not in found:
                found.add(names[tool])
                gains[rank] = 1.0
        for k in ks:
            recalls[k].append(gains[:k].sum() / len(wanted))
        ndcg.append((gains * discounts).sum() / discounts[: min(top, len(wanted))].sum())
    out = {f"name_recall@{k}": float(np.mean(v)) for k, v in recalls.items()}
    out[f"name_ndcg@{top}"] = float(np.mean(ndcg))
    return out


# ------------------------------------------------------------------------------------------- scorers
class RouterScorer(Scorer):
    """A trained router as a catalogue scorer: ``index`` builds a :class:`~causalqwen.tool_index.ToolIndex`
    (tool states over the whole catalogue), scores are the index's, so in-candidate scoring is the
    catalogue ranking restricted to the candidates, as for every other method."""

    def __init__(self, model: ToolRouterModel, tokenizer, name: str = "router"):
        self.model, self.tokenizer, self.name, self.index_ = model.eval(), tokenizer, name, None

    def index(self, texts: Sequence[str]) -> None:
        self.index_ = ToolIndex.build(self.model, self.tokenizer, self._check_texts(texts, "catalogue"))

    def score_with_abstain(self, queries: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.index_ is None:
            raise ValueError("call index() before score()")
        scores, abstain = self.index_.scores(self._check_texts(queries, "queries"))
        return scores.numpy(), abstain.numpy()

    def score(self, queries: Sequence[str]) -> np.ndarray:
        return self.score_with_abstain(queries)[0]


def _row_z(matrix: np.ndarray) -> np.ndarray:
    return (matrix - matrix.mean(1, keepdims=True)) / (matrix.std(1, keepdims=True) + 1e-6)


class HybridScorer(Scorer):
    """``weight * z(BM25) + (1 - weight) * z(MiniLM)``, z-scored per query over the catalogue (issue #12's
    strongest baseline); ``weight`` is tuned on dev by :func:`tune_hybrid_weight`."""

    name = "hybrid"

    def __init__(self, bm25: Scorer, minilm: Scorer, weight: float = 0.5):
        self.bm25, self.minilm, self.weight = bm25, minilm, weight

    def index(self, texts: Sequence[str]) -> None:
        self.bm25.index(texts)
        self.minilm.index(texts)

    def combine(self, lexical: np.ndarray, dense: np.ndarray) -> np.ndarray:
        return self.weight * _row_z(lexical) + (1.0 - self.weight) * _row_z(dense)

    def score(self, queries: Sequence[str]) -> np.ndarray:
        return self.combine(self.bm25.score(queries), self.minilm.score(queries))


def tune_hybrid_weight(hybrid: HybridScorer, split, grid: Sequence[float] = HYBRID_GRID) -> dict[str, float]:
    """The weight maximising dev (top-1 in candidates + catalogue name Recall@1) / 2; sets it on ``hybrid``."""
    catalogue = build_tool_catalogue([split])
    hybrid.index(catalogue["text"])
    lexical, dense = hybrid.bm25.score(split["query"]), hybrid.minilm.score(split["query"])
    index = {t: i for i, t in zip(catalogue["tool_id"], catalogue["text"])}
    targets = correct_names(split)
    best = (-1.0, 0.5)
    for weight in grid:
        hybrid.weight = float(weight)
        matrix = hybrid.combine(lexical, dense)
        top1 = top1_accuracy(candidate_scores_from(matrix, split, index), split["labels"])["top1"]
        r1 = name_retrieval_metrics(matrix, catalogue["name"], targets)["name_recall@1"]
        best = max(best, ((top1 + r1) / 2, float(weight)))
    hybrid.weight = best[1]
    return {"weight": best[1], "dev_objective": best[0]}


# ------------------------------------------------------------------------------------------- evaluation
def candidate_scores_from(matrix: np.ndarray, split, catalogue_index: dict[str, int]) -> list[np.ndarray]:
    """Gather each query's candidate scores from its row of a [Q, catalogue] score matrix."""
    return [row[[catalogue_index[t] for t in texts]] for row, texts in zip(matrix, split["tool_texts"])]


def evaluate_split(scorer: Scorer, split) -> dict:
    """Catalogue matrix, candidate scores, margins and targets of one split for one method."""
    catalogue = build_tool_catalogue([split])
    index = {t: i for i, t in zip(catalogue["tool_id"], catalogue["text"])}
    scorer.index(catalogue["text"])
    abstain = None
    if isinstance(scorer, RouterScorer):
        matrix, abstain = scorer.score_with_abstain(split["query"])
    else:
        matrix = scorer.score(split["query"])
    candidates = candidate_scores_from(matrix, split, index)
    return {
        "matrix": matrix,
        "candidates": candidates,
        "margins": margins_of(candidates, abstain),
        "targets": catalogue_targets(split, catalogue),
        "names": list(catalogue["name"]),
        "target_names": correct_names(split),
        "catalogue_size": len(catalogue),
    }


def benchmark_method(scorer: Scorer, dataset) -> dict[str, float]:
    """All quality figures of one method on ``test``; its abstain threshold tau is tuned on ``dev``.

    Every method gets the same protocol (tau maximising dev F1). The routers also report their own rule
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
    result.update(name_retrieval_metrics(test["matrix"], test["names"], test["target_names"]))
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
        "--router-dir", type=Path, default=None, help="trained v2 router (default: train one now)"
    )
    parser.add_argument("--train-dir", type=Path, default=Path("runs/router_bench"))
    parser.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated subset")
    parser.add_argument("--latency-queries", type=int, default=None)
    parser.add_argument("--encoder-epochs", type=float, default=None, help="router encoder-stage epochs")
    parser.add_argument(
        "--separate-encoders", action="store_true", help="query and tool towers with separate weights"
    )
    return parser


ALL_METHODS = ("router", "router-mamba", "bm25", "minilm", "hybrid", "random")


def budget(args) -> dict:
    """Training epochs, data subsets and sweep sizes per mode (full: <= 30 min on 2 CPU cores in all)."""
    if args.smoke:
        return {"encoder_epochs": 1, "head_epochs": 2, "subset": 48, "sizes": (10, 100), "n_q": 3}
    if args.quick:
        return {
            "encoder_epochs": 0.5,
            "head_epochs": HEAD_EPOCHS,
            "subset": None,
            "sizes": (10, 100, 1000),
            "n_q": 10,
        }
    return {"encoder_epochs": ENCODER_EPOCHS, "head_epochs": HEAD_EPOCHS, "subset": None,
            "sizes": CATALOGUE_SIZES, "n_q": 20}  # fmt: skip


def load_or_train_router(args, dataset, plan, encoder: str):
    """A v2 router with ``encoder`` ("minilm" or "mamba"): loaded from ``--router-dir`` or trained now."""
    if args.router_dir is not None and encoder == "minilm":
        model = ToolRouterModel.from_pretrained(str(args.router_dir)).eval()
        return model, load_router_tokenizer(args.router_dir), None
    model, tokenizer, summary = train_router_v2(
        dataset, args.train_dir / encoder, encoder=encoder, share_encoder=not args.separate_encoders,
        encoder_epochs=args.encoder_epochs or plan["encoder_epochs"], head_epochs=plan["head_epochs"],
        logging_steps=10, disable_tqdm=True,
    )  # fmt: skip
    return model.eval(), tokenizer, summary


def plot_kan(model: ToolRouterModel, path: Path) -> Path | None:
    """PNG of the fusion KAN's first-layer functions, one panel per input feature (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  matplotlib not installed: no KAN plot", flush=True)
        return None
    x = torch.linspace(-1, 1, 201)
    with torch.no_grad():
        values = kan_edge_functions(model.fusion_head.inner, x)  # [201, hidden, features]
    fig, axes = plt.subplots(1, len(FUSION_FEATURES), figsize=(3.2 * len(FUSION_FEATURES), 2.8), sharey=True)
    for i, (ax, feature) in enumerate(zip(axes, FUSION_FEATURES)):
        for j in range(values.shape[1]):
            ax.plot(x.numpy(), values[:, j, i].numpy(), label=f"hidden {j}")
        ax.set_title(feature)
        ax.set_xlabel("feature value")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("learned function")
    axes[-1].legend(fontsize=7)
    fig.suptitle("Router v2 fusion KAN: first-layer functions (feature -> hidden unit)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    args = build_arg_parser().parse_args(argv)
    apply_threads(args.threads)
    plan = budget(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(ALL_METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {','.join(ALL_METHODS)}")
    run_start = time.perf_counter()
    torch.manual_seed(0)
    dataset = build_bfcl_dataset(args.bfcl_wheel)
    if plan["subset"]:
        for split in dataset:
            dataset[split] = dataset[split].select(range(min(plan["subset"], len(dataset[split]))))
    print({split: len(rows) for split, rows in dataset.items()}, flush=True)

    results = {
        "environment": environment_info(torch.device("cpu")),
        "splits": {s: len(d) for s, d in dataset.items()},
        "router_training": {},
    }
    scorers: list[Scorer] = []
    for method, encoder in (("router", "minilm"), ("router-mamba", "mamba")):
        if method in methods:
            model, tokenizer, summary = load_or_train_router(args, dataset, plan, encoder)
            results["router_training"][method] = summary
            scorers.append(RouterScorer(model, tokenizer, name=method))
            if summary:
                stages = ", ".join(
                    f"{stage} {summary[stage]['steps']} steps at {summary[stage]['steps_per_s']} steps/s"
                    for stage in ("encoder_stage", "head_stage")
                    if summary.get(stage, {}).get("steps_per_s") is not None
                )
                print(f"  {method}: trained in {summary['train_seconds']:.0f}s ({stages})", flush=True)
            if method == "router":
                results["kan_plot"] = str(
                    plot_kan(model, (args.out or RESULTS_DIR / "routing.json").parent / "routing_kan.png")
                )
    baselines = {m: BASELINES[m]() for m in ("bm25", "minilm") if m in methods or "hybrid" in methods}
    scorers += [baselines[m] for m in ("bm25", "minilm") if m in methods]
    if "hybrid" in methods:
        hybrid = HybridScorer(baselines["bm25"], baselines["minilm"])
        results["hybrid_tuning"] = tune_hybrid_weight(hybrid, dataset["dev"])
        scorers.append(hybrid)
    if "random" in methods:
        scorers.append(BASELINES["random"]())

    quality = []
    for scorer in scorers:
        quality.append(benchmark_method(scorer, dataset))
        print(f"  {scorer.name}: done in {quality[-1]['eval_seconds']:.1f}s", flush=True)
    results["quality"] = quality
    pool = list(build_tool_catalogue([dataset[s] for s in ("test", "dev", "train")])["text"])
    # The hybrid's index and latency are its two parts' (it runs both): summed below, not re-measured.
    timed = [s for s in scorers if not isinstance(s, HybridScorer)]
    results["latency"] = latency_sweep(
        timed, pool, dataset["test"]["query"], plan["sizes"], args.latency_queries or plan["n_q"]
    )
    if "hybrid" in methods:
        parts = {(r["method"], r["tools"]): r for r in results["latency"]}
        for n in plan["sizes"]:
            if ("bm25", n) in parts and ("minilm", n) in parts:
                results["latency"].append({"method": "hybrid", "tools": n,
                    "index_s": parts[("bm25", n)]["index_s"] + parts[("minilm", n)]["index_s"],
                    "ms_per_query": parts[("bm25", n)]["ms_per_query"] + parts[("minilm", n)]["ms_per_query"]})  # fmt: skip
    results["wall_seconds"] = time.perf_counter() - run_start
    print_tables(results, [s.name for s in scorers], plan["sizes"])
    write_results("routing", results, args.out)
    return results


QUALITY_COLUMNS = ["method", "top1", "top1_multi", "recall@1", "recall@5", "ndcg@5", "name_recall@1",
                   "name_recall@5", "name_ndcg@5", "abstain_precision", "abstain_recall", "abstain_f1", "tau"]  # fmt: skip


def print_tables(results: dict, names: list[str], sizes) -> None:
    quality = results["quality"]
    print(f"\n### Routing quality on BFCL live (test), catalogue of {quality[0]['catalogue_size']} tools\n")
    print(markdown_table(QUALITY_COLUMNS, [[q.get(c, math.nan) for c in QUALITY_COLUMNS] for q in quality]))
    by_size = {(r["method"], r["tools"]): r for r in results["latency"]}
    for title, key in (("Per-query routing latency (ms, batch 1, cached tool index)", "ms_per_query"),
                       ("Index build time (s, once per catalogue)", "index_s")):  # fmt: skip
        print(f"\n### {title}\n")
        rows = [[n, *(by_size[(m, n)][key] if (m, n) in by_size else math.nan for m in names)] for n in sizes]
        print(markdown_table(["tools", *names], rows))
    training = {m: s["train_seconds"] for m, s in results["router_training"].items() if s}
    print(f"\nTraining seconds: {training}; whole run {results['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
