"""Router training: collator tensors, routing metrics, MiniLM warm start, Trainer runs, the CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from causalqwen import ToolRouterModel
from causalqwen.training import router_cli
from causalqwen.training import router_trainer as rt
from causalqwen.training.router_data import build_synthetic_routing_dataset
from router_helpers import TINY_ROUTER as TINY

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("USE_HUB_KERNELS", "0")


def row(query, texts, labels, resources=None, latency=None, load=0.5):
    return {"id": query, "query": query, "tool_texts": texts, "labels": labels, "runtime_load": load,
            "resource_vectors": resources or [[0.0] * 6 for _ in texts],
            "latency": latency or [-1.0] * len(texts)}  # fmt: skip


def test_tokenizer_is_minilm_wordpiece_offline(router_tokenizer):
    assert len(router_tokenizer) == 30522 and router_tokenizer.pad_token_id == 0
    assert router_tokenizer.tokenize("get_weather") == ["get", "_", "weather"]


def test_collator_pads_tool_sets_and_marks_padding(router_tokenizer):
    collator = rt.RouterDataCollator(router_tokenizer, max_query_length=8, max_tool_length=6)
    batch = collator([
        row("weather in paris", ["get_weather: weather", "send_email: send mail"], [1, 0],
            resources=[[1.0, 2.0, 0.0, 0.5, 0.1, 3.0], [0.0] * 6], latency=[0.2, -1.0]),
        row("a very long query " * 5, ["area: triangle area"], [0], load=0.25),
    ])  # fmt: skip
    assert batch["query_input_ids"].shape == (2, 8)  # truncated to max_query_length
    assert batch["tool_input_ids"].shape[:2] == (2, 2) and batch["tool_input_ids"].shape[2] <= 6
    assert batch["tool_mask"].tolist() == [[1, 1], [1, 0]]
    assert batch["labels"].tolist() == [[1.0, 0.0], [0.0, -100.0]]
    assert batch["latency_labels"].tolist() == [[pytest.approx(0.2), -1.0], [-1.0, -1.0]]
    assert batch["tool_attention_mask"][1, 1].sum() == 0  # a padded tool slot attends to nothing
    assert (
        batch["query_attention_mask"][0].tolist()[-1] == 0 and batch["query_input_ids"][0, -1] == 0
    )  # right pad
    assert torch.allclose(
        batch["resource_vectors"][0, 0], torch.log1p(torch.tensor([1.0, 2.0, 0.0, 0.5, 0.1, 3.0]))
    )
    assert batch["runtime_context"].tolist() == [[0.5], [0.25]]
    assert "runtime_context" not in rt.RouterDataCollator(router_tokenizer, use_runtime_context=False)(
        [row("q", ["t"], [1])]
    )


def test_shared_collator_builds_the_batch_union_with_in_batch_negatives(router_tokenizer):
    collator = rt.RouterDataCollator(router_tokenizer, shared_tool_set=True)
    batch = collator([
        row("weather", ["get_weather", "send_email"], [1, 0], latency=[0.3, -1.0]),
        row("mail", ["send_email"], [1]),
        row("joke", ["tell_time"], [0]),
    ])  # fmt: skip
    # Union in first-appearance order: get_weather, send_email, tell_time; one [T, Lt] set for all queries.
    assert batch["tool_input_ids"].dim() == 2 and batch["tool_input_ids"].shape[0] == 3
    assert batch["resource_vectors"].shape == (3, 6) and "tool_mask" not in batch
    assert batch["labels"].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert batch["latency_labels"][0].tolist() == [pytest.approx(0.3), -1.0, -1.0]
    # Same text with different resources is a different tool (synthetic variants under other loads).
    split = collator(
        [row("a", ["t"], [1], resources=[[1.0] * 6]), row("b", ["t"], [1], resources=[[2.0] * 6])]
    )
    assert split["labels"].tolist() == [[1, 0], [0, 1]]


def test_collator_rejects_inconsistent_rows(router_tokenizer):
    collator = rt.RouterDataCollator(router_tokenizer)
    with pytest.raises(ValueError, match="lengths differ or are 0"):
        collator([row("q", ["a", "b"], [1])])
    with pytest.raises(ValueError, match="empty batch"):
        collator([])


def test_router_metrics_exact_values():
    # 4 queries: correct top-1, wrong top-1, abstain-correct, tool query wrongly abstained.
    scores = np.array([[3.0, 1.0, -100], [0.0, 2.0, 1.0], [0.5, 0.2, -100], [2.0, -100, -100]])
    abstain = np.array([0.0, 0.0, 1.0, 5.0])
    labels = np.array([[1, 0, -100], [1, 0, 0], [0, 0, -100], [1, -100, -100]])
    metrics = rt.compute_router_metrics(EvalPrediction(predictions=(scores, abstain), label_ids=labels))
    assert metrics["top1_accuracy"] == pytest.approx(2 / 3)
    assert metrics["abstain_accuracy"] == pytest.approx(3 / 4)  # query 4 abstains although a tool fits
    assert metrics["routed_accuracy"] == pytest.approx(2 / 4)
    assert metrics["top1_multi_accuracy"] == pytest.approx(1 / 2)  # queries 1 and 2 offer >= 2 tools
    best, margin = rt.routing_decisions(scores, abstain, labels != -100)
    assert best.tolist() == [0, 1, 0, 0] and margin.tolist() == [-3.0, -2.0, 0.5, 3.0]


def test_warm_start_copies_pca_of_minilm_embeddings(router_tokenizer):
    torch.manual_seed(0)
    model = ToolRouterModel(rt.router_config_for(router_tokenizer, **TINY))
    assert rt.warm_start_embeddings(model) == 30522
    q, t = model.query_encoder.mamba.embeddings.weight, model.tool_encoder.mamba.embeddings.weight
    assert torch.equal(q, t)
    assert q.std().item() == pytest.approx(model.config.initializer_range, rel=1e-3)
    variances = q.var(0)
    assert torch.all(variances[:-1] >= variances[1:] - 1e-9)  # principal components, largest first
    # Related words end up closer than unrelated ones (the point of warm-starting).
    ids = router_tokenizer.convert_tokens_to_ids(["weather", "forecast", "triangle"])
    e = torch.nn.functional.normalize(q[ids], dim=-1)
    assert (e[0] @ e[1]) > (e[0] @ e[2])
    small = ToolRouterModel(rt.router_config_for(router_tokenizer, **{**TINY, "vocab_size": 100}))
    with pytest.raises(ValueError, match="needs the MiniLM vocabulary"):
        rt.warm_start_embeddings(small)


def test_time_budget_callback_validates():
    with pytest.raises(ValueError, match="time budget must be positive"):
        rt.TimeBudgetCallback(0)


@pytest.fixture(scope="module")
def synthetic():
    ds = build_synthetic_routing_dataset(64, 16, 8, num_families=2, seed=0)
    return ds


def test_train_router_runs_trainer_saves_and_reloads(router_tokenizer, synthetic, tmp_path):
    model, _, summary = rt.train_router(
        synthetic, tmp_path, tokenizer=router_tokenizer, config_overrides=TINY, max_steps=6, batch_size=8,
        logging_steps=2, disable_tqdm=True,
    )  # fmt: skip
    assert summary["steps"] == 6
    assert np.isfinite(summary["train_loss"])
    assert {"eval_top1_accuracy", "eval_abstain_accuracy", "eval_loss"} <= set(summary["dev"])
    assert [h["step"] for h in summary["log_history"] if "loss" in h] == [2, 4, 6]
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "tokenizer.json").is_file()
    reloaded = ToolRouterModel.from_pretrained(str(tmp_path)).eval()
    batch = rt.RouterDataCollator(router_tokenizer)([synthetic["test"][i] for i in range(4)])
    batch.pop("labels"), batch.pop("latency_labels")
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).scores, reloaded(**batch).scores)


def test_shared_tool_set_training_evaluates_within_candidates(router_tokenizer, synthetic, tmp_path):
    model, _, summary = rt.train_router(
        synthetic, tmp_path, tokenizer=router_tokenizer, config_overrides=TINY, num_train_epochs=1, batch_size=16,
        disable_tqdm=True, shared_tool_set=True,
    )  # fmt: skip
    assert summary["steps"] == 4 and summary["shared_tool_set"] is True
    # The last dev evaluation is what the final model scores on each query's own candidates (the per-query
    # collator), recomputed here independently of the Trainer.
    evals = [h for h in summary["log_history"] if "eval_top1_accuracy" in h]
    assert len(evals) == 2
    dev = synthetic["dev"]
    batch = rt.RouterDataCollator(router_tokenizer)([dev[i] for i in range(len(dev))])
    labels = batch.pop("labels").numpy()
    batch.pop("latency_labels")
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    want = rt.compute_router_metrics(
        EvalPrediction(predictions=(out.scores.numpy(), out.abstain_score.numpy()), label_ids=labels)
    )
    for name in ("top1_accuracy", "top1_multi_accuracy", "abstain_accuracy"):
        assert evals[-1][f"eval_{name}"] == pytest.approx(want[name], abs=1e-6), name


def test_time_budget_stops_training_after_one_step(router_tokenizer, synthetic, tmp_path):
    _, _, summary = rt.train_router(
        synthetic, tmp_path, tokenizer=router_tokenizer, config_overrides=TINY, max_steps=50, batch_size=8,
        time_budget_s=1e-9, disable_tqdm=True,
    )  # fmt: skip
    assert summary["steps"] == 1


def test_train_router_needs_train_and_dev(synthetic, tmp_path):
    with pytest.raises(ValueError, match="needs a 'dev' split"):
        rt.train_router({"train": synthetic["train"]}, tmp_path)


def test_router_learns_synthetic_routing(router_tokenizer, tmp_path):
    """Regression: the full pipeline (collator, Trainer, loss) must learn; chance top-1 is 1/8."""
    ds = build_synthetic_routing_dataset(256, 64, 8, num_families=2, seed=1)
    _, _, summary = rt.train_router(
        ds, tmp_path, tokenizer=router_tokenizer, config_overrides=TINY, num_train_epochs=3, batch_size=16,
        learning_rate=3e-3, logging_steps=8, disable_tqdm=True,
    )  # fmt: skip
    losses = [h["loss"] for h in summary["log_history"] if "loss" in h]
    assert losses[-1] < 0.8 * losses[0]
    assert summary["dev"]["eval_top1_accuracy"] > 0.3


def test_cli_quick_synthetic(tmp_path, capsys):
    assert router_cli.main(["--data", "synthetic", "--quick", "--output-dir", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["steps"] == router_cli.QUICK_STEPS and summary["data"] == "synthetic"
    assert "trained 4 steps" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        router_cli.main(["--data", "nope", "--output-dir", str(tmp_path)])
