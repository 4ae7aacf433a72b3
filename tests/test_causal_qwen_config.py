import json
import logging

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config

from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM

TINY = dict(
    vocab_size=300,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_token_id=299,
)


def test_defaults_extend_qwen2():
    config = CausalQwenConfig(**TINY)
    assert isinstance(config, Qwen2Config)
    assert config.model_type == "causal_qwen"
    assert config.causal_size == 32  # defaults to hidden_size
    assert config.inference_mode == "standard"
    assert config.value_encoding == "multiscale_linear"
    assert (config.reg_lambda, config.gate_alpha, config.cls_reduction) == (5.0, 0.1, "sum")
    assert CausalQwenConfig().num_token_id == 151665
    assert type(AutoConfig.for_model("causal_qwen", **TINY)) is CausalQwenConfig


def test_int_values_are_accepted_for_float_fields():
    config = CausalQwenConfig(**TINY, gamma_init=2, b_noise_init=0, causal_temperature=1)
    assert config.gamma_init == 2 and config.b_noise_init == 0


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"causal_size": 0}, "causal_size must be positive"),
        ({"causal_size": -4}, "causal_size must be positive"),
        ({"gamma_init": -1.0}, "gamma_init must be a positive"),
        ({"gamma_init": 0.0}, "gamma_init must be a positive"),
        ({"gamma_init": float("nan")}, "gamma_init must be a positive"),
        ({"b_noise_init": -0.1}, "b_noise_init must be finite and >= 0"),
        ({"causal_temperature": -1.0}, "causal_temperature must be finite and >= 0"),
        ({"reg_lambda": -2.0}, "reg_lambda must be finite and >= 0"),
        ({"value_norm_scale": 0.0}, "value_norm_scale must be a positive"),
        ({"value_scale_factor": 0.0}, "value_scale_factor must be a positive"),
        ({"value_scale_factor": float("inf")}, "value_scale_factor must be a positive"),
        ({"ovr_threshold_init": float("inf")}, "ovr_threshold_init must be finite"),
        ({"value_interval_table": {"levels": [0.5]}}, "value_interval_table must be a dict with keys"),
        (
            {"value_interval_table": {"levels": [0.5, 0.9], "half_widths": [1.0]}},
            "as many half_widths as levels",
        ),
        (
            {"value_interval_table": {"levels": [0.9, 0.5], "half_widths": [1.0, 2.0]}},
            r"levels must increase strictly inside \(0, 1\)",
        ),
        (
            {"value_interval_table": {"levels": [0.5, 1.0], "half_widths": [1.0, 2.0]}},
            r"levels must increase strictly inside \(0, 1\)",
        ),
        (
            {"value_interval_table": {"levels": [0.5, 0.9], "half_widths": [2.0, 1.0]}},
            "half_widths must be finite, >= 0 and non-decreasing",
        ),
        (
            {"value_interval_table": {"levels": [0.5], "half_widths": [float("nan")]}},
            "half_widths must be finite, >= 0 and non-decreasing",
        ),
        ({"gate_alpha": 1.5}, r"gate_alpha must lie in \[0, 1\]"),
        ({"reg_beta": 1.5}, r"reg_beta must lie in \[0, 1\]"),
        ({"reg_beta": float("nan")}, r"reg_beta must lie in \[0, 1\]"),
        ({"loss_chunk_size": 0}, "loss_chunk_size must be positive"),
        ({"value_encoding_frequencies": 0}, "value_encoding_frequencies must be positive"),
        ({"inference_mode": "greedy"}, "unknown inference_mode 'greedy'"),
        ({"value_encoding": "binary"}, "unknown value_encoding 'binary'"),
        ({"value_normalization": "zscore"}, "unknown value_normalization 'zscore'"),
        ({"cls_reduction": "mean"}, "unknown cls_reduction 'mean'"),
        ({"cls_hard_negatives": 0}, "cls_hard_negatives must be positive, got 0"),
        ({"num_token_id": 300}, r"num_token_id must lie in \[0, vocab_size=300\)"),
        (
            {"tie_word_embeddings": True, "causal_size": 16},
            "tie_word_embeddings needs causal_size == hidden_size",
        ),
    ],
)
def test_invalid_values_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        CausalQwenConfig(**{**TINY, **overrides})


def test_unknown_key_raises_with_suggestion():
    with pytest.raises(
        ValueError, match=r"unknown configuration key\(s\): 'gama_init' \(did you mean 'gamma_init'\?\)"
    ):
        CausalQwenConfig(**TINY, gama_init=2.0)
    with pytest.raises(ValueError, match="'completely_unrelated'"):
        CausalQwenConfig(**TINY, completely_unrelated=1)


def test_save_load_round_trip(tmp_path):
    config = CausalQwenConfig(**TINY, causal_size=16, value_normalization="symlog", gate_alpha=0.25)
    config.architectures = ["CausalQwenForNumericCausalLM"]
    config.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "causal_qwen" and "transformers_version" in written
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is CausalQwenConfig

    def drop_path(d):
        return {k: v for k, v in d.items() if k != "_name_or_path"}

    assert drop_path(loaded.to_dict()) == drop_path(config.to_dict())


def test_keys_transformers_writes_still_load(tmp_path):
    config = CausalQwenConfig(**TINY)
    config.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    del data["rope_parameters"]  # older checkpoints: legacy rope_theta only
    # Keys written by transformers itself, by remote-code export, or carried by older Qwen2 checkpoints.
    data.update(
        architectures=["CausalQwenForNumericCausalLM"],
        auto_map={"AutoConfig": "configuration_causal_qwen.CausalQwenConfig"},
        dtype="bfloat16",
        torch_dtype="bfloat16",
        rope_theta=1000000.0,
        _name_or_path="somewhere",
        bos_token_id=151643,
    )
    path.write_text(json.dumps(data))
    loaded = CausalQwenConfig.from_pretrained(tmp_path)
    assert loaded.dtype == torch.bfloat16
    assert loaded.architectures == ["CausalQwenForNumericCausalLM"]
    assert loaded.auto_map == {"AutoConfig": "configuration_causal_qwen.CausalQwenConfig"}
    assert loaded.rope_parameters["rope_theta"] == 1000000.0


def test_saved_config_with_extra_attributes_loads_with_a_warning(tmp_path, caplog):
    # Tooling (transformers' test utilities, PEFT, users) sets attributes on a config; save_pretrained writes them.
    config = CausalQwenConfig(**TINY)
    config.layer_norm_eps = 1e-5
    config.gamma_inti = 3.0  # a typo in a saved file: loads, and the warning points at the field
    config.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, CausalQwenConfig)
    assert loaded.layer_norm_eps == 1e-5 and loaded.gamma_inti == 3.0
    assert loaded.gamma_init == 1.0  # the typo did not set the field
    (record,) = [r for r in caplog.records if "not causal_qwen settings" in r.getMessage()]
    assert "'gamma_inti' (did you mean 'gamma_init'?)" in record.getMessage()
    assert "'layer_norm_eps'" in record.getMessage()
    # Saving again keeps the attributes (as PreTrainedConfig does); the model loads from such a folder.
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["layer_norm_eps"] == 1e-5
    CausalQwenForNumericCausalLM(CausalQwenConfig(**TINY)).save_pretrained(tmp_path / "model")
    data = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(json.dumps({**data, "layer_norm_eps": 1e-5}))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert isinstance(model, CausalQwenForNumericCausalLM) and model.config.layer_norm_eps == 1e-5


def test_known_transformers_keys_load_without_warning(tmp_path, caplog):
    CausalQwenConfig(**TINY).save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        CausalQwenConfig.from_pretrained(tmp_path)
    assert not [r for r in caplog.records if "not causal_qwen settings" in r.getMessage()]


def test_config_from_qwen2_dict_without_model_type():
    qwen = Qwen2Config(**{k: v for k, v in TINY.items() if k != "num_token_id"}).to_dict()
    qwen.pop("model_type")
    config = CausalQwenConfig(**qwen, num_token_id=5)
    assert config.hidden_size == 32 and config.num_token_id == 5
