"""Distilling all-MiniLM-L6-v2 into the ToolRouter's encoders (issue #7).

Why: ~1.2k BFCL training questions teach the router's from-scratch Mamba encoders the non-live question
style and little else (dev top-1 0.98, BFCL live close to random), while MiniLM, pretrained on ~1B
sentence pairs, transfers zero-shot. Before the supervised stage, the router learns to reproduce the
teacher's sentence geometry on text it is allowed to see: the train/dev questions and the distinct tool
descriptions of the train/dev candidate sets (never the test split, not even its unlabelled tool texts).

Each step samples ``batch_queries`` questions and a tool set made of their candidates topped up with
random train/dev tools (``batch_tools`` in all), and minimises

* **embedding loss**: ``1 - cos(W q, e_q)`` for the query vectors and ``1 - cos(W h, e_t)`` for the tool
  states after tool-set attention, with one shared learned projection ``W: d_model -> 384``; sharing
  ``W`` puts queries and tools in one space that maps linearly onto the teacher's;
* **score loss**: ``KL(softmax(e_q e_t^T / tau_teacher) || softmax(router scores))`` over the sampled tool
  set, so the router's own matching (cosine x learned temperature, the scores routing uses) ranks tools
  as the teacher does.

The projection ``W`` exists only during distillation and is not saved with the router.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..modeling.modeling_tool_router import ToolRouterModel
from .minilm import minilm_path

TEACHER_MAX_LENGTH = 128  # the MiniLM baseline's truncation (benchmarks/baselines.py)


def teacher_embeddings(texts: Sequence[str], batch_size: int = 64, teacher=None) -> torch.Tensor:
    """Unit-norm all-MiniLM-L6-v2 sentence embeddings ``[N, 384]`` (offline package files, no Hub)."""
    if teacher is None:
        from sentence_transformers import SentenceTransformer

        teacher = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
        teacher.max_seq_length = TEACHER_MAX_LENGTH
    embeddings = teacher.encode(
        list(texts), batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True
    )
    return embeddings.float().cpu()


@dataclass
class DistillationData:
    """Texts and their teacher embeddings; ``candidates[i]`` indexes ``tools`` for question ``i``."""

    queries: list[str]
    tools: list[str]
    query_targets: torch.Tensor
    tool_targets: torch.Tensor
    candidates: list[list[int]]

    def __post_init__(self):
        if len(self.queries) != len(self.query_targets) or len(self.tools) != len(self.tool_targets):
            raise ValueError("every text needs one teacher embedding")
        if len(self.candidates) != len(self.queries):
            raise ValueError(f"{len(self.candidates)} candidate lists for {len(self.queries)} queries")
        if not self.queries or not self.tools:
            raise ValueError("distillation needs at least one query and one tool")


def build_distillation_data(splits, embed=None) -> DistillationData:
    """Questions and distinct tool texts of ``splits`` (train/dev rows of :mod:`router_data`), embedded.

    ``embed`` maps texts to ``[N, D]`` unit vectors (default :func:`teacher_embeddings`; tests pass a
    cheap stand-in).
    """
    embed = embed or teacher_embeddings
    queries, candidates, index = [], [], {}
    for split in splits:
        for query, texts in zip(split["query"], split["tool_texts"]):
            queries.append(query)
            candidates.append([index.setdefault(t, len(index)) for t in texts])
    tools = list(index)
    return DistillationData(queries, tools, embed(queries), embed(tools), candidates)


def _sample_tools(data: DistillationData, queries: Sequence[int], size: int, rng: random.Random) -> list[int]:
    """The queries' candidates (so each query meets its own tools) topped up with random tools."""
    chosen = list(dict.fromkeys(t for q in queries for t in data.candidates[q]))
    size = min(size, len(data.tools))
    seen = set(chosen)
    while len(chosen) < size:
        t = rng.randrange(len(data.tools))
        if t not in seen:
            seen.add(t)
            chosen.append(t)
    return chosen


def distillation_loss(
    model: ToolRouterModel,
    head: nn.Module,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    tool_ids: torch.Tensor,
    tool_mask: torch.Tensor,
    query_targets: torch.Tensor,
    tool_targets: torch.Tensor,
    teacher_temperature: float = 0.05,
) -> dict[str, torch.Tensor]:
    """Embedding and score distillation losses for one batch (see the module docstring).

    ``tool_ids`` is one shared tool set ``[T, Lt]`` (zero resource vectors: BFCL has none). Returns
    ``loss`` (their sum), ``embedding`` and ``score``.
    """
    query = model.query_encoder(query_ids, query_mask)
    resources = torch.zeros(tool_ids.shape[0], model.config.resource_dim, dtype=query.dtype)
    tools = model.encode_tools(tool_ids, tool_mask, resources).tool_states
    cos = nn.functional.cosine_similarity
    embedding = (1 - cos(head(query), query_targets, dim=-1)).mean() + (
        1 - cos(head(tools), tool_targets, dim=-1)
    ).mean()
    scores = model._match(query, tools.expand(query.shape[0], -1, -1))
    score = score_distillation_loss(scores, query_targets, tool_targets, teacher_temperature)
    return {"loss": embedding + score, "embedding": embedding, "score": score}


def score_distillation_loss(
    scores: torch.Tensor,
    query_targets: torch.Tensor,
    tool_targets: torch.Tensor,
    teacher_temperature: float = 0.05,
) -> torch.Tensor:
    """``KL(softmax(e_q e_t^T / tau) || softmax(scores))`` over one shared tool set, mean over queries.

    ``scores`` [B, T] are router logits for the tools whose teacher embeddings are ``tool_targets`` [T, D].
    """
    teacher = torch.softmax(query_targets @ tool_targets.T / teacher_temperature, dim=-1)
    return nn.functional.kl_div(torch.log_softmax(scores, dim=-1), teacher, reduction="batchmean")


def distil_router(
    model: ToolRouterModel,
    tokenizer,
    data: DistillationData,
    *,
    max_steps: int = 300,
    time_budget_s: float | None = None,
    batch_queries: int = 64,
    batch_tools: int = 96,
    learning_rate: float = 2e-3,
    teacher_temperature: float = 0.05,
    max_query_length: int = 64,
    max_tool_length: int = 64,
    seed: int = 0,
    log_every: int = 0,
) -> dict:
    """Train ``model``'s encoders, tool-set attention and temperature to mimic the teacher (in place).

    AdamW with a linear warm-up over the first 5 % of ``max_steps`` and cosine decay; stops after
    ``max_steps`` or ``time_budget_s`` seconds. Returns a summary: steps, seconds, first/last losses.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    head = nn.Linear(model.config.d_model, data.query_targets.shape[-1])
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    warmup = max(1, round(0.05 * max_steps))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, max_steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    order: list[int] = []
    history, start, step = [], time.perf_counter(), 0
    while step < max_steps:
        if len(order) < batch_queries:
            order += rng.sample(range(len(data.queries)), len(data.queries))
        queries, order = order[:batch_queries], order[batch_queries:]
        tools = _sample_tools(data, queries, batch_tools, rng)
        q = tokenizer([data.queries[i] for i in queries], max_length=max_query_length, truncation=True,
                      padding="longest", return_tensors="pt")  # fmt: skip
        t = tokenizer([data.tools[i] for i in tools], max_length=max_tool_length, truncation=True,
                      padding="longest", return_tensors="pt")  # fmt: skip
        losses = distillation_loss(
            model, head, q["input_ids"], q["attention_mask"], t["input_ids"], t["attention_mask"],
            data.query_targets[queries], data.tool_targets[tools], teacher_temperature,
        )  # fmt: skip
        optimizer.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        history.append({k: v.item() for k, v in losses.items()})
        if log_every and step % log_every == 0:
            print(f"  distil step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items()),
                  flush=True)  # fmt: skip
        if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
            break
    model.eval()
    return {
        "steps": step,
        "seconds": time.perf_counter() - start,
        "first": history[0],
        "last": history[-1],
        "texts": {"queries": len(data.queries), "tools": len(data.tools)},
    }


__all__ = [
    "DistillationData",
    "build_distillation_data",
    "distil_router",
    "distillation_loss",
    "score_distillation_loss",
    "teacher_embeddings",
]
