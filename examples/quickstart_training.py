"""README quickstart: train a tiny CausalQwen on y = 2x + 3 with the Trainer (about 20 s on 2 CPU cores)."""

import numpy as np
from transformers import set_seed

from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM
from causalqwen.tokenization.tiny_vocab import build_tiny_tokenizer
from causalqwen.training.cli import value_normalization
from causalqwen.training.collator import NumericDataCollator
from causalqwen.training.data import build_synthetic_dataset, tokenize_numeric_dataset
from causalqwen.training.evaluation import predict_values, regression_metrics
from causalqwen.training.trainer import CausalQwenTrainer, numeric_training_arguments

set_seed(0)  # the model's initial weights: without it every run starts elsewhere and ends elsewhere
tok = build_tiny_tokenizer()  # or CausalQwenTokenizer.from_qwen_vocab()
rows = build_synthetic_dataset("linear")  # or build_table_dataset("sklearn:diabetes" | "table.csv", ...)
model = CausalQwenForNumericCausalLM(
    CausalQwenConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_token_id=tok.convert_tokens_to_ids("<NUM>"),
        **value_normalization(np.asarray(rows["train"]["value"]), "auto"),  # targets of order one
    )
)
trainer = CausalQwenTrainer(
    model=model,
    train_dataset=tokenize_numeric_dataset(rows["train"], tok),
    args=numeric_training_arguments("runs/quickstart", max_steps=1000, per_device_train_batch_size=16),
    data_collator=NumericDataCollator(tok),
)
trainer.train()  # logs loss, loss_cls, loss_reg, num_accuracy, value_mae

test = rows["test"]
pred = predict_values(model.eval(), tok, list(test["prompt"]), list(test["target"]))
print("test MAE", round(regression_metrics(np.asarray(test["value"]), pred["value_loc"])["mae"], 3))
print("<NUM> accuracy", pred["num_accuracy"])
