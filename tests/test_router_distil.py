"""MiniLM -> router distillation: data, the loss falling on a tiny setup, the teacher, Trainer/CLI wiring."""

from __future__ import annotations

import json
import os

import pytest
import torch

from causalqwen import ToolRouterModel
from causalqwen.training import router_cli
from causalqwen.training import router_distil as rd
from causalqwen.training import router_trainer as rt
from causalqwen.training.router_data import build_synthetic_routing_dataset
from router_helpers import TINY_ROUTER as TINY

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("USE_HUB_KERNELS", "0")


def fake_teacher(dim: int = 8):
    """Deterministic unit vectors per text: a cheap stand-in for MiniLM (same text, same vector)."""

    def embed(texts):
        rows = []
        for text in texts:
            g = torch.Generator().manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(text)))
            rows.append(torch.randn(dim, generator=g))
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)

    return embed


def split(rows):
    return {"query": [q for q, _ in rows], "tool_texts": [t for _, t in rows]}


def test_distillation_data_dedupes_tools_and_indexes_candidates():
    data = rd.build_distillation_data(
        [split([("q1", ["a", "b"]), ("q2", ["b"])]), split([("q3", ["c", "a"])])], embed=fake_teacher()
    )
    assert data.queries == ["q1", "q2", "q3"] and data.tools == ["a", "b", "c"]
    assert data.candidates == [[0, 1], [1], [2, 0]]
    assert data.query_targets.shape == (3, 8) and data.tool_targets.shape == (3, 8)
    assert torch.allclose(data.tool_targets[1], fake_teacher()(["b"])[0])
    with pytest.raises(ValueError, match="candidate lists"):
        rd.DistillationData(["q"], ["a"], data.query_targets[:1], data.tool_targets[:1], [])


def test_sampled_tool_set_holds_the_candidates_then_random_distinct_tools():
    import random

    data = rd.build_distillation_data(
        [split([("q1", ["a", "b"]), ("q2", ["c"]), ("q3", ["d", "e"])])], embed=fake_teacher()
    )
    tools = rd._sample_tools(data, [0, 1], 4, random.Random(0))
    assert tools[:3] == [0, 1, 2] and len(set(tools)) == 4
    assert len(rd._sample_tools(data, [0], 99, random.Random(0))) == 5  # capped at the catalogue


def test_distillation_loss_falls_on_a_tiny_setup(router_tokenizer):
    words = ["weather", "forecast", "triangle", "area", "stock", "price", "email", "send", "music", "play"]
    rows = [(f"please {a} the {b}", [f"{b}_{a}: {a} a {b}", f"{a} tool"]) for a in words for b in words[:4]]
    data = rd.build_distillation_data([split(rows)], embed=fake_teacher(16))
    torch.manual_seed(0)
    model = ToolRouterModel(rt.router_config_for(router_tokenizer, **TINY))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary = rd.distil_router(
        model, router_tokenizer, data, max_steps=40, batch_queries=8, batch_tools=12, learning_rate=1e-2
    )
    assert summary["steps"] == 40 and summary["texts"] == {"queries": 40, "tools": 50}
    first, last = summary["first"], summary["last"]
    assert last["loss"] < 0.7 * first["loss"], (first, last)
    assert last["embedding"] < first["embedding"] and last["score"] < first["score"]
    # The projection head is not part of the router: same parameters, changed values.
    assert set(model.state_dict()) == set(before)
    assert not torch.equal(model.state_dict()["logit_scale"], before["logit_scale"])
    assert not model.training


def test_distillation_loss_is_zero_score_term_for_matching_scores(router_tokenizer):
    """KL term: 0 when router scores equal the teacher's logits; embedding term: 0 for aligned outputs."""
    torch.manual_seed(0)
    model = ToolRouterModel(rt.router_config_for(router_tokenizer, **TINY)).eval()
    q = router_tokenizer(["send an email"], return_tensors="pt")
    t = router_tokenizer(
        ["send_email: send a mail", "play_music: play a song"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        query = model.query_encoder(q["input_ids"], q["attention_mask"])
        tools = model.encode_tools(t["input_ids"], t["attention_mask"], torch.zeros(2, 6)).tool_states
        # Teacher = the router's own normalised vectors, at the router's temperature: both terms vanish.
        qn, tn = (torch.nn.functional.normalize(x, dim=-1) for x in (query, tools))
        losses = rd.distillation_loss(
            model, torch.nn.Identity(), q["input_ids"], q["attention_mask"], t["input_ids"],
            t["attention_mask"], qn, tn, teacher_temperature=1 / model.logit_scale.exp().item(),
        )  # fmt: skip
    assert losses["embedding"].abs() < 1e-5 and losses["score"].abs() < 1e-5


def test_teacher_is_minilm_sentence_embeddings():
    emb = rd.teacher_embeddings(
        ["weather forecast for tomorrow", "will it rain tomorrow", "area of a triangle"]
    )
    assert emb.shape == (3, 384)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.2


def test_train_router_distils_before_the_supervised_stage(router_tokenizer, tmp_path):
    ds = build_synthetic_routing_dataset(32, 16, 8, num_families=2, seed=1)
    data = rd.build_distillation_data([ds["train"], ds["dev"]], embed=fake_teacher())
    _, _, summary = rt.train_router(
        ds, tmp_path, tokenizer=router_tokenizer, config_overrides=TINY, max_steps=2, batch_size=8,
        disable_tqdm=True, distil_steps=3, distil_data=data, distil_weight=1.0, shared_tool_set=True,
    )  # fmt: skip
    assert summary["distillation"]["steps"] == 3 and summary["steps"] == 2 and summary["distil_weight"] == 1.0
    _, _, plain = rt.train_router(
        ds, tmp_path, tokenizer=router_tokenizer, config_overrides=TINY, max_steps=1, batch_size=8, disable_tqdm=True
    )  # fmt: skip
    assert plain["distillation"] is None and plain["distil_weight"] == 0.0


def test_cli_flag_runs_distillation(tmp_path, monkeypatch):
    monkeypatch.setattr(rd, "teacher_embeddings", fake_teacher())  # the real teacher is tested above
    args = ["--data", "synthetic", "--quick", "--distil-steps", "2", "--output-dir", str(tmp_path)]
    assert router_cli.main(args) == 0
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["distillation"]["steps"] == 2
    assert router_cli.build_parser().parse_args(["--output-dir", "x"]).distil_steps == router_cli.DISTIL_STEPS


def test_supervised_stage_adds_the_teacher_score_kl(router_tokenizer, tmp_path):
    from transformers import TrainingArguments

    ds = build_synthetic_routing_dataset(16, 8, 8, num_families=2, seed=1)
    data = rd.build_distillation_data([ds["train"]], embed=fake_teacher())
    teacher = dict(zip(data.queries, data.query_targets)) | dict(zip(data.tools, data.tool_targets))
    batch = rt.RouterDataCollator(router_tokenizer, shared_tool_set=True, teacher=teacher)(
        [ds["train"][i] for i in range(4)]
    )
    tq, tt = batch["teacher_query_embeddings"], batch["teacher_tool_embeddings"]
    assert tq.shape == (4, 8) and tt.shape == (batch["tool_input_ids"].shape[0], 8)
    torch.manual_seed(0)
    model = ToolRouterModel(rt.router_config_for(router_tokenizer, **TINY)).eval()
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to="none")
    trainer = rt.RouterTrainer(model=model, args=args, distil_weight=0.5)
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        plain = model(**{k: v for k, v in batch.items() if not k.startswith("teacher")})
        kl = rd.score_distillation_loss(plain.scores, tq, tt)
    assert kl > 0.01
    assert torch.allclose(loss, plain.loss + 0.5 * kl)
