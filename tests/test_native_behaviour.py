"""Behaviour users expect of a native transformers model (issue #19): compile-friendly forwards, deterministic
buffers, tolerant loading of saved configs, errors that say how to fix the call. Generation strategies
(beam search, assisted decoding) are tested in test_causal_qwen_generation.py."""

import copy
import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, BertConfig, CompileConfig
from transformers.initialization import no_init_weights

from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM, ToolRouterConfig, ToolRouterModel
from test_causal_qwen_generation import GEN, NUM, left_pad, prompts, tiny_model
from test_tool_router import TINY as TINY_ROUTER
from test_tool_router import batch as router_batch

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*eager backend ignoring extra kwargs"),
    pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`-wrapped function"),
]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_router(encoder: str, **overrides) -> ToolRouterModel:
    """The tiny router with the seed-000 Mamba encoder or a one-layer BERT ("pretrained" encoder type)."""
    if encoder == "pretrained":
        bert = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=64)  # fmt: skip
        overrides.update(encoder_type="pretrained", text_encoder_config=bert.to_dict())
    torch.manual_seed(0)
    return ToolRouterModel(ToolRouterConfig(**{**TINY_ROUTER, **overrides})).eval()


# ------------------------------------------------------------------------------------ torch.compile


def test_compiled_decoding_step_with_cache_equals_eager():
    model = tiny_model(num_bias=0.2)
    ids, values = prompts()[0]
    with torch.no_grad():
        prefill = model(input_ids=ids[None], numeric_values=values[None], use_cache=True)
        step, step_value = torch.tensor([[NUM]]), torch.tensor([[3.5]])
        eager = model(input_ids=step, numeric_values=step_value, cache=copy.deepcopy(prefill.cache))
        compiled = torch.compile(model.forward, fullgraph=True, backend="eager")
        out = compiled(input_ids=step, numeric_values=step_value, cache=copy.deepcopy(prefill.cache))
    assert torch.equal(out.logits, eager.logits)
    assert torch.equal(out.value_loc, eager.value_loc)
    # The step's value reached the compiled graph (a <NUM> fed 3.5 and 350 must differ).
    with torch.no_grad():
        other = compiled(input_ids=step, numeric_values=step_value * 100, cache=copy.deepcopy(prefill.cache))
    assert not torch.equal(other.logits, out.logits)


def test_generate_with_a_compiled_forward_and_static_cache_equals_eager():
    model = tiny_model(num_bias=0.2)
    ids, values, mask = left_pad(prompts())
    kwargs = dict(input_ids=ids, attention_mask=mask, numeric_values=values, return_dict_in_generate=True)
    eager = model.generate(**kwargs, cache_implementation="static", **GEN)
    compile_config = CompileConfig(fullgraph=True, backend="eager", dynamic=False)
    compile_config._compile_all_devices = True  # transformers compiles on accelerators only by default
    torch._dynamo.utils.counters.clear()
    compiled = model.generate(**kwargs, cache_implementation="static", compile_config=compile_config, **GEN)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, (
        "the decoding forward was not compiled"
    )
    assert (eager.sequences == NUM).any()
    assert torch.equal(compiled.sequences, eager.sequences)
    assert torch.equal(compiled.numeric_values, eager.numeric_values)


def test_eager_forward_still_rejects_non_finite_values():
    model = tiny_model()
    ids, values = prompts()[0]
    with pytest.raises(ValueError, match="NaN or infinite"):
        model(input_ids=ids[None], numeric_values=torch.where(ids == NUM, float("inf"), values)[None])


@pytest.mark.parametrize(
    ("encoder", "matching"), [("mamba", "cosine"), ("mamba", "kan"), ("pretrained", "fusion")]
)
def test_router_scoring_compiles_fullgraph_and_equals_eager(matching, encoder):
    model = tiny_router(encoder, matching=matching)
    inputs = router_batch()
    lexical = torch.rand(3, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = model.encode_tools(inputs["tool_input_ids"], None, inputs["resource_vectors"])
        eager = model(query_input_ids=inputs["query_input_ids"], tool_cache=cache, lexical_scores=lexical)
        compiled = torch.compile(model.forward, fullgraph=True, backend="eager")
        out = compiled(query_input_ids=inputs["query_input_ids"], tool_cache=cache, lexical_scores=lexical)
        full = compiled(**inputs, lexical_scores=lexical)  # tool encoders and tool-set attention too
    for got in (out, full):  # the same math, possibly in another order of float operations
        torch.testing.assert_close(got.scores, eager.scores, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.abstain_score, eager.abstain_score, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.latency_loc, eager.latency_loc, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="lexical_scores contain NaN"):
        model(query_input_ids=inputs["query_input_ids"], tool_cache=cache, lexical_scores=lexical / 0 * 0)


# ------------------------------------------------------------------------------------------ buffers


def test_ovr_thresholds_are_deterministic_without_weight_init():
    config = CausalQwenConfig(**{**tiny_model().config.to_dict(), "ovr_threshold_init": 1.5})
    with no_init_weights():  # what loading does before it fills the tensors from the checkpoint
        model = CausalQwenForNumericCausalLM(config)
    assert torch.equal(model.action.ovr_thresholds, torch.full((config.vocab_size,), 1.5))


def test_thresholds_round_trip_and_a_checkpoint_without_them_loads_the_init_value(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.action.ovr_thresholds.uniform_(-3, 3, generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path)
    loaded = CausalQwenForNumericCausalLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.action.ovr_thresholds, model.action.ovr_thresholds)
    for (name, buffer), (_, reloaded) in zip(model.named_buffers(), loaded.named_buffers(), strict=True):
        assert torch.equal(buffer, reloaded), name  # rotary inv_freq included

    weights = load_file(tmp_path / "model.safetensors")
    del weights["action.ovr_thresholds"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "ovr_threshold_init": -2.25}))
    for _ in range(2):
        partial = CausalQwenForNumericCausalLM.from_pretrained(tmp_path)
        assert torch.equal(partial.action.ovr_thresholds, torch.full((config["vocab_size"],), -2.25))


@pytest.mark.parametrize("encoder", ["mamba", "pretrained"])
def test_router_buffers_survive_save_and_meta_device_loading(tmp_path, encoder):
    model = tiny_router(encoder)
    model.save_pretrained(tmp_path)
    loaded = ToolRouterModel.from_pretrained(tmp_path).eval()
    buffers = dict(model.named_buffers())
    assert buffers.keys() == dict(loaded.named_buffers()).keys()
    for name, buffer in loaded.named_buffers():
        assert torch.equal(buffer, buffers[name]), name
    inputs = router_batch()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).scores, model(**inputs).scores)


# ------------------------------------------------------------------------------- config tolerance


def test_router_config_rejects_typos_and_loads_saved_extras_with_a_warning(tmp_path, caplog):
    with pytest.raises(
        ValueError, match="unknown configuration key.*'kan_grid_sise' \\(did you mean 'kan_grid_size'"
    ):
        ToolRouterConfig(kan_grid_sise=5)
    config = ToolRouterConfig(**TINY_ROUTER)
    config.layer_norm_eps = 1e-6
    config.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, ToolRouterConfig) and loaded.layer_norm_eps == 1e-6
    assert any("'layer_norm_eps'" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------- helpful errors


def test_labels_without_values_say_how_to_pass_them(tiny_tokenizer):
    config = CausalQwenConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64,
                              num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                              num_token_id=tiny_tokenizer.num_token_id)  # fmt: skip
    model = CausalQwenForNumericCausalLM(config)
    enc = tiny_tokenizer(["x is 3.5, y is 7"], return_tensors="pt")
    assert (enc["input_ids"] == tiny_tokenizer.num_token_id).sum() == 2
    with pytest.raises(
        ValueError, match="pass the value of every <NUM> as numeric_values.*or pass numeric_labels"
    ):
        model(input_ids=enc["input_ids"], labels=enc["input_ids"])
    # labels with <NUM> after text-only inputs: the loss names both ways to give the targets
    text_only = torch.where(enc["input_ids"] == tiny_tokenizer.num_token_id, 0, enc["input_ids"])
    with pytest.raises(
        ValueError, match="pass the value of every <NUM> as numeric_values=.*or numeric_labels="
    ):
        model(input_ids=text_only, labels=enc["input_ids"])
    # The two calls docs/training.md shows.
    out = model(**enc, labels=enc["input_ids"])
    same = model(input_ids=enc["input_ids"], numeric_values=enc["numeric_values"], labels=enc["input_ids"])
    assert torch.isfinite(out.loss) and out.loss_reg > 0
    assert torch.equal(out.loss, same.loss)


def test_shrinking_the_vocabulary_explains_how_to_resize():
    model = tiny_model()
    with pytest.raises(
        ValueError, match=r"len\(tokenizer\) is not the row count.*grow to max\(len\(tokenizer\), 96\)"
    ):
        model.resize_token_embeddings(50)
