import pytest
from transformers import AutoConfig, PreTrainedConfig

import causalqwen
from causalqwen import CausalQwenConfig, ModelFamily, ToolRouterConfig, register_family


@pytest.mark.parametrize(
    ("model_type", "cls"), [("causal_qwen", CausalQwenConfig), ("tool_router", ToolRouterConfig)]
)
def test_auto_config_resolves_package_classes(model_type, cls):
    config = AutoConfig.for_model(model_type)
    assert type(config) is cls
    assert config.model_type == model_type


def test_every_family_is_registered():
    types = {f.model_type for f in causalqwen.MODEL_FAMILIES}
    assert {"causal_qwen", "tool_router"} <= types


def test_register_family_rejects_unknown_auto_class():
    class DummyConfig(PreTrainedConfig):
        model_type = "causalqwen_dummy_for_test"

    with pytest.raises(ValueError, match="no Auto class named 'AutoModelForNothing'"):
        register_family(ModelFamily(DummyConfig, models={"AutoModelForNothing": object}))


def test_registration_is_idempotent():
    for family in causalqwen.MODEL_FAMILIES:
        register_family(family)
    assert type(AutoConfig.for_model("causal_qwen")) is CausalQwenConfig
