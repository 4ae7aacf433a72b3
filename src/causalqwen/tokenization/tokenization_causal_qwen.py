"""CausalQwenTokenizer: a Qwen2 tokenizer that turns every number into ``<NUM>`` plus its value.

It subclasses transformers' tokenizers-backed ``Qwen2Tokenizer`` so that ``save_pretrained``, padding,
chat templates, collators and the Trainer keep working; only text in and text out change:

* ``__call__`` splits numbers out of each text (grammar in ``numbers.py``), tokenizes the templates, and
  returns ``numeric_values`` (the exact float64 value, 0 where the token is not ``<NUM>``) and
  ``numeric_formats`` (how the number was written, :class:`~.numbers.NumberFormat` packed in an int, 0
  elsewhere) aligned with ``input_ids``. Each number is one ``<NUM>`` token, so truncation keeps or drops a
  number together with its value and format.
* ``decode``/``batch_decode`` take ``numeric_values=`` (and ``numeric_formats=``) and write those values in
  place of ``<NUM>``: with the formats, an unchanged value comes back byte for byte as it was written and a
  changed one in the same style; without (generated numbers), as the shortest decimal of its dtype.

One ASCII space right before a number is absorbed into its ``<NUM>`` (recorded in the format) instead of
becoming a lone space token; any other whitespace stays ordinary text. ``<NUM>`` itself is added without
``lstrip`` so that it never swallows whitespace the format did not record (see docs/tokenization.md).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import tempfile
import unicodedata

import numpy as np
from tokenizers import AddedToken
from transformers import Qwen2Tokenizer
from transformers.tokenization_utils_base import BatchEncoding, PaddingStrategy

from ..configuration.configuration_causal_qwen import QWEN25_NUM_TOKEN_ID
from ..remote_code import RemoteCodeMixin
from .numbers import NUM_TOKEN, SPACE_BEFORE_BIT, NumberFormat, NumberSpan, extract_numbers, render_value

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
    tokenizer.add_tokens([_num_added_token()], special_tokens=True)
    num_id = tokenizer.convert_tokens_to_ids(NUM_TOKEN)
    if before == _QWEN25_LEN and num_id != QWEN25_NUM_TOKEN_ID:
        raise ValueError(f"<NUM> got id {num_id} in a Qwen2.5 vocabulary, expected {QWEN25_NUM_TOKEN_ID}")
    return num_id


def _num_added_token() -> AddedToken:
    # No lstrip: the tokenizer absorbs exactly one ASCII space itself and records it in the number's format, so
    # decode restores it; lstrip would swallow any whitespace run (a newline, two spaces) unrecorded.
    return AddedToken(NUM_TOKEN, special=True, lstrip=False, normalized=False)


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
    model_input_names = ["input_ids", "attention_mask", "numeric_values", "numeric_formats"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_token_id = add_num_token(self)
        if self.added_tokens_decoder[self.num_token_id].lstrip:
            # Saved by causalqwen < 0.3 (<NUM> with lstrip): re-register without it, same id.
            self._tokenizer.add_special_tokens([_num_added_token()])

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
        split_a = [_split(t) for t in texts]  # (template, spans, spaces) per text
        split_b = [_split(t) for t in pairs] if pairs else None

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
            [t for t, _, _ in split_a],
            [t for t, _, _ in split_b] if split_b else None,
            return_offsets_mapping=want_offsets,  # the encodings hold the template offsets either way
            return_attention_mask=True,
            **kwargs,
        )
        rows = {key: list(value) for key, value in encoded.items()}
        rows["numeric_values"], rows["numeric_formats"] = [], []
        for i, encoding in enumerate(encoded.encodings):
            sides = (split_a[i], split_b[i] if split_b else ("", [], []))
            values, formats, offsets = self._align(encoding, rows["input_ids"][i], sides, want_offsets)
            rows["numeric_values"].append(values)
            rows["numeric_formats"].append(formats)
            if want_offsets:
                rows["offset_mapping"][i] = offsets
        if pad_kwargs.get("return_attention_mask") is False:
            rows.pop("attention_mask")
        if not batched and pad_kwargs.get("return_tensors") is None:
            # Like transformers: a single text gives flat lists, but tensors always have a batch axis.
            rows = {key: value[0] for key, value in rows.items()}
        if pad_kwargs.get("padding", False) in _NO_PADDING and pad_kwargs.get("return_tensors") is None:
            return BatchEncoding(rows)  # nothing to pad or convert: skip pad's per-row pass
        return self.pad(rows, **{"padding": False, **pad_kwargs})

    def _align(self, encoding, ids, sides, want_offsets):
        """Values, format codes and (when wanted) original-text offsets of one encoded sequence, from the
        template offsets; ``sides`` holds the (template, spans, spaces) of the text and of its pair."""
        values, formats = [0.0] * len(ids), [0] * len(ids)
        num_positions = [i for i, token_id in enumerate(ids) if token_id == self.num_token_id]
        ends = None
        if len(num_positions) == len(sides[0][1]) + len(sides[1][1]):
            # Every placeholder survived (truncation only drops tokens, and no other text becomes <NUM>), and the
            # text comes before its pair: the k-th <NUM> is the k-th number. This skips reading the encoding's
            # offsets from Rust, most of this method's cost (tokenizer throughput, #14).
            numbers = [(span, space) for _, spans, spaces in sides for span, space in zip(spans, spaces)]
        else:  # truncated: the placeholder's end says which number each surviving <NUM> is
            ends = [_placeholder_ends(template) for template, _, _ in sides]
            sequence_ids, token_offsets = encoding.sequence_ids, encoding.offsets
            numbers = []
            for position in num_positions:
                seq = sequence_ids[position]
                k = bisect.bisect_left(ends[seq], token_offsets[position][1])
                numbers.append((sides[seq][1][k], sides[seq][2][k]))
        for position, (span, space) in zip(num_positions, numbers):
            values[position] = span.value
            formats[position] = span.format.code | (SPACE_BEFORE_BIT if space else 0)
        if not want_offsets:
            return values, formats, None
        ends = ends or [_placeholder_ends(template) for template, _, _ in sides]
        return values, formats, self._offsets(encoding, ids, sides, ends)

    def _offsets(self, encoding, ids, sides, ends):
        """Offsets into the original texts: a ``<NUM>`` spans its number's surface, other tokens shift by how much
        longer the text is than the template before them."""
        # shifts[seq][k]: the length difference after k numbers (each number replaced its surface, and the space
        # it absorbed, by the placeholder).
        shifts = [
            list(
                itertools.accumulate(
                    (len(s.surface) + space - len(NUM_TOKEN) for s, space in zip(sp, spaces)), initial=0
                )
            )
            for _, sp, spaces in sides
        ]
        offsets = []
        for token_id, seq, (start, end) in zip(ids, encoding.sequence_ids, encoding.offsets):
            if seq is None:
                offsets.append((0, 0))
            elif token_id == self.num_token_id:
                span = sides[seq][1][bisect.bisect_left(ends[seq], end)]
                offsets.append((span.start, span.end))
            else:
                shift = shifts[seq][bisect.bisect_right(ends[seq], start)]
                offsets.append((start + shift, end + shift))
        return offsets

    def _pad(self, encoded_inputs, max_length=None, padding_strategy=PaddingStrategy.DO_NOT_PAD, **kwargs):
        before = len(encoded_inputs[self.model_input_names[0]])
        padded = super()._pad(
            encoded_inputs, max_length=max_length, padding_strategy=padding_strategy, **kwargs
        )
        extra = len(padded[self.model_input_names[0]]) - before
        if extra:
            left = (kwargs.get("padding_side") or self.padding_side) == "left"
            for key, fill in _PAD_FILL.items():
                row = encoded_inputs.get(key)
                if row is not None:
                    padded[key] = [fill] * extra + list(row) if left else list(row) + [fill] * extra
        return padded

    def pad(
        self,
        encoded_inputs,
        padding=True,
        max_length=None,
        pad_to_multiple_of=None,
        padding_side=None,
        return_attention_mask=None,
        return_tensors=None,
        verbose=True,
    ) -> BatchEncoding:
        """``PreTrainedTokenizerBase.pad`` that keeps ``numeric_values`` float64 in tensors (exact values: the
        decoded text is the written number); the model casts them to its float32 value path."""
        padded = super().pad(
            encoded_inputs,
            padding=padding,
            max_length=max_length,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
            return_attention_mask=return_attention_mask,
            verbose=verbose,
        )
        if return_tensors is None:
            return padded
        values = padded.get("numeric_values")
        if values is not None and not hasattr(values, "dtype"):
            # ragged rows stay lists: the conversion below raises transformers' own padding advice
            with contextlib.suppress(ValueError):
                padded["numeric_values"] = np.asarray(values, dtype=np.float64)
        return BatchEncoding(padded.data, tensor_type=return_tensors)

    # ----------------------------------------------------------------------------------------- decoding
    def decode(
        self,
        token_ids,
        skip_special_tokens: bool = False,
        numeric_values=None,
        numeric_formats=None,
        **kwargs,
    ) -> str:
        """Text of ``token_ids``; with ``numeric_values`` (aligned with the ids) numbers replace ``<NUM>``.

        With ``numeric_formats`` (what ``__call__`` and ``generate`` return) each number is written as it was:
        ``decode(**tok(text)) == text`` byte for byte. Without, or where the code is 0 (a generated number),
        the value is written as the shortest decimal of its dtype, with one space before it after a letter,
        digit or ``, ; ! ? ) ] } %``.
        """
        if _no_values(numeric_values, numeric_formats):
            return super().decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)
        ids = _to_list(token_ids)
        values = _decimal_values(numeric_values)
        codes = [0] * len(ids) if numeric_formats is None else _to_list(numeric_formats)
        for name, column in (("numeric_values", values), ("numeric_formats", codes)):
            if len(column) != len(ids):
                raise ValueError(f"{name} has {len(column)} entries but token_ids has {len(ids)}")
        text, segment = "", []
        for token_id, value, code in zip(ids, values, codes):
            if token_id != self.num_token_id:
                segment.append(token_id)
                continue
            text += super().decode(segment, skip_special_tokens=skip_special_tokens, **kwargs)
            segment = []
            fmt = NumberFormat.from_code(code)
            space = _wants_space(text) if fmt is None else fmt.space_before
            text += (" " if space else "") + render_value(value, fmt)
        return text + super().decode(segment, skip_special_tokens=skip_special_tokens, **kwargs)

    def batch_decode(
        self,
        sequences,
        skip_special_tokens: bool = False,
        numeric_values=None,
        numeric_formats=None,
        **kwargs,
    ) -> list[str]:
        if _no_values(numeric_values, numeric_formats):
            return super().batch_decode(sequences, skip_special_tokens=skip_special_tokens, **kwargs)
        sequences = _to_list(sequences)
        # Rows stay tensors/arrays (not lists) so that decode sees their dtype (see _decimal_values).
        rows = {"numeric_values": numeric_values, "numeric_formats": numeric_formats}
        rows = {k: None if v is None else [v[i] for i in range(len(v))] for k, v in rows.items()}
        for name, column in rows.items():
            if column is not None and len(column) != len(sequences):
                raise ValueError(f"{len(sequences)} sequences but {len(column)} rows of {name}")
        formats = rows["numeric_formats"] or [None] * len(sequences)
        return [
            self.decode(
                ids,
                skip_special_tokens=skip_special_tokens,
                numeric_values=vals,
                numeric_formats=fmts,
                **kwargs,
            )
            for ids, vals, fmts in zip(sequences, rows["numeric_values"], formats)
        ]


def _no_values(numeric_values, numeric_formats) -> bool:
    """True when decoding is plain (no values); formats without values are an error."""
    if numeric_values is None and numeric_formats is not None:
        raise ValueError("numeric_formats needs numeric_values (the formats say how to write them)")
    return numeric_values is None


_NO_PADDING = (False, None, "do_not_pad", PaddingStrategy.DO_NOT_PAD)
_PAD_FILL = {"numeric_values": 0.0, "numeric_formats": 0, "offset_mapping": (0, 0)}


def _split(text: str) -> tuple[str, list[NumberSpan], list[bool]]:
    """``text`` with each number (and one ASCII space right before it) replaced by ``<NUM>``, the numbers, and
    whether each absorbed a space (recorded in its format code, so decode puts it back)."""
    if NUM_TOKEN in text:
        raise ValueError(
            f"the text contains the literal {NUM_TOKEN}, the placeholder the tokenizer puts where numbers were; "
            "it cannot be told apart from a number: remove or rewrite it"
        )
    pieces, spans, spaces, cursor = [], extract_numbers(text), [], 0
    for span in spans:
        space = span.start > cursor and text[span.start - 1] == " "
        pieces += [text[cursor : span.start - space], NUM_TOKEN]
        spaces.append(space)
        cursor = span.end
    pieces.append(text[cursor:])
    return "".join(pieces), spans, spaces


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
