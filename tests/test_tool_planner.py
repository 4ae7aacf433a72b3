"""ToolPlanner (issue #17): config, layout checks, round trips, batching, building from parts, learning, LoRA."""

import pytest
import torch
from transformers import AutoConfig, AutoModel, Qwen2Config

from causalqwen import (
    CausalQwenConfig,
    CausalQwenForNumericCausalLM,
    ToolPlannerConfig,
    ToolPlannerModel,
    ToolRouterModel,
)
from causalqwen.modeling.modeling_tool_planner import STOP
from causalqwen.tokenization.processing_tool_planner import ToolPlannerProcessor, ToolTextCache
from causalqwen.tokenization.tiny_vocab import build_tiny_tokenizer
from causalqwen.training.baselines import BackendDigitsView
from causalqwen.training.minilm import load_router_tokenizer
from causalqwen.training.planner_data import DEFAULT_BUDGET_MIX
from causalqwen.training.router_trainer import router_config_for
from router_helpers import TINY_ROUTER

TOK = build_tiny_tokenizer()
RTOK = load_router_tokenizer()
V = len(TOK)
TOOLS = [
    {"name": "translate_small", "text": "translate_small: translate text between languages", "resources": [2, 2, 0, 0.08, 0.05, 0.3]},
    {"name": "summarize_large", "text": "summarize_large: summarize a long document", "resources": [8, 32, 1, 1.2, 2, 14]},
    ("caption_tiny: describe the content of an image", [1, 0.5, 0, 0.02, 0.01, 0.05]),
    {"name": "transcribe_medium", "text": "transcribe_medium: speech audio to text", "resources": [4, 8, 1, 0.3, 0.4, 2]},
]  # fmt: skip


def text_config(backbone: str = "causal_qwen", **overrides) -> dict:
    settings = dict(vocab_size=V + 6, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=512, pad_token_id=TOK.pad_token_id)  # fmt: skip
    if backbone == "causal_qwen":
        return CausalQwenConfig(num_token_id=TOK.num_token_id, **settings, **overrides).to_dict()
    return Qwen2Config(**settings, **overrides).to_dict()


def planner_config(backbone: str = "causal_qwen", **overrides) -> ToolPlannerConfig:
    settings = dict(
        router_config=router_config_for(RTOK, **TINY_ROUTER).to_dict(),
        text_config=text_config(backbone),
        tool_token_id=V,
        plan_token_id=V + 1,
        context_token_id=V + 2,
        query_token_id=V + 3,
        call_token_id=V + 4,
        call_end_token_id=V + 5,
        runtime_context_dim=1,
    )
    return ToolPlannerConfig(**{**settings, **overrides})


def tiny(backbone: str = "causal_qwen", seed: int = 0, **overrides) -> ToolPlannerModel:
    torch.manual_seed(seed)
    return ToolPlannerModel(planner_config(backbone, **overrides)).eval()


def processor(model: ToolPlannerModel, **kwargs) -> ToolPlannerProcessor:
    tok = TOK if model.config.backbone_type == "causal_qwen" else BackendDigitsView(TOK)
    return ToolPlannerProcessor(tok, RTOK, model.config, **kwargs)


def model_inputs(processed: dict) -> dict:
    """A processor's output without the two fields the model does not read (tool names, raw resources)."""
    processed.pop("tool_names")
    processed.pop("raw_resource_vectors")
    return processed


QUERIES = [
    "translate it then summarize it, under 300 ms",
    "caption the photo",
    "transcribe the audio for 0.5 dollars",
]
TOOL_ROWS = [TOOLS, TOOLS[:2], TOOLS[1:]]


def assert_plan_starts_at_the_argmax(model, proc, plan) -> None:
    """``plan`` (of ``QUERIES[0]`` over ``TOOLS`` at load 0.5) begins with the argmax of the model's own scores for
    the first step: that tool, or no step at all when STOP wins."""
    inputs = model_inputs(proc([QUERIES[0]], [TOOLS], runtime_context=[[0.5]], num_plan_tokens=1))
    with torch.no_grad():
        choice = int(model(**inputs).pointer_logits[0, 0].argmax())
    assert (plan.tools[:1] == [choice - 1]) if choice != STOP else plan.abstain


def batch(model, plans=None, latencies=None):
    out = processor(model)(QUERIES, TOOL_ROWS, runtime_context=[[0.5], [0.2], [0.9]], plans=plans,
                           latencies=latencies)  # fmt: skip
    return model_inputs(out)


# ----------------------------------------------------------------------------- config
def test_config_nests_the_router_and_the_backbone_and_round_trips():
    config = planner_config()
    assert type(config.router_config).__name__ == "ToolRouterConfig"
    assert isinstance(config.text_config, CausalQwenConfig)
    assert config.pointer_size == config.hidden_size == 32
    again = ToolPlannerConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert isinstance(planner_config("qwen2").text_config, Qwen2Config)
    assert isinstance(AutoConfig.for_model("tool_planner"), ToolPlannerConfig)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"plan_tokn_id": 3}, "did you mean 'plan_token_id'"),
        ({"tool_token_id": V + 6}, "tool_token_id must lie in"),
        ({"plan_token_id": V}, "placeholder ids must differ"),
        ({"tool_token_id": TOK.num_token_id}, "must differ from the backbone's <NUM>"),
        ({"max_plan_steps": 0}, "max_plan_steps must be positive"),
        ({"latency_weight": float("nan")}, "latency_weight must be finite"),
        ({"resource_frequencies": -1}, "resource_frequencies must be >= 0"),
        ({"resource_max_frequency": 0.0}, "resource_max_frequency must be a positive"),
        ({"budget_frequencies": -1}, "budget_frequencies must be >= 0"),
        ({"budget_max_frequency": float("inf")}, "budget_max_frequency must be a positive"),
    ],
)
def test_config_rejects_bad_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        planner_config(**overrides)


def test_config_rejects_an_unknown_backbone():
    with pytest.raises(ValueError, match="text_config must be one of causal_qwen, qwen2"):
        planner_config(text_config={"model_type": "llama", "vocab_size": V + 4})


def test_config_rejects_budget_comparison_on_a_digits_backbone():
    with pytest.raises(ValueError, match="budget_frequencies > 0 .* needs a causal_qwen backbone"):
        planner_config("qwen2", budget_frequencies=4)


# ----------------------------------------------------------------------------- forward
def test_forward_shapes_masks_and_teacher_forcing():
    model = tiny()
    out = model(
        **batch(model, plans=[[0, 1], [], [2]], latencies=[[0.1, 1.3, 0.03, 0.4], [0.1, 1.0], [1, 0.02, 0.3]])
    )
    assert out.pointer_logits.shape == (3, 3, 5)  # 3 rows, up to 2 tools + STOP steps, STOP + 4 tools
    assert out.step_mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    assert (
        torch.isinf(out.pointer_logits[1, 0, 3:]).all() and torch.isfinite(out.pointer_logits[1, 0, :3]).all()
    )
    assert out.latency_loc.shape == out.latency_scale.shape == (3, 4)
    torch.testing.assert_close(
        out.latency_scale, torch.ones_like(out.latency_scale)
    )  # the unit-scale init ran
    assert model.pointer.query.weight.std() > 0.1  # unit-variance pointer rows, not the default 0.02
    assert torch.isfinite(out.loss) and out.pointer_loss > 0
    # Teacher forcing: the step after a tool reads that tool; another previous tool changes the step's scores.
    inputs = batch(model, plans=[[0, 1], [], [2]])
    other = dict(inputs, previous_tools=torch.tensor([[-1, 3, 1], [-1, -1, -1], [-1, 0, -1]]))
    with torch.no_grad():
        forced, changed = model(**inputs).pointer_logits, model(**other).pointer_logits
    assert torch.equal(forced[:, 0], changed[:, 0])
    assert (forced[0, 1] - changed[0, 1]).abs().max() > 1e-4


def test_padded_batch_equals_one_request_at_a_time():
    model = tiny()
    plans = [[0, 1], [], [2]]
    with torch.no_grad():
        together = model(**batch(model, plans=plans))
        for i in range(3):
            alone = processor(model)([QUERIES[i]], [TOOL_ROWS[i]], runtime_context=[[[0.5], [0.2], [0.9]][i]],
                                     plans=[plans[i]])  # fmt: skip
            model_inputs(alone)
            one = model(**alone)
            steps, tools = one.pointer_logits.shape[1:]
            torch.testing.assert_close(together.pointer_logits[i, :steps, :tools], one.pointer_logits[0],
                                       atol=1e-5, rtol=1e-5)  # fmt: skip
            torch.testing.assert_close(
                together.latency_loc[i, : tools - 1], one.latency_loc[0], atol=1e-5, rtol=1e-5
            )


def test_resource_values_read_as_numbers_resolve_a_one_percent_change_and_reach_decoding(tmp_path):
    from causalqwen.modeling.numeric_embedding import multiscale_features

    model = tiny(resource_frequencies=4, resource_max_frequency=50.0)
    assert tiny().resource_encoder is None  # off by default: no parameters added
    encoder = model.resource_encoder
    assert encoder.mlp.linear_1.in_features == 6 * (4 + 2 * 4)
    inputs = batch(model, plans=[[0, 1], [], [2]])
    # The encoder reads the raw values the processor passed through log1p, as the <NUM> encoding reads numbers.
    raw = torch.expm1(inputs["resource_vectors"])
    expected = encoder.mlp(multiscale_features(raw, 4, max_frequency=50.0).flatten(-2))
    with torch.no_grad():
        torch.testing.assert_close(encoder(inputs["resource_vectors"]), expected)
        out = model(**inputs)
        # 1 % more latency on tool 0 of row 0 moves that tool's embedding, hence the plan scores
        nudged = inputs["resource_vectors"].clone()
        nudged[0, 0, 3] = torch.log1p(raw[0, 0, 3] * 1.01)
        moved = model(**dict(inputs, resource_vectors=nudged)).pointer_logits
    assert (out.pointer_logits[0] - moved[0]).abs().max() > 1e-4
    torch.testing.assert_close(out.pointer_logits[1:], moved[1:])
    # precomputed tool states need the resource vectors beside them (decoding passes both) ...
    given = dict(inputs, tool_states=out.tool_states)
    for key in ("tool_input_ids", "tool_attention_mask", "tool_text_embeddings"):
        given.pop(key, None)
    with torch.no_grad():
        torch.testing.assert_close(model(**given).pointer_logits, out.pointer_logits)
    with pytest.raises(
        ValueError, match="resource_frequencies > 0 or budget_frequencies > 0 reads resource_vectors"
    ):
        model(**{k: v for k, v in given.items() if k != "resource_vectors"})
    bad = inputs["resource_vectors"].clone()
    bad[0, 0, 3] = float("nan")
    for path in (inputs, given):  # through the tool tower, and beside precomputed states
        with pytest.raises(ValueError, match="resource_vectors contain NaN or inf"):
            model(**dict(path, resource_vectors=bad))
    # ... so plan() decodes with them and takes the argmax of the same scores
    proc = processor(model)
    plan = model.plan(proc, QUERIES[0], TOOLS, runtime_context=[[0.5]], max_steps=1)
    assert len(plan.steps) <= 1
    assert_plan_starts_at_the_argmax(model, proc, plan)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).pointer_logits, out.pointer_logits)


def test_budget_comparator_reads_each_request_number_against_each_resource_field(tmp_path):
    model = tiny(budget_frequencies=3, budget_max_frequency=50.0)
    assert tiny().budget_comparator is None  # off by default: no parameters added
    comparator = model.budget_comparator
    assert comparator.mlp.linear_1.in_features == 6 * (1 + 2 * 3 + 7 * 4)
    # seven thresholds per field, 3 apart in ln from -9 to 9 (stored / 10)
    torch.testing.assert_close(comparator.threshold[3] * 10, torch.arange(-9.0, 10.0, 3.0))
    with torch.no_grad():
        comparator.threshold.add_(torch.linspace(-0.03, 0.07, 6)[:, None])
    inputs = batch(model, plans=[[0, 1], [], [2]])
    numbers, mask = model._request_numbers(
        inputs["input_ids"], inputs["numeric_values"], inputs["input_ids"] == model.config.tool_token_id
    )
    assert mask.tolist() == [[True], [False], [True]] and numbers[:, 0].tolist() == [300.0, 0.0, 0.5]
    # d = ln|v| - ln r per field, with zero resources floored at 1e-6 (never -inf)
    raw = torch.expm1(inputs["resource_vectors"][0, 0])
    d = torch.log(torch.tensor(300.0)) - raw.clamp_min(1e-6).log()
    angles = d[:, None] * comparator.frequencies
    shifted = (d[:, None] - 10.0 * comparator.threshold.detach())[..., None]
    steps = torch.tanh(shifted * torch.tensor([1.0, 10.0, 100.0, 1000.0])).flatten(-2)
    features = torch.cat([d[:, None] / 10.0, angles.sin(), angles.cos(), steps], -1).flatten()
    with torch.no_grad():
        compared = comparator(numbers, mask, inputs["resource_vectors"])
        torch.testing.assert_close(compared[0, 0], comparator.mlp(features), atol=1e-5, rtol=1e-5)
        assert torch.equal(
            compared[1], torch.zeros_like(compared[1])
        )  # no number in the request: nothing added
        out = model(**inputs)
        # 1 % more budget moves the scores of that request only
        nudged = inputs["numeric_values"].clone()
        nudged[0][inputs["input_ids"][0] == TOK.num_token_id] *= 1.01
        moved = model(**dict(inputs, numeric_values=nudged)).pointer_logits
    assert (out.pointer_logits[0] - moved[0]).abs().max() > 1e-4
    torch.testing.assert_close(out.pointer_logits[1:], moved[1:])
    # precomputed tool states need the resource vectors beside them, so plan() decodes with the comparison too
    given = {k: v for k, v in inputs.items() if k not in ("tool_input_ids", "tool_attention_mask")}
    with torch.no_grad():
        torch.testing.assert_close(model(**dict(given, tool_states=out.tool_states)).pointer_logits,
                                   out.pointer_logits)  # fmt: skip
    proc = processor(model)
    assert_plan_starts_at_the_argmax(
        model, proc, model.plan(proc, QUERIES[0], TOOLS, runtime_context=[[0.5]])
    )
    model.save_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(
            AutoModel.from_pretrained(tmp_path).eval()(**inputs).pointer_logits, out.pointer_logits
        )
    with pytest.raises(ValueError, match="budget_frequencies > 0 reads the request's <NUM> values"):
        model(**{k: v for k, v in inputs.items() if k != "numeric_values"})
    bad = inputs["numeric_values"].clone()
    bad[0][inputs["input_ids"][0] == TOK.num_token_id] = float("nan")
    with pytest.raises(ValueError, match="numeric_values contains NaN"):  # never a NaN comparison
        model(**dict(inputs, numeric_values=bad))


def test_allow_repeated_tools_false_masks_earlier_choices():
    model = tiny(allow_repeated_tools=False)
    with torch.no_grad():
        logits = model(**batch(model, plans=[[0, 1], [], [2]])).pointer_logits
    assert torch.isinf(logits[0, 1, 1]) and torch.isinf(logits[0, 2, 1:3]).all()
    assert torch.isfinite(logits[0, 2, 3:]).all()
    with pytest.raises(ValueError, match="cannot choose"):
        model(**batch(model, plans=[[0, 0], [], [2]]))


def test_qwen2_backbone_reads_digits_and_refuses_values():
    model = tiny("qwen2")
    inputs = batch(model, plans=[[0], [1], []])
    assert "numeric_values" not in inputs
    assert torch.isfinite(model(**inputs).loss)
    values = torch.zeros(inputs["input_ids"].shape, dtype=torch.float64)
    values[0, 0] = 3.0
    with pytest.raises(ValueError, match="plain Qwen2"):
        model(**inputs, numeric_values=values)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_raises_clear_errors():
    model = tiny()
    proc = processor(model)
    with pytest.raises(ValueError, match="empty tool set for query 1"):
        proc(QUERIES[:2], [TOOLS, []], runtime_context=[[0.1], [0.2]])
    with pytest.raises(ValueError, match="non-empty list of tools"):
        proc(QUERIES[:1], [], runtime_context=[[0.1]])
    with pytest.raises(ValueError, match="runtime_context contains NaN"):
        proc(QUERIES[:1], TOOLS, runtime_context=[[float("nan")]])
    with pytest.raises(ValueError, match="resources contain NaN"):
        proc(QUERIES[:1], [("a tool", [1, 2, 3, float("inf"), 0, 0])], runtime_context=[[0.1]])
    with pytest.raises(ValueError, match="points outside its 2 tools"):
        proc(QUERIES[:1], TOOLS[:2], runtime_context=[[0.1]], plans=[[2]])
    inputs = batch(model, plans=[[0, 1], [], [2]])
    dropped = dict(
        inputs, input_ids=inputs["input_ids"].masked_fill(inputs["input_ids"] == V, TOK.pad_token_id)
    )
    with pytest.raises(ValueError, match="one <TOOL> placeholder .* per offered tool"):
        model(**dropped)
    with pytest.raises(ValueError, match="runtime_context contains NaN"):
        model(**dict(inputs, runtime_context=torch.full((3, 1), float("nan"))))
    with pytest.raises(ValueError, match="empty tool set"):
        model(**dict(inputs, tool_mask=torch.zeros_like(inputs["tool_mask"]),
                     input_ids=inputs["input_ids"].masked_fill(inputs["input_ids"] == V, 0)))  # fmt: skip
    with pytest.raises(ValueError, match="plan_labels must be 0 \\(STOP\\)"):
        model(**dict(inputs, plan_labels=torch.tensor([[1, 2, 0], [3, -100, -100], [1, 0, -100]])))
    with pytest.raises(ValueError, match="no tools"):
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])


# ----------------------------------------------------------------------------- save / load / parts
def test_save_and_auto_load_are_bit_identical(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is ToolPlannerModel
    state, again = model.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    inputs = batch(model, plans=[[0, 1], [], [2]])
    with torch.no_grad():
        assert torch.equal(model(**inputs).pointer_logits, loaded(**inputs).pointer_logits)


def test_remote_code_load_without_the_package(tmp_path):
    from remote_helpers import forward_as_remote_code

    # the optional resource encoder and budget comparator must travel as remote code too
    model = tiny(resource_frequencies=2, budget_frequencies=2)
    model.save_pretrained(tmp_path)
    inputs = batch(model, plans=[[0, 1], [], [2]])
    with torch.no_grad():
        expected = model(**inputs).pointer_logits
    assert torch.equal(forward_as_remote_code(tmp_path, inputs, "pointer_logits"), expected)


def test_from_saved_router_and_causal_qwen_gives_their_states(tmp_path):
    torch.manual_seed(1)
    router = ToolRouterModel(router_config_for(RTOK, **TINY_ROUTER)).eval()
    lm = CausalQwenForNumericCausalLM(CausalQwenConfig(**text_config())).eval()
    router.save_pretrained(tmp_path / "router")
    lm.save_pretrained(tmp_path / "lm")
    model = ToolPlannerModel.from_components(
        str(tmp_path / "router"),
        str(tmp_path / "lm"),
        tool_token_id=V,
        plan_token_id=V + 1,
        context_token_id=V + 2,
        runtime_context_dim=1,
    )
    model.eval()
    inputs = batch(model, plans=[[0, 1], [], [2]])
    tool_keys = ("tool_input_ids", "tool_attention_mask", "resource_vectors", "tool_mask")
    with torch.no_grad():
        out = model(**inputs)
        expected = router.encode_tools(**{k: inputs[k] for k in tool_keys}).tool_states
        assert torch.equal(out.tool_states, expected)
        ids = TOK(QUERIES[0], return_tensors="pt")
        mine = model.language_model(input_ids=ids["input_ids"], numeric_values=ids["numeric_values"])
        theirs = lm.model(input_ids=ids["input_ids"], numeric_values=ids["numeric_values"])
        assert torch.equal(mine.last_hidden_state, theirs.last_hidden_state)


# ----------------------------------------------------------------------------- learning and decoding
PATTERNS = [  # (query, families in order); tools are offered in a different order each time
    ("translate it and then summarize it", ["translate", "summarize"]),
    ("summarize it and then translate it", ["summarize", "translate"]),
    ("caption the photo", ["caption"]),
    ("transcribe the audio and then caption it", ["transcribe", "caption"]),
    ("tell me a joke", []),
]


def learning_rows(n: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        query, families = PATTERNS[i % len(PATTERNS)]
        order = torch.randperm(len(TOOLS), generator=generator).tolist()
        tools = [TOOLS[j] for j in order]
        names = [t["name"] if isinstance(t, dict) else t[0].split(":")[0] for t in tools]
        plan = [next(k for k, name in enumerate(names) if name.startswith(f)) for f in families]
        rows.append({"query": query, "tools": tools, "plan": plan})
    return rows


def test_tiny_planner_learns_two_step_plans_and_decodes_them():
    model = tiny(seed=0).train()
    proc = processor(model)
    rows = learning_rows(40, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _epoch in range(30):
        for start in range(0, len(rows), 10):
            part = rows[start : start + 10]
            inputs = proc([r["query"] for r in part], [r["tools"] for r in part], runtime_context=[[0.5]] * len(part),
                          plans=[r["plan"] for r in part])  # fmt: skip
            model_inputs(inputs)
            loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    model.eval()
    held_out = learning_rows(20, seed=1)
    plans = model.plan(proc, [r["query"] for r in held_out], [r["tools"] for r in held_out],
                       runtime_context=[[0.5]] * len(held_out))  # fmt: skip
    exact = sum(p.tools == r["plan"] for p, r in zip(plans, held_out)) / len(held_out)
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, held-out exact match {exact:.2f}")
    assert losses[-1] < 0.1 * losses[0]
    assert exact == 1.0
    assert plans[4].abstain and plans[0].steps[0].name == "translate_small"
    assert all(0.0 < s.score <= 1.0 and s.latency_interval[0] < s.latency < s.latency_interval[1]
               for p in plans for s in p.steps)  # fmt: skip
    # Beam search finds a plan at least as probable as greedy's; one beam is greedy.
    beams = model.plan(proc, [r["query"] for r in held_out[:5]], [r["tools"] for r in held_out[:5]],
                       runtime_context=[[0.5]] * 5, num_beams=3)  # fmt: skip
    assert [p.tools for p in beams] == [p.tools for p in plans[:5]]


def test_greedy_plan_takes_the_argmax_at_each_step_and_respects_caps_and_budgets():
    model = tiny(seed=3)
    proc = processor(model)
    plan = model.plan(proc, QUERIES[0], TOOLS, runtime_context=[[0.5]], max_steps=2)
    assert_plan_starts_at_the_argmax(model, proc, plan)
    assert len(plan.steps) <= 2
    cheap = model.plan(proc, QUERIES[0], TOOLS, runtime_context=[[0.5]], budget={"memory": 4})
    assert all(TOOLS[t]["resources"][1] <= 4 if isinstance(TOOLS[t], dict) else TOOLS[t][1][1] <= 4
               for t in cheap.tools)  # fmt: skip
    with pytest.raises(ValueError, match="unknown budget field"):
        model.plan(proc, QUERIES[0], TOOLS, runtime_context=[[0.5]], budget={"speed": 1})


def test_total_budget_bounds_the_sum_of_the_plan_in_greedy_and_beam_decoding():
    model = tiny(seed=3, max_plan_steps=4)
    proc = processor(model)
    latency = [t["resources"][3] if isinstance(t, dict) else t[1][3] for t in TOOLS]  # 0.08, 1.2, 0.02, 0.3
    free = model.plan(proc, QUERIES[0], TOOLS, runtime_context=[[0.5]])
    for beams in (1, 3):
        for limit in (0.1, 0.35, 1.3, 5.0):
            plan = model.plan(proc, QUERIES, TOOLS, runtime_context=[[0.5], [0.2], [0.9]], num_beams=beams,
                              total_budget={"latency": limit})  # fmt: skip
            assert all(sum(latency[t] for t in p.tools) <= limit + 1e-9 for p in plan)
    # a total the cheapest tool alone exceeds leaves nothing to call
    assert model.plan(
        proc, QUERIES[0], TOOLS, runtime_context=[[0.5]], total_budget={"latency": 0.01}
    ).abstain
    # a total no plan can reach changes nothing
    roomy = model.plan(proc, QUERIES[0], TOOLS, runtime_context=[[0.5]], total_budget={"latency": 100.0})
    assert roomy.tools == free.tools
    # each field's sum over the prefix, a repeated call counted each time: 0.02 + 0.02 fits 0.05, a third does not
    from causalqwen.modeling.modeling_tool_planner import _TotalBudget

    fields = proc.budget_fields({"latency": 0.05, "memory": 3})
    assert fields == [(3, 0.05), (1, 3.0)]
    raw = torch.tensor(
        [[t["resources"] if isinstance(t, dict) else t[1] for t in TOOLS]], dtype=torch.float32
    )
    blocked = _TotalBudget(raw, fields).blocked([0, 0, 0], [[], [2], [2, 2]])
    assert blocked.tolist() == [
        [True, True, False, True],
        [True, True, False, True],
        [True, True, True, True],
    ]
    for bad, message in (({"speed": 1}, "unknown budget field"), ({"latency": float("nan")}, "not finite")):
        with pytest.raises(ValueError, match=message):
            model.plan(proc, QUERIES[0], TOOLS, runtime_context=[[0.5]], total_budget=bad)


def test_frozen_tool_tower_with_cached_text_states_equals_token_ids():
    model = tiny(freeze_tool_tower=True)
    assert not any(p.requires_grad for p in model.tool_tower.parameters())
    plans = [[0, 1], [], [2]]
    with_ids = batch(model, plans=plans)
    cached = processor(model, tool_text_cache=ToolTextCache(model.tool_tower, RTOK))(
        QUERIES, TOOL_ROWS, runtime_context=[[0.5], [0.2], [0.9]], plans=plans
    )
    assert "tool_text_embeddings" in cached and "tool_input_ids" not in cached
    model_inputs(cached)
    with torch.no_grad():
        torch.testing.assert_close(model(**cached).pointer_logits, model(**with_ids).pointer_logits,
                                   atol=1e-5, rtol=1e-5)  # fmt: skip


def test_query_state_from_token_ids_equals_cached_embeddings_and_is_required():
    model = tiny(use_query_state=True, freeze_tool_tower=True)
    plans = [[0, 1], [], [2]]
    with_ids = batch(model, plans=plans)
    assert with_ids["query_input_ids"].shape[0] == 3 and (with_ids["input_ids"] == V + 3).sum() == 3
    cached = processor(model, query_text_cache=ToolTextCache(model.tool_tower, RTOK, encoder="query"))(
        QUERIES, TOOL_ROWS, runtime_context=[[0.5], [0.2], [0.9]], plans=plans
    )
    assert "query_embeddings" in cached and "query_input_ids" not in cached
    model_inputs(cached)
    with torch.no_grad():
        reference = model(**with_ids).pointer_logits
        torch.testing.assert_close(model(**cached).pointer_logits, reference, atol=1e-5, rtol=1e-5)
        moved = dict(cached, query_embeddings=cached["query_embeddings"].flip(0))
        finite = torch.isfinite(reference)
        assert (model(**moved).pointer_logits - reference)[finite].abs().max() > 1e-4
    with pytest.raises(ValueError, match="use_query_state: pass query_input_ids"):
        model(**{k: v for k, v in cached.items() if k != "query_embeddings"})
    with pytest.raises(ValueError, match="use_query_state=False"):
        tiny()(**batch(tiny(), plans=plans), query_embeddings=cached["query_embeddings"])


def test_trainer_and_lora_train_the_backbone_adapters_and_the_heads(tmp_path):
    pytest.importorskip("peft")
    from datasets import Dataset

    from causalqwen.training.planner_trainer import apply_planner_lora, train_planner

    model = tiny(resource_frequencies=2, budget_frequencies=2).train()
    wrapped = apply_planner_lora(model, r=4)
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert any("language_model.layers.0.self_attn.q_proj.lora_A" in n for n in trainable)
    assert not any(
        "language_model" in n and "lora_" not in n and "value_encoding" not in n for n in trainable
    )
    assert any("pointer" in n for n in trainable) and any("step_embedding" in n for n in trainable)
    assert any("resource_encoder" in n for n in trainable)
    assert any("budget_comparator" in n and n.endswith("threshold") for n in trainable)  # trained in full
    rows = []
    for r in learning_rows(20, seed=0):
        tools = [t if isinstance(t, dict) else {"name": t[0].split(":")[0], "text": t[0], "resources": t[1]}
                 for t in r["tools"]]  # fmt: skip
        rows.append({"query": r["query"], "tool_names": [t["name"] for t in tools], "plan": r["plan"],
                     "tool_texts": [t["text"] for t in tools], "resource_vectors": [t["resources"] for t in tools],
                     "latency": [0.1] * len(tools), "runtime_load": 0.5})  # fmt: skip
    before = {n: p.detach().clone() for n, p in wrapped.named_parameters() if "lora_B" in n}
    trainer = train_planner(wrapped, processor(model), Dataset.from_list(rows), tmp_path, batch_size=5,
                            learning_rate=3e-3, max_steps=24, logging_steps=4, use_cpu=True)  # fmt: skip
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < 0.6 * losses[0]
    moved = [n for n, p in wrapped.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert moved


# ----------------------------------------------------------------------------- CLI
@pytest.mark.realvocab
@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--backbone", "qwen2", "--lora", "--lora-r", "2"],
        ["--backbone", "qwen2", "--lora", "--arguments"],
    ],
    ids=["causal", "qwen2-lora", "qwen2-lora-arguments"],
)
def test_cli_trains_saves_and_loads_a_planner(tmp_path, flags):
    import json

    from causalqwen.training.planner_cli import main
    from causalqwen.training.planner_trainer import load_planner

    assert main(["--quick", "--output-dir", str(tmp_path), *flags]) == 0
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["steps"] == 4 and len(summary["losses"]) == 4
    assert summary["budget_mix"] == DEFAULT_BUDGET_MIX
    assert {"exact_match", "budget_compliance", "abstain_f1"} <= set(summary["dev"])
    model, proc = load_planner(tmp_path)
    assert model.config.backbone_type == ("qwen2" if flags else "causal_qwen")
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged before saving
    if not flags:
        assert proc(["under 300 ms"], TOOLS[:1], runtime_context=[[0.1]])["numeric_values"][0].max() == 300
    plan = model.plan(
        proc, "summarize the report, with every step under 300 ms", TOOLS, runtime_context=[[0.3]]
    )
    assert len(plan.steps) <= model.config.max_plan_steps
    writes = "--arguments" in flags
    assert model.config.generate_arguments is writes and ("argument_match" in summary["dev"]) is writes
    assert all(isinstance(step.arguments, str) is writes for step in plan.steps)


def test_cli_total_budgets_draws_the_total_budget_mix(tmp_path, monkeypatch):
    from causalqwen.training import planner_data
    from causalqwen.training.planner_cli import main

    drawn = {}

    def capture(*sizes, **kwargs):
        drawn.update(kwargs)
        raise KeyboardInterrupt  # stop before any model is built

    monkeypatch.setattr(planner_data, "build_synthetic_planning_dataset", capture)
    with pytest.raises(KeyboardInterrupt):
        main(["--quick", "--total-budgets", "--seed", "3", "--output-dir", str(tmp_path)])
    assert drawn == {"seed": 3, "budget_mix": planner_data.TOTAL_BUDGET_MIX}


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--backbone", "/no/such/dir"], "--backbone /no/such/dir: not causal_qwen or qwen2"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--router", "/no/such/router"], "--router /no/such/router: no such directory"),
    ],
)
def test_cli_usage_errors_are_one_line(tmp_path, capsys, flags, message):
    from causalqwen.training.planner_cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--output-dir", str(tmp_path), *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_planner_model_card_names_the_backbone_and_loads_remotely():
    from causalqwen.hub import render_model_card

    card = render_model_card(planner_config(), metrics={"exact_match": 0.9375}, repo_id="dan/planner")
    assert "- tool-planner" in str(card)  # a tag of the front matter
    assert "| `backbone_type` | `causal_qwen` |" in card.text
    assert "| `max_plan_steps` | `4` |" in card.text and "| `generate_arguments` | `False` |" in card.text
    assert "| exact_match | 0.9375 |" in card.text
    assert 'AutoModel.from_pretrained("dan/planner", trust_remote_code=True)' in card.text


def test_plan_reads_a_tool_index_like_the_same_tools_given_as_dicts():
    from causalqwen.tool_index import ToolIndex

    model = tiny(seed=1)
    proc = processor(model)
    texts = [t["text"] if isinstance(t, dict) else t[0] for t in TOOLS]
    resources = [t["resources"] if isinstance(t, dict) else t[1] for t in TOOLS]
    index = ToolIndex.build(model.tool_tower, RTOK, texts, resources)
    as_dicts = [{"name": n, "text": t, "resources": r} for n, t, r in zip(index.names, texts, resources)]
    from_index = model.plan(proc, QUERIES[:2], index, runtime_context=[[0.5], [0.2]], num_beams=2)
    from_dicts = model.plan(proc, QUERIES[:2], as_dicts, runtime_context=[[0.5], [0.2]], num_beams=2)
    assert [p.tools for p in from_index] == [p.tools for p in from_dicts]
    assert [s.name for p in from_index for s in p.steps] == [s.name for p in from_dicts for s in p.steps]
    assert all(s.name in index.names for p in from_index for s in p.steps)


def test_activation_checkpointing_gives_the_same_gradients():
    plans = [[0, 1], [], [2]]
    grads = []
    for checkpointing in (False, True):
        model = tiny(seed=2).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing and model.language_model.gradient_checkpointing
        model(**batch(model, plans=plans)).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- arguments (generate_arguments)
ARG_PLANS = [[0, 1], [1], []]
ARG_TEXTS = [['{"lang": "French"}', '{"max_ms": 300}'], ['{"n": 2}'], []]


def argument_batch(model, plans=ARG_PLANS, texts=ARG_TEXTS):
    out = processor(model)(QUERIES, TOOL_ROWS, runtime_context=[[0.5], [0.2], [0.9]], plans=plans,
                           arguments=texts)  # fmt: skip
    return model_inputs(out)


@pytest.mark.parametrize("backbone", ["causal_qwen", "qwen2"])
def test_argument_layout_labels_and_loss(backbone):
    model = tiny(backbone, generate_arguments=True)
    inputs = argument_batch(model)
    ids, labels = inputs["input_ids"], inputs["argument_labels"]
    call, end = model.config.call_token_id, model.config.call_end_token_id
    assert (ids == call).sum(-1).tolist() == [2, 1, 0] and (ids == end).sum(-1).tolist() == [2, 1, 0]
    # Labelled: every argument token and each <END_CALL>; never a <CALL>, the request, a tool or a plan slot.
    labelled = labels != -100
    assert torch.equal(labels[labelled], ids[labelled]) and not bool(labelled[ids == call].any())
    assert bool(labelled[ids == end].all()) and int(labelled[2].sum()) == 0
    first_call = int((ids[0] == call).nonzero()[0])
    assert not bool(labelled[0, :first_call].any())
    with torch.no_grad():
        out = model(**inputs)
        plain = tiny(backbone, generate_arguments=True)(
            **{k: v for k, v in inputs.items() if k != "argument_labels"}
        )
    assert out.argument_loss is not None and float(out.argument_loss) > 0
    expected = out.pointer_loss + 0.1 * out.latency_loss if out.latency_loss is not None else out.pointer_loss
    assert torch.allclose(out.loss, expected + out.argument_loss)
    # Calls come after every plan slot: the pointer never sees argument text.
    assert torch.equal(out.pointer_logits, plain.pointer_logits)
    if backbone == "causal_qwen":
        # The <NUM> in '{"max_ms": 300}' is a value the gated loss regresses on.
        assert float(inputs["numeric_values"][0][(ids[0] == TOK.num_token_id)][-1]) == 300.0


@pytest.mark.parametrize("backbone", ["causal_qwen", "qwen2"])
def test_argument_writer_is_the_teacher_forced_argmax(backbone):
    """What plan() writes re-reads, token by token, as the model's own argmax under teacher forcing."""
    from causalqwen.modeling.modeling_tool_planner import _ArgumentWriter, _request_inputs

    model = tiny(backbone, seed=2, generate_arguments=True, max_argument_tokens=6)
    proc = processor(model)
    raw = proc(QUERIES, TOOL_ROWS, runtime_context=[[0.5], [0.2], [0.9]], num_plan_tokens=0)
    model_inputs(raw)
    with torch.no_grad():
        states = model._tool_states(None, {k: raw.get(k) for k in ("tool_input_ids", "tool_attention_mask",
                                                                    "resource_vectors", "tool_mask")})  # fmt: skip
        written = _ArgumentWriter(model, proc, raw, states).write(ARG_PLANS)
        assert [len(calls) for calls in written] == [2, 1, 0]
        cfg = model.config
        for row in (0, 1):
            plan = ARG_PLANS[row]
            tail, values = [cfg.plan_token_id] * (len(plan) + 1), [0.0] * (len(plan) + 1)
            for call_ids, call_values in written[row]:
                assert 0 < len(call_ids) <= 6 and cfg.tool_token_id not in call_ids
                tail += [cfg.call_token_id, *call_ids, cfg.call_end_token_id]
                values += [0.0, *call_values, 0.0]
            extra = dict(tool_states=states[[row]], previous_tools=torch.tensor([[-1, *plan]]),
                         call_tools=torch.tensor([plan]))  # fmt: skip
            inputs = _request_inputs(raw, [row], [tail], [values], extra)
            hidden = model(**inputs).hidden_states[0]
            start = int(raw["attention_mask"][row].sum()) + len(plan) + 1
            position = start
            for call_ids, call_values in written[row]:
                tokens, predicted = model._next_argument_tokens(hidden[position : position + len(call_ids)])
                assert tokens.tolist() == call_ids  # the token after <CALL> and after each written token
                for token, value, mine in zip(call_ids, call_values, predicted.tolist()):
                    assert value == (mine if token == TOK.num_token_id else 0.0)
                position += len(call_ids) + 2  # the ids, then <END_CALL> (or a cut at max tokens) and <CALL>


def test_tiny_planner_learns_to_write_arguments():
    model = tiny("qwen2", generate_arguments=True).train()
    inputs = argument_batch(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        out = model(**inputs)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.argument_loss.item())
    model.eval()
    plans = model.plan(processor(model), QUERIES, TOOL_ROWS, runtime_context=[[0.5], [0.2], [0.9]])
    assert losses[-1] < 0.05 * losses[0]
    assert [p.tools for p in plans] == ARG_PLANS
    assert [[s.arguments for s in p.steps] for p in plans] == ARG_TEXTS
    assert model.plan(processor(model), QUERIES[1], TOOLS[:2], runtime_context=[[0.2]], write_arguments=False
                      ).steps[0].arguments is None  # fmt: skip


def test_causal_qwen_argument_loss_falls_and_trains_the_value_head():
    model = tiny("causal_qwen", generate_arguments=True).train()
    inputs = argument_batch(model)
    head = model.language_model.value_head.weight.detach().clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        out = model(**inputs)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.argument_loss.item())
    assert losses[-1] < 0.1 * losses[0]
    assert not torch.equal(head, model.language_model.value_head.weight)


def test_argument_inputs_raise_clear_errors():
    plain, model = tiny(), tiny(generate_arguments=True)
    with pytest.raises(ValueError, match="generate_arguments=False"):
        argument_batch(plain)
    with pytest.raises(ValueError, match="2 planned tools need 2 argument texts"):
        argument_batch(model, texts=[["{}"], ["{}"], []])
    with pytest.raises(ValueError, match="arguments need plans"):
        processor(model)(QUERIES, TOOL_ROWS, runtime_context=[[0.5], [0.2], [0.9]], arguments=ARG_TEXTS)
    inputs = argument_batch(model)
    with pytest.raises(ValueError, match="generate_arguments=False"):
        plain(**{k: v for k, v in inputs.items() if k != "argument_labels"})
    with pytest.raises(ValueError, match="each <CALL> needs its tool"):
        model(**dict(inputs, call_tools=torch.tensor([[0, -1], [1, -1], [-1, -1]])))
    with pytest.raises(ValueError, match="call_tools point outside"):
        model(**dict(inputs, call_tools=torch.tensor([[0, 7], [1, -1], [-1, -1]])))
    with pytest.raises(ValueError, match="argument_labels must be \\[B, L\\]"):
        model(**dict(inputs, argument_labels=inputs["argument_labels"][:, :-1]))
    with pytest.raises(ValueError, match="write_arguments=True needs"):
        plain.plan(processor(plain), QUERIES[0], TOOLS, runtime_context=[[0.5]], write_arguments=True)
    with pytest.raises(ValueError, match="call_token_id must lie in"):
        planner_config(generate_arguments=True, call_token_id=V + 9)


@pytest.mark.parametrize("backbone,tied", [("causal_qwen", False), ("qwen2", True)])
def test_argument_planner_saves_loads_and_builds_from_a_causal_lm(tmp_path, backbone, tied):
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(4)
    config = text_config(backbone, tie_word_embeddings=tied)
    lm_class = CausalQwenForNumericCausalLM if backbone == "causal_qwen" else Qwen2ForCausalLM
    lm = lm_class(CausalQwenConfig(**config) if backbone == "causal_qwen" else Qwen2Config(**config)).eval()
    lm.save_pretrained(tmp_path / "lm")
    router = ToolRouterModel(router_config_for(RTOK, **TINY_ROUTER))
    ids = dict(tool_token_id=V, plan_token_id=V + 1, context_token_id=V + 2, call_token_id=V + 4,
               call_end_token_id=V + 5, runtime_context_dim=1)  # fmt: skip
    model = ToolPlannerModel.from_components(
        router, str(tmp_path / "lm"), generate_arguments=True, **ids
    ).eval()
    # The causal LM's head comes along: its weights, hence its predictions, are the planner's argument head.
    assert all(torch.equal(v, lm.state_dict()[k]) for k, v in model.language_model.state_dict().items())
    if tied:
        assert model.language_model.lm_head.weight is model.backbone.embed_tokens.weight
    model.save_pretrained(tmp_path / "planner")
    loaded = AutoModel.from_pretrained(tmp_path / "planner").eval()
    state, again = model.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    if tied:
        assert loaded.language_model.lm_head.weight is loaded.backbone.embed_tokens.weight
    inputs = argument_batch(model)
    with torch.no_grad():
        assert torch.equal(model(**inputs).argument_loss, loaded(**inputs).argument_loss)


def test_lora_on_an_argument_planner_adapts_the_layers_and_the_new_head_rows():
    pytest.importorskip("peft")
    from causalqwen.training.planner_trainer import PlannerDataCollator, apply_planner_lora

    model = tiny("causal_qwen", generate_arguments=True).train()
    wrapped = apply_planner_lora(model, r=4)
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert any("language_model.model.layers.0.self_attn.q_proj.lora_A" in n for n in trainable)
    assert any("abduction" in n for n in trainable) and any("value_head" in n for n in trainable)
    assert any("trainable_tokens" in n for n in trainable)
    assert not any(n.endswith("language_model.lm_head.weight") for n in trainable)
    rows = [{"query": QUERIES[i], "tool_names": [f"tool{j}" for j in range(len(TOOL_ROWS[i]))],
             "tool_texts": [t["text"] if isinstance(t, dict) else t[0] for t in TOOL_ROWS[i]],
             "resource_vectors": [t["resources"] if isinstance(t, dict) else t[1] for t in TOOL_ROWS[i]],
             "plan": ARG_PLANS[i], "arguments": ARG_TEXTS[i], "runtime_load": 0.5} for i in range(3)]  # fmt: skip
    inputs = PlannerDataCollator(processor(model))(rows)
    assert "argument_labels" in inputs
    out = wrapped(**inputs)
    out.loss.backward()
    assert out.argument_loss is not None
    grads = [p.grad for n, p in wrapped.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None for g in grads)


def test_build_planner_backbone_settings_configure_the_fresh_backbone_only(tmp_path):
    from causalqwen.configuration.configuration_causal_qwen import FROM_SCRATCH_TOKEN_PRIOR
    from causalqwen.training.planner_trainer import build_planner

    model, _ = build_planner("causal_qwen", tokenizer=TOK, backbone_settings=FROM_SCRATCH_TOKEN_PRIOR)
    text = model.config.text_config
    assert (text.ovr_threshold_init, text.gamma_init, text.hidden_size) == (8.0, 0.1, 64)
    with pytest.raises(ValueError, match="gamma_init"):
        build_planner("causal_qwen", tokenizer=TOK, backbone_settings={"gama_init": 0.1})
    with pytest.raises(ValueError, match=r"\['ovr_threshold_init'\] are not Qwen2Config settings"):
        build_planner("qwen2", tokenizer=TOK, backbone_settings={"ovr_threshold_init": 8.0})
    with pytest.raises(ValueError, match="apply to a fresh backbone only"):
        build_planner(str(tmp_path), backbone_settings={"gamma_init": 0.1})


def test_a_fresh_causal_qwen_planner_reads_budgets_at_the_planner_frequency():
    from causalqwen.training.planner_trainer import PLANNER_BACKBONE_SETTINGS, build_planner

    def planner(backbone="causal_qwen", **kwargs):
        return build_planner(backbone, tokenizer=TOK, **kwargs)[0]

    assert PLANNER_BACKBONE_SETTINGS == {"value_encoding_max_frequency": 100.0}
    model = planner()
    assert model.config.text_config.value_encoding_max_frequency == 100.0
    assert model.backbone.value_encoding.max_frequency == 100.0  # the module reads it, not only the config
    both = planner(generate_arguments=True).config.text_config  # with the argument recipe on top
    assert (both.value_encoding_max_frequency, both.cls_reduction) == (100.0, "hard_negatives")
    given = planner(backbone_settings={"value_encoding_max_frequency": 1.0})
    assert given.backbone.value_encoding.max_frequency == 1.0
    assert not hasattr(planner("qwen2").config.text_config, "value_encoding_max_frequency")


def test_a_causal_qwen_planner_compares_budgets_by_default_fresh_or_from_a_checkpoint(tmp_path):
    from causalqwen.training.planner_trainer import CAUSAL_QWEN_PLANNER_SETTINGS, build_planner

    def planner(backbone="causal_qwen", **kwargs):
        return build_planner(backbone, tokenizer=TOK, **kwargs)[0]

    assert CAUSAL_QWEN_PLANNER_SETTINGS == {"budget_frequencies": 8}
    fresh = planner()
    assert fresh.config.budget_frequencies == 8 and fresh.budget_comparator.num_frequencies == 8
    assert planner(budget_frequencies=0).budget_comparator is None  # a given key wins
    assert planner("qwen2").budget_comparator is None  # no parsed numbers to compare
    CausalQwenForNumericCausalLM(CausalQwenConfig(**text_config())).save_pretrained(tmp_path)
    ids = dict(tool_token_id=V, plan_token_id=V + 1, context_token_id=V + 2)  # inside the tiny vocabulary
    assert planner(str(tmp_path), **ids).config.budget_frequencies == 8


def test_a_fresh_causal_qwen_argument_planner_gets_the_argument_recipe():
    from causalqwen.training.planner_trainer import (
        ARGUMENT_BACKBONE_SETTINGS,
        ARGUMENT_PLANNER_SETTINGS,
        build_planner,
    )

    def planner_config(backbone="causal_qwen", **kwargs):
        return build_planner(backbone, tokenizer=TOK, **kwargs)[0].config

    def text_config(backbone="causal_qwen", **kwargs):
        return planner_config(backbone, **kwargs).text_config

    keys = sorted(ARGUMENT_BACKBONE_SETTINGS)
    assert ARGUMENT_BACKBONE_SETTINGS["cls_reduction"] == "hard_negatives"
    recipe = text_config(generate_arguments=True)
    assert {k: getattr(recipe, k) for k in keys} == ARGUMENT_BACKBONE_SETTINGS
    # given settings win key by key; without arguments, or on Qwen2, the defaults stay
    mixed = text_config(generate_arguments=True, backbone_settings={"reg_lambda": 5.0})
    assert (mixed.reg_lambda, mixed.cls_reduction) == (5.0, "hard_negatives")
    plain = text_config()
    assert (plain.cls_reduction, plain.ovr_threshold_init, plain.reg_lambda) == ("sum", 0.0, 5.0)
    assert not hasattr(text_config("qwen2", generate_arguments=True), "cls_reduction")
    # the planner's part of the recipe: argument_weight 0.5, unless given; Qwen2 planners keep the config default
    assert ARGUMENT_PLANNER_SETTINGS == {"argument_weight": 0.5}
    assert planner_config(generate_arguments=True).argument_weight == 0.5
    assert planner_config(generate_arguments=True, argument_weight=0.2).argument_weight == 0.2
    assert planner_config("qwen2", generate_arguments=True).argument_weight == 1.0
