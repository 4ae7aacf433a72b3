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


def teacher_forced(model, seq, vals, prompt_mask):
    """Forward over whole sequences (left-padded prompts), feeding the given values back in."""
    full_mask = torch.cat([prompt_mask, torch.ones_like(seq[:, prompt_mask.shape[1] :])], dim=1)
    position_ids = (full_mask.cumsum(-1) - 1).clamp_min(0)
    return model(input_ids=seq, numeric_values=vals, attention_mask=full_mask, position_ids=position_ids)


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
    ref = teacher_forced(model, seq, vals, mask)
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


def test_plain_generate_returns_ids_and_needs_values_only_for_numbers():
    model = tiny_model()
    ids, values, mask = left_pad(prompts())
    out = model.generate(input_ids=ids, attention_mask=mask, numeric_values=values, **GEN)
    assert isinstance(out, torch.Tensor) and out.shape == (2, ids.shape[1] + 6)
    text_only = torch.where(ids == NUM, 3, ids)  # a prompt without numbers needs no numeric_values
    plain = model.generate(input_ids=text_only, attention_mask=mask, **GEN)
    zero = model.generate(
        input_ids=text_only, attention_mask=mask, numeric_values=torch.zeros(ids.shape), **GEN
    )
    assert torch.equal(plain, zero)
    with pytest.raises(ValueError, match="the prompt contains <NUM> but numeric_values is None"):
        model.generate(input_ids=ids, attention_mask=mask, **GEN)


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
        model.generate(
            input_ids=ids, attention_mask=mask, numeric_values=values, inference_mode="nope", **GEN
        )


def test_generate_rejects_bad_inputs():
    model = tiny_model()
    ids, values, mask = left_pad(prompts())
    values[0, -1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.generate(input_ids=ids, attention_mask=mask, numeric_values=values, **GEN)
    with pytest.raises(ValueError, match="needs input_ids or inputs_embeds"):
        model.generate(max_new_tokens=2)
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


# ------------------------------------------------------------------------------------------- beam search


def beam_search(model, ids, values, mask, num_beams, **extra):
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        numeric_values=values,
        num_beams=num_beams,
        num_return_sequences=num_beams,
        return_dict_in_generate=True,
        output_scores=True,
        **{**GEN, **extra},
    )


@pytest.mark.parametrize("num_beams", [1, 2, 4])
def test_beam_search_values_follow_the_kept_beams(num_beams):
    model = tiny_model(num_bias=0.2)
    ids, values, mask = left_pad(prompts())
    out = beam_search(model, ids, values, mask, num_beams)
    p, rows = ids.shape[1], 2 * num_beams
    assert out.sequences.shape == out.numeric_values.shape == (rows, p + GEN["max_new_tokens"])
    prompt_mask = mask.repeat_interleave(num_beams, dim=0)
    assert torch.equal(out.numeric_values[:, :p], values.repeat_interleave(num_beams, dim=0))
    generated = out.sequences[:, p:]
    assert (generated == NUM).sum() >= rows, "every beam should generate <NUM>"
    assert torch.count_nonzero(out.numeric_values[out.sequences != NUM]) == 0
    ref = teacher_forced(model, out.sequences, out.numeric_values, prompt_mask)
    # Each returned value is what its own beam predicted before it (not another beam's value) ...
    num_at = generated == NUM
    predicted = ref.value_loc[:, p - 1 : -1]
    torch.testing.assert_close(out.numeric_values[:, p:][num_at], predicted[num_at], rtol=1e-4, atol=1e-4)
    # ... and the search scored every beam with those values fed back: the beam scores are the
    # teacher-forced log-likelihoods (length penalty 1: divided by the generated length).
    logp = ref.logits[:, p - 1 : -1].float().log_softmax(-1).gather(-1, generated[..., None])[..., 0]
    if num_beams > 1:
        expected = logp.sum(-1) / generated.shape[1]
        torch.testing.assert_close(out.sequences_scores, expected, rtol=1e-4, atol=1e-4)
        assert not torch.equal(out.numeric_values[0], out.numeric_values[1]), "beams should differ"
    else:
        greedy = model.generate(
            input_ids=ids, attention_mask=mask, numeric_values=values, return_dict_in_generate=True, **GEN
        )
        assert torch.equal(out.sequences, greedy.sequences)
        torch.testing.assert_close(out.numeric_values, greedy.numeric_values)


def test_beam_search_differs_from_greedy_and_depends_on_the_values():
    model = tiny_model(num_bias=0.2)
    ids, values, mask = left_pad(prompts())
    greedy = model.generate(input_ids=ids, attention_mask=mask, numeric_values=values, **GEN)
    beams = beam_search(model, ids, values, mask, 4)
    assert not torch.equal(beams.sequences[::4], greedy), "4 beams should find another best sequence here"
    scaled = beam_search(model, ids, values * 1000, mask, 4)
    assert not torch.allclose(beams.numeric_values, scaled.numeric_values)


def test_beam_search_batched_with_left_padding_equals_one_by_one():
    model = tiny_model(num_bias=0.2)
    ids, values, mask = left_pad(prompts())
    batched = beam_search(model, ids, values, mask, 2)
    p = ids.shape[1]
    for row, (i, v) in enumerate(prompts()):
        single = beam_search(model, i[None], v[None], torch.ones(1, len(i), dtype=torch.long), 2)
        rows = slice(2 * row, 2 * row + 2)
        assert torch.equal(batched.sequences[rows, p:], single.sequences[:, len(i) :])
        torch.testing.assert_close(
            batched.numeric_values[rows, p:], single.numeric_values[:, len(i) :], rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            batched.sequences_scores[rows], single.sequences_scores, rtol=1e-5, atol=1e-5
        )


def test_beam_sample_values_are_consistent():
    model = tiny_model(num_bias=0.2)
    ids, values, mask = left_pad(prompts())
    torch.manual_seed(0)
    out = beam_search(model, ids, values, mask, 2, do_sample=True, top_k=3)
    p = ids.shape[1]
    ref = teacher_forced(model, out.sequences, out.numeric_values, mask.repeat_interleave(2, dim=0))
    num_at = out.sequences[:, p:] == NUM
    assert num_at.any()
    predicted = ref.value_loc[:, p - 1 : -1]
    torch.testing.assert_close(out.numeric_values[:, p:][num_at], predicted[num_at], rtol=1e-4, atol=1e-4)


def test_beam_search_from_inputs_embeds():
    model = tiny_model(num_bias=0.2)
    i, v = prompts()[0]
    embeds = model.model.embed_tokens(i[None])
    out = model.generate(inputs_embeds=embeds, num_beams=2, return_dict_in_generate=True, **GEN)
    # With inputs_embeds, sequences hold the generated tokens only (transformers' convention).
    assert out.sequences.shape == out.numeric_values.shape == (1, GEN["max_new_tokens"])
    assert (out.sequences == NUM).any()
    assert torch.count_nonzero(out.numeric_values[out.sequences != NUM]) == 0
    assert torch.count_nonzero(out.numeric_values[out.sequences == NUM]) == int((out.sequences == NUM).sum())


# ------------------------------------------------------------------------------------ assisted decoding


def smaller_causal_qwen() -> CausalQwenForNumericCausalLM:
    torch.manual_seed(1)
    config = CausalQwenConfig(**{**TINY, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1})
    model = CausalQwenForNumericCausalLM(config).eval()
    with torch.no_grad():
        model.action.ovr_thresholds[NUM] = -0.3
    return model


def plain_qwen2_assistant():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(2)
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")
    return Qwen2ForCausalLM(Qwen2Config(**{k: TINY[k] for k in keys}, num_hidden_layers=1)).eval()


@pytest.mark.parametrize("assistant", ["same", "smaller", "qwen2", "prompt_lookup"])
def test_assisted_decoding_equals_greedy(assistant):
    model = tiny_model(num_bias=0.2)
    gen = dict(max_new_tokens=14, do_sample=False, pad_token_id=PAD, return_dict_in_generate=True)
    extra = {
        "same": dict(assistant_model=model),
        "smaller": dict(assistant_model=smaller_causal_qwen()),
        "qwen2": dict(assistant_model=plain_qwen2_assistant()),
        "prompt_lookup": dict(prompt_lookup_num_tokens=3),
    }[assistant]
    for i, v in prompts():
        greedy = model.generate(input_ids=i[None], numeric_values=v[None], **gen)
        assisted = model.generate(input_ids=i[None], numeric_values=v[None], **gen, **extra)
        assert (greedy.sequences == NUM).sum() >= 3
        assert torch.equal(assisted.sequences, greedy.sequences)
        torch.testing.assert_close(assisted.numeric_values, greedy.numeric_values, rtol=1e-5, atol=1e-5)


def test_assisted_sampling_values_are_consistent():
    model = tiny_model(num_bias=0.2)
    assistant = smaller_causal_qwen()
    i, v = prompts()[0]
    p, generated_nums = len(i), 0
    for seed in range(3):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=i[None],
            numeric_values=v[None],
            assistant_model=assistant,
            do_sample=True,
            top_k=3,
            max_new_tokens=14,
            pad_token_id=PAD,
            return_dict_in_generate=True,
        )
        ref = teacher_forced(model, out.sequences, out.numeric_values, torch.ones(1, p, dtype=torch.long))
        num_at = out.sequences[:, p:] == NUM
        generated_nums += int(num_at.sum())
        torch.testing.assert_close(
            out.numeric_values[:, p:][num_at], ref.value_loc[:, p - 1 : -1][num_at], rtol=1e-4, atol=1e-4
        )
    assert generated_nums >= 2


@pytest.mark.parametrize(
    ("flags", "name"),
    [
        (dict(penalty_alpha=0.6, top_k=4), "contrastive search"),
        (dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0), "group beam search"),
        (dict(num_beams=2, force_words_ids=[[3]]), "constrained beam search"),
        (dict(dola_layers="low"), "dola generation"),
    ],
)
def test_strategies_that_run_hub_code_are_refused_clearly(flags, name):
    model = tiny_model()
    ids, values, mask = left_pad(prompts())
    with pytest.raises(ValueError, match=f"does not support {name}: .*does not carry the <NUM> value track"):
        model.generate(input_ids=ids, attention_mask=mask, numeric_values=values, **GEN, **flags)


@pytest.mark.parametrize("mode", ["standard", "deterministic", "exogenous"])
def test_packed_heads_decode_as_the_modules(mode, monkeypatch):
    """generate packs a small head once per call (_PackedHeads): same tokens, values and scores as the head
    modules; the modes it does not cover (here exogenous) run the modules."""
    model = tiny_model(num_bias=0.3)
    with torch.no_grad():  # both abduction maps away from their init, so that each one matters
        for parameter in model.abduction.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    ids, values, mask = left_pad(prompts())
    kwargs = dict(input_ids=ids, attention_mask=mask, numeric_values=values, inference_mode=mode,
                  return_dict_in_generate=True, output_logits=True, **GEN)  # fmt: skip
    module_calls = []
    heads = model._heads
    monkeypatch.setattr(model, "_heads", lambda *a, **k: module_calls.append(1) or heads(*a, **k))
    packed = model.generate(**kwargs)
    assert len(module_calls) == (0 if mode != "exogenous" else GEN["max_new_tokens"])
    monkeypatch.setattr(model, "_packed_heads", lambda: None)
    modules = model.generate(**kwargs)
    assert torch.equal(packed.sequences, modules.sequences)
    if mode != "deterministic":  # (thresholds do not rank there: no <NUM> is generated)
        assert (packed.sequences[:, ids.shape[1] :] == NUM).any()  # generated values are fed back
    torch.testing.assert_close(packed.numeric_values, modules.numeric_values, rtol=1e-6, atol=1e-6)
    for step_packed, step_modules in zip(packed.logits, modules.logits, strict=True):
        torch.testing.assert_close(step_packed, step_modules, rtol=1e-5, atol=1e-6)


def test_heads_are_packed_only_when_small_and_of_one_dtype(monkeypatch):
    from causalqwen.modeling import cauchy

    model = tiny_model()
    packed = model._packed_heads()
    C, H = model.config.causal_size, model.config.hidden_size
    assert packed.abduction_weight.shape == (2 * C, H) and packed.head_weight.shape == (V + 1, C)
    assert torch.equal(packed.head_weight[-1], model.value_head.weight[0])
    assert torch.equal(packed.head_abs_weight, packed.head_weight.abs())
    assert torch.equal(packed.abduction_weight[C:], model.abduction.scale_weight)
    assert not packed.head_weight.requires_grad and packed.normalizer.kind == model.normalizer.kind
    # A head of several stream blocks streams W instead; the isotropic scale and mixed dtypes keep the modules.
    monkeypatch.setattr(cauchy, "STREAM_BLOCK_BYTES", 1024)
    assert model._packed_heads() is None
    monkeypatch.undo()
    model.config.isotropic_scale = True
    assert model._packed_heads() is None
    model.config.isotropic_scale = False
    with torch.device("meta"):
        offloaded = CausalQwenForNumericCausalLM(CausalQwenConfig(**TINY))
    assert offloaded._packed_heads() is None
    model.lm_head.to(torch.bfloat16)
    assert model._packed_heads() is None
