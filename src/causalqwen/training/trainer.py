"""``CausalQwenTrainer``: the Hugging Face ``Trainer`` for :class:`CausalQwenForNumericCausalLM` (issue #5).

What it adds to ``Trainer``:

* **Exact gradient accumulation.** The model's loss is ``mean_cls + lambda * mean_reg``: a mean over the
  labelled positions of one batch plus a mean over its ``<NUM>`` targets. A plain ``Trainer`` divides each
  micro-batch's mean by the number of accumulation steps, which equals the full-batch loss only when every
  micro-batch holds as many labelled positions and ``<NUM>`` targets as the others (equal-length, same-template
  rows). With ragged batches (padding, prompts of different lengths, rows without a number) the micro-batches
  would be weighted wrongly. So :meth:`get_batch_samples` counts, over the whole accumulation window, the
  labelled positions ``N_tok`` and the ``<NUM>`` targets ``N_num`` (both after the causal shift), and
  :meth:`compute_loss` turns each micro-batch's means back into sums::

      loss_i = loss_cls,i * n_tok,i / N_tok + lambda * loss_reg,i * n_num,i / N_num

  Summed over the window this is exactly the loss of one big batch, so 2 x 4 rows with accumulation 2 give
  the update of 1 x 8 rows (tested on ragged batches too). The model keeps ``accepts_loss_kwargs = False``
  (its forward never sees ``num_items_in_batch``); the rescaling lives here, and ``loss_is_scaled_for_ga`` tells
  ``Trainer`` not to divide again. Under multi-process data parallelism the counts are summed over processes
  (``average_tokens_across_devices``, the ``TrainingArguments`` default) and the loss multiplied by the number of
  processes, because DDP averages gradients: 2 gloo processes give the one-process update on the combined batch,
  ragged, ``<NUM>``-only and fully ignored process batches included (``tests/test_distributed.py``).
* **Numeric metrics in the log.** At each logging step the log (progress bar, TensorBoard, ``log_history``) gets
  ``loss_cls`` (averaged over labelled positions since the last log), ``loss_reg`` (over ``<NUM>`` targets),
  ``num_accuracy`` (share of ``<NUM>`` targets where ``<NUM>`` is the model's argmax token under the active
  decision rule) and ``value_mae`` (mean |median predicted value - target| in data units). ``evaluate`` reports
  the same with the ``eval_`` prefix. Cost: the model's training forward builds no vocabulary-sized tensor, so
  the metrics re-run the heads (under ``no_grad``) on the hidden states of the ``<NUM>``-target positions only
  (``[n_num x V]``, a handful of rows per batch), captured with a forward hook on the backbone. Windows with no
  ``<NUM>`` target log no ``loss_reg``/``num_accuracy``/``value_mae`` (rather than a misleading 0).
* **Numeric columns survive** ``remove_unused_columns=True``: ``numeric_values`` and ``numeric_labels`` are
  ``forward`` arguments, which ``Trainer`` keeps (for a PEFT model it inspects the base model's ``forward``).
  ``label_names`` defaults to ``["labels"]`` (``Trainer`` would take ``numeric_labels`` as a second label too and
  then skip the evaluation loss for data without that column; the model defaults it to ``numeric_values``).
* Evaluation returns only the loss by default (:func:`numeric_training_arguments` sets
  ``prediction_loss_only``) and asks the model for no vocabulary-sized outputs then.

Works with a PEFT-wrapped model (:mod:`.lora`): the heads are reached through ``get_base_model()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from ..modeling.cauchy import SCALE_EPS
from ..modeling.loss import IGNORE_INDEX
from ..modeling.modeling_causal_qwen import CausalQwenForNumericCausalLM

__all__ = [
    "CausalQwenTrainer",
    "NumericItemCounts",
    "item_counts",
    "numeric_training_arguments",
    "window_loss",
]

_METRICS = ("loss_cls", "loss_reg", "num_accuracy", "value_mae")


def numeric_training_arguments(output_dir: str, **overrides: Any) -> TrainingArguments:
    """``TrainingArguments`` with defaults for CausalQwen on a CPU (or one GPU when present).

    Defaults: batch 8, lr 1e-3 with cosine decay and 5 % warmup (tiny models; pass ``learning_rate=2e-5`` or so
    for a pretrained Qwen backbone), weight decay 0.01, log every 10 steps, no checkpoints, ``report_to="none"``
    (pass ``report_to="tensorboard"`` to get the curves), ``remove_unused_columns=True`` (the numeric columns
    survive it), ``label_names=["labels"]``, ``prediction_loss_only=True`` (evaluation never gathers
    vocabulary-sized logits), no dataloader workers, CPU unless CUDA is available.
    """
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.01,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=True,
        label_names=["labels"],
        prediction_loss_only=True,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        seed=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


@dataclass(frozen=True)
class NumericItemCounts:
    """Labelled positions and ``<NUM>`` targets (after the causal shift) in one accumulation window.

    :meth:`CausalQwenTrainer.get_batch_samples` passes this in ``Trainer``'s ``num_items_in_batch`` slot, which
    ``Trainer`` only forwards to ``training_step`` -> ``compute_loss``. ``loss_scale`` is the number of
    processes whose counts were summed (DDP averages gradients, so the loss is scaled back up).
    """

    tokens: torch.Tensor
    numbers: torch.Tensor
    loss_scale: int = 1


def _shifted(labels: torch.Tensor) -> torch.Tensor:
    return labels[..., 1:]


def item_counts(labels: torch.Tensor, num_token_id: int) -> torch.Tensor:
    """[labelled positions, ``<NUM>`` targets] of unshifted ``labels``, counted after the causal shift."""
    shifted = _shifted(labels)
    return torch.stack([shifted.ne(IGNORE_INDEX).sum(), shifted.eq(num_token_id).sum()])


def window_loss(
    outputs, n_tok: torch.Tensor, n_num: torch.Tensor, window: NumericItemCounts, reg_lambda: float
) -> torch.Tensor:
    """One micro-batch's share of the window's loss: its means turned back into sums over the window's counts
    (``loss_cls * n_tok / N_tok + lambda * loss_reg * n_num / N_num``), times ``window.loss_scale``."""
    tokens, numbers = window.tokens.clamp_min(1), window.numbers.clamp_min(1)
    loss = outputs.loss_cls * (n_tok / tokens) + reg_lambda * outputs.loss_reg * (n_num / numbers)
    return loss * window.loss_scale


def unwrap_causal_qwen(model: torch.nn.Module) -> CausalQwenForNumericCausalLM:
    """The :class:`CausalQwenForNumericCausalLM` inside DDP/accelerate and PEFT wrappers."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    if not isinstance(inner, CausalQwenForNumericCausalLM):
        raise TypeError(f"CausalQwenTrainer needs a CausalQwenForNumericCausalLM, got {type(inner).__name__}")
    return inner


class CausalQwenTrainer(Trainer):
    """``Trainer`` with exact gradient accumulation and numeric metrics for CausalQwen (module docstring)."""

    # compute_loss returns the loss already normalised over the accumulation window.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        unwrap_causal_qwen(self.model)
        if self.args.label_names is None:
            self.label_names = ["labels"]
        self._sums = {split: self._zero_sums() for split in ("train", "eval")}

    def _zero_sums(self) -> dict[str, torch.Tensor]:
        names = ("cls", "tokens", "reg", "numbers", "correct", "abs_error")
        return {name: torch.zeros((), dtype=torch.float64, device=self.args.device) for name in names}

    # ------------------------------------------------------------------------------------ loss scaling

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples or "labels" not in batch_samples[0]:
            return batch_samples, None
        num_id = unwrap_causal_qwen(self.model).config.num_token_id
        counts = sum(item_counts(batch["labels"], num_id) for batch in batch_samples).to(device)
        scale = 1
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.gather(counts).view(-1, 2).sum(0)
            scale = self.accelerator.num_processes
        return batch_samples, NumericItemCounts(counts[0], counts[1], scale)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's loss, rescaled over the accumulation window in training; records the numeric metrics."""
        if "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        causal_lm = unwrap_causal_qwen(model)
        if not model.training and self.args.prediction_loss_only:
            inputs = {**inputs, "return_logits": False}
        captured: dict[str, torch.Tensor] = {}

        def keep_hidden(module, args, output):
            captured["hidden"] = output.last_hidden_state.detach()

        handle = causal_lm.model.register_forward_hook(keep_hidden)
        try:
            outputs = model(**inputs)
        finally:
            handle.remove()

        n_tok, n_num = item_counts(inputs["labels"], causal_lm.config.num_token_id)
        loss = outputs.loss
        if model.training and isinstance(num_items_in_batch, NumericItemCounts):
            loss = window_loss(outputs, n_tok, n_num, num_items_in_batch, float(causal_lm.config.reg_lambda))
        elif model.training:
            # training_step called without get_batch_samples (no counts): equal-weight micro-batches.
            loss = loss / getattr(self, "current_gradient_accumulation_steps", 1)
        if "hidden" in captured:
            self._record(causal_lm, inputs, outputs, captured["hidden"], n_tok, n_num)
        return (loss, outputs) if return_outputs else loss

    # ---------------------------------------------------------------------------------------- metrics

    @torch.no_grad()
    def _record(self, causal_lm, inputs, outputs, hidden, n_tok, n_num) -> None:
        sums = self._sums["train" if causal_lm.training else "eval"]
        sums["cls"] += outputs.loss_cls.detach().double() * n_tok
        sums["tokens"] += n_tok
        if int(n_num) == 0:
            return
        sums["reg"] += outputs.loss_reg.detach().double() * n_num
        sums["numbers"] += n_num
        num_id = causal_lm.config.num_token_id
        at_num = _shifted(inputs["labels"]).eq(num_id)
        targets = inputs.get("numeric_labels")
        targets = inputs.get("numeric_values") if targets is None else targets
        mode, temp = causal_lm._resolve_mode(inputs.get("inference_mode"), inputs.get("temperature"))
        heads, _, _ = causal_lm._heads(hidden[:, :-1][at_num], mode, temp)
        # Ranking of the model's `logits` field (see modeling_causal_qwen): OvR score or plain loc_S.
        if heads.scale_S is None:
            rank = heads.loc_S
        else:
            rank = (heads.loc_S - causal_lm.action.ovr_thresholds) / heads.scale_S.clamp_min(SCALE_EPS)
        sums["correct"] += rank.argmax(-1).eq(num_id).sum()
        predicted = causal_lm.normalizer.inverse(heads.loc_Y.float())
        sums["abs_error"] += (predicted.double() - _shifted(targets)[at_num].double()).abs().sum()

    def _drain(self, split: str) -> dict[str, float]:
        """Averages since the last drain (summed over processes), then reset."""
        sums = self._sums[split]
        stacked = torch.stack(list(sums.values()))
        if self.args.world_size > 1:
            stacked = self.accelerator.reduce(stacked, reduction="sum")
        cls, tokens, reg, numbers, correct, abs_error = stacked.tolist()
        self._sums[split] = self._zero_sums()
        metrics = {}
        if tokens > 0:
            metrics["loss_cls"] = cls / tokens
        if numbers > 0:
            metrics.update(
                loss_reg=reg / numbers, num_accuracy=correct / numbers, value_mae=abs_error / numbers
            )
        return metrics

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs carry "loss"; evaluation metrics are added in evaluation_loop.
        if "loss" in logs:
            logs = {**logs, **self._drain("train")}
        super().log(logs, start_time)

    def evaluation_loop(self, *args, **kwargs):
        self._sums["eval"] = self._zero_sums()
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        output.metrics.update({f"{prefix}_{k}": v for k, v in self._drain("eval").items()})
        return output
