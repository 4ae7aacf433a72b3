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

* A number is a number only if its written form can be rebuilt from its float64 value and a
  :class:`NumberFormat` (sign, digit script, thousands separators, leading zeros, decimals written, exponent):
  digit strings a float64 cannot hold (a 22-digit ID, ``0.10000000000000000001``), more than 15 leading
  zeros or 31 decimals stay text. This is what makes the tokenizer's round trip lossless.

Every :class:`NumberSpan` keeps its surface string and its format, so :func:`restore_numbers` rebuilds the
text exactly and :func:`render_value` writes an unchanged value back as it was written (and a changed one in
the same style); :func:`format_number` is the canonical text of a *generated* value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from decimal import Context, Decimal
from functools import cached_property
from typing import NamedTuple

__all__ = [
    "NUM_TOKEN",
    "SPACE_BEFORE_BIT",
    "NumberFormat",
    "NumberSpan",
    "extract_numbers",
    "format_number",
    "parse_number",
    "render_numbers",
    "render_value",
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
    (?=[0-9\uff10-\uff19+\-{_MINUS}.])  # every alternative starts so: other positions fail at once
    (?:
    (?P<version>(?<![{_GLUE}.]){_DIGIT}+(?:\.{_DIGIT}+){{2,}}(?![{_GLUE}]))
    |
    (?P<code>(?<![{_GLUE}.])0[xXbBoO][0-9A-Fa-f_]+)
    |
    (?<![{_GLUE}.])
    (?P<number>
        (?P<sign>(?<![{_GLUE})\]])[+\-{_MINUS}])?
        (?:
            (?P<int>{_DIGIT}{{1,3}}(?:,{_DIGIT}{{3}})+(?!{_DIGIT}) | {_DIGIT}+)(?:\.(?P<frac>{_DIGIT}+))?
            | \.(?P<dotfrac>{_DIGIT}+)
        )
        (?:(?P<e>[eE])(?P<esign>[+\-]?)(?P<exp>{_DIGIT}+))?
    )
    (?![{_TAIL_GLUE}])(?!\.{_DIGIT})
    )
    """,
    re.VERBOSE,
)
# The value path of the model is float32: a larger magnitude would become inf in a tensor, so it stays text.
FLOAT32_MAX = 3.4028234663852886e38
_FULLWIDTH_TO_ASCII = str.maketrans({chr(0xFF10 + i): str(i) for i in range(10)} | {_MINUS: "-", ",": ""})


@dataclass(frozen=True)
class NumberFormat:
    """How a number was written, apart from its value: enough to write the same value back byte for byte.

    Packed into one non-negative integer (:attr:`code`, 31 bits) that travels beside ``numeric_values`` as
    ``numeric_formats``; code 0 means "no written form" (a generated value: canonical text).

    * ``space_before``: one ASCII space stood right before the number (the tokenizer absorbs it into
      ``<NUM>`` instead of spending a lone space token);
    * ``sign``: ``""``, ``"+"``, ``"-"`` or ``"\u2212"`` as written (a negative value always gets a minus,
      in the written minus character when there was one);
    * ``fullwidth``: digits were full-width (``１２３``);
    * ``grouping``: thousands separators (``1,234``);
    * ``zero_pad``: width of an integer part written with leading zeros (``007`` -> 3), 0 otherwise;
    * ``leading_dot``: ``.5`` rather than ``0.5``;
    * ``decimals``: digits written after the point (``3.50`` -> 2), trailing zeros included;
    * ``exp_char``, ``exp_plus``, ``exp_width``, ``exponent``: an exponent (``e``/``E``), written with an
      explicit ``+``, zero-padded to ``exp_width`` digits (``1e-05``), and its value.
    """

    space_before: bool = False
    sign: str = ""
    fullwidth: bool = False
    grouping: bool = False
    zero_pad: int = 0
    leading_dot: bool = False
    decimals: int = 0
    exp_char: str = ""
    exp_plus: bool = False
    exp_width: int = 0
    exponent: int = 0

    @cached_property
    def code(self) -> int:
        """The packed integer (always odd: bit 0 marks a written form, so 0 can mean none)."""
        if not _fits(self):
            raise ValueError(f"{self} does not fit a format code (e.g. more than {_MAX_DECIMALS} decimals)")
        code, shift = 1, 1
        for name, bits, encode, _ in _PACKING:
            code |= encode(getattr(self, name)) << shift
            shift += bits
        return code

    @classmethod
    def from_code(cls, code: int) -> NumberFormat | None:
        """The format of a packed code; ``None`` for 0 (no written form)."""
        code = int(code)
        if code == 0:
            return None
        if code < 0 or not code & 1 or code >> _CODE_BITS:
            raise ValueError(f"{code} is not a number format code (odd, below 2**{_CODE_BITS})")
        values, shift = {}, 1
        for name, bits, _, decode in _PACKING:
            values[name] = decode((code >> shift) & ((1 << bits) - 1))
            shift += bits
        return cls(**values)


_SIGNS = ("", "+", "-", _MINUS)
_EXP_CHARS = ("", "e", "E")
# (field, bits, encode, decode): the layout of NumberFormat.code after the presence bit.
_PACKING = (
    ("space_before", 1, int, bool),
    ("sign", 2, _SIGNS.index, _SIGNS.__getitem__),
    ("fullwidth", 1, int, bool),
    ("grouping", 1, int, bool),
    ("zero_pad", 4, int, int),
    ("leading_dot", 1, int, bool),
    ("decimals", 5, int, int),
    ("exp_char", 2, _EXP_CHARS.index, _EXP_CHARS.__getitem__),
    ("exp_plus", 1, int, bool),
    ("exp_width", 2, int, int),
    ("exponent", 10, lambda e: e + 512, lambda e: e - 512),
)
_CODE_BITS = 1 + sum(bits for _, bits, _, _ in _PACKING)
SPACE_BEFORE_BIT = 1 << 1  # space_before is the first field after the presence bit
_MAX_DECIMALS = (1 << next(bits for name, bits, _, _ in _PACKING if name == "decimals")) - 1
assert [f.name for f in fields(NumberFormat)] == [name for name, *_ in _PACKING]

_FULLWIDTH_DIGITS = str.maketrans({str(i): chr(0xFF10 + i) for i in range(10)})
_WIDE = Context(prec=2000)


def describe_number(surface: str, value: float) -> NumberFormat | None:
    """The format of a number's surface, or ``None`` when ``value`` and a format cannot rebuild it exactly."""
    match = _NUMBER.fullmatch(surface)
    if match is None or match.group("number") is None:
        return None
    return _describe(match, value)


def _describe(match: re.Match, value: float) -> NumberFormat | None:
    """:func:`describe_number` from a match of ``_NUMBER`` (its named parts)."""
    parts = match.groupdict("")
    parts["frac"] = parts["frac"] or parts["dotfrac"]
    surface = match.group("number")
    digits = parts["int"].replace(",", "") + parts["frac"] + parts["exp"]
    wide = not digits.isascii()
    if wide and not all(c > "9" for c in digits):
        return None  # one number in two digit scripts: not rebuildable, so not a number
    integer = parts["int"].replace(",", "").translate(_FULLWIDTH_TO_ASCII)
    exponent = parts["exp"].translate(_FULLWIDTH_TO_ASCII)
    zero_pad = len(integer) if len(integer) > 1 and integer.startswith("0") else 0
    exp_width = len(exponent) if len(exponent) > 1 and exponent.startswith("0") else 0
    exp_value = int(parts["esign"] + exponent) if exponent else 0
    key = (parts["sign"], wide, "," in parts["int"], zero_pad, not integer, len(parts["frac"]))
    key += (parts["e"], parts["esign"] == "+", exp_width, exp_value)
    if key not in _INTERNED:
        if len(_INTERNED) > 4096:
            _INTERNED.clear()
        fmt = NumberFormat(*((False,) + key))
        _INTERNED[key] = fmt if _fits(fmt) else None
    fmt = _INTERNED[key]
    if fmt is None:
        return None  # beyond what the packed code holds (e.g. more than 31 decimals): not rebuildable
    significant = (integer + parts["frac"].translate(_FULLWIDTH_TO_ASCII)).lstrip("0")
    # <= 15 significant digits round-trip a float64 (DBL_DIG), so the rebuild is exact, except for subnormal
    # values and an exponent written "-0" (the one written form the format cannot say).
    exact = len(significant) <= 15 and (value == 0 or abs(value) >= _SMALLEST_NORMAL)
    if exact and not (exponent and exp_value == 0 and parts["esign"] == "-"):
        return fmt
    return fmt if render_value(value, fmt) == surface else None


def _plain_decimals(
    sign: str | None, integer: str | None, frac: str | None, exponent: str | None
) -> int | None:
    """The number of decimals when a match's parts make an unsigned ASCII integer or decimal without separators,
    leading zeros or exponent, of at most 15 digits (DBL_DIG: it round-trips a float64, and it is far below
    float32's range), else ``None``: the common case, which skips the general description, its rebuild check
    and the digit translation (tokenizer throughput, #14)."""
    if sign or exponent or integer is None:
        return None  # a leading-dot decimal (".5") has no integer part: the general path writes it
    frac = frac or ""
    if (
        integer.isascii()
        and frac.isascii()
        and "," not in integer
        and (integer[0] != "0" or integer == "0")
        and len(integer) + len(frac) <= 15
    ):
        return len(frac)
    return None


# One shared NumberFormat per distinct written form (keyed by its fields), so each is checked against the code's
# bit widths and packs its code once; None for a form the code cannot hold.
_INTERNED: dict[tuple, NumberFormat | None] = {}
_SMALLEST_NORMAL = 2.2250738585072014e-308


_PLAIN_FORMATS = [NumberFormat(decimals=decimals) for decimals in range(16)]  # _plain_decimals' answers


def _fits(fmt: NumberFormat) -> bool:
    """Every field of ``fmt`` fits its bits in the packed code (e.g. at most 31 decimals)."""
    return all(0 <= encode(getattr(fmt, name)) < 1 << bits for name, bits, encode, _ in _PACKING)


def render_value(value: float, fmt: NumberFormat | None = None) -> str:
    """``value`` written in ``fmt`` (canonical :func:`format_number` when ``fmt`` is ``None``).

    The value is taken as the shortest decimal that round-trips it (``repr``), so pass floats that mean the
    decimal they print as. At least ``fmt.decimals`` decimals are written, more when the value needs them (a
    changed value never loses digits); leading zeros, separators, sign style, exponent and digit script follow
    ``fmt``. A value the style cannot hold positionally (more than 31 decimals) falls back to canonical text.
    ``space_before`` is not written here (the tokenizer's decode does it).
    """
    if fmt is None:
        return format_number(value)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"cannot write a non-finite value: {value}")
    negative = math.copysign(1.0, value) < 0
    magnitude = Decimal(repr(abs(value)))
    if fmt.exp_char:
        magnitude = magnitude.scaleb(-fmt.exponent, _WIDE)
    decimals = max(fmt.decimals, -min(0, magnitude.normalize(_WIDE).as_tuple().exponent))
    if decimals > _MAX_DECIMALS:
        return format_number(value)
    integer, _, fraction = format(
        magnitude.quantize(Decimal(1).scaleb(-decimals), context=_WIDE), "f"
    ).partition(".")
    integer = integer.zfill(fmt.zero_pad)
    if fmt.leading_dot and integer == "0":
        integer = ""
    if fmt.grouping:
        head = len(integer) % 3 or 3
        integer = ",".join([integer[:head]] + [integer[i : i + 3] for i in range(head, len(integer), 3)])
    body = integer + ("." + fraction if fraction else "")
    if fmt.exp_char:
        exp_sign = "-" if fmt.exponent < 0 else "+" if fmt.exp_plus else ""
        body += fmt.exp_char + exp_sign + str(abs(fmt.exponent)).zfill(fmt.exp_width)
    if fmt.fullwidth:
        body = body.translate(_FULLWIDTH_DIGITS)
    if negative:
        sign = fmt.sign if fmt.sign in ("-", _MINUS) else "-"
    else:
        sign = "+" if fmt.sign == "+" else ""
    return sign + body


class NumberSpan(NamedTuple):
    """One number found in a text: ``text[start:end] == surface``, ``value`` is what it means and ``format``
    how it was written (``render_value(value, format) == surface``). A named tuple, not a frozen dataclass:
    one is built per number on the tokenizer's hot path, and a tuple builds several times faster (#14)."""

    start: int
    end: int
    surface: str
    value: float
    format: NumberFormat = NumberFormat()


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
        surface, sign, integer, frac, exponent = match.group("number", "sign", "int", "frac", "e")
        if surface is None:
            continue  # a version string: text
        plain = _plain_decimals(sign, integer, frac, exponent)
        if plain is not None:
            spans.append(NumberSpan(*match.span(), surface, float(surface), _PLAIN_FORMATS[plain]))
            continue
        value = float(surface.translate(_FULLWIDTH_TO_ASCII))
        if not _representable(value):
            continue
        fmt = _describe(match, value)
        if fmt is not None:
            spans.append(NumberSpan(match.start(), match.end(), surface, value, fmt))
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
