"""Special initialisations carried by the layer they apply to.

transformers initialises a custom-code model module by module (``PreTrainedModel.initialize_weights``) and skips
a module that holds no parameter of its own: an init written in ``_init_weights`` for a head made of child layers
(``isinstance(module, LatencyHead)``) silently never runs. So the layer carries its init (:func:`with_init`) and
each family's ``_init_weights`` calls :func:`apply_special_init` on every module it sees.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .cauchy import softplus_inverse

__all__ = ["apply_special_init", "unit_softplus_scale", "unit_variance_rows", "with_init"]


def with_init(layer: nn.Module, init: Callable[[nn.Module], None]) -> nn.Module:
    """``layer``, marked to be initialised by ``init`` (after the default init of its type)."""
    layer._special_init = init
    return layer


def apply_special_init(module: nn.Module) -> None:
    init = getattr(module, "_special_init", None)
    if init is not None:
        init(module)


def unit_softplus_scale(linear: nn.Linear) -> None:
    """A scale head ``softplus(linear(h))`` that starts at exactly 1 for every input."""
    linear.weight.zero_()
    linear.bias.fill_(float(softplus_inverse(1.0)))


def unit_variance_rows(linear: nn.Linear) -> None:
    """Outputs of unit variance for unit-variance inputs (std ``1/sqrt(in_features)``)."""
    linear.weight.normal_(std=linear.in_features**-0.5)
