"""LoRA for CausalQwen: exact trainable set, training through CausalQwenTrainer, adapter reload, merge."""

import warnings

import pytest
import torch

peft = pytest.importorskip("peft")
pytest.importorskip("datasets")

from causalqwen.training.lora import (  # noqa: E402
    LORA_TARGET_MODULES,
    apply_lora,
    full_training_modules,
    lora_config_for,
)
from test_trainer import linear_rows, make_trainer, one_thread, pad_collate, tiny_model  # noqa: E402,F401

R = 4


def expected_trainable(model, r: int = R) -> int:
    """LoRA A/B on the 7 projections + the full CausalQwen modules + the <NUM> rows, from the shapes."""
    lora = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in LORA_TARGET_MODULES:
            lora += r * (module.in_features + module.out_features)
    full = sum(
        p.numel()
        for name in ("abduction", "action", "value_head", "model.value_encoding")
        for p in model.get_submodule(name).parameters()
    )
    rows = 1 if model.config.tie_word_embeddings else 2
    return lora + full + rows * model.config.hidden_size


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_only_lora_heads_and_num_rows_are_trainable(tiny_tokenizer, tie):
    model = tiny_model(tiny_tokenizer, tie_word_embeddings=tie)
    expected = expected_trainable(model)
    # H=32, I=64, kv width 16, 2 layers: LoRA 2 x 4 x 512 = 4096; abduction 2112, b_noise 32, value head 33,
    # multiscale_linear fusion 5440 (38 value features); <NUM> rows 64 (untied) or 32 (tied, one shared delta).
    assert expected == (11777 if not tie else 11745)
    peft_model = apply_lora(model, r=R, alpha=8)
    trainable = {n: p.numel() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == expected
    for name in trainable:
        assert "lora_" in name or "modules_to_save" in name or "trainable_tokens_delta" in name, name
    deltas = [n for n in trainable if "trainable_tokens_delta" in n]
    assert len(deltas) == (1 if tie else 2)
    for module in ("abduction", "action", "value_head", "value_encoding"):
        assert any(f"{module}.modules_to_save" in n for n in trainable), module


def test_num_head_row_gets_the_whole_gradient_under_peft(tiny_tokenizer):
    """Untied: PEFT's trainable <NUM> row of lm_head gets the gradient the plain model's lm_head row gets (both
    the location and the Cauchy scale path). The property PEFT puts on lm_head.weight builds a new tensor at
    every read; the loss must differentiate against the one its head used (only |W|'s path arrived before)."""
    rows = linear_rows(tiny_tokenizer, 4)
    batch = {
        k: v
        for k, v in pad_collate(rows).items()
        if k in ("input_ids", "attention_mask", "numeric_values", "labels")
    }
    plain = tiny_model(tiny_tokenizer).eval()  # eval: no LoRA dropout, the same function in both models
    plain(**batch).loss.backward()
    want = plain.lm_head.weight.grad[tiny_tokenizer.num_token_id]
    peft_model = apply_lora(tiny_model(tiny_tokenizer), r=R, alpha=8).eval()
    peft_model(**batch).loss.backward()
    (delta,) = [
        p for n, p in peft_model.named_parameters() if "lm_head" in n and "trainable_tokens_delta" in n
    ]
    assert want.abs().sum() > 0
    torch.testing.assert_close(delta.grad[0], want, rtol=1e-5, atol=1e-7)


def test_config_choices(tiny_tokenizer):
    model = tiny_model(tiny_tokenizer)
    config = lora_config_for(model, r=8, alpha=16, dropout=0.05)
    assert set(config.target_modules) == set(LORA_TARGET_MODULES)
    assert config.trainable_token_indices == {"embed_tokens": [300], "lm_head": [300]}
    assert (config.r, config.lora_alpha, config.lora_dropout) == (8, 16, 0.05)
    assert lora_config_for(model, num_token_trainable=False).trainable_token_indices is None
    # xVal fuses without parameters: nothing to save for it.
    assert full_training_modules(tiny_model(tiny_tokenizer, value_encoding="xval")) == [
        "abduction",
        "action",
        "value_head",
    ]


def test_bad_arguments_raise(tiny_tokenizer):
    model = tiny_model(tiny_tokenizer)
    with pytest.raises(ValueError, match="rank r"):
        lora_config_for(model, r=0)
    with pytest.raises(ValueError, match="dropout"):
        lora_config_for(model, dropout=1.0)
    with pytest.raises(TypeError, match="CausalQwenForNumericCausalLM"):
        lora_config_for(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_lora_trains_saves_reloads_and_merges(tiny_tokenizer, tmp_path, tie):
    rows = linear_rows(tiny_tokenizer, 16)
    model = apply_lora(tiny_model(tiny_tokenizer, tie_word_embeddings=tie), r=R, alpha=8)
    trainer = make_trainer(model, rows, tmp_path / "run", max_steps=4, per_device_train_batch_size=8)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all("num_accuracy" in h and "value_mae" in h for h in logs)

    base = model.get_base_model()
    fresh = tiny_model(tiny_tokenizer, tie_word_embeddings=tie)
    num = tiny_tokenizer.num_token_id
    # The trained copies moved (gradients reach the wrapped modules through the model's own forward).
    for name in ("abduction.loc_weight", "value_head.weight", "model.value_encoding.fusion_weight"):
        module, param = name.rsplit(".", 1)
        trained = getattr(base.get_submodule(module).modules_to_save["default"], param)
        assert not torch.equal(trained, getattr(fresh.get_submodule(module), param)), name
    assert not torch.equal(base.lm_head.weight[num], fresh.lm_head.weight[num])
    assert torch.equal(base.lm_head.weight[num - 1], fresh.lm_head.weight[num - 1])

    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "adapter_config.json").exists()
    batch = {
        k: v
        for k, v in pad_collate(rows[:4]).items()
        if k in ("input_ids", "attention_mask", "numeric_values")
    }
    model.eval()
    reloaded = peft.PeftModel.from_pretrained(fresh, adapter).eval()
    with torch.no_grad():
        want = model(**batch)
        got = reloaded(**batch)
        assert torch.equal(got.loc_S, want.loc_S) and torch.equal(got.value_loc, want.value_loc)
        merged = reloaded.merge_and_unload()
        assert type(merged).__name__ == "CausalQwenForNumericCausalLM"
        out = merged(**batch)
    torch.testing.assert_close(out.loc_S, want.loc_S, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.value_loc, want.value_loc, atol=1e-5, rtol=1e-6)


def test_applying_lora_raises_no_deprecation_warning(tiny_tokenizer):
    # PEFT reads the deprecated `is_gradient_checkpointing`; the model answers it without transformers' warning.
    model = tiny_model(tiny_tokenizer)
    model.model.gradient_checkpointing = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert model.is_gradient_checkpointing is True
        apply_lora(model)
