import pytest
import torch
from transformers import AutoTokenizer

import causalqwen  # noqa: F401  (registers causal_qwen with AutoTokenizer)
from causalqwen.tokenization.tokenization_causal_qwen import CausalQwenTokenizer, add_num_token

TEXT = "The loan is 50000 yuan at 3.5% for 25 years"


def test_single_text_values_and_offsets(tiny_tokenizer):
    enc = tiny_tokenizer(TEXT, return_offsets_mapping=True)
    ids, values = enc["input_ids"], enc["numeric_values"]
    num_positions = [i for i, t in enumerate(ids) if t == tiny_tokenizer.num_token_id]
    assert len(num_positions) == 3
    assert [values[i] for i in num_positions] == [50000.0, 3.5, 25.0]
    assert sum(v != 0 for v in values) == 3
    assert [TEXT[slice(*enc["offset_mapping"][i])] for i in num_positions] == ["50000", "3.5", "25"]
    # no lone space token before <NUM>
    tokens = tiny_tokenizer.convert_ids_to_tokens(ids)
    assert all(tokens[i - 1] != "Ġ" for i in num_positions)
    assert tiny_tokenizer.decode(ids, numeric_values=values) == TEXT
    assert "offset_mapping" not in tiny_tokenizer(TEXT)


def test_batch_left_padding_tensors(tiny_tokenizer):
    enc = tiny_tokenizer(["a 1 b", "x is 2.5 and 3"], padding=True, padding_side="left", return_tensors="pt")
    assert enc["input_ids"].shape == enc["numeric_values"].shape == enc["attention_mask"].shape
    assert enc["numeric_formats"].shape == enc["input_ids"].shape
    # exact values (float64) for decode; the model casts them to its float32 value path
    assert enc["numeric_values"].dtype == torch.float64 and enc["numeric_formats"].dtype == torch.long
    assert enc["attention_mask"][0, 0].item() == 0 and enc["numeric_values"][0, 0].item() == 0.0
    mask = enc["input_ids"] == tiny_tokenizer.num_token_id
    assert enc["numeric_values"][mask].tolist() == [1.0, 2.5, 3.0]
    texts = tiny_tokenizer.batch_decode(
        enc["input_ids"], numeric_values=enc["numeric_values"], skip_special_tokens=True
    )
    assert texts == ["a 1 b", "x is 2.5 and 3"]


def test_pairs_and_truncation_keep_values(tiny_tokenizer):
    enc = tiny_tokenizer("pay 7 now", "then 8 and 9", return_offsets_mapping=True)
    mask = [t == tiny_tokenizer.num_token_id for t in enc["input_ids"]]
    assert [v for v, m in zip(enc["numeric_values"], mask) if m] == [7.0, 8.0, 9.0]
    full = tiny_tokenizer(TEXT)["input_ids"]
    for n in range(1, len(full) + 1):
        cut = tiny_tokenizer(TEXT, truncation=True, max_length=n)
        assert len(cut["input_ids"]) == n
        kept = [
            v for t, v in zip(cut["input_ids"], cut["numeric_values"]) if t == tiny_tokenizer.num_token_id
        ]
        assert kept == [50000.0, 3.5, 25.0][: len(kept)]


def test_pad_collator_pads_numeric_values(tiny_tokenizer):
    rows = [tiny_tokenizer("a 1"), tiny_tokenizer("b 2 c 3 d")]
    batch = tiny_tokenizer.pad(rows, padding=True, return_tensors="pt")
    assert batch["numeric_values"].shape == batch["input_ids"].shape
    assert batch["numeric_values"][0, -1].item() == 0.0


def test_decode_generated_values(tiny_tokenizer):
    ids = tiny_tokenizer("it is 3 degrees")["input_ids"]
    values = [0.0] * len(ids)
    values[ids.index(tiny_tokenizer.num_token_id)] = 21.75
    assert tiny_tokenizer.decode(ids, numeric_values=values) == "it is 21.75 degrees"
    with pytest.raises(ValueError, match="numeric_values has 1 entries"):
        tiny_tokenizer.decode(ids, numeric_values=[0.0])


def test_bad_input(tiny_tokenizer):
    with pytest.raises(TypeError, match="texts must be str"):
        tiny_tokenizer([1, 2])
    with pytest.raises(ValueError, match="2 texts but 1 text pairs"):
        tiny_tokenizer(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="does not support text_target"):
        tiny_tokenizer("a", text_target="b")


def test_save_and_auto_round_trip(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is CausalQwenTokenizer
    assert len(loaded) == len(tiny_tokenizer) and loaded.num_token_id == tiny_tokenizer.num_token_id
    assert loaded(TEXT) == tiny_tokenizer(TEXT)


def test_add_num_token_is_idempotent(tiny_tokenizer):
    n = len(tiny_tokenizer)
    assert add_num_token(tiny_tokenizer) == tiny_tokenizer.num_token_id == n - 1
    assert len(tiny_tokenizer) == n


def test_left_truncation_keeps_last_values(tiny_tokenizer):
    tiny_tokenizer.truncation_side = "left"
    enc = tiny_tokenizer("a 1 b 2 c 3", truncation=True, max_length=3)
    kept = [v for t, v in zip(enc["input_ids"], enc["numeric_values"]) if t == tiny_tokenizer.num_token_id]
    assert len(enc["input_ids"]) == 3 and kept == [3.0]


def test_data_collator_with_padding(tiny_tokenizer):
    from transformers import DataCollatorWithPadding

    features = [dict(tiny_tokenizer("a 1")), dict(tiny_tokenizer("b 2.5 c 3 d"))]
    batch = DataCollatorWithPadding(tiny_tokenizer)(features)
    assert batch["numeric_values"].shape == batch["input_ids"].shape
    mask = batch["input_ids"] == tiny_tokenizer.num_token_id
    assert batch["numeric_values"][mask].tolist() == [1.0, 2.5, 3.0]


def test_single_text_tensors_have_batch_axis(tiny_tokenizer):
    enc = tiny_tokenizer("a 1 b", return_tensors="pt", return_attention_mask=False)
    assert set(enc) == {"input_ids", "numeric_values", "numeric_formats"}
    assert enc["input_ids"].shape == enc["numeric_values"].shape == (1, 4)


def test_offsets_after_many_numbers(tiny_tokenizer):
    text = "x 1,000 y 22 z 333.5 end"
    enc = tiny_tokenizer(text, return_offsets_mapping=True)
    pieces = [text[a:b] for a, b in enc["offset_mapping"]]
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
    assert [p for p, t in zip(pieces, enc["input_ids"]) if t == tiny_tokenizer.num_token_id] == [
        "1,000",
        "22",
        "333.5",
    ]


def test_pad_to_max_length_right(tiny_tokenizer):
    enc = tiny_tokenizer(["a 1", "b 2 c"], padding="max_length", max_length=9, truncation=True)
    assert [len(row) for row in enc["numeric_values"]] == [9, 9]
    assert enc["numeric_values"][0][-1] == 0.0 and enc["attention_mask"][0][-1] == 0
    assert enc["input_ids"][0][-1] == tiny_tokenizer.pad_token_id


@pytest.mark.parametrize(
    ("dtype", "want"),
    [
        (torch.float32, "x is -7.4 or 1234.5 or 0.001. Give y."),
        (torch.float16, "x is -7.4 or 1234 or 0.001. Give y."),  # float16 holds 1234, not 1234.5
        (
            torch.bfloat16,
            "x is -7.4 or 1230 or 0.001. Give y.",
        ),  # bfloat16 holds 1232: "1230" converts back to it
        (
            torch.float64,
            "x is -7.400000095367432 or 1234.5 or 0.0010000000474974513. Give y.",
        ),  # claims precision
    ],
)
def test_decoded_values_are_the_shortest_decimals_of_their_dtype(tiny_tokenizer, dtype, want):
    enc = tiny_tokenizer(["x is -7.4 or 1234.5 or 0.001. Give y."], return_tensors="pt")
    values = enc["numeric_values"].float().to(dtype)  # as values come out of the model
    assert tiny_tokenizer.decode(enc["input_ids"][0], numeric_values=values[0]) == want
    assert tiny_tokenizer.batch_decode(enc["input_ids"], numeric_values=values) == [want]
    if dtype == torch.float32:  # numpy float32 arrays too; plain lists keep every digit they hold
        assert tiny_tokenizer.decode(enc["input_ids"][0], numeric_values=values[0].numpy()) == want
        noisy = tiny_tokenizer.decode(enc["input_ids"][0].tolist(), numeric_values=values[0].tolist())
        assert "-7.400000095367432" in noisy


def test_numbers_beyond_float32_stay_text_so_no_inf_reaches_the_model(tiny_tokenizer):
    enc = tiny_tokenizer(["x is 1e39 or 3e38"], return_tensors="pt")
    assert torch.isfinite(enc["numeric_values"]).all()
    assert (enc["input_ids"] == tiny_tokenizer.num_token_id).sum() == 1  # only 3e38 is a number
    assert (
        tiny_tokenizer.decode(enc["input_ids"][0], numeric_values=enc["numeric_values"][0])
        == "x is 1e39 or 3e+38"
    )


def test_offsets_span_each_number_with_separators_and_units(tiny_tokenizer):
    text = "Pay 1,234.5 dollars for 10GB, or -7 now (H2O)"
    enc = tiny_tokenizer(text, return_offsets_mapping=True)
    at = [i for i, t in enumerate(enc["input_ids"]) if t == tiny_tokenizer.num_token_id]
    assert [text[slice(*enc["offset_mapping"][i])] for i in at] == ["1,234.5", "10", "-7"]
    assert tiny_tokenizer.decode(enc["input_ids"], numeric_values=enc["numeric_values"]) == text.replace(
        "1,234.5", "1234.5"
    )
