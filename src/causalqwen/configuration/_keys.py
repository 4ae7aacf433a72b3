"""Unknown configuration keys: an error when a user builds a config, a warning when a saved one is loaded.

``PreTrainedConfig`` subclasses accept arbitrary ``**kwargs`` and store them as attributes, so a typo such as
``gama_init=2.0`` would be silently ignored. The package's configs reject, at construction, every extra keyword
that is not one transformers itself consumes or writes (:data:`TRANSFORMERS_EXTRA_KEYS`) or a private ``_``
key, naming the closest field.

A saved ``config.json`` is different: tooling sets attributes on configs (transformers' own test utilities,
PEFT, accelerate, a user's ``config.foo = ...``) and ``save_pretrained`` writes them. ``from_dict`` (hence
``from_pretrained`` and the Auto classes) therefore loads such keys as plain attributes, as ``PreTrainedConfig``
does, and logs one warning naming them: the model ignores them, and saving again keeps them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from transformers.generation.configuration_utils import GenerationConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Keys that are not dataclass fields but that transformers (or its Hub ecosystem) passes to a config's
# constructor when it loads a config.json it wrote, or that older Qwen2 checkpoints carry.
TRANSFORMERS_EXTRA_KEYS = frozenset(
    {
        "model_type",
        "auto_map",
        "custom_pipelines",
        "tokenizer_class",
        "name_or_path",
        "torch_dtype",
        "num_labels",
        "attn_implementation",
        "experts_implementation",
        "output_attentions",
        "per_layer_config",
        "rope_theta",
        "rope_scaling",
        "partial_rotary_factor",
        "quantization_config",
        "torchscript",
        "pruned_heads",
        "tie_encoder_decoder",
        "is_decoder",
        "add_cross_attention",
        "cross_attention_hidden_size",
        "decoder_start_token_id",
        "sep_token_id",
        "prefix",
        "task_specific_params",
        "finetuning_task",
        "tf_legacy_loss",
        "use_bfloat16",
        "gradient_checkpointing",
        "base_model_tp_plan",
        "base_model_pp_plan",
        "peft_config",
    }
    | set(GenerationConfig._get_default_generation_params())
)


def _unknown(keys: Iterable[str], fields: Iterable[str]) -> list[str]:
    known = set(fields) | TRANSFORMERS_EXTRA_KEYS
    return sorted(k for k in keys if k not in known and not k.startswith("_"))


def _hints(unknown: list[str], fields: Iterable[str]) -> str:
    """``'gama_init' (did you mean 'gamma_init'?), 'foo'``."""
    names = list(fields)
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, names, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ", ".join(hints)


class KnownKeysMixin:
    """Mixin for the package's strict-dataclass configs (put it first in the bases)."""

    def _reject_unknown_keys(self, kwargs: dict[str, Any]) -> None:
        unknown = _unknown(kwargs, self.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"{type(self).__name__} got unknown configuration key(s): {_hints(unknown, self.__dataclass_fields__)}"
            )

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        unknown = _unknown(config_dict, cls.__dataclass_fields__)
        extra = {k: config_dict[k] for k in unknown}
        loaded = super().from_dict({k: v for k, v in config_dict.items() if k not in extra}, **kwargs)
        if extra:
            logger.warning(
                f"{cls.__name__}: the saved config has key(s) that are not {cls.model_type} settings, kept as "
                f"attributes and ignored by the model: {_hints(unknown, cls.__dataclass_fields__)}"
            )
            config = loaded[0] if isinstance(loaded, tuple) else loaded
            for key, value in extra.items():
                setattr(config, key, value)
        return loaded
