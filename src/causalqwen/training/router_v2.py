"""Router v2 training recipe (issue #12): a pretrained text encoder, BM25 lexical channel, KAN fusion head.

Two stages, both through a ``Trainer``:

1. **Encoder** (:class:`EncoderContrastiveTrainer`): the query/tool encoder (all-MiniLM-L6-v2 by default,
   or the seed-000 Mamba) is fine-tuned contrastively on the training questions: for a batch of B
   questions the tool set is the union of their correct tools plus one BM25-mined hard negative per
   question from the training catalogue (a top-BM25 tool with another function name), and the loss is the
   multi-positive InfoNCE over dense cosines at a fixed temperature (0.05, sentence-transformers' scale 20).
   Questions with no correct tool (irrelevance) are left out of this stage.
2. **Heads** (:class:`~causalqwen.training.router_trainer.RouterTrainer`): the encoder is frozen; the
   head-stage questions and every distinct training tool are embedded once; then resource MLP, tool-set
   attention, the fusion KAN and the abstain KAN train on the *whole training catalogue* as the tool set
   of every question (BCE with the fusion head's learned SigLIP-style bias + listwise CE over
   [abstain, catalogue], :meth:`ToolRouterModel.compute_loss`), irrelevance questions training abstain.
   This is the tool-state definition the model uses everywhere: states and fusion z-scores over the
   catalogue the tools are indexed in (``ToolIndex``), candidate scoring = that ranking restricted to
   the candidates.

**Held-out head data.** The head stage must see dense scores as they look on questions the encoder was
not fine-tuned on: on its own training questions the fine-tuned encoder is over-confident, and a head fitted
there learns to trust the dense channel too much (measured: with stage 2 on the stage-1 questions, BFCL live
catalogue name-Recall@1 fell from 0.731 for a fixed dense + BM25 mix to 0.653). So a seeded
``head_fraction`` (30 %) of the questions with a correct tool is held out of stage 1 and, with every
irrelevance question, forms stage 2's data (holdout stacking).

Only the ``train`` split is trained on; ``dev`` is for the abstain threshold and the logs. The live
(test) split, its tool texts included, is never seen.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer

from ..lexical import BM25Index
from ..modeling.modeling_tool_router import ToolRouterModel
from ..tool_index import MAX_TEXT_LENGTH, embed_texts
from .minilm import load_router_tokenizer, minilm_path
from .router_trainer import (
    RouterTrainer,
    TimeBudgetCallback,
    router_config_for,
    router_training_args,
    warm_start_embeddings,
)

# InfoNCE temperature of the encoder stage (sentence-transformers' MultipleNegativesRankingLoss uses 1/20).
CONTRASTIVE_TEMPERATURE = 0.05


@dataclass
class CatalogueExamples:
    """One split as catalogue indices: distinct tool ``texts``/``names`` and, per question, the indices
    of its correct tools (``positives``) and of its offered candidates."""

    queries: list[str]
    texts: list[str]
    names: list[str]
    positives: list[list[int]]
    candidates: list[list[int]]


def catalogue_examples(split) -> CatalogueExamples:
    """Index a split's distinct tool texts (first-seen order) and map each question onto them."""
    index: dict[str, int] = {}
    names: list[str] = []
    positives, candidates = [], []
    for tool_names, texts, labels in zip(split["tool_names"], split["tool_texts"], split["labels"]):
        ids = []
        for name, text in zip(tool_names, texts):
            if text not in index:
                index[text] = len(index)
                names.append(name)
            ids.append(index[text])
        candidates.append(ids)
        positives.append([i for i, label in zip(ids, labels) if label])
    return CatalogueExamples(list(split["query"]), list(index), names, positives, candidates)


def mine_hard_negatives(
    examples: CatalogueExamples, lexical: np.ndarray, per_query: int = 1
) -> list[list[int]]:
    """For each question, its ``per_query`` best-BM25 tools whose function name is none of its answers'.

    Excluding same-name tools keeps near-duplicates of the right tool (the same function in another
    language's category) from being taught as wrong.
    """
    out = []
    for row, positives in zip(lexical, examples.positives):
        taken = {examples.names[p] for p in positives}
        picks = []
        for tool in np.argsort(-row, kind="stable"):
            if len(picks) == per_query:
                break
            if examples.names[tool] not in taken:
                picks.append(int(tool))
        out.append(picks)
    return out


@dataclass
class ContrastiveCollator:
    """Rows ``{"query", "positives", "negatives"}`` (catalogue indices) -> query/tool token ids and a
    multi-hot ``labels`` [B, T] over the batch's tool union (positives and hard negatives of all rows)."""

    tokenizer: Any
    tool_texts: Sequence[str]
    max_query_length: int = MAX_TEXT_LENGTH
    max_tool_length: int = MAX_TEXT_LENGTH

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("ContrastiveCollator got an empty batch")
        tools: dict[int, int] = {}
        for row in rows:
            for t in [*row["positives"], *row["negatives"]]:
                tools.setdefault(int(t), len(tools))
        labels = torch.zeros(len(rows), len(tools))
        for b, row in enumerate(rows):
            for t in row["positives"]:
                labels[b, tools[int(t)]] = 1.0
        query = self.tokenizer([r["query"] for r in rows], max_length=self.max_query_length, truncation=True,
                               padding="longest", return_tensors="pt")  # fmt: skip
        tool = self.tokenizer([self.tool_texts[t] for t in tools], max_length=self.max_tool_length,
                              truncation=True, padding="longest", return_tensors="pt")  # fmt: skip
        return {
            "query_input_ids": query["input_ids"],
            "query_attention_mask": query["attention_mask"],
            "tool_input_ids": tool["input_ids"],
            "tool_attention_mask": tool["attention_mask"],
            "labels": labels,
        }


def contrastive_loss(query: torch.Tensor, tools: torch.Tensor, labels: torch.Tensor,
                     temperature: float = CONTRASTIVE_TEMPERATURE) -> torch.Tensor:  # fmt: skip
    """Multi-positive InfoNCE: ``-log(sum_pos exp(s) / sum_all exp(s))`` per query, s = cos / temperature."""
    if labels.shape != (query.shape[0], tools.shape[0]):
        raise ValueError(f"labels {tuple(labels.shape)} must be [{query.shape[0]}, {tools.shape[0]}]")
    if not (labels.sum(-1) > 0).all():
        raise ValueError("every query of a contrastive batch needs at least one positive tool")
    logits = nn.functional.normalize(query, dim=-1) @ nn.functional.normalize(tools, dim=-1).T / temperature
    positive = torch.logsumexp(logits.masked_fill(labels == 0, torch.finfo(logits.dtype).min), dim=-1)
    return (torch.logsumexp(logits, dim=-1) - positive).mean()


class EncoderContrastiveTrainer(Trainer):
    """Stage 1: trains only the router's text encoders, on :func:`contrastive_loss` of pooled states."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        query = model.query_encoder.embed(inputs["query_input_ids"], inputs["query_attention_mask"])
        tools = model.tool_encoder.embed(inputs["tool_input_ids"], inputs["tool_attention_mask"])
        loss = contrastive_loss(query, tools, inputs["labels"])
        return (loss, {"loss": loss}) if return_outputs else loss


@dataclass
class CatalogueCollator:
    """Stage 2 rows ``{"row", "positives"}`` -> forward arguments with the whole catalogue as tool set.

    Query and tool text states are precomputed with the frozen encoder (``query_embeddings`` [Q, E],
    ``tool_embeddings`` [T, E]); ``lexical`` [Q, T] holds raw BM25 scores. Resource vectors are zeros
    (BFCL has none).
    """

    query_embeddings: torch.Tensor
    tool_embeddings: torch.Tensor
    lexical: np.ndarray
    resource_dim: int = 6

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        index = torch.tensor([int(r["row"]) for r in rows])
        labels = torch.zeros(len(rows), self.tool_embeddings.shape[0])
        for b, row in enumerate(rows):
            labels[b, list(row["positives"])] = 1.0
        return {
            "query_embeddings": self.query_embeddings[index],
            "tool_text_embeddings": self.tool_embeddings,
            "resource_vectors": torch.zeros(self.tool_embeddings.shape[0], self.resource_dim),
            "lexical_scores": torch.from_numpy(self.lexical[index.numpy()]),
            "labels": labels,
        }


def split_for_stages(
    examples: CatalogueExamples, head_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Question indices for stage 1 (a ``1 - head_fraction`` share of those with a correct tool) and
    stage 2 (the rest of them plus every question without one), by a seeded shuffle."""
    if not 0.0 <= head_fraction < 1.0:
        raise ValueError(f"head_fraction must lie in [0, 1), got {head_fraction}")
    relevant = [i for i, p in enumerate(examples.positives) if p]
    random.Random(seed).shuffle(relevant)
    n_head = round(head_fraction * len(relevant))
    if head_fraction and not n_head:
        n_head = 1
    encoder_rows = sorted(relevant[n_head:])
    head_rows = sorted(relevant[:n_head] + [i for i, p in enumerate(examples.positives) if not p])
    if not encoder_rows:
        raise ValueError("no question with a correct tool is left for the encoder stage")
    return encoder_rows, head_rows


def subset(examples: CatalogueExamples, rows: Sequence[int]) -> CatalogueExamples:
    """The questions ``rows`` of ``examples`` over the same (whole) catalogue."""
    return CatalogueExamples([examples.queries[i] for i in rows], examples.texts, examples.names,
                             [examples.positives[i] for i in rows], [examples.candidates[i] for i in rows])  # fmt: skip


def build_router(encoder: str = "minilm", *, tokenizer=None, share_encoder: bool = True, seed: int = 0,
                 **overrides: Any) -> ToolRouterModel:  # fmt: skip
    """A fresh v2 router: ``"minilm"`` (all-MiniLM-L6-v2 weights), a path to any transformers encoder
    checkpoint, or ``"mamba"`` (seed 000's encoder, MiniLM word embeddings PCA-warm-started)."""
    torch.manual_seed(seed)
    settings = dict(d_resource=32, num_attention_heads=4, runtime_context_dim=0, share_encoder=share_encoder)
    settings.update(overrides)
    if encoder == "mamba":
        tokenizer = tokenizer if tokenizer is not None else load_router_tokenizer()
        model = ToolRouterModel(router_config_for(tokenizer, matching="fusion", **settings))
        warm_start_embeddings(model)
        return model
    path = str(minilm_path()) if encoder == "minilm" else str(encoder)
    return ToolRouterModel.from_pretrained_encoder(path, **settings)


def train_encoder_stage(model, tokenizer, examples: CatalogueExamples, lexical: np.ndarray, output_dir, *,
                        epochs: float = 2.0, batch_size: int = 32, learning_rate: float = 2e-5,
                        max_length: int = MAX_TEXT_LENGTH, seed: int = 0, time_budget_s: float | None = None,
                        logging_steps: int = 10, disable_tqdm: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """Stage 1 (see the module docstring); returns steps, seconds and the first/last logged losses."""
    negatives = mine_hard_negatives(examples, lexical)
    rows = [
        {"query": q, "positives": p, "negatives": n}
        for q, p, n in zip(examples.queries, examples.positives, negatives)
        if p
    ]
    trainer = EncoderContrastiveTrainer(
        model=model,
        args=router_training_args(Path(output_dir) / "encoder_stage", batch_size=batch_size, learning_rate=learning_rate,
                            epochs=epochs, seed=seed, logging_steps=logging_steps, disable_tqdm=disable_tqdm),
        train_dataset=rows,
        data_collator=ContrastiveCollator(tokenizer, examples.texts, max_length, max_length),
        callbacks=[TimeBudgetCallback(time_budget_s)] if time_budget_s else [],
    )  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    return {**_stage_summary(trainer, start), "examples": len(rows)}


def freeze_encoders(model: ToolRouterModel) -> None:
    """Stop gradients into the text encoders' backbones (the projections stay trainable)."""
    for encoder in (model.query_encoder, model.tool_encoder):
        for param in encoder.mamba.parameters():
            param.requires_grad_(False)


def train_head_stage(model, tokenizer, examples: CatalogueExamples, lexical: np.ndarray, output_dir, *,
                     epochs: float = 5.0, batch_size: int = 64, learning_rate: float = 1e-3,
                     max_length: int = MAX_TEXT_LENGTH, seed: int = 0, time_budget_s: float | None = None,
                     logging_steps: int = 10, disable_tqdm: bool | None = None) -> dict[str, Any]:  # fmt: skip
    """Stage 2 (see the module docstring): frozen encoder, the whole catalogue as every question's tool set."""
    freeze_encoders(model)
    start = time.perf_counter()
    model.eval()
    query_embeddings = embed_texts(model.query_encoder, tokenizer, examples.queries, max_length=max_length)
    tool_embeddings = embed_texts(model.tool_encoder, tokenizer, examples.texts, max_length=max_length)
    embed_seconds = time.perf_counter() - start
    model.train()
    rows = [{"row": i, "positives": p} for i, p in enumerate(examples.positives)]
    trainer = RouterTrainer(
        model=model,
        args=router_training_args(Path(output_dir) / "head_stage", batch_size=batch_size, learning_rate=learning_rate,
                            epochs=epochs, seed=seed, logging_steps=logging_steps, disable_tqdm=disable_tqdm),
        train_dataset=rows,
        data_collator=CatalogueCollator(query_embeddings, tool_embeddings, lexical, model.config.resource_dim),
        callbacks=[TimeBudgetCallback(time_budget_s)] if time_budget_s else [],
        compute_metrics=None,
    )  # fmt: skip
    trainer.train()
    return {
        **_stage_summary(trainer, start),
        "embed_seconds": embed_seconds,
        "catalogue": len(examples.texts),
    }


def _stage_summary(trainer, start: float) -> dict[str, Any]:
    """Seconds, steps, optimizer steps per second (issue #16: training throughput is tracked per stage; the
    Trainer's own ``train_steps_per_second``) and the first and last logged loss of a finished stage."""
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    final = next((log for log in reversed(trainer.state.log_history) if "train_runtime" in log), {})
    return {"seconds": time.perf_counter() - start, "steps": trainer.state.global_step,
            "steps_per_s": final.get("train_steps_per_second"),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}  # fmt: skip


def train_router_v2(
    dataset,
    output_dir: str | Path,
    *,
    encoder: str = "minilm",
    tokenizer=None,
    share_encoder: bool = True,
    encoder_epochs: float = 2.0,
    encoder_batch_size: int = 32,
    encoder_lr: float | None = None,
    head_epochs: float = 5.0,
    head_batch_size: int = 64,
    head_lr: float = 1e-3,
    head_fraction: float = 0.3,
    max_length: int = MAX_TEXT_LENGTH,
    seed: int = 0,
    encoder_time_budget_s: float | None = None,
    head_time_budget_s: float | None = None,
    logging_steps: int = 10,
    disable_tqdm: bool | None = None,
    config_overrides: dict[str, Any] | None = None,
) -> tuple[ToolRouterModel, Any, dict[str, Any]]:
    """Train a v2 router on ``dataset["train"]`` (both stages), save model and tokenizer to ``output_dir``.

    ``encoder``: ``"minilm"`` (default), a transformers encoder directory, or ``"mamba"``. The encoder
    learning rate defaults to 2e-5 for a pretrained encoder and 2e-3 for Mamba. ``head_fraction`` of the
    questions with a correct tool train only the head stage (see the module docstring). Returns
    ``(model, tokenizer, summary)``.
    """
    if "train" not in dataset:
        raise ValueError(f"dataset needs a 'train' split, has {list(dataset)}")
    tokenizer = tokenizer if tokenizer is not None else load_router_tokenizer()
    model = build_router(encoder, tokenizer=tokenizer, share_encoder=share_encoder, seed=seed,
                         **(config_overrides or {}))  # fmt: skip
    examples = catalogue_examples(dataset["train"])
    lexical = BM25Index(examples.texts).scores(examples.queries)
    encoder_rows, head_rows = split_for_stages(examples, head_fraction, seed)
    start = time.perf_counter()
    encoder_summary = train_encoder_stage(
        model, tokenizer, subset(examples, encoder_rows), lexical[encoder_rows], output_dir, epochs=encoder_epochs, batch_size=encoder_batch_size,
        learning_rate=encoder_lr if encoder_lr is not None else (2e-3 if encoder == "mamba" else 2e-5),
        max_length=max_length, seed=seed, time_budget_s=encoder_time_budget_s,
        logging_steps=logging_steps, disable_tqdm=disable_tqdm,
    )  # fmt: skip
    head_summary = train_head_stage(
        model, tokenizer, subset(examples, head_rows), lexical[head_rows], output_dir, epochs=head_epochs, batch_size=head_batch_size,
        learning_rate=head_lr, max_length=max_length, seed=seed, time_budget_s=head_time_budget_s,
        logging_steps=logging_steps, disable_tqdm=disable_tqdm,
    )  # fmt: skip
    train_seconds = time.perf_counter() - start
    model.eval()
    for param in model.parameters():
        param.requires_grad_(True)
    model.save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    summary = {
        "encoder": encoder,
        "share_encoder": share_encoder,
        "head_fraction": head_fraction,
        "encoder_questions": len(encoder_rows),
        "head_questions": len(head_rows),
        "train_seconds": train_seconds,
        "encoder_stage": encoder_summary,
        "head_stage": head_summary,
        "parameters": sum(p.numel() for p in model.parameters()),
        "max_length": max_length,
        "config": {
            k: v for k, v in model.config.to_diff_dict().items()
            if k != "text_encoder_config" and (not isinstance(v, float) or math.isfinite(v))
        },
    }  # fmt: skip
    return model, tokenizer, summary


__all__ = [
    "CONTRASTIVE_TEMPERATURE",
    "CatalogueCollator",
    "CatalogueExamples",
    "ContrastiveCollator",
    "EncoderContrastiveTrainer",
    "build_router",
    "catalogue_examples",
    "contrastive_loss",
    "freeze_encoders",
    "mine_hard_negatives",
    "split_for_stages",
    "subset",
    "train_encoder_stage",
    "train_head_stage",
    "train_router_v2",
]
