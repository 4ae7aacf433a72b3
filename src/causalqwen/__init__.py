"""causalqwen: a numeric causal LM (CausalQwen), a tool router (ToolRouter) and a tool planner (ToolPlanner),
native to transformers.

Importing the package registers the three model families with the transformers Auto classes, and the
``"numeric-text-generation"`` pipeline (:mod:`causalqwen.pipelines`).
"""

from .configuration.configuration_causal_qwen import CausalQwenConfig
from .configuration.configuration_tool_planner import ToolPlannerConfig
from .configuration.configuration_tool_router import ToolRouterConfig
from .modeling.modeling_causal_qwen import CausalQwenForNumericCausalLM, CausalQwenModel
from .modeling.modeling_tool_planner import ToolPlannerModel
from .modeling.modeling_tool_router import ToolRouterModel
from .pipelines import NumericTextGenerationPipeline, register_pipeline
from .registration import ModelFamily, register_family
from .tokenization.tokenization_causal_qwen import CausalQwenTokenizer

__version__ = "0.1.0"

# One row per model family; register_family wires each into AutoConfig / AutoModel* / AutoTokenizer.
MODEL_FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(
        CausalQwenConfig,
        models={"AutoModel": CausalQwenModel, "AutoModelForCausalLM": CausalQwenForNumericCausalLM},
        tokenizer=CausalQwenTokenizer,
    ),
    ModelFamily(ToolRouterConfig, models={"AutoModel": ToolRouterModel}),
    # After the router and CausalQwen: the planner's config resolves its parts through AutoConfig.
    ModelFamily(ToolPlannerConfig, models={"AutoModel": ToolPlannerModel}),
)

for _family in MODEL_FAMILIES:
    register_family(_family)
register_pipeline()

__all__ = [
    "MODEL_FAMILIES",
    "CausalQwenConfig",
    "CausalQwenForNumericCausalLM",
    "CausalQwenModel",
    "CausalQwenTokenizer",
    "ModelFamily",
    "NumericTextGenerationPipeline",
    "ToolPlannerConfig",
    "ToolPlannerModel",
    "ToolRouterConfig",
    "ToolRouterModel",
    "register_family",
]
