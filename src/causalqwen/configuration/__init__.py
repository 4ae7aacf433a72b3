from .configuration_causal_qwen import CausalQwenConfig
from .configuration_tool_router import ToolRouterConfig

__all__ = ["CausalQwenConfig", "ToolRouterConfig"]
