"""Every field of the package's configs is type-checked, as transformers' own configs are.

The configs are ``huggingface_hub`` strict dataclasses: a field's annotation becomes a validator that runs on
construction and on every assignment. That only works when the annotations are real types; under
``from __future__ import annotations`` they are strings and the validator let anything through
(``CausalQwenConfig(loss_compile="yes")`` was accepted and the string was truthy).
"""

import json

import pytest
from huggingface_hub.errors import StrictDataclassFieldValidationError

from causalqwen import CausalQwenConfig, ToolPlannerConfig, ToolRouterConfig

CONFIGS = {
    "causal_qwen": lambda **kw: CausalQwenConfig(vocab_size=300, num_token_id=299, **kw),
    "tool_router": lambda **kw: ToolRouterConfig(vocab_size=64, **kw),
    "tool_planner": lambda **kw: ToolPlannerConfig(**kw),
}

WRONG_TYPES = [
    ("causal_qwen", "loss_compile", "yes"),
    ("causal_qwen", "isotropic_scale", 1),
    ("causal_qwen", "causal_size", 2.5),
    ("causal_qwen", "loss_chunk_size", "256"),
    ("causal_qwen", "value_encoding", 3),
    ("causal_qwen", "gamma_init", "1.0"),
    ("causal_qwen", "value_interval_table", [0.5]),
    ("causal_qwen", "value_encoding_bin_width", "0.25"),
    ("causal_qwen", "numeric_input_noise_relative", 1),
    ("tool_router", "share_encoder", "no"),
    ("tool_router", "use_ffn", 0),
    ("tool_router", "d_tool", 64.0),
    ("tool_router", "matching", None),
    ("tool_planner", "freeze_tool_tower", "false"),
    ("tool_planner", "generate_arguments", 1),
    ("tool_planner", "max_plan_steps", 2.0),
]


@pytest.mark.parametrize(("family", "field", "value"), WRONG_TYPES)
def test_a_wrongly_typed_field_raises_naming_it(family, field, value):
    with pytest.raises(StrictDataclassFieldValidationError, match=f"Field '{field}' expected"):
        CONFIGS[family](**{field: value})


@pytest.mark.parametrize(("family", "field", "value"), WRONG_TYPES)
def test_assigning_a_wrong_type_raises_and_keeps_the_old_value(family, field, value):
    config = CONFIGS[family]()
    before = getattr(config, field)
    with pytest.raises(StrictDataclassFieldValidationError, match=f"Field '{field}' expected"):
        setattr(config, field, value)
    assert getattr(config, field) == before


def test_saved_config_with_a_wrongly_typed_flag_fails_to_load(tmp_path):
    config = CONFIGS["causal_qwen"](loss_compile=True)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["loss_compile"] is True
    saved["loss_compile"] = "true"  # a hand-edited file
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(StrictDataclassFieldValidationError, match="Field 'loss_compile' expected bool"):
        CausalQwenConfig.from_pretrained(tmp_path)


def test_the_annotated_types_are_enforced_like_qwen2s():
    # The same mechanism as transformers' own config: the validators see types, not strings, for every
    # field the package's configs declare themselves.
    for cls in (CausalQwenConfig, ToolRouterConfig, ToolPlannerConfig):
        own = vars(cls)["__annotations__"]
        assert len(own) >= 10
        for name in own:
            field = cls.__dataclass_fields__[name]
            assert not isinstance(field.type, str), f"{cls.__name__}.{name} is annotated with a string"
    # and legitimate values still pass: ints for float fields, numpy-free plain JSON types
    config = CONFIGS["causal_qwen"](gamma_init=2, reg_lambda=5, causal_size=None, isotropic_scale=True)
    assert (config.gamma_init, config.causal_size, config.isotropic_scale) == (2, config.hidden_size, True)
