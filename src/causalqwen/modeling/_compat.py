"""The KV cache's name across transformers versions: ``past_key_values`` before 5.24, ``cache`` from 5.24.

transformers 5.24 renamed the cache everywhere at once: the ``past_key_values`` keyword of the models'
``forward`` and of ``prepare_inputs_for_generation`` became ``cache`` (the old keyword is still accepted there,
with a deprecation warning), the ``past_key_values`` field of the model outputs became ``cache``, and generation
looks the cache up in a step's output by that field name only. CausalQwen therefore has to emit the name the
installed version reads and pass the cache on under the name its backbone takes.

:data:`CACHE_NAME` is detected once from transformers' own output dataclass, not from a version number, so the
same code follows the rename wherever it lands. Everything version-dependent lives here; this module is part of
the remote-code bundle like the rest of ``modeling``.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import fields
from typing import TypeVar

from transformers.modeling_outputs import BaseModelOutputWithPast

__all__ = [
    "CACHE_NAME",
    "LEGACY_CACHE_NAME",
    "QuietCheckpointingAlias",
    "accepts_both_cache_names",
    "assigns_fields_directly",
    "cache_output_field",
]

LEGACY_CACHE_NAME = "past_key_values"
_NEW_CACHE_NAME = "cache"


def _detect_cache_name() -> str:
    names = {f.name for f in fields(BaseModelOutputWithPast)}
    for name in (_NEW_CACHE_NAME, LEGACY_CACHE_NAME):
        if name in names:
            return name
    raise ImportError(
        f"transformers' BaseModelOutputWithPast has neither a {_NEW_CACHE_NAME!r} nor a {LEGACY_CACHE_NAME!r} "
        "field; this transformers version is not supported"
    )


CACHE_NAME = _detect_cache_name()
"""The name transformers uses for the KV cache: keyword of ``forward`` and field of the model outputs."""

_OTHER_CACHE_NAME = LEGACY_CACHE_NAME if CACHE_NAME == _NEW_CACHE_NAME else _NEW_CACHE_NAME

_F = TypeVar("_F", bound=Callable)
_C = TypeVar("_C", bound=type)


def accepts_both_cache_names(func: _F) -> _F:
    """Let ``func``, whose parameter is named ``cache``, also take the cache as ``past_key_values=``.

    Generation passes the cache under :data:`CACHE_NAME` (``past_key_values`` before 5.24) and callers may use
    either name on any version, so both are accepted silently; giving two different caches raises.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if LEGACY_CACHE_NAME in kwargs:
            legacy = kwargs.pop(LEGACY_CACHE_NAME)
            current = kwargs.get(_NEW_CACHE_NAME)
            if legacy is not None and current is not None and legacy is not current:
                raise ValueError(
                    f"got two different caches, {_NEW_CACHE_NAME}= and {LEGACY_CACHE_NAME}=; pass one of them"
                )
            if current is None:
                kwargs[_NEW_CACHE_NAME] = legacy
        return func(*args, **kwargs)

    return wrapper


def cache_output_field(cls: _C) -> _C:
    """Class decorator, applied *before* ``@dataclass``: the output's ``cache`` field gets the installed name.

    A ``ModelOutput`` body declares ``cache: Cache | None = None``; on transformers < 5.24 the field is renamed
    ``past_key_values`` (same place in the field order, so ``to_tuple`` does not change). The other name stays
    readable and writable as an alias property (not a field, so the cache appears once in tuples and dicts).
    """
    annotations = dict(cls.__dict__.get("__annotations__", {}))
    if _NEW_CACHE_NAME not in annotations or _NEW_CACHE_NAME not in cls.__dict__:
        raise TypeError(f"{cls.__name__} must declare a `{_NEW_CACHE_NAME}: ... = None` field")
    if CACHE_NAME != _NEW_CACHE_NAME:
        cls.__annotations__ = {(CACHE_NAME if k == _NEW_CACHE_NAME else k): v for k, v in annotations.items()}
        default = cls.__dict__[_NEW_CACHE_NAME]
        delattr(cls, _NEW_CACHE_NAME)
        setattr(cls, CACHE_NAME, default)

    def get(self):
        return getattr(self, CACHE_NAME)

    def set_(self, value):
        setattr(self, CACHE_NAME, value)

    setattr(cls, _OTHER_CACHE_NAME, property(get, set_, doc=f"Alias of ``{CACHE_NAME}`` (the KV cache)."))
    return cls


def assigns_fields_directly(cls: _C) -> _C:
    """Class decorator, applied *after* ``@dataclass`` on a ``ModelOutput``: assigning a field does what
    ``ModelOutput.__setattr__`` does (store a non-``None`` value as a key too, then as an attribute) without
    rebuilding the set of field names at every assignment.

    The dataclass ``__init__`` assigns every field, so the rebuild costs fields² per output: 34 us for the 13
    fields of :class:`CausalQwenOutput` against 14 us with the names computed once, per decoding step (a tiny
    model decodes a token in about 1 ms). Other names (the cache's alias, new attributes) go through
    ``ModelOutput.__setattr__`` unchanged.
    """
    names = frozenset(f.name for f in fields(cls))
    model_output_setattr = cls.__setattr__

    def __setattr__(self, name: str, value) -> None:
        if name not in names:
            model_output_setattr(self, name, value)
            return
        if value is not None:
            OrderedDict.__setitem__(self, name, value)
        object.__setattr__(self, name, value)

    cls.__setattr__ = __setattr__
    return cls


class QuietCheckpointingAlias:
    """Answers the deprecated ``is_gradient_checkpointing`` without transformers' FutureWarning.

    PEFT reads the alias on every ``get_peft_model``; the warning would tell users about a call they did not
    write. Same value as ``is_activation_checkpointing``. Put it before ``PreTrainedModel`` in the bases.
    """

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(getattr(module, "gradient_checkpointing", False) for module in self.modules())
