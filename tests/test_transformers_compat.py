"""The KV cache's name across transformers versions (modeling/_compat.py): ``past_key_values`` < 5.24 <= ``cache``.

These tests run unchanged on both sides of the rename; they check that CausalQwen emits the name the installed
generation reads, takes the cache under either keyword, and decodes with it exactly as without it.
"""

import warnings
from dataclasses import dataclass, fields

import pytest
import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import ModelOutput

from causalqwen.modeling._compat import (
    CACHE_NAME,
    LEGACY_CACHE_NAME,
    assigns_fields_directly,
    cache_output_field,
)
from causalqwen.modeling.modeling_causal_qwen import CausalQwenOutput
from test_causal_qwen_model import NUM, batch, tiny_model


def _field_names(cls) -> list[str]:
    return [f.name for f in fields(cls)]


def test_cache_name_is_transformers_own():
    assert CACHE_NAME in ("cache", "past_key_values")
    for cls in (BaseModelOutputWithPast, CausalLMOutputWithPast, GenerateDecoderOnlyOutput):
        assert CACHE_NAME in _field_names(cls)
    other = "cache" if CACHE_NAME == LEGACY_CACHE_NAME else LEGACY_CACHE_NAME
    assert other not in _field_names(BaseModelOutputWithPast)


def test_output_has_one_cache_field_in_place_and_an_alias():
    names = _field_names(CausalQwenOutput)
    # Same slot as before the rename (to_tuple order unchanged), and the cache appears once.
    assert names[names.index("scale_U") + 1 : names.index("scale_U") + 3] == [CACHE_NAME, "hidden_states"]
    assert len({"cache", "past_key_values"} & set(names)) == 1

    cache, other = object(), object()
    out = CausalQwenOutput(logits=torch.zeros(1), **{CACHE_NAME: cache})
    assert out.cache is cache and out.past_key_values is cache
    assert list(out.keys()) == ["logits", CACHE_NAME] and out.to_tuple()[1] is cache
    out.past_key_values = other
    assert out.cache is other and out[CACHE_NAME] is other
    out.cache = cache
    assert out.past_key_values is cache and out[CACHE_NAME] is cache


def test_direct_field_assignment_behaves_as_model_output():
    """``assigns_fields_directly`` skips ModelOutput's per-assignment field scan, nothing else: keys, attributes,
    tuples and the cache alias match an undecorated twin after construction and after reassignments."""

    def output_class(direct: bool) -> type:
        @dataclass
        @cache_output_field
        class Output(ModelOutput):
            loss: torch.Tensor | None = None
            logits: torch.Tensor | None = None
            extra: torch.Tensor | None = None
            cache: object | None = None

        return assigns_fields_directly(Output) if direct else Output

    Plain, Direct = output_class(False), output_class(True)
    assert _field_names(Direct) == _field_names(Plain)
    cache, logits, extra = object(), torch.ones(2), torch.zeros(3)
    outputs = [cls(logits=logits, **{CACHE_NAME: cache}) for cls in (Plain, Direct)]
    for out in outputs:
        out.extra = extra  # a field set after construction becomes a key
        out.loss = None  # None stays out of the keys
        out.note = "x"  # not a field: an attribute only
    plain, direct = outputs
    assert list(direct.keys()) == list(plain.keys()) == ["logits", CACHE_NAME, "extra"]
    assert direct.to_tuple()[0] is logits and direct.to_tuple()[2] is extra and len(direct.to_tuple()) == 3
    assert direct.note == "x" and "note" not in direct and direct.loss is None
    assert direct.cache is cache and direct.past_key_values is cache
    other = object()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct.past_key_values = other  # the alias name, through ModelOutput's own __setattr__
    assert direct[CACHE_NAME] is other and direct.cache is other
    assert CausalQwenOutput.__setattr__ is not ModelOutput.__setattr__


def test_cache_output_field_needs_a_cache_field():
    with pytest.raises(TypeError, match="must declare"):

        @dataclass
        @cache_output_field
        class NoCache(ModelOutput):
            logits: torch.Tensor | None = None


@pytest.mark.parametrize("keyword", ["cache", "past_key_values"])
def test_incremental_forward_with_either_keyword(keyword):
    model = tiny_model()
    ids, values = batch()
    with torch.no_grad():
        full = model(input_ids=ids, numeric_values=values)
        prefix = model(input_ids=ids[:, :5], numeric_values=values[:, :5], use_cache=True)
        assert prefix.cache.get_seq_length() == 5
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no deprecation warning from the backbone either
            step = model(input_ids=ids[:, 5:], numeric_values=values[:, 5:], **{keyword: prefix.cache})
    assert step.cache.get_seq_length() == 8
    for name in ("logits", "loc_S", "scale_S", "value_loc", "value_scale"):
        torch.testing.assert_close(getattr(step, name), getattr(full, name)[:, 5:], atol=1e-5, rtol=1e-5)


def test_two_different_caches_raise_and_the_same_one_twice_is_fine():
    model = tiny_model()
    ids, _ = batch()
    ids = torch.where(ids == NUM, 0, ids)  # text only: no numeric_values needed
    with torch.no_grad():
        first = model(input_ids=ids[:, :4], use_cache=True).cache
        second = model(input_ids=ids[:, :4], use_cache=True).cache
        with pytest.raises(ValueError, match="two different caches"):
            model(input_ids=ids[:, 4:5], cache=first, past_key_values=second)
        with pytest.raises(ValueError, match="two different caches"):
            model.model(input_ids=ids[:, 4:5], cache=first, past_key_values=second)
        out = model(input_ids=ids[:, 4:5], cache=first, past_key_values=first)
    assert out.cache is first and first.get_seq_length() == 5


def test_generate_with_cache_matches_without_and_warns_nothing():
    model = tiny_model(inference_mode="deterministic")
    ids, values = batch()
    prompt, prompt_values = ids[:, :6], values[:, :6]
    kwargs = dict(max_new_tokens=6, do_sample=False, return_dict_in_generate=True, pad_token_id=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached = model.generate(prompt, numeric_values=prompt_values, use_cache=True, **kwargs)
    uncached = model.generate(prompt, numeric_values=prompt_values, use_cache=False, **kwargs)
    assert cached.sequences.shape == (2, 12)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.numeric_values, uncached.numeric_values, atol=1e-4, rtol=1e-4)
    # The value track is non-trivial: the prompt's <NUM> values survive in it.
    assert cached.numeric_values[0, 2].item() == pytest.approx(3.5)
    assert (cached.numeric_values[cached.sequences != NUM] == 0).all()
