import math

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM, CausalQwenModel
from causalqwen.configuration.configuration_causal_qwen import FROM_SCRATCH_TOKEN_PRIOR
from causalqwen.modeling.modeling_causal_qwen import FP32_VALUE_PATH, CausalQwenOutput

V, NUM = 96, 95
TINY = dict(
    vocab_size=V,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_token_id=NUM,
)
QWEN_TINY = {k: v for k, v in TINY.items() if k != "num_token_id"}


def tiny_model(**overrides) -> CausalQwenForNumericCausalLM:
    torch.manual_seed(0)
    return CausalQwenForNumericCausalLM(CausalQwenConfig(**{**TINY, **overrides})).eval()


def batch(seed: int = 0, b: int = 2, s: int = 8):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, NUM, (b, s), generator=g)
    ids[:, 2] = NUM
    ids[0, 5] = NUM
    values = torch.zeros(b, s)
    values[:, 2] = torch.tensor([3.5, -120.0])[:b]
    values[0, 5] = 1e6
    return ids, values


def tiny_qwen2(seed: int = 0, vocab: int = V) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**{**QWEN_TINY, "vocab_size": vocab})).eval()


def test_output_fields_and_shapes():
    model = tiny_model()
    ids, values = batch()
    out = model(input_ids=ids, numeric_values=values)
    assert isinstance(out, CausalQwenOutput)
    for name in ("logits", "loc_S", "scale_S"):
        assert getattr(out, name).shape == (2, 8, V)
    for name in ("value_loc", "value_scale"):
        assert getattr(out, name).shape == (2, 8)
    assert out.loc_U.shape == out.scale_U.shape == (2, 8, 32)
    assert out.cache is not None and out.past_key_values is out.cache and out.loss is None
    assert model.loss_type == "ForCausalLM" and model.accepts_loss_kwargs is False


def test_initialisation():
    model = tiny_model(gamma_init=2.5, b_noise_init=0.3, ovr_threshold_init=0.2)
    assert torch.equal(model.abduction.loc_weight, torch.eye(32))
    assert torch.count_nonzero(model.abduction.scale_weight) == 0
    torch.testing.assert_close(
        torch.nn.functional.softplus(model.abduction.scale_bias), torch.full((32,), 2.5)
    )
    assert torch.equal(model.action.b_noise, torch.full((32,), 0.3))
    assert torch.equal(model.action.ovr_thresholds, torch.full((V,), 0.2))
    out = model(input_ids=batch()[0], numeric_values=batch()[1])
    torch.testing.assert_close(out.scale_U, torch.full_like(out.scale_U, 2.5))


def test_mode_algebra():
    model = tiny_model(b_noise_init=0.3)
    with torch.no_grad():
        model.action.b_noise[::2] = -0.7  # |b_noise| is what counts
    ids, values = batch()
    w = model.lm_head.weight
    std = model(input_ids=ids, numeric_values=values, temperature=2.0)
    noise = 2.0 * model.action.b_noise.abs()
    torch.testing.assert_close(std.loc_S, std.loc_U @ w.T)
    torch.testing.assert_close(std.scale_S, (std.scale_U + noise) @ w.abs().T)
    torch.testing.assert_close(std.logits, (std.loc_S - model.action.ovr_thresholds) / std.scale_S)
    endo = model(input_ids=ids, numeric_values=values, inference_mode="endogenous")
    torch.testing.assert_close(endo.scale_S, endo.scale_U @ w.abs().T)
    exo = model(input_ids=ids, numeric_values=values, inference_mode="exogenous", temperature=2.0)
    torch.testing.assert_close(exo.scale_S, noise.expand_as(exo.scale_U) @ w.abs().T)
    det = model(input_ids=ids, numeric_values=values, inference_mode="deterministic")
    assert torch.equal(det.logits, det.loc_S) and torch.count_nonzero(det.scale_S) == 0
    assert torch.count_nonzero(det.value_scale) == 0
    vw, vb = model.value_head.weight, model.value_head.bias
    torch.testing.assert_close(std.value_loc, (std.loc_U @ vw.T + vb).squeeze(-1))
    torch.testing.assert_close(std.value_scale, ((std.scale_U + noise) @ vw.abs().T).squeeze(-1))


def test_sampling_mode_perturbs_loc_with_temperature():
    model = tiny_model()
    ids, values = batch()
    endo = model(input_ids=ids, numeric_values=values, inference_mode="endogenous")
    cold = model(input_ids=ids, numeric_values=values, inference_mode="sampling", temperature=0.0)
    assert torch.equal(cold.loc_S, endo.loc_S) and torch.equal(cold.scale_S, endo.scale_S)
    torch.manual_seed(1)
    hot = model(input_ids=ids, numeric_values=values, inference_mode="sampling", temperature=1.0)
    assert not torch.allclose(hot.loc_S, endo.loc_S)
    torch.testing.assert_close(hot.scale_S, endo.scale_S)


def test_config_mode_is_the_default_and_overrides_validate():
    model = tiny_model(inference_mode="deterministic")
    ids, values = batch()
    assert torch.count_nonzero(model(input_ids=ids, numeric_values=values).scale_S) == 0
    with pytest.raises(ValueError, match="unknown inference_mode 'fast'"):
        model(input_ids=ids, inference_mode="fast")
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        model(input_ids=ids, temperature=-1.0)


def test_nan_or_inf_numeric_values_raise():
    model = tiny_model()
    ids, values = batch()
    clean = model(input_ids=ids, numeric_values=values).logits
    for bad in (float("nan"), float("inf")):
        at_num = values.clone()
        at_num[1, 2] = bad  # a <NUM>
        with pytest.raises(ValueError, match="NaN or infinite"):
            model(input_ids=ids, numeric_values=at_num)
        # A training loss reads every value as a target: the whole tensor must be finite there.
        elsewhere = values.clone()
        elsewhere[1, 3] = bad  # not a <NUM>
        with pytest.raises(ValueError, match="NaN or infinite"):
            model(input_ids=ids, numeric_values=elsewhere, labels=ids)
        # Without labels only the <NUM> values are read: one elsewhere changes nothing.
        assert torch.equal(model(input_ids=ids, numeric_values=elsewhere).logits, clean)


def test_padded_equals_unpadded():
    model = tiny_model()
    ids, values = batch(s=6)
    pad = 3
    padded_ids = torch.cat([torch.zeros(2, pad, dtype=torch.long), ids], dim=1)
    padded_vals = torch.cat([torch.zeros(2, pad), values], dim=1)
    mask = torch.cat([torch.zeros(2, pad, dtype=torch.long), torch.ones_like(ids)], dim=1)
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    full = model(input_ids=ids, numeric_values=values)
    padded = model(
        input_ids=padded_ids, numeric_values=padded_vals, attention_mask=mask, position_ids=position_ids
    )
    for name in ("logits", "loc_S", "scale_S", "value_loc", "value_scale"):
        torch.testing.assert_close(getattr(padded, name)[:, pad:], getattr(full, name), rtol=1e-5, atol=1e-5)


def test_loss_in_training_returns_no_vocab_tensors_unless_asked():
    model = tiny_model()
    ids, values = batch()
    eval_out = model(input_ids=ids, numeric_values=values, labels=ids)
    assert eval_out.logits is not None and eval_out.loss is not None
    model.train()
    train_out = model(input_ids=ids, numeric_values=values, labels=ids)
    assert train_out.logits is None and train_out.loc_S is None and train_out.scale_S is None
    assert torch.equal(train_out.loss, eval_out.loss)  # no dropout in the tiny config
    torch.testing.assert_close(
        train_out.loss, train_out.loss_cls + model.config.reg_lambda * train_out.loss_reg
    )
    asked = model(input_ids=ids, numeric_values=values, labels=ids, return_logits=True)
    assert asked.logits.shape == (2, 8, V)


def test_numeric_labels_default_to_numeric_values():
    model = tiny_model()
    ids, values = batch()
    implicit = model(input_ids=ids, numeric_values=values, labels=ids)
    explicit = model(input_ids=ids, numeric_values=values, labels=ids, numeric_labels=values)
    other = model(input_ids=ids, numeric_values=values, labels=ids, numeric_labels=values * 2)
    assert torch.equal(implicit.loss_reg, explicit.loss_reg)
    assert not torch.equal(implicit.loss_reg, other.loss_reg)
    with pytest.raises(ValueError, match="labels contain <NUM> but no numeric targets"):
        model(input_ids=torch.where(ids == NUM, 0, ids), labels=ids)  # <NUM> labels, text-only inputs


def test_value_normalisation_is_applied_to_targets_and_inverted_for_predictions():
    ids, values = batch()
    plain = tiny_model()
    affine = tiny_model(value_normalization="affine", value_norm_shift=5.0, value_norm_scale=100.0)
    affine.load_state_dict(plain.state_dict())
    p = plain(input_ids=ids, labels=ids, numeric_values=values, numeric_labels=(values - 5.0) / 100.0)
    a = affine(input_ids=ids, labels=ids, numeric_values=values)
    torch.testing.assert_close(a.value_loc, p.value_loc * 100.0 + 5.0)
    torch.testing.assert_close(a.value_scale, p.value_scale * 100.0)
    torch.testing.assert_close(a.loss_reg, p.loss_reg)


def test_gradients_reach_every_part():
    model = tiny_model()
    model.train()
    with torch.no_grad():
        model.model.value_encoding.fusion_weight[:, 32:].normal_(std=0.1)
    ids, values = batch()
    model(input_ids=ids, numeric_values=values, labels=ids).loss.backward()
    for name in (
        "model.layers.0.self_attn.q_proj.weight",
        "model.embed_tokens.weight",
        "abduction.loc_weight",
        "abduction.scale_weight",
        "action.b_noise",
        "lm_head.weight",
        "value_head.weight",
        "model.value_encoding.fusion_weight",
        "model.value_encoding.value_proj_weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_save_load_bit_identical_and_bf16(tmp_path):
    model = tiny_model(value_encoding="log_additive")
    with torch.no_grad():
        model.action.ovr_thresholds.uniform_(-1, 1)
        model.model.value_encoding.direction.normal_()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is CausalQwenForNumericCausalLM
    ids, values = batch()
    a, b = model(input_ids=ids, numeric_values=values), loaded(input_ids=ids, numeric_values=values)
    for name in ("logits", "loc_S", "scale_S", "value_loc", "value_scale"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    half = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert half.lm_head.weight.dtype == torch.bfloat16
    out = half(input_ids=ids, numeric_values=values, labels=ids)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    # bf16 logits agree with float32 on the ranking that generation uses
    agree = (out.logits.float().argmax(-1) == a.logits.argmax(-1)).float().mean()
    assert agree >= 0.9, agree
    backbone = AutoModel.from_pretrained(tmp_path)
    assert type(backbone) is CausalQwenModel
    assert backbone(input_ids=ids, numeric_values=values).last_hidden_state.shape == (2, 8, 32)


def assert_value_path_is_float32(model):
    for name, param in model.named_parameters():
        value_path = any(part in FP32_VALUE_PATH for part in name.split("."))
        assert param.dtype == (torch.float32 if value_path else torch.bfloat16), name


def test_value_path_stays_float32_under_a_bf16_backbone(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    half = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert_value_path_is_float32(half)
    assert half.action.ovr_thresholds.dtype == torch.float32
    ids, values = batch()
    with torch.no_grad():
        out = half(input_ids=ids, numeric_values=values, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        assert hidden.dtype == torch.bfloat16
        # the float32 model's value path on the same (bf16) hidden states
        heads, _, _ = model._heads(hidden.float(), "standard", 1.0)
        want_loc, want_scale = model.normalizer.inverse_cauchy(heads.loc_Y, heads.scale_Y)
    assert out.value_loc.dtype == torch.float32
    torch.testing.assert_close(out.value_loc, want_loc, rtol=1e-6, atol=0)
    torch.testing.assert_close(out.value_scale, want_scale, rtol=1e-6, atol=0)


def test_from_qwen2_keeps_the_value_path_float32_on_a_bf16_checkpoint():
    base = tiny_qwen2().to(torch.bfloat16)
    model = CausalQwenForNumericCausalLM.from_qwen2(base, ovr_threshold_init=0.0).eval()
    assert_value_path_is_float32(model)
    ids, values = batch()
    with torch.no_grad():
        out = model(input_ids=ids, numeric_values=values, labels=ids)
    assert out.logits.dtype == torch.bfloat16 and out.value_loc.dtype == torch.float32
    assert torch.isfinite(out.loss)


def test_tied_embeddings_share_the_head():
    model = tiny_model(tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


# --------------------------------------------------------------------------------------- from_qwen2


def test_from_qwen2_deterministic_matches_base_logits(tmp_path):
    base = tiny_qwen2()
    base.save_pretrained(tmp_path)
    model = CausalQwenForNumericCausalLM.from_qwen2(str(tmp_path)).eval()
    assert model.config.num_token_id == V and model.config.vocab_size == V + 1  # one row appended
    ids = torch.randint(0, V, (3, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = base(input_ids=ids).logits
        got = model(input_ids=ids, inference_mode="deterministic").loc_S
    torch.testing.assert_close(got[..., :V], want, rtol=0, atol=1e-5)
    # the new <NUM> head row is the mean row: its logit is the mean logit, never the argmax
    torch.testing.assert_close(got[..., V], want.mean(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(model.model.embed_tokens.weight[V], base.model.embed_tokens.weight.mean(0))

    gen_kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    want_tokens = base.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **gen_kw)
    got_tokens = model.generate(
        input_ids=ids, attention_mask=torch.ones_like(ids), inference_mode="deterministic", **gen_kw
    )
    assert torch.equal(got_tokens, want_tokens)


def test_from_qwen2_standard_mode_top1_agreement_floor():
    """Measured 0.958 / 0.959 / 0.960 for base seeds 0 / 1 / 2 (C_k = 0 instead: 0.61 / 0.66 / 0.63)."""
    for seed in range(3):
        base = tiny_qwen2(seed, vocab=384)
        ids = torch.randint(0, 384, (16, 256), generator=torch.Generator().manual_seed(100 + seed))
        with torch.no_grad():
            want = base(input_ids=ids).logits.argmax(-1)
            calibrated = CausalQwenForNumericCausalLM.from_qwen2(base).eval()
            zero = CausalQwenForNumericCausalLM.from_qwen2(base, ovr_threshold_init=0.0).eval()
            agree = (calibrated(input_ids=ids).logits.argmax(-1) == want).float().mean().item()
            agree_zero = (zero(input_ids=ids).logits.argmax(-1) == want).float().mean().item()
        assert agree >= 0.93, (seed, agree)
        assert agree > agree_zero + 0.2, (seed, agree, agree_zero)
        assert calibrated.config.ovr_threshold_init == pytest.approx(
            calibrated.action.ovr_thresholds[0].item()
        )


def test_from_qwen2_uses_the_reserved_qwen25_slot_without_resizing():
    base = tiny_qwen2(vocab=151_700)
    model = CausalQwenForNumericCausalLM.from_qwen2(base, ovr_threshold_init=0.0)
    assert model.config.num_token_id == 151_665
    assert model.config.vocab_size == 151_700
    assert torch.equal(model.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert torch.equal(model.lm_head.weight, base.lm_head.weight)


def test_from_qwen2_never_shrinks_and_validates_input():
    base = tiny_qwen2()
    model = CausalQwenForNumericCausalLM.from_qwen2(base, num_token_id=10, ovr_threshold_init=0.0)
    assert model.config.vocab_size == V and model.config.num_token_id == 10
    grown = CausalQwenForNumericCausalLM.from_qwen2(base, num_token_id=V + 3, ovr_threshold_init=0.0)
    assert grown.config.vocab_size == V + 4
    with pytest.raises(TypeError, match="needs a path or a Qwen2 causal LM"):
        CausalQwenForNumericCausalLM.from_qwen2(42)
    with pytest.raises(TypeError, match="model_type 'qwen2'"):
        CausalQwenForNumericCausalLM.from_qwen2(tiny_model())
    with pytest.raises(ValueError, match="unknown configuration key"):
        CausalQwenForNumericCausalLM.from_qwen2(base, gama_init=1.0)


def test_from_qwen2_with_a_wider_causal_size_is_still_exact():
    base = tiny_qwen2()
    model = CausalQwenForNumericCausalLM.from_qwen2(base, causal_size=48).eval()
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model(input_ids=ids, inference_mode="deterministic").loc_S[..., :V]
        want = base(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_from_qwen2_keeps_tied_embeddings_tied():
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(Qwen2Config(**QWEN_TINY, tie_word_embeddings=True)).eval()
    model = CausalQwenForNumericCausalLM.from_qwen2(base, ovr_threshold_init=0.0).eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids, inference_mode="deterministic").loc_S[..., :V],
            base(input_ids=ids).logits,
            atol=1e-5,
            rtol=0,
        )
    assert math.isfinite(model.config.ovr_threshold_init)


def test_resize_grows_head_and_thresholds_and_never_shrinks():
    model = tiny_model(ovr_threshold_init=0.25)
    with torch.no_grad():
        model.action.ovr_thresholds[3] = -1.0
    model.resize_token_embeddings(V + 4)
    assert model.lm_head.weight.shape == (V + 4, 32) and model.config.vocab_size == V + 4
    assert model.action.ovr_thresholds.shape == (V + 4,)
    assert model.action.ovr_thresholds[3].item() == -1.0 and model.action.ovr_thresholds[-1].item() == 0.25
    assert model(input_ids=batch()[0], numeric_values=batch()[1]).logits.shape == (2, 8, V + 4)
    with pytest.raises(ValueError, match="refusing to shrink the embedding from 100 to 50 rows"):
        model.resize_token_embeddings(50)


def test_backbone_gradient_checkpointing_trains():
    model = tiny_model()
    model.activation_checkpointing_enable()
    model.train()
    ids, values = batch()
    out = model(input_ids=ids, numeric_values=values, labels=ids)
    out.loss.backward()
    assert model.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("isotropic", [False, True])
def test_head_scale_cache_matches_grad_path_and_follows_weight_updates(isotropic, monkeypatch):
    from causalqwen.modeling import cauchy as cauchy_module

    monkeypatch.setattr(cauchy_module, "STREAM_BLOCK_BYTES", 1024)  # the tiny head spans several blocks
    model = tiny_model(ovr_threshold_init=0.3, isotropic_scale=isotropic)
    ids, values = batch()
    with torch.no_grad():
        cached = model(input_ids=ids, numeric_values=values).scale_S
        # Decoding and scoring stream the head (no full |W| kept); only a loss without gradients caches it.
        assert getattr(model, "_scale_weight_cache", None) is None or isotropic
        model(input_ids=ids, numeric_values=values, labels=ids.clone())
        first = model._token_scale_weight()
        assert model._token_scale_weight() is first  # reused while the weight is unchanged
    fresh = model(input_ids=ids, numeric_values=values).scale_S  # grad enabled: formed per forward, no cache
    torch.testing.assert_close(cached, fresh.detach(), rtol=1e-6, atol=1e-6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model(input_ids=ids, numeric_values=values, labels=ids.clone()).loss.backward()
    optimizer.step()  # in-place update bumps the version counter: the cache must be rebuilt
    model.eval()
    with torch.no_grad():
        after = model(input_ids=ids, numeric_values=values).scale_S
        rebuilt = model._token_scale_weight()
    assert rebuilt is not first
    expected = model.lm_head.weight.detach().abs()
    torch.testing.assert_close(rebuilt, expected.sum(-1) if isotropic else expected)
    assert not torch.allclose(after, cached)


def test_frozen_head_caches_its_scale_weight_across_training_steps(monkeypatch):
    """With lm_head frozen (LoRA leaves it alone) no gradient reaches W, so training reuses one cached |W|
    instead of forming it in every forward; the other parameters get the same gradients as with a trainable
    head."""
    import causalqwen.modeling.modeling_causal_qwen as modeling

    calls = []
    original = modeling._scale_weight
    monkeypatch.setattr(modeling, "_scale_weight", lambda *a: calls.append(1) or original(*a))
    grads = {}
    for frozen, formed in ((True, 1), (False, 2)):
        model = tiny_model().train()
        model.lm_head.weight.requires_grad_(not frozen)
        calls.clear()
        for seed in (0, 1):
            ids, values = batch(seed)
            model.zero_grad()
            model(input_ids=ids, numeric_values=values, labels=ids.clone()).loss.backward()
        assert len(calls) == formed
        assert (model.lm_head.weight.grad is None) == frozen
        grads[frozen] = [p.grad.clone() for p in model.abduction.parameters()]
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_head_streams_only_eagerly_without_gradients_on_the_cpu_for_multi_block_heads():
    from causalqwen.modeling.modeling_causal_qwen import _streams_head

    weight = torch.zeros(1025, 512)  # just over 2 MiB: more than one block of STREAM_BLOCK_BYTES
    with torch.no_grad():
        assert _streams_head(weight)
        # A GPU reads a cached |W| faster than it launches a kernel per row block; meta stands in for it here.
        assert not _streams_head(torch.empty(1025, 512, device="meta"))
        assert not _streams_head(torch.zeros(4, 3))  # one cache-sized block: the cached |W| takes fewer ops
    assert not _streams_head(weight)  # gradients recorded: the shared |W| autograd node


def test_head_scale_weight_is_formed_once_per_forward_for_every_chunk(monkeypatch):
    """abs of the token head runs once per training forward, however many chunks (and recomputes) the loss
    has; gradients equal the one-chunk loss's."""
    import causalqwen.modeling.modeling_causal_qwen as modeling
    from causalqwen.modeling import loss as loss_module

    monkeypatch.setattr(loss_module, "MIN_CHUNK_ELEMENTS", 0)  # several chunks even at this tiny V
    calls = []
    original = modeling._scale_weight
    monkeypatch.setattr(modeling, "_scale_weight", lambda *a: calls.append(1) or original(*a))
    grads = {}
    for chunk in (3, 1024):  # 3: five chunks of labelled positions, each checkpointed and recomputed
        model = tiny_model(loss_chunk_size=chunk).train()
        ids, values = batch()
        calls.clear()
        model(input_ids=ids, numeric_values=values, labels=ids).loss.backward()
        assert len(calls) == 1
        grads[chunk] = model.lm_head.weight.grad.clone()
    torch.testing.assert_close(grads[3], grads[1024], rtol=1e-5, atol=1e-6)


def _uneven_scales(model):
    """Latent scales that differ per dimension (at init they are all gamma_init, so isotropic changes nothing)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.abduction.scale_weight.copy_(
            torch.randn(model.abduction.scale_weight.shape, generator=generator)
        )
        model.action.b_noise.copy_(torch.rand(model.action.b_noise.shape, generator=generator))
    return model


def test_isotropic_scale_is_the_closed_form_and_round_trips(tmp_path):
    model = _uneven_scales(tiny_model(isotropic_scale=True))
    ids, values = batch()
    with torch.no_grad():
        out = model(input_ids=ids, numeric_values=values)
        # One scale per position: the action's scale_U' (standard mode: scale_U + |b_noise|) averaged over C.
        s = (out.scale_U + model.action.b_noise.abs()).mean(-1, keepdim=True)
        torch.testing.assert_close(out.scale_S, s * model.lm_head.weight.abs().sum(-1))
        value_scale = s.squeeze(-1) * model.value_head.weight.abs().sum()
        torch.testing.assert_close(out.value_scale, value_scale)
        # The same latent pushed through |W| with an isotropic scale vector gives the same numbers.
        torch.testing.assert_close(out.scale_S, s.expand_as(out.scale_U) @ model.lm_head.weight.abs().T)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.isotropic_scale is True
    with torch.no_grad():
        again = loaded(input_ids=ids, numeric_values=values)
    assert torch.equal(again.scale_S, out.scale_S) and torch.equal(again.value_scale, out.value_scale)
    default = _uneven_scales(tiny_model())
    with torch.no_grad():
        assert not torch.allclose(default(input_ids=ids, numeric_values=values).scale_S, out.scale_S)


def test_isotropic_scale_trains_the_token_head_through_its_scale():
    model = tiny_model(isotropic_scale=True).train()
    ids, values = batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = model(input_ids=ids, numeric_values=values, labels=ids).loss
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]
    # The row-norm path carries gradient to W: zero the location path's contribution and some remains.
    model.zero_grad()
    out = model(input_ids=ids, numeric_values=values)
    out.scale_S.sum().backward()
    assert model.lm_head.weight.grad.abs().sum() > 0 and model.abduction.scale_bias.grad.abs().sum() > 0


def test_numbers_never_go_silently_wrong():
    model = tiny_model()
    ids, values = batch()
    # a <NUM> without a value is not encoded as a made-up 0
    with pytest.raises(ValueError, match="input_ids contain <NUM> .* but numeric_values is None"):
        model(input_ids=ids)
    with pytest.raises(ValueError, match="the prompt contains <NUM> but numeric_values is None"):
        model.generate(input_ids=ids, max_new_tokens=2, do_sample=False)
    assert model(input_ids=torch.where(ids == NUM, 0, ids)).logits.shape == (2, 8, V)  # no <NUM>: fine
    # a loss in deterministic mode (point mass) would be scored at the scale floor
    with pytest.raises(ValueError, match="labels with inference_mode='deterministic'"):
        model(input_ids=ids, numeric_values=values, labels=ids, inference_mode="deterministic")
    assert torch.isfinite(model(input_ids=ids, numeric_values=values, labels=ids).loss)


def _memorised_token_accuracy(**overrides) -> float:
    """Teacher-forced next-token accuracy of a fresh tiny CausalQwen after 200 Adam steps on two sentences."""
    from causalqwen.tokenization.tiny_vocab import build_tiny_tokenizer
    from model_helpers import tiny_causal_lm

    tokenizer = build_tiny_tokenizer()
    model = tiny_causal_lm(tokenizer, 0, **overrides).train()
    enc = tokenizer(["the price is 300 dollars and the weight is 2 kg", "a cat sat on the mat"], padding=True,
                    return_tensors="pt")  # fmt: skip
    inputs = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                  numeric_values=enc["numeric_values"])  # fmt: skip
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(200):
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        predicted = model(**inputs).logits.argmax(-1)[:, :-1]
    kept = enc["attention_mask"][:, 1:].bool()
    return float((predicted == enc["input_ids"][:, 1:])[kept].float().mean())


def test_from_scratch_token_prior_lets_a_fresh_model_learn_text():
    # With C = 0 every token starts at P = 1/2 and z = W.h / (|W|_1 scale) is bounded by loc_U / scale_U, so a
    # fresh model must first shrink scale_U to rank anything (docs/causal_qwen.md, "Training from scratch").
    prior = _memorised_token_accuracy(**FROM_SCRATCH_TOKEN_PRIOR)
    plain = _memorised_token_accuracy(ovr_threshold_init=0.0, gamma_init=1.0)
    assert prior >= 0.9, prior
    assert plain <= 0.5, plain


def _random_text_accuracy(steps: int, **overrides) -> float:
    """Teacher-forced accuracy of a fresh one-layer CausalQwen (5,000 tokens, the from-scratch prior) after
    ``steps`` Adam steps on 8 random sequences of 12 tokens."""
    torch.manual_seed(0)
    config = CausalQwenConfig(vocab_size=5000, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, num_key_value_heads=1, num_token_id=4999, pad_token_id=0,
                              **FROM_SCRATCH_TOKEN_PRIOR, **overrides)  # fmt: skip
    model = CausalQwenForNumericCausalLM(config).train()
    ids = torch.randint(1, 4999, (8, 12), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        predicted = model(input_ids=ids).logits.argmax(-1)[:, :-1]
    return float((predicted == ids[:, 1:]).float().mean())


def test_hard_negatives_learn_a_large_vocabulary_faster_than_the_sum():
    # Summed over V, the improbable tokens' "no" terms add up to a pull that swamps the target's "yes"; the k
    # hardest negatives alone keep the gradient on the competitors that matter (docs/causal_qwen.md).
    hard = _random_text_accuracy(60, cls_reduction="hard_negatives", cls_hard_negatives=16)
    summed = _random_text_accuracy(60)
    assert hard >= 0.9, hard
    assert summed <= 0.3, summed


def test_numeric_input_noise_perturbs_input_values_only_in_training():
    ids, values = batch()
    labels = ids.clone()
    plain, noisy = tiny_model(), tiny_model(numeric_input_noise=0.5)
    assert noisy.config.numeric_input_noise == 0.5 and plain.config.numeric_input_noise == 0.0
    # evaluation (and so generation) never adds noise: the same weights give the same outputs, bit for bit
    out_plain = plain(input_ids=ids, numeric_values=values, labels=labels)
    out_noisy = noisy(input_ids=ids, numeric_values=values, labels=labels)
    assert torch.equal(out_plain.logits, out_noisy.logits) and torch.equal(out_plain.loss, out_noisy.loss)
    # in training: exactly the model fed values + N(0, 0.5^2) at the <NUM> positions, against clean targets
    noisy.train()
    torch.manual_seed(7)
    trained = noisy(input_ids=ids, numeric_values=values, labels=labels)
    torch.manual_seed(7)
    hidden = noisy.model(input_ids=ids, numeric_values=values).last_hidden_state
    torch.manual_seed(7)
    drawn = values + 0.5 * torch.randn_like(values)
    perturbed = torch.where(ids == NUM, drawn, values)
    assert not torch.equal(perturbed, values) and torch.equal(perturbed[ids != NUM], values[ids != NUM])
    noisy.eval()
    expected = noisy(input_ids=ids, numeric_values=perturbed, labels=labels, numeric_labels=values)
    assert torch.equal(trained.loss, expected.loss)
    assert torch.equal(hidden, noisy.model(input_ids=ids, numeric_values=perturbed).last_hidden_state)
    # ... and not the model trained on the noisy values as targets
    wrong = noisy(input_ids=ids, numeric_values=perturbed, labels=labels)
    assert not torch.equal(trained.loss, wrong.loss)
    # off (0.0) in training mode: no random draw at all, the forward is the plain one
    plain.train()
    state = torch.random.get_rng_state()
    assert torch.equal(plain(input_ids=ids, numeric_values=values, labels=labels).loss, out_plain.loss)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_relative_input_noise_multiplies_each_value_by_a_log_normal_factor():
    ids, values = batch()
    values = torch.where(ids == NUM, values * torch.tensor([[1.0], [-1.0]]), values)  # both signs
    values[0, (ids[0] == NUM).nonzero()[0, 0]] = 0.0  # and a zero
    labels = ids.clone()
    model = tiny_model(numeric_input_noise=0.1, numeric_input_noise_relative=True)
    with torch.no_grad():  # open the fusion's value block (zero at init) so that the inputs' values matter
        model.model.value_encoding.fusion_weight[:, model.config.hidden_size :].fill_(0.01)
    model.train()
    torch.manual_seed(3)
    trained = model(input_ids=ids, numeric_values=values, labels=labels)
    torch.manual_seed(3)
    perturbed = torch.where(ids == NUM, values * torch.exp(0.1 * torch.randn_like(values)), values)
    num = ids == NUM
    assert torch.equal(torch.sign(perturbed), torch.sign(values)) and not torch.equal(perturbed, values)
    moved = num & (values != 0)
    assert (perturbed[moved] / values[moved]).log().abs().max() < 0.5 and perturbed[num & (values == 0)].eq(
        0
    ).all()
    model.eval()
    expected = model(input_ids=ids, numeric_values=perturbed, labels=labels, numeric_labels=values)
    assert torch.equal(trained.loss, expected.loss)
    absolute = tiny_model(numeric_input_noise=0.1)
    absolute.load_state_dict(model.state_dict())
    absolute.train()
    torch.manual_seed(3)
    assert not torch.equal(absolute(input_ids=ids, numeric_values=values, labels=labels).loss, trained.loss)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_numeric_input_noise_must_be_finite_and_non_negative(bad):
    with pytest.raises(ValueError, match="numeric_input_noise must be finite and >= 0"):
        CausalQwenConfig(**TINY, numeric_input_noise=bad)
