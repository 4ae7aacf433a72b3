"""A tiny CausalQwenTokenizer: the demo's, the CLI's ``--base tiny`` and the tests' vocabulary (no files, no network).

A supported part of the package, not a test fixture: ``make demo`` and ``causalqwen-train`` train CPU-sized
models on it in minutes, where the real 151,666-token vocabulary would make the embedding most of the model.

Byte-level BPE trained in memory on a small corpus with Qwen2's pre-tokenizer (same classes as
``Qwen2Tokenizer``), ~300 tokens, with ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` and ``<NUM>``.
Build models with ``vocab_size=len(tokenizer)`` and ``num_token_id=tokenizer.num_token_id``.
"""

from __future__ import annotations

import functools
import tempfile

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from .tokenization_causal_qwen import CausalQwenTokenizer

__all__ = ["TINY_CORPUS", "build_tiny_tokenizer"]

TINY_CORPUS = (
    "The loan is <NUM> yuan at <NUM>% for <NUM> years.",
    "The price of the house rose by <NUM> percent to <NUM> dollars in <NUM>.",
    "She is <NUM> years old and weighs <NUM> kg; he ran <NUM> km in <NUM> minutes.",
    "def add(x, y):\n    return x + y\n",
    "Hello world! What is the temperature today? It is <NUM> degrees.",
    "贷款金额为<NUM>元，年利率<NUM>%，期限<NUM>年。",
)


@functools.lru_cache(maxsize=1)
def _tiny_backend_json() -> str:
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        show_progress=False,
    )
    backend.train_from_iterator([t.replace("<NUM>", "") for t in TINY_CORPUS] * 4, trainer=trainer)
    return backend.to_str()


def build_tiny_tokenizer() -> CausalQwenTokenizer:
    """A fresh tiny tokenizer (``<NUM>`` is the last id; ``len(tokenizer)`` is the model's vocab size)."""
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/tokenizer.json"
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(_tiny_backend_json())
        return CausalQwenTokenizer(
            tokenizer_file=path,
            extra_special_tokens=["<|im_start|>", "<|im_end|>"],
            model_max_length=4096,
        )
