"""Router v2 (issue #12): pretrained-encoder routers, the fusion head, one definition of tool states, the v2
training recipe (held-out tools are retrieved) and the ToolIndex user API."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoModel, BertConfig, BertModel

from causalqwen import ToolRouterConfig, ToolRouterModel
from causalqwen.lexical import BM25Index, split_identifiers
from causalqwen.modeling.kan import KANLayer, kan_edge_functions
from causalqwen.tool_index import ToolIndex, embed_texts, tool_name_and_text
from causalqwen.training.router_v2 import (
    ContrastiveCollator,
    catalogue_examples,
    contrastive_loss,
    mine_hard_negatives,
    train_router_v2,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Distinct English words: one tool per word.
WORDS = " ".join(
    [
        "apple banana cherry grape lemon mango melon peach pear plum river ocean forest",
        "desert island valley mountain canyon glacier volcano piano guitar violin trumpet drum flute",
        "harp cello tiger lion zebra giraffe monkey rabbit turtle eagle falcon parrot salmon",
        "shark whale dolphin copper silver gold iron nickel zinc tin lead carbon oxygen",
        "hydrogen helium neon argon coffee tea juice milk water bread rice pasta pizza",
        "soup salad cheese butter honey sugar salt pepper garlic onion potato tomato carrot",
    ]
).split()
N_TRAIN_TOOLS = 40  # the other 38 tools are never seen in training


def tiny_encoder_dir(tmp_path, vocab_size: int) -> str:
    """A randomly initialised 2-layer, 32-wide BERT saved like a pretrained checkpoint."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=160)  # fmt: skip
    path = tmp_path / "tiny_bert"
    BertModel(config, add_pooling_layer=False).save_pretrained(path)
    return str(path)


def tool_text(word: str) -> str:
    return f"{word}_service: handles requests about {word} | parameters: query (string): what to look up"


def word_dataset(words, n_queries: int = 3, irrelevant: int = 0) -> Dataset:
    templates = ["please look up {w} for me", "I need information on {w}", "what do you know about {w}"]
    rows = {"query": [], "tool_names": [], "tool_texts": [], "labels": []}
    for i, w in enumerate(words):
        other = words[(i + 1) % len(words)]
        for t in templates[:n_queries]:
            rows["query"].append(t.format(w=w))
            rows["tool_names"].append([f"{w}_service", f"{other}_service"])
            rows["tool_texts"].append([tool_text(w), tool_text(other)])
            rows["labels"].append([1, 0])
    for i in range(irrelevant):
        w = words[i]
        rows["query"].append(f"sing me a song about nothing at all {i}")
        rows["tool_names"].append([f"{w}_service"])
        rows["tool_texts"].append([tool_text(w)])
        rows["labels"].append([0])
    return Dataset.from_dict(rows)


def tiny_v2_router(tmp_path, tokenizer, **kwargs) -> ToolRouterModel:
    torch.manual_seed(0)
    return ToolRouterModel.from_pretrained_encoder(
        tiny_encoder_dir(tmp_path, len(tokenizer)), d_resource=8, num_attention_heads=4, dropout=0.0,
        latency_hidden_size=8, **kwargs,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------- config
def test_config_rejects_bad_encoder_settings():
    with pytest.raises(ValueError, match="encoder_type must be one of"):
        ToolRouterConfig(encoder_type="lstm")
    with pytest.raises(ValueError, match="needs text_encoder_config"):
        ToolRouterConfig(encoder_type="pretrained")
    with pytest.raises(ValueError, match="differs from the text encoder's vocab_size=99"):
        ToolRouterConfig(encoder_type="pretrained", vocab_size=100,
                         text_encoder_config={"model_type": "bert", "vocab_size": 99})  # fmt: skip
    with pytest.raises(ValueError, match="matching must be one of"):
        ToolRouterConfig(matching="dot")


def test_pretrained_encoder_weights_are_copied_and_saved_bit_identical(tmp_path, router_tokenizer):
    model = tiny_v2_router(tmp_path, router_tokenizer, share_encoder=True).eval()
    source = BertModel.from_pretrained(tmp_path / "tiny_bert", add_pooling_layer=False)
    for name, value in source.state_dict().items():
        assert torch.equal(model.query_encoder.mamba.state_dict()[name], value), name
    assert model.tool_encoder.mamba is model.query_encoder.mamba  # shared towers
    assert torch.equal(model.tool_encoder.proj.weight, torch.eye(32))
    separate = tiny_v2_router(tmp_path, router_tokenizer, share_encoder=False)
    assert separate.tool_encoder.mamba is not separate.query_encoder.mamba
    # Separate towers cost exactly one more copy of the encoder.
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(separate) - count(model) == count(source)

    (tmp_path / "tiny_bert").rename(tmp_path / "gone")  # loading must not need the encoder's folder
    model.save_pretrained(tmp_path / "router")
    loaded = AutoModel.from_pretrained(tmp_path / "router").eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    enc = router_tokenizer(["look up apple"], return_tensors="pt")
    tools = router_tokenizer([tool_text("apple"), tool_text("pear")], return_tensors="pt", padding=True)
    args = (
        enc["input_ids"],
        enc["attention_mask"],
        tools["input_ids"],
        tools["attention_mask"],
        torch.zeros(2, 6),
    )
    with torch.no_grad():
        assert torch.equal(model(*args).scores, loaded(*args).scores)


# ------------------------------------------------------------------------------------------- fusion head
def test_fusion_features_lie_in_range_and_follow_the_context_set(tmp_path, router_tokenizer):
    model = tiny_v2_router(tmp_path, router_tokenizer).eval()
    texts = [tool_text(w) for w in WORDS[:6]]
    with torch.no_grad():
        states = embed_texts(model.tool_encoder, router_tokenizer, texts)
        cache = model.encode_tools(tool_text_embeddings=states, resource_vectors=torch.zeros(6, 6))
        enc = router_tokenizer(["look up apple", "cherry please"], return_tensors="pt", padding=True)
        lexical = torch.from_numpy(BM25Index(texts).scores(["look up apple", "cherry please"]))
        full = model(enc["input_ids"], enc["attention_mask"], tool_cache=cache, lexical_scores=lexical)
        mask = torch.tensor([1, 0, 1, 0, 0, 0], dtype=torch.bool)
        sub = model(
            enc["input_ids"], enc["attention_mask"], tool_cache=cache, lexical_scores=lexical, tool_mask=mask
        )
    # Candidate scoring is the catalogue ranking restricted to the candidates, to the bit.
    assert torch.equal(sub.scores[:, mask], full.scores[:, mask])
    assert (sub.scores[:, ~mask] == torch.finfo(torch.float32).min).all()
    assert torch.equal(sub.abstain_score, full.abstain_score)
    # Encoding from ids gives the same tool states as from precomputed text embeddings.
    ids = router_tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=128)
    with torch.no_grad():
        from_ids = model.encode_tools(ids["input_ids"], ids["attention_mask"], torch.zeros(6, 6))
    torch.testing.assert_close(from_ids.tool_states, cache.tool_states, rtol=0, atol=1e-5)
    with torch.no_grad():
        q = model.query_encoder.embed(enc["input_ids"], enc["attention_mask"])
        features = model.fusion_features(q, model.query_encoder.proj(q), cache.text_units, cache.tool_units,
                                         cache.resource_states, torch.ones(2, 6, dtype=torch.bool), lexical)  # fmt: skip
    assert features.shape == (2, 6, 5)
    assert features.abs().max() <= 1.0
    # lexical z-score: the tool sharing the query's word has the highest value of its row.
    assert features[0, :, 2].argmax() == 0 and features[1, :, 2].argmax() == 2


def test_forward_rejects_bad_lexical_scores_and_embeddings(tmp_path, router_tokenizer):
    model = tiny_v2_router(tmp_path, router_tokenizer).eval()
    states = torch.randn(3, 32)
    cache = model.encode_tools(tool_text_embeddings=states, resource_vectors=torch.zeros(3, 6))
    q = torch.randn(2, 32)
    with pytest.raises(ValueError, match=r"lexical_scores \(2, 4\) must have shape \[B, T\]"):
        model(query_embeddings=q, tool_cache=cache, lexical_scores=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="lexical_scores contain NaN"):
        model(query_embeddings=q, tool_cache=cache, lexical_scores=torch.full((2, 3), math.nan))
    with pytest.raises(ValueError, match=r"query_embeddings must be \[B, 32\]"):
        model(query_embeddings=torch.randn(2, 16), tool_cache=cache)
    with pytest.raises(ValueError, match="tool_text_embeddings must be 32-d"):
        model.encode_tools(tool_text_embeddings=torch.randn(3, 8), resource_vectors=torch.zeros(3, 6))
    with pytest.raises(ValueError, match="query_input_ids .or query_embeddings. is required"):
        model(tool_cache=cache)


def test_kan_edge_functions_sum_to_the_layer_output():
    torch.manual_seed(0)
    layer = KANLayer(3, 2, grid_size=5)
    x = torch.linspace(-1, 1, 7)
    edges = kan_edge_functions(layer, x)
    assert edges.shape == (7, 2, 3)
    torch.testing.assert_close(edges.sum(-1), layer(x[:, None].expand(-1, 3)), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------- recipe pieces
def test_contrastive_loss_hand_computed():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    s = torch.tensor([[1.0, 0.0, 2**-0.5], [0.0, 1.0, 2**-0.5]]) / 0.05
    expected = (
        (torch.logsumexp(s[0], 0) - s[0, 0]) + (torch.logsumexp(s[1], 0) - torch.logsumexp(s[1, 1:], 0))
    ) / 2
    torch.testing.assert_close(contrastive_loss(q, t, labels), expected)
    with pytest.raises(ValueError, match="at least one positive"):
        contrastive_loss(q, t, torch.zeros(2, 3))


def test_hard_negatives_skip_tools_with_a_correct_name():
    split = {
        "query": ["apple please"],
        "tool_names": [["apple_service"]],
        "tool_texts": [["apple text"]],
        "labels": [[1]],
    }
    examples = catalogue_examples(split)
    examples.texts += ["apple text v2", "pear text"]
    examples.names += ["apple_service", "pear_service"]
    lexical = np.array([[5.0, 4.0, 1.0]])  # the same function under another text is the top BM25 "negative"
    assert mine_hard_negatives(examples, lexical) == [[2]]


def test_contrastive_collator_unions_tools(router_tokenizer):
    collate = ContrastiveCollator(router_tokenizer, ["a tool", "b tool", "c tool"])
    batch = collate(
        [
            {"query": "q1", "positives": [0], "negatives": [2]},
            {"query": "q2", "positives": [1], "negatives": [0]},
        ]
    )
    assert batch["tool_input_ids"].shape[0] == 3
    assert batch["labels"].tolist() == [[1, 0, 0], [0, 0, 1]]


def test_bm25_splits_identifiers():
    assert split_identifiers("getWeather_forecast.v2") == "get Weather forecast v2"
    index = BM25Index(["get_weather: forecast", "send_email: mail"])
    scores = index.scores(["weather", "the"])
    assert scores[0, 0] > 0 and scores[0, 1] == 0
    assert (scores[1] == 0).all()  # stopwords only


# ------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained_router(tmp_path_factory, router_tokenizer):
    tmp = tmp_path_factory.mktemp("v2")
    dataset = {"train": word_dataset(WORDS[:N_TRAIN_TOOLS], irrelevant=12)}
    model, tokenizer, summary = train_router_v2(
        dataset, tmp / "router", encoder=tiny_encoder_dir(tmp, len(router_tokenizer)), tokenizer=router_tokenizer,
        encoder_epochs=2, encoder_batch_size=16, encoder_lr=1e-3, head_epochs=40, head_batch_size=32,
        max_length=32, disable_tqdm=True, logging_steps=1,
        config_overrides=dict(d_resource=8, num_attention_heads=4, dropout=0.0, latency_hidden_size=8),
    )  # fmt: skip
    return model, tokenizer, summary, tmp


def test_v2_recipe_retrieves_tools_never_seen_in_training(trained_router):
    model, tokenizer, summary, _ = trained_router
    assert summary["encoder_stage"]["last_loss"] < summary["encoder_stage"]["first_loss"]
    assert summary["head_stage"]["last_loss"] < summary["head_stage"]["first_loss"]
    catalogue = [tool_text(w) for w in WORDS]  # 40 tools seen in training, the rest never
    index = ToolIndex.build(model, tokenizer, catalogue, max_tool_length=32)
    held_out = WORDS[N_TRAIN_TOOLS:]
    results = index.route([f"I need information on {w}" for w in held_out], k=5)
    hits = [r.tools[0].name == f"{w}_service" for r, w in zip(results, held_out)]
    assert np.mean(hits) >= 0.9, np.mean(hits)  # random: 1 / len(WORDS)
    # Without the lexical channel the tiny from-scratch encoder alone is far worse: the fusion head uses it.
    scores, _ = index.scores([f"I need information on {w}" for w in held_out])
    assert scores.shape == (len(held_out), len(WORDS))


def test_v2_abstain_separates_irrelevant_queries(trained_router):
    model, tokenizer, _, _ = trained_router
    index = ToolIndex.build(model, tokenizer, [tool_text(w) for w in WORDS], max_tool_length=32)
    relevant = index.route([f"please look up {w} for me" for w in WORDS[N_TRAIN_TOOLS:]], k=1)
    irrelevant = index.route([f"sing me a song about nothing at all {i}" for i in range(20, 30)], k=1)
    margin = lambda r: r.abstain_score - r.tools[0].score  # noqa: E731
    assert min(margin(r) for r in irrelevant) > max(margin(r) for r in relevant)


# ------------------------------------------------------------------------------------------- ToolIndex
def test_tool_index_save_load_route_equal(trained_router, tmp_path):
    model, tokenizer, _, _ = trained_router
    specs = [{"type": "function", "function": {"name": f"{w}_service", "description": f"handles requests about {w}",
              "parameters": {"type": "object", "properties": {"query": {"type": "string", "description": "what"}}}}}
             for w in WORDS[:30]]  # fmt: skip
    resources = torch.rand(30, 6, generator=torch.Generator().manual_seed(0)) * torch.tensor(
        [8, 32, 1, 2, 5, 7.0]
    )
    index = ToolIndex.build(model, tokenizer, specs, resources, max_tool_length=32)
    queries = ["look up banana", "what about the ocean", "cheese please"]
    index.save(tmp_path / "index")
    loaded = ToolIndex.load(tmp_path / "index", model, tokenizer)
    a, b = index.scores(queries), loaded.scores(queries)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    routed, again = index.route(queries, k=3), loaded.route(queries, k=3)
    assert [[t.name for t in r.tools] for r in routed] == [[t.name for t in r.tools] for r in again]
    assert routed[0].tools[0].name == "banana_service"
    low, high = routed[0].tools[0].latency_interval
    assert low < high
    # Budget: only tools within every limit; candidates: only those offered.
    within = index.route("look up banana", k=3, budget={"latency": 1.0, "memory": 16})
    allowed = {i for i in range(30) if resources[i, 3] <= 1.0 and resources[i, 1] <= 16}
    assert {t.index for t in within.tools} <= allowed
    offered = index.route("look up banana", k=2, candidates=["apple_service", "cherry_service"])
    assert {t.name for t in offered.tools} == {"apple_service", "cherry_service"}


def test_tool_index_bad_input_raises(trained_router):
    model, tokenizer, _, _ = trained_router
    with pytest.raises(ValueError, match="non-empty sequence of tools"):
        ToolIndex.build(model, tokenizer, [])
    with pytest.raises(ValueError, match="needs a 'name'"):
        ToolIndex.build(model, tokenizer, [{"description": "no name"}])
    with pytest.raises(ValueError, match="resource_vectors contain NaN"):
        ToolIndex.build(model, tokenizer, ["a: x", "b: y"], [[math.nan] * 6, [0.0] * 6])
    with pytest.raises(ValueError, match=r"resource_vectors must be \[2, 6\]"):
        ToolIndex.build(model, tokenizer, ["a: x", "b: y"], [[0.0] * 6])
    index = ToolIndex.build(model, tokenizer, ["a: x", "b: y"])
    with pytest.raises(ValueError, match="k=3 exceeds the 2 tools"):
        index.route("x", k=3)
    with pytest.raises(ValueError, match="needs an index built with resource_vectors"):
        index.route("x", k=1, budget={"latency": 1})
    with pytest.raises(ValueError, match="unknown budget field 'speed'"):
        index.route("x", k=1, budget={"speed": 1})
    with pytest.raises(ValueError, match="candidate 'zzz' is not a tool"):
        index.route("x", k=1, candidates=["zzz"])
    assert tool_name_and_text("calc: adds") == ("calc", "calc: adds")


# ------------------------------------------------------------------------------------------- CLI
def test_cli_trains_v2_on_bfcl_by_default(tmp_path, router_tokenizer, capsys):
    """``causalqwen-train-router --quick`` on a BFCL-layout wheel runs both v2 stages with the given encoder."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from causalqwen.training import router_cli
    from test_routing_benchmark import write_fake_wheel

    wheel = write_fake_wheel(tmp_path / "bfcl_eval-0-py3-none-any.whl")
    encoder = tiny_encoder_dir(tmp_path, len(router_tokenizer))
    argv = [
        "--quick",
        "--bfcl-wheel",
        str(wheel),
        "--encoder",
        encoder,
        "--output-dir",
        str(tmp_path / "out"),
    ]
    assert router_cli.main(argv) == 0
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["data"] == "bfcl" and summary["encoder"] == encoder
    assert summary["encoder_stage"]["steps"] >= 1 and summary["head_stage"]["steps"] >= 1
    for stage in ("encoder_stage", "head_stage"):  # throughput is tracked per stage (issue #16)
        assert summary[stage]["steps_per_s"] > 0
    assert "encoder stage" in capsys.readouterr().out
    loaded = AutoModel.from_pretrained(tmp_path / "out")
    assert loaded.config.encoder_type == "pretrained" and loaded.config.matching == "fusion"


def test_tool_index_latency_intervals_with_and_without_runtime_context(tmp_path, router_tokenizer):
    resources = [[1, 2, 0, 0.3, 0.1, 0], [4, 16, 1, 2.0, 1.0, 7]]
    for context_dim in (0, 1):
        model = tiny_v2_router(tmp_path, router_tokenizer, runtime_context_dim=context_dim).eval()
        index = ToolIndex.build(model, router_tokenizer, ["a_tool: apple", "b_tool: pear"], resources)
        assert (index.cache.latency_loc is None) == bool(context_dim)  # cached only without a context
        routed = index.route("apple please", k=2)
        for tool in routed.tools:
            low, high = tool.latency_interval
            assert low < high
        # The interval is the forward's own latency head output at the neutral (zero) context.
        enc = router_tokenizer(["apple please"], return_tensors="pt")
        with torch.no_grad():
            out = model(enc["input_ids"], enc["attention_mask"], tool_cache=index.cache)
        first = routed.tools[0]
        centre = (first.latency_interval[0] + first.latency_interval[1]) / 2
        assert centre == pytest.approx(out.latency_loc[0, first.index].item(), rel=1e-5, abs=1e-6)
