"""CausalQwenTokenizer: a Qwen2 tokenizer that turns every number into ``<NUM>`` plus its value.

It subclasses transformers' tokenizers-backed ``Qwen2Tokenizer`` so that ``save_pretrained``, padding,
chat templates, collators and the Trainer keep working; only text in and text out change:

* ``__call__`` splits numbers out of each text (grammar in ``numbers.py``), tokenizes the templates, and
  returns ``numeric_values`` (float, 0 where the token is not ``<NUM>``) aligned with ``input_ids``. Each
  number is one ``<NUM>`` token, so truncation keeps or drops a number together with its value.
* ``decode``/``batch_decode`` take ``numeric_values=`` and write those values (canonical formatting) in
  place of ``<NUM>``.

``<NUM>`` is a special added token with ``lstrip=True``: the space before a number is absorbed instead of
becoming a lone space token. Decoding therefore re-inserts one space before a number when the text before
it ends in a non-CJK letter or digit or in ``, ; ! ? ) ] } %`` (see docs/tokenization.md).
"""

from __future__ import annotations

import bisect
import itertools
import tempfile
import unicodedata

import numpy as np
from tokenizers import AddedToken
from transformers import Qwen2Tokenizer
from transformers.tokenization_utils_base import BatchEncoding, PaddingStrategy

from ..configuration.configuration_causal_qwen import QWEN25_NUM_TOKEN_ID
from ..remote_code import RemoteCodeMixin
from .numbers import NUM_TOKEN, format_number, split_numbers

__all__ = ["NUM_TOKEN", "QWEN25_NUM_TOKEN_ID", "CausalQwenTokenizer", "add_num_token"]

_QWEN25_LEN = 151665
_SPACE_AFTER = set(",;!?)]}%")


def add_num_token(tokenizer) -> int:
    """Add ``<NUM>`` to any Qwen2 tokenizer (e.g. ``Qwen/Qwen2.5-*`` from the Hub); returns its id.

    Qwen2.5 tokenizers hold 151,665 tokens, so ``<NUM>`` lands on 151665, the first reserved embedding
    row, and the model's embeddings need no resize.
    """
    if NUM_TOKEN in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids(NUM_TOKEN)
    before = len(tokenizer)
    tokenizer.add_tokens(
        [AddedToken(NUM_TOKEN, special=True, lstrip=True, normalized=False)], special_tokens=True
    )
    num_id = tokenizer.convert_tokens_to_ids(NUM_TOKEN)
    if before == _QWEN25_LEN and num_id != QWEN25_NUM_TOKEN_ID:
        raise ValueError(f"<NUM> got id {num_id} in a Qwen2.5 vocabulary, expected {QWEN25_NUM_TOKEN_ID}")
    return num_id


def _wants_space(previous: str) -> bool:
    if not previous or previous[-1].isspace():
        return False
    char = previous[-1]
    if char in _SPACE_AFTER:
        return True
    return char.isalnum() and not unicodedata.name(char, "").startswith(
        ("CJK", "HIRAGANA", "KATAKANA", "HANGUL")
    )


class CausalQwenTokenizer(RemoteCodeMixin, Qwen2Tokenizer):
    model_input_names = ["input_ids", "attention_mask", "numeric_values"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_token_id = add_num_token(self)

    @classmethod
    def from_qwen2(cls, qwen2_tokenizer) -> CausalQwenTokenizer:
        """Wrap an existing ``Qwen2Tokenizer`` (its vocabulary, added tokens and chat template)."""
        with tempfile.TemporaryDirectory() as folder:
            qwen2_tokenizer.save_pretrained(folder)
            return cls.from_pretrained(folder)

    @classmethod
    def from_qwen_vocab(cls) -> CausalQwenTokenizer:
        """The real Qwen2.5 vocabulary built offline (``qwen_vocab.py``), ``<NUM>`` at 151665."""
        from .qwen_vocab import load_qwen2_tokenizer

        return cls.from_qwen2(load_qwen2_tokenizer())

    # ----------------------------------------------------------------------------------------- encoding
    def __call__(self, text=None, text_pair=None, *args, **kwargs) -> BatchEncoding:
        if args:
            raise TypeError("CausalQwenTokenizer takes text and text_pair positionally, the rest by keyword")
        for unsupported in (
            "text_target",
            "text_pair_target",
            "is_split_into_words",
            "return_overflowing_tokens",
        ):
            if kwargs.get(unsupported):
                raise ValueError(f"CausalQwenTokenizer does not support {unsupported}=")
        if text is None:
            raise ValueError("text is required")
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        pairs = None
        if text_pair is not None:
            pairs = list(text_pair) if batched else [text_pair]
            if len(pairs) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(pairs)} text pairs")
        for item in texts + (pairs or []):
            if not isinstance(item, str):
                raise TypeError(f"texts must be str, got {type(item).__name__}")
        split_a = [split_numbers(t) for t in texts]
        split_b = [split_numbers(t) for t in pairs] if pairs else None

        pad_kwargs = {
            key: kwargs.pop(key)
            for key in (
                "padding",
                "pad_to_multiple_of",
                "padding_side",
                "return_tensors",
                "return_attention_mask",
            )
            if key in kwargs
        }
        if "max_length" in kwargs:  # bounds truncation (below) and padding="max_length" (in pad)
            pad_kwargs["max_length"] = kwargs["max_length"]
        want_offsets = kwargs.pop("return_offsets_mapping", False)
        encoded = super().__call__(
            [t for t, _ in split_a],
            [t for t, _ in split_b] if split_b else None,
            return_offsets_mapping=True,
            return_attention_mask=True,
            **kwargs,
        )
        rows = {key: list(value) for key, value in encoded.items()}
        rows["numeric_values"] = []
        for i, encoding in enumerate(encoded.encodings):
            spans = (split_a[i][1], split_b[i][1] if split_b else [])
            values, offsets = self._align(
                encoding, rows["input_ids"][i], spans, (split_a[i][0], split_b and split_b[i][0])
            )
            rows["numeric_values"].append(values)
            rows["offset_mapping"][i] = offsets
        if not want_offsets:
            rows.pop("offset_mapping")
        if pad_kwargs.get("return_attention_mask") is False:
            rows.pop("attention_mask")
        if not batched and pad_kwargs.get("return_tensors") is None:
            # Like transformers: a single text gives flat lists, but tensors always have a batch axis.
            rows = {key: value[0] for key, value in rows.items()}
        return self.pad(rows, **{"padding": False, **pad_kwargs})

    def _align(self, encoding, ids, spans, templates):
        """Values and original-text offsets of one encoded sequence (from the template offsets)."""
        ends = [_placeholder_ends(template) for template in templates]
        # shifts[seq][k]: how much longer the original text is than the template after k numbers.
        shifts = [
            list(itertools.accumulate((len(s.surface) - len(NUM_TOKEN) for s in sp), initial=0))
            for sp in spans
        ]
        values = [0.0] * len(ids)
        offsets = []
        for position, (token_id, seq, (start, end)) in enumerate(
            zip(ids, encoding.sequence_ids, encoding.offsets)
        ):
            if seq is None:
                offsets.append((0, 0))
            elif token_id == self.num_token_id:
                # lstrip may widen the token's start over a space; its end is the placeholder's end.
                span = spans[seq][bisect.bisect_left(ends[seq], end)]
                values[position] = span.value
                offsets.append((span.start, span.end))
            else:
                shift = shifts[seq][bisect.bisect_right(ends[seq], start)]
                offsets.append((start + shift, end + shift))
        return values, offsets

    def _pad(self, encoded_inputs, max_length=None, padding_strategy=PaddingStrategy.DO_NOT_PAD, **kwargs):
        values = encoded_inputs.get("numeric_values")
        offsets = encoded_inputs.get("offset_mapping")
        before = len(encoded_inputs[self.model_input_names[0]])
        padded = super()._pad(
            encoded_inputs, max_length=max_length, padding_strategy=padding_strategy, **kwargs
        )
        extra = len(padded[self.model_input_names[0]]) - before
        if extra:
            left = (kwargs.get("padding_side") or self.padding_side) == "left"
            for key, fill in (("numeric_values", 0.0), ("offset_mapping", (0, 0))):
                row = values if key == "numeric_values" else offsets
                if row is not None:
                    padded[key] = [fill] * extra + list(row) if left else list(row) + [fill] * extra
        return padded

    # ----------------------------------------------------------------------------------------- decoding
    def decode(self, token_ids, skip_special_tokens: bool = False, numeric_values=None, **kwargs) -> str:
        """Text of ``token_ids``; with ``numeric_values`` (aligned with the ids) numbers replace ``<NUM>``."""
        if numeric_values is None:
            return super().decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)
        ids = _to_list(token_ids)
        values = _decimal_values(numeric_values)
        if len(ids) != len(values):
            raise ValueError(f"numeric_values has {len(values)} entries but token_ids has {len(ids)}")
        text, segment = "", []
        for token_id, value in zip(ids, values):
            if token_id != self.num_token_id:
                segment.append(token_id)
                continue
            text += super().decode(segment, skip_special_tokens=skip_special_tokens, **kwargs)
            segment = []
            text += (" " if _wants_space(text) else "") + format_number(value)
        return text + super().decode(segment, skip_special_tokens=skip_special_tokens, **kwargs)

    def batch_decode(
        self, sequences, skip_special_tokens: bool = False, numeric_values=None, **kwargs
    ) -> list[str]:
        if numeric_values is None:
            return super().batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        sequences = _to_list(sequences)
        # Rows stay tensors/arrays (not lists) so that decode sees their dtype (see _decimal_values).
        numeric_values = [numeric_values[i] for i in range(len(numeric_values))]
        if len(sequences) != len(numeric_values):
            raise ValueError(f"{len(sequences)} sequences but {len(numeric_values)} rows of numeric_values")
        return [
            self.decode(ids, skip_special_tokens=skip_special_tokens, numeric_values=vals, **kwargs)
            for ids, vals in zip(sequences, numeric_values)
        ]


def _placeholder_ends(template: str | None) -> list[int]:
    if not template:
        return []
    ends, index = [], template.find(NUM_TOKEN)
    while index >= 0:
        ends.append(index + len(NUM_TOKEN))
        index = template.find(NUM_TOKEN, ends[-1])
    return ends


def _to_list(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


# Numpy scalar types whose str() is the shortest decimal that round-trips the value in that type.
_SHORTEST = {"float32": np.float32, "float16": np.float16}


def _decimal_values(values) -> list[float]:
    """``values`` as Python floats, each the shortest decimal that round-trips the dtype it came in.

    A value that went through a float32 tensor (every model output) is not the decimal it stands for:
    -7.4 is stored as -7.400000095367432. Writing the float64 expansion would print that noise; the shortest
    float32 decimal ("-7.4") is what the value means. float64 values and lists are kept as they are.
    """
    dtype = str(getattr(values, "dtype", "")).removeprefix("torch.")
    if dtype == "bfloat16":  # no numpy type: the shortest %g that converts back to the same bfloat16
        flat = values.reshape(-1)
        return [_shortest_round_trip(float(v), lambda x: flat.new_tensor(x).item()) for v in flat]
    as_floats = _to_list(values)
    scalar = _SHORTEST.get(dtype)
    if scalar is None:
        return as_floats
    return [float(str(scalar(v))) for v in as_floats]


def _shortest_round_trip(value: float, to_dtype) -> float:
    for digits in range(1, 18):
        candidate = float(f"{value:.{digits}g}")
        if to_dtype(candidate) == value:
            return candidate
    return value
