"""Registration of the package's model families with the transformers Auto classes.

A model family is one :class:`ModelFamily` row; :func:`register_family` wires it into ``AutoConfig``,
the ``AutoModel*`` classes named in ``models`` and, when given, ``AutoTokenizer``. Adding a family to
the package is one more row in ``causalqwen.MODEL_FAMILIES``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import transformers
from transformers import AutoConfig, AutoTokenizer


@dataclass(frozen=True)
class ModelFamily:
    """One model family: a config class, the Auto classes its models register under, a tokenizer."""

    config: type
    models: dict[str, type] = field(default_factory=dict)
    tokenizer: type | None = None

    @property
    def model_type(self) -> str:
        return self.config.model_type


def register_family(family: ModelFamily) -> None:
    """Register ``family`` with the Auto classes (idempotent: re-importing the package is harmless)."""
    AutoConfig.register(family.model_type, family.config, exist_ok=True)
    for auto_name, model_cls in family.models.items():
        auto_cls = getattr(transformers, auto_name, None)
        if auto_cls is None:
            raise ValueError(f"transformers has no Auto class named {auto_name!r}")
        auto_cls.register(family.config, model_cls, exist_ok=True)
    if family.tokenizer is not None:
        AutoTokenizer.register(family.config, tokenizer_class=family.tokenizer, exist_ok=True)
