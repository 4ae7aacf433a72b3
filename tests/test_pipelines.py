"""``pipeline("numeric-text-generation")``: transformers' text-generation pipeline with CausalQwen's numbers."""

import pytest
import torch
from transformers import TextGenerationPipeline, pipeline

from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM, NumericTextGenerationPipeline

PROMPT = "the price is 12.50 and"
GEN = dict(max_new_tokens=5, do_sample=False)


@pytest.fixture
def model_and_tokenizer(tiny_tokenizer):
    torch.manual_seed(0)
    num = tiny_tokenizer.convert_tokens_to_ids("<NUM>")
    config = CausalQwenConfig(
        vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_token_id=num, pad_token_id=tiny_tokenizer.pad_token_id,
    )  # fmt: skip
    model = CausalQwenForNumericCausalLM(config).eval()
    with torch.no_grad():
        model.action.ovr_thresholds[num] = -5.0  # <NUM> wins: the generated text holds numbers
    return model, tiny_tokenizer


def direct(model, tokenizer, prompt: str, **kwargs):
    """generate + decode with the numbers, as the README's quickstart does."""
    encoded = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**encoded, **GEN, **kwargs, return_dict_in_generate=True)
    text = tokenizer.decode(out.sequences[0], numeric_values=out.numeric_values[0],
                            numeric_formats=out.numeric_formats[0], skip_special_tokens=True)  # fmt: skip
    return out, text


def test_generated_text_holds_the_predicted_numbers(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    pipe = pipeline("numeric-text-generation", model=model, tokenizer=tokenizer)
    assert isinstance(pipe, NumericTextGenerationPipeline)
    [record] = pipe(PROMPT, **GEN)
    out, text = direct(model, tokenizer, PROMPT)
    generated = out.sequences[0, out.sequences.shape[1] - GEN["max_new_tokens"] :]
    assert int((generated == model.config.num_token_id).sum()) >= 3
    assert record["generated_text"] == text
    # The prompt's number as it was written, the generated ones as the model's values (shortest decimals).
    assert record["generated_text"].startswith(PROMPT + " ")
    written = [float(word) for word in record["generated_text"].removeprefix(PROMPT).split()]
    expected = out.numeric_values[0, -GEN["max_new_tokens"] :][generated == model.config.num_token_id]
    assert written == pytest.approx(expected.tolist(), rel=1e-7)
    [new] = pipe(PROMPT, **GEN, return_full_text=False)
    assert PROMPT + new["generated_text"] == text


def test_tensors_carry_the_values_and_batches_equal_one_by_one(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    pipe = pipeline(
        "text-generation", model=model, tokenizer=tokenizer, pipeline_class=NumericTextGenerationPipeline
    )
    prompts = [PROMPT, "x is 3"]
    batched = pipe(prompts, **GEN, batch_size=2, return_tensors=True)
    for prompt, [record] in zip(prompts, batched, strict=True):
        out, _ = direct(model, tokenizer, prompt)
        [alone] = pipe(prompt, **GEN, return_tensors=True)
        assert alone["generated_token_ids"] == out.sequences[0].tolist()
        assert alone["generated_numeric_values"] == pytest.approx(out.numeric_values[0].tolist(), abs=0)
        # Left-padded in the batch: the same tokens and values after the padding.
        width = len(alone["generated_token_ids"])
        assert record["generated_token_ids"][-width:] == alone["generated_token_ids"]
        torch.testing.assert_close(
            torch.tensor(record["generated_numeric_values"][-width:]),
            torch.tensor(alone["generated_numeric_values"]), rtol=1e-5, atol=1e-6,
        )  # fmt: skip


def test_loads_from_a_saved_directory(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    from_path = pipeline("numeric-text-generation", model=str(tmp_path), tokenizer=str(tmp_path))
    in_memory = pipeline("numeric-text-generation", model=model, tokenizer=tokenizer)
    [loaded], [kept] = (
        from_path(PROMPT, **GEN, return_tensors=True),
        in_memory(PROMPT, **GEN, return_tensors=True),
    )
    assert loaded["generated_token_ids"] == kept["generated_token_ids"]
    # Equal weights at other addresses may take other BLAS paths: the values agree to rounding.
    torch.testing.assert_close(torch.tensor(loaded["generated_numeric_values"]),
                               torch.tensor(kept["generated_numeric_values"]), rtol=1e-5, atol=1e-6)  # fmt: skip
    text = from_path(PROMPT, **GEN)[0]["generated_text"]
    generated = [float(word) for word in text.removeprefix(PROMPT).split()]  # numbers only, as the ids say
    assert len(generated) == sum(i == model.config.num_token_id for i in loaded["generated_token_ids"][-5:])


def test_the_plain_text_generation_pipeline_loses_the_numbers(model_and_tokenizer):
    """Why the subclass exists: transformers' own pipeline passes generate no values."""
    model, tokenizer = model_and_tokenizer
    plain = pipeline("text-generation", model=model, tokenizer=tokenizer)
    assert type(plain) is TextGenerationPipeline
    with pytest.raises(ValueError, match="the prompt contains <NUM> but numeric_values is None"):
        plain(PROMPT, **GEN)


def test_chat_replies_carry_numbers(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    # The turns' text, joined.
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    pipe = pipeline("numeric-text-generation", model=model, tokenizer=tokenizer)
    [record] = pipe([{"role": "user", "content": PROMPT}], **GEN)
    _, text = direct(model, tokenizer, PROMPT)
    user, reply = record["generated_text"]
    assert user == {"role": "user", "content": PROMPT}
    assert reply == {"role": "assistant", "content": text.removeprefix(PROMPT)}
    # A final assistant turn is continued, not answered.
    turns = [{"role": "user", "content": "the price is"}, {"role": "assistant", "content": "12.50 and"}]
    [record] = pipe(turns, **GEN)
    assert len(record["generated_text"]) == 2
    continued = record["generated_text"][1]["content"]
    assert continued.startswith("12.50 and ") and len(continued.split()) == 2 + GEN["max_new_tokens"]
