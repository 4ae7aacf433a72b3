"""Model cards rendered from hub_cards/ (issue #8): YAML header, metrics, loading instructions."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest
import torch
import yaml
from huggingface_hub import ModelCard

import causalqwen
from causalqwen import CausalQwenConfig, ToolRouterConfig
from causalqwen.hub import CARD_KINDS, CARD_TEMPLATES_DIR, render_model_card

ROOT = Path(__file__).resolve().parents[1]


def tiny_config() -> CausalQwenConfig:
    return CausalQwenConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
        num_token_id=299,
    )


def front_matter(card: ModelCard) -> dict:
    """The YAML header parsed independently of huggingface_hub."""
    text = str(card)
    assert text.startswith("---\n")
    header, _, _ = text[4:].partition("\n---\n")
    return yaml.safe_load(header)


def test_templates_ship_with_the_package():
    assert Path(causalqwen.__file__).resolve().parent / "hub_cards" == CARD_TEMPLATES_DIR
    shipped = sorted(p.name for p in CARD_TEMPLATES_DIR.glob("*.j2"))
    assert shipped == sorted(["_base.j2", *(f"{kind}.j2" for kind in CARD_KINDS)])
    assert sorted(p.name for p in (ROOT / "hub_cards").glob("*.j2")) == shipped


def test_causal_qwen_card_has_header_metrics_and_loading_snippets():
    metrics = {"eval_loss": 1.23456789, "eval_num_mae": 0.5, "train_steps": 1200}
    card = render_model_card(tiny_config(), metrics=metrics, repo_id="alice/cq-tiny", dataset="diabetes")
    header = front_matter(card)
    assert header["library_name"] == "transformers"
    assert header["license"] == "apache-2.0"
    assert header["pipeline_tag"] == "text-generation"
    assert header["tags"] == ["causalqwen", "causal-qwen"]
    results = header["model-index"][0]["results"][0]
    assert header["model-index"][0]["name"] == "cq-tiny"
    assert results["dataset"] == {"name": "diabetes", "type": "diabetes"}
    assert {m["type"]: m["value"] for m in results["metrics"]} == metrics
    # huggingface_hub parses the same header back into card data and eval results.
    reparsed = ModelCard(str(card))
    assert [r.metric_value for r in reparsed.data.eval_results] == [1.23456789, 0.5, 1200]
    text = card.text
    assert "| eval_loss | 1.23457 |" in text  # six significant digits
    assert "| eval_num_mae | 0.5 |" in text
    assert "| train_steps | 1200 |" in text
    assert "| `num_token_id` | `299` |" in text
    assert "| `hidden_size` | `32` |" in text
    for heading in ("## Intended use", "## Limitations", "## Results", "## How to load"):
        assert heading in text
    assert 'AutoModelForCausalLM.from_pretrained("alice/cq-tiny")' in text
    assert 'AutoModelForCausalLM.from_pretrained("alice/cq-tiny", trust_remote_code=True)' in text


def test_card_without_metrics_says_so_and_has_no_model_index():
    card = render_model_card(tiny_config())
    header = front_matter(card)
    assert "model-index" not in header
    assert "No evaluation results were recorded" in card.text
    assert 'from_pretrained("<namespace>/<repo>")' in card.text


def test_metrics_without_dataset_stay_in_the_body_only():
    card = render_model_card(tiny_config(), metrics={"eval_loss": 2.0})
    assert "model-index" not in front_matter(card)
    assert "| eval_loss | 2 |" in card.text


def test_model_and_config_render_the_same_card():
    model = causalqwen.CausalQwenForNumericCausalLM(tiny_config())
    assert str(render_model_card(model, repo_id="a/b")) == str(render_model_card(model.config, repo_id="a/b"))


def test_tool_router_card():
    card = render_model_card(ToolRouterConfig(), metrics={"top1_accuracy": 0.8125}, repo_id="bob/router")
    header = front_matter(card)
    assert header["tags"] == ["causalqwen", "tool-router"]
    assert "pipeline_tag" not in header
    assert "| top1_accuracy | 0.8125 |" in card.text
    assert "| `d_tool` | `768` |" in card.text
    assert 'AutoModel.from_pretrained("bob/router", trust_remote_code=True)' in card.text


def test_lora_adapter_card():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = causalqwen.CausalQwenForNumericCausalLM(tiny_config())
    config = peft.LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], modules_to_save=["value_head"]
    )
    model = peft.get_peft_model(base, config)
    card = render_model_card(
        model, metrics={"eval_loss": 0.25}, repo_id="carol/cq-lora", base_model="alice/cq"
    )
    header = front_matter(card)
    assert header["library_name"] == "peft"
    assert header["base_model"] == "alice/cq"
    assert header["tags"] == ["causalqwen", "lora-adapter", "peft", "lora"]
    text = card.text
    assert "| rank `r` | 4 |" in text
    assert "| `lora_alpha` | 16 |" in text
    assert "['q_proj', 'v_proj']" in text
    assert "`value_head`" in text
    assert "| eval_loss | 0.25 |" in text
    assert 'PeftModel.from_pretrained(base, "carol/cq-lora")' in text
    assert "| `num_token_id` | `299` |" in text  # the base model's configuration


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"metrics": {"loss": "low"}}, TypeError, "metric 'loss' must be a number"),
        ({"metrics": {"loss": float("nan")}}, ValueError, "metric 'loss' is not finite"),
        ({"metrics": {"ok": True}}, TypeError, "metric 'ok' must be a number"),
        ({"metrics": [("loss", 1.0)]}, TypeError, "metrics must be a mapping"),
        ({"metrics": {3: 1.0}}, TypeError, "metric names must be non-empty strings"),
        ({"kind": "tool_router"}, ValueError, "a tool_router card needs a tool_router model or config"),
        ({"kind": "bert"}, ValueError, "cannot tell the model card kind"),
    ],
)
def test_bad_card_input_raises(kwargs, error, match):
    with pytest.raises(error, match=match):
        render_model_card(tiny_config(), **kwargs)


def test_unknown_object_and_missing_template(tmp_path):
    with pytest.raises(ValueError, match="cannot tell the model card kind of dict"):
        render_model_card({})
    with pytest.raises(FileNotFoundError, match="causal_qwen.j2"):
        render_model_card(tiny_config(), template_dir=tmp_path)


def test_misspelt_template_variable_is_an_error(tmp_path):
    (tmp_path / "causal_qwen.j2").write_text("---\n{{ card_data }}\n---\n{{ repo_idd }}\n")
    with pytest.raises(jinja2.exceptions.UndefinedError, match="repo_idd"):
        render_model_card(tiny_config(), template_dir=tmp_path)


def test_save_pretrained_writes_card_but_keeps_an_existing_one(tmp_path):
    model = causalqwen.CausalQwenForNumericCausalLM(tiny_config())
    model.save_pretrained(tmp_path / "a")
    card = ModelCard.load(tmp_path / "a" / "README.md")
    assert card.data.library_name == "transformers"
    assert "## How to load" in card.text
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "README.md").write_text("my own card\n")
    model.save_pretrained(tmp_path / "b")
    assert (tmp_path / "b" / "README.md").read_text() == "my own card\n"


def test_push_to_hub_rejects_bad_metrics_before_uploading():
    model = causalqwen.CausalQwenForNumericCausalLM(tiny_config())
    with pytest.raises(TypeError, match="metric 'loss' must be a number"):
        model.push_to_hub("never/uploaded", metrics={"loss": "x"})
