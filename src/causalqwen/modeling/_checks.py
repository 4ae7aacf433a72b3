"""Input checks that stay out of the way of ``torch.compile``.

A NaN/inf check is a data-dependent branch: ``torch.compile(fullgraph=True)`` cannot trace it. Under
compilation the checks below are skipped; the eager entry points (``generate``, the collators, the tokenizer,
``ToolIndex``) check the same inputs before any compiled forward sees them, and an eager forward still checks.
"""

from __future__ import annotations

import torch

__all__ = ["check_finite"]


def check_finite(tensor: torch.Tensor, message: str) -> None:
    """Raise ``ValueError(message)`` when ``tensor`` holds NaN or inf (skipped under torch.compile)."""
    if not torch.compiler.is_compiling() and not torch.isfinite(tensor).all():
        raise ValueError(message)
