"""Training stability (issue #5): 3 seeds x 1,000 steps of the tiny CausalQwen on the synthetic linear set.

Every logged loss (total, classification, regression) must stay finite and the mean loss of the last 100
steps must be under half the mean of the first 100. The figures are printed (run with ``-s``) so that
they can be quoted; see docs/training.md for the last recorded run.
"""

import math
import time

import pytest
import torch

from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM
from causalqwen.tokenization.testing import build_tiny_tokenizer
from causalqwen.training.collator import NumericDataCollator
from causalqwen.training.data import build_synthetic_dataset, tokenize_numeric_dataset
from causalqwen.training.trainer import CausalQwenTrainer, numeric_training_arguments

STEPS = 1000
WINDOW = 100


def train_once(seed: int, output_dir) -> dict[str, float]:
    tokenizer = build_tiny_tokenizer()
    data = tokenize_numeric_dataset(build_synthetic_dataset("linear", n=2000, seed=seed), tokenizer)
    torch.manual_seed(seed)
    model = CausalQwenForNumericCausalLM(
        CausalQwenConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            num_token_id=tokenizer.convert_tokens_to_ids("<NUM>"),
        )
    )
    args = numeric_training_arguments(
        str(output_dir), max_steps=STEPS, logging_steps=1, seed=seed, disable_tqdm=True
    )
    trainer = CausalQwenTrainer(
        model=model, args=args, train_dataset=data["train"], data_collator=NumericDataCollator(tokenizer)
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == STEPS
    for entry in logs:
        for key in ("loss", "loss_cls", "loss_reg", "grad_norm"):
            if key in entry:
                assert math.isfinite(entry[key]), (seed, entry)
    assert all(p.isfinite().all() for p in model.parameters()), f"seed {seed}: non-finite weights"
    losses = [entry["loss"] for entry in logs]
    first, last = sum(losses[:WINDOW]) / WINDOW, sum(losses[-WINDOW:]) / WINDOW
    reg = [entry["loss_reg"] for entry in logs if "loss_reg" in entry]
    return {
        "seed": seed,
        "seconds": seconds,
        "first": first,
        "last": last,
        "ratio": last / first,
        "reg_first": sum(reg[:WINDOW]) / WINDOW,
        "reg_last": sum(reg[-WINDOW:]) / WINDOW,
    }


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_training_is_stable(seed, tmp_path):
    figures = train_once(seed, tmp_path)
    print(
        f"\nseed {seed}: {figures['seconds']:.1f} s, loss first-{WINDOW} mean {figures['first']:.4f}, "
        f"last-{WINDOW} mean {figures['last']:.4f} (ratio {figures['ratio']:.3f}); "
        f"loss_reg {figures['reg_first']:.4f} -> {figures['reg_last']:.4f}"
    )
    assert figures["last"] < 0.5 * figures["first"], figures
