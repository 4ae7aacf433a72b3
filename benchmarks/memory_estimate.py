"""Training memory per device for CausalQwen at the Qwen2.5-0.5B and 7B shapes, computed (issue #18).

Parameters are counted on the ``meta`` device (no weights are built), LoRA with the package's own
``apply_lora`` (r=8: attention and MLP projections, the CausalQwen heads in full, the ``<NUM>`` rows). Bytes per
parameter, the usual mixed-precision accounting:

* trainable: 16 B (bf16 weight 2 + fp32 master 4 + bf16 gradient 2 + Adam moments 8) — DDP keeps all of it on
  every device; FSDP full shard / ZeRO-3 divide it by the number of devices;
* frozen (LoRA's base): 2 B (bf16), replicated under DDP, divided under FSDP / ZeRO-3;
* plus, under FSDP / ZeRO-3, the largest unsharded unit in bf16 while it computes (one decoder layer, or the
  embedding / head);
* plus the loss's working set: CausalQwen's chunked loss holds a few fp32 [chunk x V] tensors (chunk 256; 155 MB
  each at V = 151,936) where a plain Qwen2 materialises fp32 logits of [tokens x V] (2.5 GB at 4 x 1,024 tokens)
  and their gradient.

Activations other than the loss are not counted (they depend on batch, length and checkpointing). These are
estimates to choose a configuration; the CPU tests check equivalence, not memory, and no GPU has measured them.

    python benchmarks/memory_estimate.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM  # noqa: E402
from common import markdown_table, write_results  # noqa: E402

SHAPES: dict[str, dict[str, Any]] = {
    "0.5B": dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True,
    ),
    "7B": dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False,
    ),
}  # fmt: skip
TRAINABLE_BYTES, FROZEN_BYTES = 16, 2
GIB = 1024**3
LOSS_CHUNK, TOKENS = 256, 4 * 1024


def counts(shape: dict[str, Any], lora: bool) -> dict[str, int]:
    """Trainable and frozen parameter counts and the largest unit FSDP unshards at once."""
    from causalqwen.training.lora import apply_lora

    config = CausalQwenConfig(num_token_id=151665, **shape)
    with torch.device("meta"):
        model = CausalQwenForNumericCausalLM(config)
        layer = sum(p.numel() for p in model.model.layers[0].parameters())
        embedding = model.model.embed_tokens.weight.numel()
        if lora:
            model = apply_lora(model, r=8)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "largest_unit": max(layer, embedding)}


def per_device_gib(n: dict[str, int], strategy: str, devices: int, vocab: int) -> float:
    shards = 1 if strategy == "DDP" else devices
    state = (TRAINABLE_BYTES * n["trainable"] + FROZEN_BYTES * n["frozen"]) / shards
    gathered = 0 if strategy == "DDP" else 2 * n["largest_unit"]
    loss = 3 * 4 * LOSS_CHUNK * vocab  # loc_S, scale_S and one working tensor of the chunk, fp32
    return (state + gathered + loss) / GIB


def main() -> dict[str, Any]:
    rows, results = [], {}
    for name, shape in SHAPES.items():
        for lora in (False, True):
            n = counts(shape, lora)
            results[f"{name}{' LoRA' if lora else ''}"] = n
            for strategy, devices in (("DDP", 2), ("FSDP / ZeRO-3", 2), ("FSDP / ZeRO-3", 8)):
                gib = per_device_gib(n, strategy, devices, shape["vocab_size"])
                rows.append(
                    [
                        name,
                        "LoRA r=8" if lora else "full",
                        strategy,
                        devices,
                        f"{n['trainable'] / 1e6:.1f}M",
                        f"{gib:.1f}",
                    ]
                )
    plain_logits = 2 * 4 * TOKENS * SHAPES["0.5B"]["vocab_size"] / GIB  # logits and their gradient, fp32
    headers = ["model", "tuning", "strategy", "devices", "trainable", "GiB / device (no activations)"]
    print(markdown_table(headers, rows))
    print(
        f"\nplain Qwen2 fp32 logits + gradient at {TOKENS} tokens: {plain_logits:.1f} GiB (CausalQwen: none)"
    )
    results.update(table={"headers": headers, "rows": rows}, plain_qwen2_logits_gib=plain_logits)
    write_results("memory_estimate", results)
    return results


if __name__ == "__main__":
    main()
