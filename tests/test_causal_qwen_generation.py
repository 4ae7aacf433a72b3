import pytest
import torch

from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM
from causalqwen.modeling.modeling_causal_qwen import CausalQwenGenerateOutput

V, NUM, PAD, EOS = 96, 95, 0, 1
TINY = dict(
    vocab_size=V,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_token_id=NUM,
    pad_token_id=PAD,
)
GEN = dict(max_new_tokens=6, do_sample=False, pad_token_id=PAD)


def tiny_model(num_bias: float = 0.0) -> CausalQwenForNumericCausalLM:
    """A tiny model; ``num_bias`` lowers the <NUM> threshold so that <NUM> is generated at some steps."""
    torch.manual_seed(0)
    model = CausalQwenForNumericCausalLM(CausalQwenConfig(**TINY)).eval()
    with torch.no_grad():
        model.model.value_encoding.fusion_weight[:, 32:].normal_(std=0.3)  # values matter downstream
        model.action.ovr_thresholds[NUM] = -num_bias
        model.value_head.bias.fill_(7.0)
    return model


def prompts():
    a = torch.tensor([5, NUM, 9, 12, NUM])
    b = torch.tensor([7, 8, NUM])
    va = torch.tensor([0.0, 2.5, 0.0, 0.0, -40.0])
    vb = torch.tensor([0.0, 0.0, 1e4])
    return [(a, va), (b, vb)]


def left_pad(items):
    width = max(len(ids) for ids, _ in items)
    ids = torch.full((len(items), width), PAD)
    values = torch.zeros(len(items), width)
    mask = torch.zeros(len(items), width, dtype=torch.long)
    for row, (i, v) in enumerate(items):
        ids[row, width - len(i) :], values[row, width - len(i) :], mask[row, width - len(i) :] = i, v, 1
    return ids, values, mask


def test_contract_sequences_and_numeric_values():
    model = tiny_model(num_bias=0.2)
    ids, values, mask = left_pad(prompts())
    out = model.generate(
        input_ids=ids, attention_mask=mask, numeric_values=values, return_dict_in_generate=True, **GEN
    )
    assert isinstance(out, CausalQwenGenerateOutput)
    seq, vals = out.sequences, out.numeric_values
    assert seq.shape == vals.shape == (2, ids.shape[1] + 6)
    assert vals.dtype == torch.float32
    assert torch.equal(vals[:, : ids.shape[1]], values)  # the prompt's values
    assert torch.count_nonzero(vals[seq != NUM]) == 0  # 0 wherever the token is not <NUM>
    generated = seq[:, ids.shape[1] :]
    assert (generated == NUM).any(), "the test needs at least one generated <NUM>"


def test_generated_values_are_the_predicted_value_loc_and_are_fed_back():
    model = tiny_model(num_bias=0.2)
    ids, values, mask = left_pad(prompts())
    out = model.generate(
        input_ids=ids, attention_mask=mask, numeric_values=values, return_dict_in_generate=True, **GEN
    )
    seq, vals = out.sequences, out.numeric_values
    # Teacher-forced recomputation over the whole sequence, feeding the returned values back in.
    full_mask = torch.cat([mask, torch.ones_like(seq[:, ids.shape[1] :])], dim=1)
    position_ids = (full_mask.cumsum(-1) - 1).clamp_min(0)
    ref = model(input_ids=seq, numeric_values=vals, attention_mask=full_mask, position_ids=position_ids)
    p = ids.shape[1]
    num_at = seq[:, p:] == NUM
    predicted = ref.value_loc[:, p - 1 : -1]
    torch.testing.assert_close(vals[:, p:][num_at], predicted[num_at], rtol=1e-4, atol=1e-4)
    # tokens chosen after a generated <NUM> depend on its value: the same rank rule reproduces them
    torch.testing.assert_close(ref.logits[:, p - 1 : -1].argmax(-1), seq[:, p:])


def test_batched_equals_one_by_one():
    model = tiny_model(num_bias=0.2)
    ids, values, mask = left_pad(prompts())
    batched = model.generate(
        input_ids=ids, attention_mask=mask, numeric_values=values, return_dict_in_generate=True, **GEN
    )
    p = ids.shape[1]
    for row, (i, v) in enumerate(prompts()):
        single = model.generate(
            input_ids=i[None],
            attention_mask=torch.ones(1, len(i), dtype=torch.long),
            numeric_values=v[None],
            return_dict_in_generate=True,
            **GEN,
        )
        assert torch.equal(batched.sequences[row, p:], single.sequences[0, len(i) :])
        torch.testing.assert_close(
            batched.numeric_values[row, p:], single.numeric_values[0, len(i) :], rtol=1e-5, atol=1e-5
        )


def test_prompt_values_change_the_continuation():
    model = tiny_model(num_bias=0.2)
    ids, values, mask = left_pad(prompts()[:1])
    a = model.generate(
        input_ids=ids, attention_mask=mask, numeric_values=values, return_dict_in_generate=True, **GEN
    )
    b = model.generate(
        input_ids=ids, attention_mask=mask, numeric_values=values * 1000, return_dict_in_generate=True, **GEN
    )
    assert not torch.allclose(a.numeric_values, b.numeric_values)


def test_plain_generate_returns_ids_and_without_values_defaults_to_zero():
    model = tiny_model()
    ids, _, mask = left_pad(prompts())
    out = model.generate(input_ids=ids, attention_mask=mask, **GEN)
    assert isinstance(out, torch.Tensor) and out.shape == (2, ids.shape[1] + 6)
    zero = model.generate(input_ids=ids, attention_mask=mask, numeric_values=torch.zeros(ids.shape), **GEN)
    assert torch.equal(out, zero)


def test_mode_and_causal_temperature_through_generate():
    model = tiny_model()
    ids, values, mask = left_pad(prompts())
    det = model.generate(
        input_ids=ids, attention_mask=mask, numeric_values=values, inference_mode="deterministic", **GEN
    )
    # deterministic greedy = argmax of loc_S, step by step without cache
    seq = ids
    full_vals, full_mask = values, mask
    for _ in range(GEN["max_new_tokens"]):
        position_ids = (full_mask.cumsum(-1) - 1).clamp_min(0)
        out = model(
            input_ids=seq,
            numeric_values=full_vals,
            attention_mask=full_mask,
            position_ids=position_ids,
            inference_mode="deterministic",
        )
        nxt = out.loc_S[:, -1].argmax(-1, keepdim=True)
        new_val = torch.where(nxt == NUM, out.value_loc[:, -1:], torch.zeros_like(out.value_loc[:, -1:]))
        seq, full_vals = torch.cat([seq, nxt], 1), torch.cat([full_vals, new_val], 1)
        full_mask = torch.cat([full_mask, torch.ones_like(nxt)], 1)
    assert torch.equal(det, seq)
    cold = model.generate(
        input_ids=ids,
        attention_mask=mask,
        numeric_values=values,
        inference_mode="sampling",
        causal_temperature=0.0,
        **GEN,
    )
    endo = model.generate(
        input_ids=ids, attention_mask=mask, numeric_values=values, inference_mode="endogenous", **GEN
    )
    assert torch.equal(cold, endo)
    with pytest.raises(ValueError, match="unknown inference_mode 'nope'"):
        model.generate(input_ids=ids, attention_mask=mask, inference_mode="nope", **GEN)


def test_generate_rejects_bad_inputs():
    model = tiny_model()
    ids, values, mask = left_pad(prompts())
    values[0, -1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.generate(input_ids=ids, attention_mask=mask, numeric_values=values, **GEN)
    with pytest.raises(ValueError, match="does not support beam search"):
        model.generate(input_ids=ids, attention_mask=mask, num_beams=2, **GEN)
    with pytest.raises(ValueError, match="must have the shape of input_ids"):
        model.generate(input_ids=ids, attention_mask=mask, numeric_values=values[:, :-1], **GEN)


def test_num_return_sequences_expands_the_values():
    model = tiny_model(num_bias=0.2)
    ids, values, mask = left_pad(prompts())
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        numeric_values=values,
        return_dict_in_generate=True,
        num_return_sequences=2,
        do_sample=True,
        **{k: v for k, v in GEN.items() if k != "do_sample"},
    )
    assert out.sequences.shape[0] == out.numeric_values.shape[0] == 4
    assert torch.equal(out.numeric_values[[0, 1], : ids.shape[1]], values[[0, 0]])
