import math

import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from causalqwen import CausalQwenForNumericCausalLM
from causalqwen.training.collator import NumericDataCollator
from causalqwen.training.data import build_synthetic_dataset, tokenize_numeric_dataset
from model_helpers import tiny_causal_lm

ROWS = [
    {
        "input_ids": [5, 300, 7],
        "attention_mask": [1, 1, 1],
        "numeric_values": [0.0, 2.5, 0.0],
        "labels": [-100, 300, 7],
        "numeric_labels": [0.0, 2.5, 0.0],
    },
    {
        "input_ids": [9, 8, 300, 300, 4],
        "attention_mask": [1, 1, 1, 1, 1],
        "numeric_values": [0.0, 0.0, -1e5, 1e-5, 0.0],
        "labels": [-100, -100, 300, 300, 4],
        "numeric_labels": [0.0, 0.0, -1e5, 1e-5, 0.0],
        "prompt": "left out of the batch",
    },
]


def tiny_model(tokenizer) -> CausalQwenForNumericCausalLM:
    return tiny_causal_lm(tokenizer, pad_token_id=None)  # as these tests were written: no padding row


def test_right_padding_exact():
    batch = NumericDataCollator(pad_token_id=0)(ROWS)
    assert sorted(batch) == ["attention_mask", "input_ids", "labels", "numeric_labels", "numeric_values"]
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 300, 7, 0, 0], [9, 8, 300, 300, 4]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))
    assert torch.equal(batch["labels"], torch.tensor([[-100, 300, 7, -100, -100], [-100, -100, 300, 300, 4]]))
    values = torch.tensor([[0.0, 2.5, 0.0, 0.0, 0.0], [0.0, 0.0, -1e5, 1e-5, 0.0]])
    assert torch.equal(batch["numeric_values"], values) and torch.equal(batch["numeric_labels"], values)
    assert batch["input_ids"].dtype == batch["labels"].dtype == batch["attention_mask"].dtype == torch.long
    assert batch["numeric_values"].dtype == batch["numeric_labels"].dtype == torch.float32


def test_left_padding_and_multiple(tiny_tokenizer):
    collator = NumericDataCollator(tiny_tokenizer, pad_to_multiple_of=4, padding_side="left")
    assert collator.pad_token_id == tiny_tokenizer.pad_token_id == 0
    batch = collator(ROWS)
    assert torch.equal(
        batch["input_ids"], torch.tensor([[0, 0, 0, 0, 0, 5, 300, 7], [0, 0, 0, 9, 8, 300, 300, 4]])
    )
    assert torch.equal(batch["attention_mask"], torch.tensor([[0] * 5 + [1] * 3, [0] * 3 + [1] * 5]))
    assert torch.equal(batch["labels"], torch.tensor([[-100] * 6 + [300, 7], [-100] * 5 + [300, 300, 4]]))
    assert torch.equal(batch["numeric_labels"][0], torch.tensor([0.0] * 6 + [2.5, 0.0]))
    assert torch.equal(batch["numeric_values"][1], torch.tensor([0.0] * 5 + [-1e5, 1e-5, 0.0]))
    assert NumericDataCollator(pad_token_id=3, pad_to_multiple_of=5)(ROWS)["input_ids"].shape == (2, 5)


def test_defaults_and_tensor_rows():
    rows = [
        {"input_ids": torch.tensor([4, 300]), "numeric_values": torch.tensor([0.0, 7.0])},
        {"input_ids": [6]},
    ]
    batch = NumericDataCollator(pad_token_id=1)(rows)
    assert sorted(batch) == ["attention_mask", "input_ids", "numeric_values"]
    assert torch.equal(batch["input_ids"], torch.tensor([[4, 300], [6, 1]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1], [1, 0]]))
    assert torch.equal(batch["numeric_values"], torch.tensor([[0.0, 7.0], [0.0, 0.0]]))


def test_errors():
    collator = NumericDataCollator(pad_token_id=0)
    with pytest.raises(ValueError, match="empty batch"):
        collator([])
    with pytest.raises(ValueError, match="row 1: 'labels' has 4 entries but input_ids has 5"):
        collator([ROWS[0], {**ROWS[1], "labels": [1, 2, 3, 4]}])
    with pytest.raises(ValueError, match="row 0: 'numeric_values' holds nan at position 1"):
        collator([{**ROWS[0], "numeric_values": [0.0, math.nan, 0.0]}])
    with pytest.raises(ValueError, match="row 1: 'numeric_labels' holds inf at position 2"):
        collator([ROWS[0], {**ROWS[1], "numeric_labels": [0.0, 0.0, math.inf, 0.0, 0.0]}])
    with pytest.raises(ValueError, match=r"rows \[0\] have no 'labels'"):
        collator([{"input_ids": [1, 2]}, ROWS[0]])
    with pytest.raises(ValueError, match="row 0 is empty"):
        collator([{"input_ids": []}])
    with pytest.raises(ValueError, match="one flat sequence"):
        collator([{"input_ids": [[1, 2]]}])
    with pytest.raises(ValueError, match="needs pad_token_id"):
        NumericDataCollator()
    with pytest.raises(ValueError, match="padding_side must be 'right' or 'left'"):
        NumericDataCollator(pad_token_id=0, padding_side="middle")
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        NumericDataCollator(pad_token_id=0, pad_to_multiple_of=0)


def test_batch_through_tiny_model(tiny_tokenizer):
    collator = NumericDataCollator(tiny_tokenizer)
    model = tiny_model(tiny_tokenizer).eval()
    mixed = build_synthetic_dataset("mixed", n=40, seed=0)["train"]
    numeric = mixed.filter(lambda r: not math.isnan(r["value"])).select(range(4))
    text_only = mixed.filter(lambda r: math.isnan(r["value"])).select(range(4))
    with torch.no_grad():
        out = model(**collator(list(tokenize_numeric_dataset(numeric, tiny_tokenizer))))
        assert torch.isfinite(out.loss) and out.loss_reg > 0 and out.loss_cls > 0
        # Text-only targets: the prompt's number is masked, so no <NUM> label and no regression term.
        out = model(**collator(list(tokenize_numeric_dataset(text_only, tiny_tokenizer))))
        assert torch.isfinite(out.loss) and out.loss_reg == 0 and out.loss == out.loss_cls
        # Unmasked prompts label the prompt's <NUM> too: the regression term comes back.
        out = model(**collator(list(tokenize_numeric_dataset(text_only, tiny_tokenizer, mask_prompt=False))))
        assert torch.isfinite(out.loss) and out.loss_reg > 0


def test_works_as_trainer_data_collator(tiny_tokenizer, tmp_path):
    model = tiny_model(tiny_tokenizer)
    before = model.model.value_encoding.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    train = tokenize_numeric_dataset(build_synthetic_dataset("linear", n=20, seed=0)["train"], tiny_tokenizer)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=train, data_collator=NumericDataCollator(tiny_tokenizer)
    )
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    # numeric_values survived remove_unused_columns: the value encoding got gradients and moved.
    after = model.model.value_encoding.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_numeric_values_columns_from_dataset_rows(tiny_tokenizer):
    rows = Dataset.from_list([{"prompt": "x is 1.5.", "target": " y is 6.", "value": 6.0}])
    features = list(tokenize_numeric_dataset(rows, tiny_tokenizer))
    batch = NumericDataCollator(tiny_tokenizer)(features)
    num = tiny_tokenizer.convert_tokens_to_ids("<NUM>")
    assert batch["numeric_values"][batch["input_ids"] == num].tolist() == [1.5, 6.0]
    assert batch["numeric_labels"][batch["labels"] == num].tolist() == [6.0]
