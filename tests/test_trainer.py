"""CausalQwenTrainer: logged numeric metrics, falling loss, exact gradient accumulation, numeric columns."""

import math

import pytest
import torch

datasets = pytest.importorskip("datasets")

from causalqwen.training.trainer import (  # noqa: E402
    CausalQwenTrainer,
    NumericItemCounts,
    numeric_training_arguments,
)
from model_helpers import tiny_causal_lm as tiny_model  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train ~10x faster on one thread than with intra-op threads fighting over shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def encode(tokenizer, prompt: str, target: str) -> dict:
    """One training row: labels are -100 on the prompt (the model shifts), numeric_labels = numeric_values."""
    p = tokenizer(prompt)
    t = tokenizer(target)
    ids = p["input_ids"] + t["input_ids"]
    values = p["numeric_values"] + t["numeric_values"]
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "numeric_values": values,
        "labels": [-100] * len(p["input_ids"]) + t["input_ids"],
        "numeric_labels": values,
    }


def linear_rows(tokenizer, n: int, seed: int = 0, ragged: bool = False) -> list[dict]:
    """y = 2x + 1 as sentences; ``ragged`` varies the prompt length and leaves some targets without a number."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        x = int(torch.randint(1, 50, (1,), generator=g))
        prompt = f"The price is {x}." + (" Hello world!" * (i % 3) if ragged else "") + " The loan is"
        target = " unknown." if ragged and i % 8 in (3, 6, 7) else f" {2 * x + 1}."
        rows.append(encode(tokenizer, prompt, target))
    return rows


def pad_collate(features: list[dict]) -> dict[str, torch.Tensor]:
    """Right padding (a stand-in for training.collator.NumericDataCollator in these unit tests)."""
    width = max(len(f["input_ids"]) for f in features)
    fill = {"input_ids": 0, "attention_mask": 0, "numeric_values": 0.0, "labels": -100, "numeric_labels": 0.0}
    batch = {}
    for key, value in fill.items():
        dtype = torch.float32 if isinstance(value, float) else torch.long
        batch[key] = torch.tensor([f[key] + [value] * (width - len(f[key])) for f in features], dtype=dtype)
    return batch


def make_trainer(model, rows, tmp_path, **overrides) -> CausalQwenTrainer:
    settings = dict(max_steps=4, logging_steps=1, learning_rate=1e-2, disable_tqdm=True, warmup_steps=0)
    settings.update(overrides)
    args = numeric_training_arguments(str(tmp_path), **settings)
    return CausalQwenTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), data_collator=pad_collate
    )


def test_training_arguments_defaults(tmp_path):
    args = numeric_training_arguments(str(tmp_path), learning_rate=3e-4)
    assert args.report_to == [] or args.report_to == "none" or args.report_to == ["none"]
    assert args.remove_unused_columns and args.prediction_loss_only
    assert args.label_names == ["labels"] and args.learning_rate == 3e-4


def test_log_history_holds_numeric_metrics_and_loss_falls(tiny_tokenizer, tmp_path):
    model = tiny_model(tiny_tokenizer)
    rows = linear_rows(tiny_tokenizer, 64)
    trainer = make_trainer(
        model,
        rows,
        tmp_path,
        max_steps=30,
        logging_steps=5,
        per_device_train_batch_size=8,
        lr_scheduler_type="constant",
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 6
    for entry in logs:
        for key in ("loss", "loss_cls", "loss_reg", "num_accuracy", "value_mae"):
            assert math.isfinite(entry[key]), (key, entry)
        assert 0.0 <= entry["num_accuracy"] <= 1.0
        # loss = loss_cls + reg_lambda * loss_reg, all averaged over the same 5 steps of equal-length rows.
        lam = model.config.reg_lambda
        assert entry["loss"] == pytest.approx(entry["loss_cls"] + lam * entry["loss_reg"], rel=1e-4)
    assert logs[-1]["loss"] < 0.5 * logs[0]["loss"], [e["loss"] for e in logs]
    assert logs[-1]["loss_cls"] < logs[0]["loss_cls"]
    assert logs[-1]["value_mae"] < logs[0]["value_mae"]


def test_evaluate_reports_prefixed_metrics(tiny_tokenizer, tmp_path):
    model = tiny_model(tiny_tokenizer)
    rows = linear_rows(tiny_tokenizer, 12, ragged=True)
    trainer = make_trainer(model, rows, tmp_path, per_device_eval_batch_size=4)
    metrics = trainer.evaluate(datasets.Dataset.from_list(rows))
    for key in ("eval_loss", "eval_loss_cls", "eval_loss_reg", "eval_num_accuracy", "eval_value_mae"):
        assert math.isfinite(metrics[key]), key
    # No accumulation in evaluation: the numbers equal one forward over each batch, weighted by its counts.
    model.eval()
    batches = [pad_collate(rows[i : i + 4]) for i in range(0, 12, 4)]
    with torch.no_grad():
        outs = [model(**b) for b in batches]
    n_tok = [int(b["labels"][:, 1:].ne(-100).sum()) for b in batches]
    cls = sum(o.loss_cls.item() * n for o, n in zip(outs, n_tok)) / sum(n_tok)
    assert metrics["eval_loss_cls"] == pytest.approx(cls, rel=1e-5)


def parameters_after_one_update(tokenizer, rows, tmp_path, batch_size, accumulation, collate=pad_collate):
    model = tiny_model(tokenizer, seed=1)
    args = numeric_training_arguments(
        str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-2,
        optim="sgd",
        weight_decay=0.0,
        warmup_steps=0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        disable_tqdm=True,
    )
    trainer = CausalQwenTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), data_collator=collate
    )
    # No shuffling: both runs must see the same 8 rows in the same order.
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
    trainer.train()
    start = tiny_model(tokenizer, seed=1).state_dict()
    return {k: (v - start[k]) for k, v in model.state_dict().items()}, trainer


@pytest.mark.parametrize("ragged", [False, True], ids=["equal_length", "ragged"])
def test_gradient_accumulation_matches_one_big_batch(tiny_tokenizer, tmp_path, ragged):
    rows = linear_rows(tiny_tokenizer, 8, seed=3, ragged=ragged)
    if ragged:
        lengths = {len(r["input_ids"]) for r in rows}
        assert len(lengths) > 1 and sum(r["labels"].count(tiny_tokenizer.num_token_id) for r in rows) == 5
        # The two micro-batches hold different numbers of labelled positions and <NUM> targets, so a plain
        # mean of their mean losses would weight them wrongly.
        halves = [pad_collate(rows[:4])["labels"][:, 1:], pad_collate(rows[4:])["labels"][:, 1:]]
        assert [int(h.ne(-100).sum()) for h in halves] == [15, 22]
        assert [int(h.eq(tiny_tokenizer.num_token_id).sum()) for h in halves] == [3, 2]
    big, _ = parameters_after_one_update(tiny_tokenizer, rows, tmp_path / "a", 8, 1)
    small, _ = parameters_after_one_update(tiny_tokenizer, rows, tmp_path / "b", 4, 2)
    moved = sum(float(d.abs().sum()) for d in big.values())
    assert moved > 1e-2  # the update is real
    for name in big:
        torch.testing.assert_close(small[name], big[name], atol=1e-6, rtol=0, msg=name)


def test_counts_passed_to_compute_loss(tiny_tokenizer, tmp_path):
    rows = linear_rows(tiny_tokenizer, 8, seed=3, ragged=True)
    trainer = make_trainer(tiny_model(tiny_tokenizer), rows, tmp_path, per_device_train_batch_size=4)
    batches = [pad_collate(rows[:4]), pad_collate(rows[4:])]
    samples, counts = trainer.get_batch_samples(iter(batches), 2, torch.device("cpu"))
    assert len(samples) == 2 and isinstance(counts, NumericItemCounts)
    expected_tokens = sum(int(b["labels"][:, 1:].ne(-100).sum()) for b in batches)
    assert int(counts.tokens) == expected_tokens and int(counts.numbers) == 5 and counts.loss_scale == 1


def test_numeric_columns_survive_remove_unused_columns(tiny_tokenizer, tmp_path):
    rows = linear_rows(tiny_tokenizer, 8)
    for i, row in enumerate(rows):
        row.update(prompt=f"row {i}", target=" text", value=float(i), source="synthetic")
    trainer = make_trainer(tiny_model(tiny_tokenizer), rows, tmp_path, per_device_train_batch_size=4)
    assert trainer.args.remove_unused_columns
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "numeric_values", "labels", "numeric_labels"}
    assert batch["numeric_values"].dtype == torch.float32
    assert (batch["numeric_values"][batch["input_ids"] == tiny_tokenizer.num_token_id] > 0).all()
    trainer.train()  # the extra columns never reach forward()


def test_rejects_other_models(tiny_tokenizer, tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
        )
    )
    with pytest.raises(TypeError, match="CausalQwenForNumericCausalLM"):
        CausalQwenTrainer(model=model, args=numeric_training_arguments(str(tmp_path)))


def test_without_window_counts_ragged_accumulation_drifts(tiny_tokenizer, tmp_path, monkeypatch):
    """The control for the test above: equal-weight micro-batch means (plain Trainer) miss by ~7e-3."""
    rows = linear_rows(tiny_tokenizer, 8, seed=3, ragged=True)
    big, _ = parameters_after_one_update(tiny_tokenizer, rows, tmp_path / "a", 8, 1)
    with_counts = CausalQwenTrainer.get_batch_samples
    monkeypatch.setattr(
        CausalQwenTrainer, "get_batch_samples", lambda self, *a: (with_counts(self, *a)[0], None)
    )
    small, _ = parameters_after_one_update(tiny_tokenizer, rows, tmp_path / "b", 4, 2)
    assert max(float((small[k] - big[k]).abs().max()) for k in big) > 1e-3
