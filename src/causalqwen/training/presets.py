"""Presets shared by the CLIs, the demo and the benchmarks.

:data:`TINY_BACKBONE` is the CPU-sized Qwen2 shape every tiny model of this package trains (the CLI's
``--base tiny``, ``make demo``, the planner's CPU runs, ``benchmarks/numeric.py`` and ``benchmarks/perf.py``'s
``tiny``): 64 wide, 2 layers, 4 query and 2 key/value heads, MLP 128. Each caller adds what it needs on top
(vocabulary, positions, tied embeddings), so that "the same tiny backbone" in the docs is one definition.
"""

from __future__ import annotations

__all__ = ["TINY_BACKBONE"]

TINY_BACKBONE = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
