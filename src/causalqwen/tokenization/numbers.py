"""Find numbers in text and write values back as text.

The tokenizer replaces every number by one ``<NUM>`` token and carries its value on the side, so the
grammar decides what the model sees as a quantity and what stays ordinary text. The choices (see
docs/tokenization.md for the full table):

* A number is ``[sign] mantissa [exponent]``: the mantissa is ``123``, ``1,234,567`` (groups of exactly
  three digits after the first group of one to three), ``12.5``, ``1,234.5`` or ``.5``; the exponent is
  ``e``/``E`` with an optional sign. ``5.`` is the number 5 followed by a full stop (sentence ends are far
  more common than a trailing-dot float).
* A sign (``+``, ``-`` or the Unicode minus U+2212) belongs to the number only when nothing alphanumeric
  or ``)``/``]`` stands right before it, so ``3-5`` and ``2024-12-23`` keep ``-`` as text (ranges and
  dates become separate integers) while ``x = -5`` and ``(-5)`` are negative.
* A number directly followed by letters is a number and the letters stay text: units and magnitude
  suffixes (``10GB``, ``5km``, ``12.5k``, ``$1.2M``, ``3x``), decades (``1990s``) and ordinals (``1st``) keep
  their written value (``12.5k`` is 12.5 followed by ``k``; the suffix is not applied). A number glued on its
  *left* to a Latin letter, a digit of another token, ``_`` or ``.`` is not a number: identifiers and codes
  (``v2``, ``H2O``, ``A4``, ``Q3``, ``x1y2``) stay text, as do hex/binary/octal literals (``0x1F``) and digit
  runs followed by ``_`` or another digit script. CJK text is not a letter for these rules, so the ``25`` of
  ``25岁`` is a number.
* Dotted sequences of three or more digit groups (versions, IPs: ``1.2.3``, ``10.0.0.1``) stay text.
* ``1,2,3`` is a list (three numbers); ``1,234`` is one thousand two hundred thirty-four; ``12,345,67``
  is 12345, ``,`` and 67.
* Leading zeros (``007``) are numbers (value 7); full-width digits (``１２３``) are numbers (value 123);
  ``%`` and currency signs stay text; values that overflow a float32 (``1e39``, ``1e999``) stay text, so no
  inf ever reaches the model's float32 value path.

Every :class:`NumberSpan` keeps its surface string, so :func:`restore_numbers` rebuilds the text exactly;
:func:`format_number` is the canonical text of a *generated* value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal

__all__ = [
    "NUM_TOKEN",
    "NumberSpan",
    "extract_numbers",
    "format_number",
    "parse_number",
    "render_numbers",
    "restore_numbers",
    "split_numbers",
]

NUM_TOKEN = "<NUM>"

_DIGIT = "[0-9\uff10-\uff19]"
_MINUS = "\u2212"
# Characters that glue a digit run into an identifier: ASCII/full-width Latin letters, digits, '_'.
_GLUE = "A-Za-z0-9_\uff10-\uff19\uff21-\uff3a\uff41-\uff5a"
# What may not follow a number: a digit or '_' (it would be one identifier or digit run).
_TAIL_GLUE = "0-9_\uff10-\uff19"
_NUMBER = re.compile(
    rf"""
    (?P<version>(?<![{_GLUE}.]){_DIGIT}+(?:\.{_DIGIT}+){{2,}}(?![{_GLUE}]))
    |
    (?P<code>(?<![{_GLUE}.])0[xXbBoO][0-9A-Fa-f_]+)
    |
    (?<![{_GLUE}.])
    (?P<number>
        (?:(?<![{_GLUE})\]])[+\-{_MINUS}])?
        (?:
            {_DIGIT}{{1,3}}(?:,{_DIGIT}{{3}})+(?!{_DIGIT})(?:\.{_DIGIT}+)?
            | {_DIGIT}+(?:\.{_DIGIT}+)?
            | \.{_DIGIT}+
        )
        (?:[eE][+\-]?{_DIGIT}+)?
    )
    (?![{_TAIL_GLUE}])(?!\.{_DIGIT})
    """,
    re.VERBOSE,
)
# The value path of the model is float32: a larger magnitude would become inf in a tensor, so it stays text.
FLOAT32_MAX = 3.4028234663852886e38
_FULLWIDTH_TO_ASCII = str.maketrans({chr(0xFF10 + i): str(i) for i in range(10)} | {_MINUS: "-", ",": ""})


@dataclass(frozen=True)
class NumberSpan:
    """One number found in a text: ``text[start:end] == surface`` and ``value`` is what it means."""

    start: int
    end: int
    surface: str
    value: float


def parse_number(surface: str) -> float:
    """Value of one number written in the grammar above; ValueError if it is not one or not finite."""
    if not isinstance(surface, str):
        raise TypeError(f"surface must be a str, got {type(surface).__name__}")
    match = _NUMBER.fullmatch(surface)
    if match is None or match.group("number") is None:
        raise ValueError(f"not a number in the causalqwen grammar: {surface!r}")
    value = float(surface.translate(_FULLWIDTH_TO_ASCII))
    if not _representable(value):
        raise ValueError(f"number {surface!r} overflows a float32 (|value| > {FLOAT32_MAX:.4g})")
    return value


def _representable(value: float) -> bool:
    return math.isfinite(value) and abs(value) <= FLOAT32_MAX


def extract_numbers(text: str) -> list[NumberSpan]:
    """All numbers of ``text``, left to right, without overlaps."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    spans = []
    for match in _NUMBER.finditer(text):
        surface = match.group("number")
        if surface is None:
            continue  # a version string: text
        value = float(surface.translate(_FULLWIDTH_TO_ASCII))
        if _representable(value):
            spans.append(NumberSpan(match.start(), match.end(), surface, value))
    return spans


def split_numbers(text: str, placeholder: str = NUM_TOKEN) -> tuple[str, list[NumberSpan]]:
    """``text`` with each number replaced by ``placeholder``, and the numbers in order."""
    spans = extract_numbers(text)
    pieces, cursor = [], 0
    for span in spans:
        pieces += [text[cursor : span.start], placeholder]
        cursor = span.end
    pieces.append(text[cursor:])
    return "".join(pieces), spans


def restore_numbers(template: str, spans: list[NumberSpan], placeholder: str = NUM_TOKEN) -> str:
    """Inverse of :func:`split_numbers`: the original text, surfaces included, to the character."""
    return render_numbers(template, [span.surface for span in spans], placeholder)


def render_numbers(template: str, values: list, placeholder: str = NUM_TOKEN) -> str:
    """Fill each ``placeholder`` of ``template`` with a value (formatted) or a surface string."""
    parts = template.split(placeholder)
    if len(parts) - 1 != len(values):
        raise ValueError(
            f"template has {len(parts) - 1} {placeholder} slots but {len(values)} values were given"
        )
    out = [parts[0]]
    for value, part in zip(values, parts[1:]):
        out += [value if isinstance(value, str) else format_number(value), part]
    return "".join(out)


def format_number(value: float) -> str:
    """Canonical text of a value: integers without ``.0``, shortest round-tripping digits.

    Magnitudes in [1e-6, 1e16) are written positionally (``0.000125``, ``123456.5``); outside that range
    Python's shortest repr with an exponent (``1e-07``, ``1.5e+20``), which the grammar parses back.
    ``-0.0`` is written ``0``.
    """
    if isinstance(value, (bool, str)) or not hasattr(value, "__float__"):
        raise TypeError(f"value must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"cannot format a non-finite value: {value}")
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e16 or magnitude < 1e-6:
        return repr(value)
    if value.is_integer():
        return str(int(value))
    return format(Decimal(repr(value)), "f")
