"""Lossless round trip (issue #14): ``decode(**encode(text)) == text`` byte for byte, every path and carrier."""

import functools
import unicodedata

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from causalqwen.tokenization.numbers import NumberFormat, extract_numbers, render_value
from causalqwen.tokenization.tiny_vocab import build_tiny_tokenizer
from causalqwen.tokenization.tokenization_causal_qwen import CausalQwenTokenizer
from model_helpers import tiny_causal_lm


def round_trip(tok, text, **kwargs):
    enc = tok(text, **kwargs)
    row = 0 if kwargs.get("return_tensors") else slice(None)  # tensors always have a batch axis
    return tok.decode(
        enc["input_ids"][row],
        numeric_values=enc["numeric_values"][row],
        numeric_formats=enc["numeric_formats"][row],
    )


def numbers_of(tok, text):
    """The surfaces the tokenizer turned into <NUM> (from the offsets)."""
    enc = tok(text, return_offsets_mapping=True)
    return [text[a:b] for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if t == tok.num_token_id]


# (text, the surfaces that become <NUM>): the cases of issue #14 and docs/tokenization.md's table.
CASES = [
    ("1,234.5", ["1,234.5"]),
    ("USD 1,000,000", ["1,000,000"]),
    ("3.50 and €3.50", ["3.50", "3.50"]),
    ("007 and 02139", ["007", "02139"]),  # leading zeros (IDs, zip codes) are kept as written
    ("+7 or -0 or \u22125 or \uff0d5", ["+7", "-0", "\u22125", "5"]),  # full-width minus is text
    ("1,2,3", ["1", "2", "3"]),
    ("\uff13\uff15 and \uff11\uff12\uff13", ["\uff13\uff15", "\uff11\uff12\uff13"]),  # full-width digits
    ("\u0663\u0665 and \u096a\u096b", []),  # other digit scripts (Arabic-Indic, Devanagari) stay text
    ("3.14e-5, 1E+05, 1e-05", ["3.14e-5", "1E+05", "1e-05"]),
    ("id 1234567890123456789012", []),  # more digits than a float64 holds: text, so written back as is
    ("0.1000000000000000000001 and 12345678901234567", []),
    ("4111111111111111", ["4111111111111111"]),  # 16 digits a float64 holds exactly
    ("1e39 or 1e999 or 3e38", ["3e38"]),  # beyond float32 stays text
    ("10GB, 5km, 3x faster, 12.5k, $1.2M", ["10", "5", "3", "12.5", "1.2"]),
    ("the 1990s, 1st, 2nd", ["1990", "1", "2"]),
    ("10-20 and 2024-12-23", ["10", "20", "2024", "12", "23"]),
    ("10:30 and 1/2", ["10", "30", "1", "2"]),
    ("v2 H2O A4 Q3 x1y2 0x1F 1_000 1.2.3", []),
    ("x = 5", ["5"]),
    ("a\n5 and  6\t7", ["5", "6", "7"]),  # only one ASCII space is absorbed; other whitespace stays text
    (" 5 ", ["5"]),
    ("我25岁", ["25"]),
    ("x is -7.4. Give y.", ["-7.4"]),
    ("0,001 .5 +.5e3", ["0,001", ".5", "+.5e3"]),
    ("1\u2082 and 3\u00b2", ["1", "3"]),  # sub/superscripts are not digits of the grammar
]


@pytest.mark.parametrize(("text", "numbers"), CASES)
def test_each_case_round_trips_and_numbers_are_what_the_table_says(tiny_tokenizer, text, numbers):
    assert numbers_of(tiny_tokenizer, text) == numbers
    assert round_trip(tiny_tokenizer, text) == text
    assert round_trip(tiny_tokenizer, text, return_tensors="pt") == text
    assert round_trip(tiny_tokenizer, text, return_tensors="np") == text


@functools.cache
def _shared_tokenizer():
    """One tokenizer for every hypothesis example (a fixture is not reset between them; nothing here mutates it)."""
    return build_tiny_tokenizer()


_NUMBER_SURFACES = st.one_of(
    st.integers(-(10**15), 10**15).map(str),
    st.integers(0, 10**12).map(lambda n: f"{n:,}"),
    st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-(10**6), max_value=10**6).map(
        str
    ),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr),
    st.sampled_from(["007", "+7", "-0", "\u22123.50", "1e-05", "2E+4", ".5", "\uff13\uff15", "1,234.50"]),
)
_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(_TEXT, _NUMBER_SURFACES, st.sampled_from(["", " ", "  ", "\n"])), max_size=6), _TEXT
)
def test_hypothesis_round_trip_any_unicode_text_with_numbers(pieces, tail):
    """Any (NFC) Unicode text with numbers mixed in comes back byte for byte, as the plain Qwen2 tokenizer's does.

    Qwen2's normaliser is NFC, so the plain tokenizer itself gives back the NFC form; texts are drawn in it.
    """
    tiny_tokenizer = _shared_tokenizer()
    text = unicodedata.normalize("NFC", "".join(a + gap + n for a, n, gap in pieces) + tail)
    if "<NUM>" in text:
        return
    assert round_trip(tiny_tokenizer, text) == text
    for side in ("left", "right"):
        batch = tiny_tokenizer(
            [text, "x 1,234.50 y", ""], padding=True, padding_side=side, return_tensors="pt"
        )
        kept = batch[
            "attention_mask"
        ].bool()  # drop the padding only: special tokens written in the text stay
        decoded = [
            tiny_tokenizer.decode(
                batch["input_ids"][i][kept[i]],
                numeric_values=batch["numeric_values"][i][kept[i]],
                numeric_formats=batch["numeric_formats"][i][kept[i]],
            )
            for i in range(3)
        ]
        assert decoded == [text, "x 1,234.50 y", ""]


def test_unnormalised_text_comes_back_as_the_plain_tokenizer_gives_it(tiny_tokenizer):
    text = "cafe\u0301 costs 3.50"  # combining accent: NFC composes it, as Qwen2's own tokenizer does
    plain = tiny_tokenizer.backend_tokenizer.decode(tiny_tokenizer.backend_tokenizer.encode(text).ids)
    assert round_trip(tiny_tokenizer, text) == plain == unicodedata.normalize("NFC", text)


@pytest.mark.parametrize(
    ("surface", "value", "written"),
    [
        ("1,234.50", 60000, "60,000.00"),  # separators and decimals of the number replaced
        ("3.50", 3.14159, "3.14159"),  # more decimals when the value needs them: never loses digits
        ("007", 12, "012"),
        ("+5", -3, "-3"),
        ("\u22125", -3, "\u22123"),  # the written minus character
        ("-5", 3, "3"),
        ("\uff13\uff15", 42, "\uff14\uff12"),
        ("1e-05", 3e-05, "3e-05"),
        (".5", 0.25, ".25"),
        ("25", 1e-40, "1e-40"),  # beyond 31 decimals: canonical form
    ],
)
def test_changed_values_take_the_style_of_the_number_they_replace(tiny_tokenizer, surface, value, written):
    enc = tiny_tokenizer(f"pay {surface} now")
    at = enc["input_ids"].index(tiny_tokenizer.num_token_id)
    values = list(enc["numeric_values"])
    values[at] = value
    assert tiny_tokenizer.decode(
        enc["input_ids"], numeric_values=values, numeric_formats=enc["numeric_formats"]
    ) == (f"pay {written} now")


def test_format_codes_pack_and_unpack(tiny_tokenizer):
    spans = extract_numbers("1,234.50 007 +.5e3 \u22121E-05 \uff13\uff15 0,001")
    for span in spans:
        assert NumberFormat.from_code(span.format.code) == span.format
        assert render_value(span.value, NumberFormat.from_code(span.format.code)) == span.surface
    assert NumberFormat.from_code(0) is None
    for bad in (2, -1, 1 << 40):
        with pytest.raises(ValueError, match="not a number format code"):
            NumberFormat.from_code(bad)
    with pytest.raises(ValueError, match="does not fit"):
        NumberFormat(decimals=32).code


def test_formats_without_values_and_mismatched_lengths_raise(tiny_tokenizer):
    enc = tiny_tokenizer("a 1")
    with pytest.raises(ValueError, match="numeric_formats needs numeric_values"):
        tiny_tokenizer.decode(enc["input_ids"], numeric_formats=enc["numeric_formats"])
    with pytest.raises(ValueError, match="numeric_formats has 1 entries"):
        tiny_tokenizer.decode(enc["input_ids"], numeric_values=enc["numeric_values"], numeric_formats=[0])
    with pytest.raises(ValueError, match="literal <NUM>"):
        tiny_tokenizer("the placeholder <NUM> itself")


def test_carriers_data_collator_with_padding_numeric_collator_and_datasets(tiny_tokenizer, tmp_path):
    from datasets import Dataset, load_from_disk
    from transformers import DataCollatorWithPadding

    from causalqwen.training.collator import NumericDataCollator

    texts = ["Pay USD 1,234.50 by 02/03, ref 007.", "\u22123.25e-3 and \uff13\uff15 kg", "x = 5"]
    ds = Dataset.from_dict({"text": texts}).map(
        lambda row: tiny_tokenizer(row["text"]), remove_columns=["text"]
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    ds = load_from_disk(str(tmp_path / "ds"))
    rows = [dict(r) for r in ds]
    for side in ("left", "right"):
        tiny_tokenizer.padding_side = side
        try:
            batch = DataCollatorWithPadding(tiny_tokenizer)(rows)
        finally:
            tiny_tokenizer.padding_side = "right"
        assert batch["numeric_values"].dtype == torch.float64
        decoded = tiny_tokenizer.batch_decode(
            batch["input_ids"],
            numeric_values=batch["numeric_values"],
            numeric_formats=batch["numeric_formats"],
            skip_special_tokens=True,
        )
        assert decoded == texts
        # the training collator: float32 values (every device has them); these values fit float32's digits
        batch = NumericDataCollator(tiny_tokenizer, padding_side=side)(rows)
        assert batch["numeric_formats"].shape == batch["input_ids"].shape
        decoded = tiny_tokenizer.batch_decode(
            batch["input_ids"],
            numeric_values=batch["numeric_values"],
            numeric_formats=batch["numeric_formats"],
            skip_special_tokens=True,
        )
        assert decoded == texts


def tiny_model(tiny_tokenizer):
    return tiny_causal_lm(tiny_tokenizer, num_hidden_layers=1).eval()


def test_model_takes_tokenizer_output_as_is(tiny_tokenizer):
    model = tiny_model(tiny_tokenizer)
    enc = tiny_tokenizer(["pay 1,234.50 now", "x = -7.4"], padding=True, return_tensors="pt")
    with torch.no_grad():
        exact = model(**enc)
        as_float32 = model(
            input_ids=enc["input_ids"],
            attention_mask=enc["attention_mask"],
            numeric_values=enc["numeric_values"].float(),
        )
    assert torch.equal(exact.loc_S, as_float32.loc_S) and torch.equal(exact.value_loc, as_float32.value_loc)


def test_generate_returns_the_prompt_exactly_and_generated_numbers_shortest(tiny_tokenizer):
    model = tiny_model(tiny_tokenizer)
    with torch.no_grad():
        model.action.ovr_thresholds[tiny_tokenizer.num_token_id] = -50.0  # <NUM> wins: numbers get generated
    prompts = ["Pay USD 1,234.5678 now", "ref 007, \u22123.50"]
    enc = tiny_tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    for extra in ({}, {"num_beams": 2}):
        out = model.generate(**enc, max_new_tokens=3, do_sample=False, return_dict_in_generate=True, **extra)
        assert out.numeric_values.dtype == torch.float64 and out.numeric_formats.shape == out.sequences.shape
        new = out.sequences[:, enc["input_ids"].shape[1] :]
        assert (new == tiny_tokenizer.num_token_id).any()
        assert (out.numeric_formats[:, enc["input_ids"].shape[1] :] == 0).all()
        texts = tiny_tokenizer.batch_decode(
            out.sequences,
            numeric_values=out.numeric_values,
            numeric_formats=out.numeric_formats,
            skip_special_tokens=True,
        )
        for text, prompt in zip(texts, prompts):
            assert text.startswith(prompt)  # 1,234.5678 has more digits than float32: exact only via float64
        generated = out.numeric_values[:, enc["input_ids"].shape[1] :][new == tiny_tokenizer.num_token_id]
        # a float32 prediction stored as the shortest decimal that round-trips it
        assert all(repr(v) == repr(float(str(torch.tensor(v).float().numpy()))) for v in generated.tolist())


def test_tokenizer_saved_with_lstrip_num_loads_without_it(tiny_tokenizer, tmp_path):
    import json

    tiny_tokenizer.save_pretrained(tmp_path)
    path = tmp_path / "tokenizer.json"
    data = json.loads(path.read_text())
    for token in data["added_tokens"]:
        if token["content"] == "<NUM>":
            token["lstrip"] = True  # as causalqwen < 0.3 saved it
    path.write_text(json.dumps(data))
    loaded = CausalQwenTokenizer.from_pretrained(tmp_path)
    assert loaded.num_token_id == tiny_tokenizer.num_token_id
    assert not loaded.added_tokens_decoder[loaded.num_token_id].lstrip
    assert round_trip(loaded, "a\n5 and  6") == "a\n5 and  6"


def test_training_rows_decode_back_to_prompt_and_target(tiny_tokenizer):
    from datasets import Dataset

    from causalqwen.training.data import tokenize_numeric_dataset

    rows = Dataset.from_dict(
        {"prompt": ["Price 1,250.00 at 07:30."], "target": [" Total is 2,500.00."], "value": [2500.0]}
    )
    row = tokenize_numeric_dataset(rows, tiny_tokenizer)[0]
    assert (
        tiny_tokenizer.decode(
            row["input_ids"], numeric_values=row["numeric_values"], numeric_formats=row["numeric_formats"]
        )
        == "Price 1,250.00 at 07:30. Total is 2,500.00." + tiny_tokenizer.eos_token
    )
