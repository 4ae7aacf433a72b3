import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from causalqwen.tokenization.numbers import (
    extract_numbers,
    format_number,
    parse_number,
    render_numbers,
    restore_numbers,
    split_numbers,
)


@pytest.mark.parametrize(
    ("text", "surfaces", "values"),
    [
        ("The loan is 50000 yuan at 3.5% for 25 years", ["50000", "3.5", "25"], [50000, 3.5, 25]),
        ("2024-12-23", ["2024", "12", "23"], [2024, 12, 23]),
        ("version 1.2.3 and 10.0.0.1", [], []),
        ("v2 H2O A4 Q3 x1y2 0x1F 0b101 1_000 s1", [], []),  # glued on the left, literals, digit runs
        (
            "10GB 5km 3x 12.5k $1.2M the 1990s 1st",
            ["10", "5", "3", "12.5", "1.2", "1990", "1"],
            [10, 5, 3, 12.5, 1.2, 1990, 1],
        ),  # letters after a number stay text; the suffix is not applied
        ("2e 2e5x 10x5", ["2", "2e5", "10"], [2, 200000.0, 10]),  # 'x5' is glued on its left
        ("1,234 and 1,2,3", ["1,234", "1", "2", "3"], [1234, 1, 2, 3]),
        ("12,345,67", ["12,345", "67"], [12345, 67]),
        ("1,234.5e2", ["1,234.5e2"], [123450.0]),
        ("007 +5 .5", ["007", "+5", ".5"], [7, 5, 0.5]),
        ("It was 5.", ["5"], [5]),
        ("1e-3 and 2E+4", ["1e-3", "2E+4"], [0.001, 20000.0]),
        ("\u22124 (-5) x=-6", ["\u22124", "-5", "-6"], [-4, -5, -6]),
        ("3-5", ["3", "5"], [3, 5]),
        ("\uff11\uff12\uff13", ["\uff11\uff12\uff13"], [123]),
        ("\u4ed625\u5c81", ["25"], [25]),
        ("1e999 stays text", [], []),
        ("1e39 too, 3e38 fits", ["3e38"], [3e38]),  # float32 overflows beyond 3.4e38
        ("10:30 and 1/2", ["10", "30", "1", "2"], [10, 30, 1, 2]),  # times and fractions: integers
    ],
)
def test_grammar(text, surfaces, values):
    spans = extract_numbers(text)
    assert [s.surface for s in spans] == surfaces
    assert [s.value for s in spans] == [float(v) for v in values]
    assert all(text[s.start : s.end] == s.surface for s in spans)


def test_split_and_restore_exact():
    text = "Pay 1,234.50 now, 007 later (-3)."
    template, spans = split_numbers(text)
    assert template == "Pay <NUM> now, <NUM> later (<NUM>)."
    assert restore_numbers(template, spans) == text
    assert render_numbers(template, [s.value for s in spans]) == "Pay 1234.5 now, 7 later (-3)."


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3.0, "3"),
        (-0.0, "0"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e-7, "1e-07"),
        (1.5e20, "1.5e+20"),
        (0.000125, "0.000125"),
        (123456.5, "123456.5"),
        (1e15, "1000000000000000"),
    ],
)
def test_format_number(value, text):
    assert format_number(value) == text
    assert parse_number(text) == value


def test_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        format_number(math.nan)
    with pytest.raises(ValueError, match="not a number"):
        parse_number("v2")
    with pytest.raises(TypeError, match="text must be a str"):
        extract_numbers(5)
    with pytest.raises(ValueError, match="2 <NUM> slots but 1 values"):
        render_numbers("<NUM> <NUM>", [1])


_words = st.sampled_from(["the", "loan", "is", "yuan", "岁", "%", "(", ")", "x", ",", "。", "years", "\n"])
_values = st.one_of(
    st.integers(-(10**12), 10**12).map(float),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-3.4e38, max_value=3.4e38),  # float32 range
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_words, _values), min_size=1, max_size=8))
def test_round_trip_generated_values(pieces):
    """Canonical text of any value is extracted back to exactly that value, text around intact."""
    text = " ".join(f"{word} {format_number(value)}" for word, value in pieces)
    template, spans = split_numbers(text)
    assert [s.value for s in spans] == [v + 0.0 for _, v in pieces]  # -0.0 formats as 0
    assert template == " ".join(f"{word} <NUM>" for word, _ in pieces)
    assert restore_numbers(template, spans) == text
    assert render_numbers(template, [s.value for s in spans]) == text
