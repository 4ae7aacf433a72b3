"""Routing benchmark: metrics give exact figures, baselines rank sensibly, the router's catalogue cache is
exact, and the whole script runs end to end on a fake bfcl-eval wheel."""

from __future__ import annotations

import json
import math
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from causalqwen import ToolRouterModel
from causalqwen.training import router_data as rd
from causalqwen.training import router_trainer as rt

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import baselines  # noqa: E402
import routing  # noqa: E402
from router_helpers import TINY_ROUTER as TINY  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("USE_HUB_KERNELS", "0")

TOOLS = [
    "get_weather: get the weather forecast for a city | parameters: city (string): the city",
    "send_email: send an email message to a person",
    "triangle.area: compute the area of a triangle from base and height",
]


# ------------------------------------------------------------------------------------------- metrics
def test_top1_accuracy_counts_only_queries_with_a_tool():
    scores = [np.array([0.9]), np.array([0.1, 0.8, 0.3]), np.array([0.5, 0.4]), np.array([0.2, 0.1])]
    labels = [[1], [1, 0, 0], [0, 1], [0, 0]]
    out = routing.top1_accuracy(scores, labels)
    assert out == {"top1": pytest.approx(1 / 3), "top1_multi": 0.0, "n_top1": 3, "n_top1_multi": 2}
    with pytest.raises(ValueError, match="2 scores for 1 candidates"):
        routing.top1_accuracy([np.array([1.0, 2.0])], [[1]])


def test_retrieval_metrics_hand_computed():
    matrix = np.array([[0.1, 0.9, 0.5, 0.3, 0.2, 0.0], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1], [1, 1, 1, 1, 1, 1.0]])
    targets = [[2, 5], [0], []]  # third query has no relevant tool: excluded
    out = routing.retrieval_metrics(matrix, targets)
    # Query 1 ranking: 1, 2, 3, 4, 0 -> tool 2 at rank 2; tool 5 not in the top 5.
    ndcg1 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert out["recall@1"] == pytest.approx((0 + 1) / 2)
    assert out["recall@5"] == pytest.approx((0.5 + 1) / 2)
    assert out["ndcg@5"] == pytest.approx((ndcg1 + 1) / 2)
    assert out["n_retrieval"] == 2


def test_abstain_metrics_threshold_and_tuning():
    margins = np.array([2.0, 1.0, -1.0, 0.5, -2.0])
    truth = np.array([True, True, False, False, False])
    out = routing.abstain_metrics(margins, truth, tau=0.0)
    assert out["abstain_precision"] == pytest.approx(2 / 3)
    assert out["abstain_recall"] == 1.0 and out["abstain_f1"] == pytest.approx(0.8)
    tau = routing.tune_threshold(margins, truth)
    assert tau == pytest.approx(0.75)  # between 0.5 (no tool) and 1.0 (abstain): F1 = 1
    assert routing.abstain_metrics(margins, truth, tau)["abstain_f1"] == 1.0
    assert routing.abstain_metrics(margins, truth, 10.0)["abstain_f1"] == 0.0
    assert routing.margins_of([np.array([1.0, 3.0]), np.array([-2.0])]).tolist() == [-3.0, 2.0]
    assert routing.margins_of([np.array([1.0])], np.array([4.0])).tolist() == [3.0]


def test_synthetic_catalogue_is_distinct_and_sized():
    cat = routing.synthetic_catalogue(["a", "b"], 5)
    assert cat == ["a", "b", "a (variant 1)", "b (variant 1)", "a (variant 2)"]
    with pytest.raises(ValueError, match="empty tool pool"):
        routing.synthetic_catalogue([], 3)


# ------------------------------------------------------------------------------------------- baselines
def test_bm25_ranks_the_matching_tool_first_and_handles_stopword_queries():
    scorer = baselines.BM25Scorer()
    with pytest.raises(ValueError, match="call index"):
        scorer.score(["x"])
    scorer.index(TOOLS)
    scores = scorer.score(["what is the weather in Paris", "area of my triangle", "the and of"])
    assert scores.shape == (3, 3)
    assert scores[:2].argmax(1).tolist() == [0, 2]
    assert scores[2].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(TypeError, match="sequence of strings"):
        scorer.index("not a list")


def test_random_scorer_is_seeded():
    a, b = baselines.RandomScorer(seed=1), baselines.RandomScorer(seed=1)
    a.index(TOOLS), b.index(TOOLS)
    first = a.score(["q", "r"])
    assert first.shape == (2, 3) and first.min() >= 0.0 and first.max() < 1.0
    assert np.array_equal(first, b.score(["q", "r"]))


def test_minilm_zero_shot_ranks_the_matching_tool_first():
    scorer = baselines.MiniLMScorer()
    scorer.index(TOOLS)
    scores = scorer.score(
        ["will it rain in Paris tomorrow", "mail my boss", "area of a triangle with base 3"]
    )
    assert scores.argmax(1).tolist() == [0, 1, 2]
    assert np.allclose(np.diag(scorer.embed(TOOLS) @ scorer.embed(TOOLS).T), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------------------- router
@pytest.fixture(scope="module")
def router(router_tokenizer):
    torch.manual_seed(0)
    config = rt.router_config_for(router_tokenizer, matching="fusion", **TINY)
    return ToolRouterModel(config).eval(), router_tokenizer


def test_router_scorer_is_its_tool_index(router):
    model, tokenizer = router
    scorer = routing.RouterScorer(model, tokenizer)
    with pytest.raises(ValueError, match="call index"):
        scorer.score(["x"])
    scorer.index(TOOLS)
    queries = ["weather in Paris", "send a mail", "triangle area"]
    scores, abstain = scorer.score_with_abstain(queries)
    assert scores.shape == (3, 3) and abstain.shape == (3,)
    direct = scorer.index_.scores(queries)
    assert np.array_equal(scores, direct[0].numpy()) and np.array_equal(abstain, direct[1].numpy())


def test_name_retrieval_counts_each_correct_name_once():
    matrix = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.9]])
    names = ["f", "f", "g", "h"]  # tools 0 and 1 are two descriptions of the same function
    out = routing.name_retrieval_metrics(matrix, names, [["f", "g"], ["f"]])
    # Query 1 ranking 0 (f), 1 (f again: no gain), 2 (g): recall@1 1/2, recall@5 1.
    # Query 2 ranking 3 (h), 2 (g), 1 (f): recall@1 0, recall@5 1, the hit at rank 3.
    assert out["name_recall@1"] == pytest.approx(0.25)
    assert out["name_recall@5"] == pytest.approx(1.0)
    ndcg1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert out["name_ndcg@5"] == pytest.approx((ndcg1 + 1 / math.log2(4)) / 2)
    with pytest.raises(ValueError, match="does not match"):
        routing.name_retrieval_metrics(matrix, names[:3], [["f"], ["g"]])


def test_hybrid_z_normalises_and_tunes_its_weight():
    hybrid = routing.HybridScorer(baselines.BM25Scorer(), baselines.MiniLMScorer(), weight=0.25)
    lexical = np.array([[0.0, 2.0, 4.0]])
    dense = np.array([[0.3, 0.2, 0.1]])
    z = lambda r: (r - r.mean()) / r.std()  # noqa: E731
    expected = 0.25 * z(lexical[0]) + 0.75 * z(dense[0])
    np.testing.assert_allclose(hybrid.combine(lexical, dense)[0], expected, atol=1e-4)  # z uses std + 1e-6
    split = Dataset.from_dict({
        "query": ["weather in Paris", "send a mail to Bob", "area of a triangle"],
        "tool_names": [["get_weather", "send_email"], ["send_email", "triangle.area"], ["triangle.area"]],
        "tool_texts": [[TOOLS[0], TOOLS[1]], [TOOLS[1], TOOLS[2]], [TOOLS[2]]],
        "labels": [[1, 0], [1, 0], [1]],
    })  # fmt: skip
    tuned = routing.tune_hybrid_weight(hybrid, split)
    assert tuned["weight"] in routing.HYBRID_GRID and hybrid.weight == tuned["weight"]
    assert tuned["dev_objective"] == 1.0  # both scorers rank these three right


# ------------------------------------------------------------------------------------------- end to end
def write_fake_wheel(path: Path) -> Path:
    """Every default BFCL category, 6 rows each, same JSON-lines layout as the real wheel."""
    tools = [{"name": f"tool_{k}", "description": f"does task {k} with {w}", "parameters": {"type": "dict",
              "properties": {"x": {"type": "string", "description": w}}}}
             for k, w in enumerate(["weather", "email", "triangle", "music", "stocks", "flights"])]  # fmt: skip
    with zipfile.ZipFile(path, "w") as archive:
        for category in rd.BFCL_TRAIN_CATEGORIES + rd.BFCL_TEST_CATEGORIES:
            rows, answers = [], []
            for i in range(6):
                offered = [tools[(i + j) % 6] for j in range(1 + i % 3)]
                rows.append({"id": f"{category}_{i}", "question": [[{"role": "user",
                             "content": f"please help with {offered[0]['parameters']['properties']['x']['description']}"}]],
                             "function": offered})  # fmt: skip
                answers.append({"id": f"{category}_{i}", "ground_truth": [{offered[0]["name"]: {}}]})
            archive.writestr(f"bfcl_eval/data/BFCL_v4_{category}.json", "\n".join(map(json.dumps, rows)))
            if "irrelevance" not in category:
                archive.writestr(
                    f"bfcl_eval/data/possible_answer/BFCL_v4_{category}.json",
                    "\n".join(map(json.dumps, answers)),
                )
    return path


def test_benchmark_smoke_end_to_end(tmp_path, capsys):
    wheel = write_fake_wheel(tmp_path / "bfcl_eval-0-py3-none-any.whl")
    out = tmp_path / "routing.json"
    results = routing.main(["--smoke", "--bfcl-wheel", str(wheel), "--methods", "router,bm25,hybrid,random",
                            "--out", str(out), "--train-dir", str(tmp_path / "router")])  # fmt: skip
    saved = json.loads(out.read_text())
    assert [q["method"] for q in saved["quality"]] == ["router", "bm25", "hybrid", "random"]
    assert saved["splits"] == {"train": 36, "dev": 6, "test": 30}
    training = saved["router_training"]["router"]
    assert training["encoder_stage"]["steps"] >= 1 and training["head_stage"]["steps"] >= 1
    assert {(r["method"], r["tools"]) for r in saved["latency"]} == {
        (m, n) for m in ("router", "bm25", "random") for n in (10, 100)
    }  # the hybrid's latency is the sum of its timed parts: absent when MiniLM is not timed
    assert (tmp_path / "routing_kan.png").stat().st_size > 1000
    quality = {q["method"]: q for q in results["quality"]}
    bm25 = quality["bm25"]
    assert bm25["catalogue_size"] == 6 and bm25["n_abstain_true"] == 6  # live_irrelevance rows
    assert bm25["top1"] == 1.0  # the query names the right tool's only distinctive word
    assert bm25["recall@1"] == bm25["name_recall@1"] == 1.0  # distinct names, one text each
    assert quality["random"]["top1"] < 1.0
    printed = capsys.readouterr().out
    assert "### Routing quality on BFCL live (test)" in printed and "| router |" in printed
    with pytest.raises(SystemExit, match="unknown methods"):
        routing.main(["--smoke", "--methods", "oracle"])
