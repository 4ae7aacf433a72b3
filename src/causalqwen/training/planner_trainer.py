"""Training the ToolPlanner through the ``Trainer`` (issue #17): collator, LoRA on the backbone, a train loop.

Rows are the synthetic planning set's (``training/planner_data.py``) or any rows with the same fields: ``query``,
``tool_names``, ``tool_texts``, ``resource_vectors`` (6 raw fields per tool), ``plan`` (tool indices, ``[]`` =
abstain), optionally ``latency`` (observed per tool, negative = unobserved) and ``runtime_load`` (the runtime
context when the planner has ``runtime_context_dim = 1``). The model computes its own loss (pointer CE per step +
latency NLL), so the stock ``Trainer`` trains it; ``remove_unused_columns=False`` keeps the rows whole for the
collator.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..configuration.configuration_causal_qwen import FROM_SCRATCH_TOKEN_PRIOR
from ..modeling.modeling_tool_planner import ToolPlannerModel
from .lora import LORA_TARGET_MODULES, _peft
from .presets import TINY_BACKBONE

__all__ = ["ARGUMENT_BACKBONE_SETTINGS", "ARGUMENT_PLANNER_SETTINGS", "CAUSAL_QWEN_PLANNER_SETTINGS", "CPU_BACKBONE", "PLANNER_BACKBONE_SETTINGS", "PlannerDataCollator", "apply_planner_lora", "build_planner", "load_planner",
           "planner_lora_config", "planner_training_args", "rows_tools", "train_planner"]  # fmt: skip

# The CPU-sized backbone of the benchmark, the CLI and the quickstart (over the real Qwen2.5 vocabulary: only the
# rows a request uses are read, so the 151,936-row embedding costs memory, not compute per token).
CPU_BACKBONE = dict(TINY_BACKBONE, max_position_embeddings=512)
BACKBONE_KINDS = ("causal_qwen", "qwen2")
# What every fresh CausalQwen backbone of a planner gets (under any backbone_settings given): a plan turns on
# comparing a budget with each tool's need, often a few percent apart, and at the seed's highest frequency 1 no
# feature of two values 5 % apart differs by more than 0.05. At 100, synthetic exact match rose from 0.958 to
# 0.976 (seeds 0-2, --threads 1; docs/tool_planner.md); for regression tables the finer features overfit, so
# CausalQwenConfig keeps 1 (diabetes MAE 48.3 -> 53.2; docs/causal_qwen.md, "Numeric input").
PLANNER_BACKBONE_SETTINGS = {"value_encoding_max_frequency": 100.0}
# What every planner on a CausalQwen backbone (fresh or a checkpoint) gets under the config keys given: the
# request's <NUM> values compared with each tool's resource fields (BudgetComparator). With it the remaining wrong
# plans are budgets within about 1 % of a need: synthetic exact match 0.972 -> 0.99 (seeds 0-2, --threads 2;
# docs/tool_planner.md, "Budget comparison"). A Qwen2 backbone has no parsed numbers to compare.
CAUSAL_QWEN_PLANNER_SETTINGS = {"budget_frequencies": 8}
# What a fresh CausalQwen backbone gets when the planner writes arguments (generate_arguments), under any
# backbone_settings given: without it it writes no correct call and its plans collapse (docs/tool_planner.md,
# "Arguments"). The token prior and hard negatives make its One-vs-Rest head learn text from scratch
# (docs/causal_qwen.md); symlog keeps 2 and 300 in one range for the Cauchy value loss; reg_lambda 1 keeps the
# argument values' NLL, which falls without bound as their scale shrinks, from taking the shared backbone.
ARGUMENT_BACKBONE_SETTINGS = {
    **FROM_SCRATCH_TOKEN_PRIOR,
    "cls_reduction": "hard_negatives",
    "value_normalization": "symlog",
    "reg_lambda": 1.0,
}
# ... and the planner's own part of the recipe (config keys given to build_planner win): at argument_weight 1 the
# argument text, the longest part of the target, still pulls the shared backbone away from the plan (exact match
# 0.734 over seeds 0-2 against 0.848 at 0.5, argument match 0.245 against 0.256; docs/tool_planner.md).
ARGUMENT_PLANNER_SETTINGS = {"argument_weight": 0.5}


def rows_tools(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The offered tools of a data row in the processor's form."""
    return [
        {"name": name, "text": text, "resources": resources}
        for name, text, resources in zip(row["tool_names"], row["tool_texts"], row["resource_vectors"])
    ]


class PlannerDataCollator:
    """Rows -> a padded planner batch with ``plan_labels`` (``latency_labels`` when rows have ``latency``;
    ``argument_labels`` when they have ``arguments``, one text per planned tool, and the planner writes them)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        context = None
        if self.processor.runtime_context_dim:
            context = [
                [float(row.get("runtime_load", 0.0))] * self.processor.runtime_context_dim for row in rows
            ]
        latencies = [row["latency"] for row in rows] if all("latency" in row for row in rows) else None
        arguments = None
        if self.processor.call_token_id is not None and all("arguments" in row for row in rows):
            arguments = [row["arguments"] for row in rows]
        batch = self.processor(
            [row["query"] for row in rows],
            [rows_tools(row) for row in rows],
            runtime_context=context,
            plans=[row["plan"] for row in rows],
            latencies=latencies,
            arguments=arguments,
        )
        batch.pop("tool_names")
        batch.pop("raw_resource_vectors")
        return batch


def _full_training_modules(model: ToolPlannerModel) -> list[str]:
    names = ["tool_projector", "step_embedding", "pointer", "latency_head"]
    for optional in ("context_projector", "query_projector", "resource_encoder", "budget_comparator"):
        if getattr(model, optional) is not None:
            names.append(optional)
    if not model.config.freeze_tool_tower:
        names.append("tool_tower")
    encoding = getattr(model.backbone, "value_encoding", None)
    if encoding is not None and any(True for _ in encoding.parameters()):
        names.append("value_encoding")
    if model.config.generate_arguments and model.config.backbone_type == "causal_qwen":
        # CausalQwen's own head modules, as its LoRA recipe trains them (training/lora.py).
        names += ["abduction", "action", "value_head"]
    return names


def planner_lora_config(
    model: ToolPlannerModel, r: int = 8, alpha: int = 16, dropout: float = 0.0, **overrides
):
    """LoRA on the backbone's attention and MLP projections only (not the tool tower's encoder); the planner's
    own modules (projectors, step embedding, pointer, latency head, the ``<NUM>`` value encoding, and the tool
    tower unless it is frozen) are trained in full: they start from scratch, a low-rank update of them means
    nothing. With ``generate_arguments`` the LM head stays frozen as in any LoRA fine-tune, except the rows of
    ``<END_CALL>`` (and ``<NUM>``), new prediction targets (``trainable_token_indices``, as ``lora_config_for``);
    CausalQwen's abduction, action and value heads are trained in full."""
    if not isinstance(model, ToolPlannerModel):
        raise TypeError(f"planner LoRA needs a ToolPlannerModel, got {type(model).__name__}")
    if not (isinstance(r, int) and r > 0):
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
    targets = "|".join(LORA_TARGET_MODULES)
    settings: dict[str, Any] = dict(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=rf"language_model\.(model\.)?layers\.\d+\.(self_attn|mlp)\.({targets})",
        modules_to_save=_full_training_modules(model),
    )
    if model.config.generate_arguments:
        rows = [int(model.config.call_end_token_id)]
        num_id = getattr(model.config.text_config, "num_token_id", None)
        rows += [int(num_id)] if num_id is not None else []
        tied = bool(model.config.text_config.tie_word_embeddings)
        settings["trainable_token_indices"] = rows if tied else {"embed_tokens": rows, "lm_head": rows}
    settings.update(overrides)
    return _peft().LoraConfig(**settings)


def apply_planner_lora(
    model: ToolPlannerModel, r: int = 8, alpha: int = 16, dropout: float = 0.0, **overrides
):
    """``peft.get_peft_model(model, planner_lora_config(...))``."""
    return _peft().get_peft_model(model, planner_lora_config(model, r, alpha, dropout, **overrides))


def planner_training_args(output_dir, *, batch_size: int = 16, learning_rate: float = 1e-3, epochs: float = 1.0,
                          max_steps: int = -1, seed: int = 0, **overrides: Any):  # fmt: skip
    """``TrainingArguments`` for the planner: rows reach the collator whole, CPU-friendly defaults."""
    import torch
    from transformers import TrainingArguments

    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        num_train_epochs=epochs,
        max_steps=max_steps,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,  # a float below 1 is a share of the steps
        weight_decay=0.0,
        max_grad_norm=1.0,
        seed=seed,
        data_seed=seed,
        remove_unused_columns=False,
        label_names=["plan_labels"],
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=25,
        dataloader_num_workers=0,
        # Pinning helps only a host-to-accelerator copy; on a CPU-only machine torch warns that it cannot.
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


def train_planner(model, processor, train_rows, output_dir, **training_kwargs: Any):
    """Train ``model`` (a planner or its PEFT wrapper) on ``train_rows`` with the stock ``Trainer``; returns it."""
    from transformers import Trainer

    trainer = Trainer(
        model=model,
        args=planner_training_args(output_dir, **training_kwargs),
        train_dataset=train_rows,
        data_collator=PlannerDataCollator(processor),
    )
    trainer.train()
    return trainer


def _request_reader(model: ToolPlannerModel, tokenizer):
    """The tokenizer the processor reads requests with: numbers as ``<NUM>`` for a CausalQwen backbone, digit text
    (the same vocabulary without number parsing) for a plain Qwen2 one."""
    from .baselines import BackendDigitsView

    if model.config.backbone_type == "causal_qwen":
        return tokenizer
    return BackendDigitsView(tokenizer) if hasattr(tokenizer, "num_token_id") else tokenizer


def _processor_for(model: ToolPlannerModel, tokenizer, freeze_text_encoder: bool):
    from ..tokenization.processing_tool_planner import ToolPlannerProcessor, ToolTextCache
    from .minilm import load_router_tokenizer

    tool_tokenizer = load_router_tokenizer()
    caches = {}
    if freeze_text_encoder:
        caches["tool_text_cache"] = ToolTextCache(model.tool_tower, tool_tokenizer)
        if model.config.use_query_state:
            caches["query_text_cache"] = ToolTextCache(model.tool_tower, tool_tokenizer, encoder="query")
    return ToolPlannerProcessor(_request_reader(model, tokenizer), tool_tokenizer, model.config, **caches)


def _freeze_text_encoders(model: ToolPlannerModel) -> None:
    model.tool_tower.tool_encoder.requires_grad_(False)
    model.tool_tower.query_encoder.requires_grad_(False)


def build_planner(backbone: str = "causal_qwen", *, router=None, tokenizer=None, seed: int = 0,
                  max_plan_steps: int = 3, runtime_context_dim: int = 1, freeze_text_encoder: bool = True,
                  backbone_settings: dict[str, Any] | None = None, **config_overrides: Any):  # fmt: skip
    """A planner and its processor, ready to train: ``(model, processor)``.

    ``backbone``: ``"causal_qwen"`` / ``"qwen2"`` (fresh, :data:`CPU_BACKBONE` over the real Qwen2.5 vocabulary),
    or a local Qwen2 / CausalQwen checkpoint directory (its weights; a causal LM gives its base model).
    ``router``: a trained ToolRouter (directory or model), default the v2 shape around the offline all-MiniLM-L6-v2
    (``d_resource=32``, 4 heads). ``freeze_text_encoder`` keeps the tool tower's text encoders fixed and embeds
    each distinct tool text once (``ToolTextCache``); the resource MLP and tool-set attention still train.
    ``tokenizer`` defaults to the checkpoint's own, else ``CausalQwenTokenizer.from_qwen_vocab()``.
    ``backbone_settings``: config settings of the fresh backbone over :data:`CPU_BACKBONE` (e.g.
    ``{"ovr_threshold_init": 8.0}``); a checkpoint brings its own config, so they are refused with one. A fresh
    CausalQwen backbone starts from :data:`PLANNER_BACKBONE_SETTINGS`, with ``generate_arguments=True`` also from
    :data:`ARGUMENT_BACKBONE_SETTINGS` (``backbone_settings`` override them key by key), and the planner then takes
    :data:`ARGUMENT_PLANNER_SETTINGS` under the config keys given. A planner on a CausalQwen backbone (fresh or a
    checkpoint) takes :data:`CAUSAL_QWEN_PLANNER_SETTINGS` under the config keys given.
    """
    import torch

    from ..modeling.modeling_tool_router import ToolRouterModel
    from ..tokenization.tokenization_causal_qwen import CausalQwenTokenizer
    from .minilm import minilm_path

    # The backbone is checked (and a fresh one configured) before the router's encoder is loaded.
    if backbone in BACKBONE_KINDS:
        tokenizer = tokenizer if tokenizer is not None else CausalQwenTokenizer.from_qwen_vocab()
        backbone_settings = dict(backbone_settings or {})
        if backbone == "causal_qwen":
            arguments = bool(config_overrides.get("generate_arguments"))
            recipe = {**PLANNER_BACKBONE_SETTINGS, **(ARGUMENT_BACKBONE_SETTINGS if arguments else {})}
            backbone_settings = {**recipe, **backbone_settings}
            if arguments:
                config_overrides = {**ARGUMENT_PLANNER_SETTINGS, **config_overrides}
        language_model = _fresh_backbone_config(backbone, tokenizer, backbone_settings)
    else:
        if not Path(backbone).is_dir():
            raise ValueError(f"backbone must be one of {', '.join(BACKBONE_KINDS)} or a checkpoint directory, "
                             f"got {backbone!r}")  # fmt: skip
        if backbone_settings:
            raise ValueError(f"backbone_settings {sorted(backbone_settings)} apply to a fresh backbone only; "
                             f"the checkpoint {backbone} brings its own config")  # fmt: skip
        language_model = backbone
        if tokenizer is None:
            tokenizer = _checkpoint_tokenizer(backbone) or CausalQwenTokenizer.from_qwen_vocab()
    if _backbone_type(language_model) == "causal_qwen":
        config_overrides = {**CAUSAL_QWEN_PLANNER_SETTINGS, **config_overrides}
    torch.manual_seed(seed)
    if router is None:
        router = ToolRouterModel.from_pretrained_encoder(str(minilm_path()), d_resource=32, num_attention_heads=4,
                                                         dropout=0.0)  # fmt: skip
    settings = dict(
        max_plan_steps=max_plan_steps, runtime_context_dim=runtime_context_dim, **config_overrides
    )
    model = ToolPlannerModel.from_components(router, language_model, **settings)
    if freeze_text_encoder:
        _freeze_text_encoders(model)
    return model, _processor_for(model, tokenizer, freeze_text_encoder)


def _backbone_type(language_model) -> str | None:
    """``model_type`` of a fresh backbone config or of a checkpoint directory's ``config.json``."""
    if not isinstance(language_model, (str, Path)):
        return language_model.model_type
    config = Path(language_model) / "config.json"
    return json.loads(config.read_text()).get("model_type") if config.is_file() else None


def _fresh_backbone_config(kind: str, tokenizer, backbone_settings: dict[str, Any]):
    """The config of a fresh :data:`CPU_BACKBONE` over the real Qwen2.5 vocabulary, ``backbone_settings`` on top."""
    from ..configuration.configuration_causal_qwen import CausalQwenConfig

    shape = {
        **CPU_BACKBONE,
        "vocab_size": 151936,
        "pad_token_id": tokenizer.pad_token_id,
        **backbone_settings,
    }
    if kind == "causal_qwen":
        return CausalQwenConfig(**shape, num_token_id=tokenizer.num_token_id)
    from transformers import Qwen2Config

    # Qwen2Config keeps unknown keys silently; CausalQwenConfig refuses them by name.
    unknown = sorted(set(backbone_settings) - set(Qwen2Config().to_dict()))
    if unknown:
        raise ValueError(f"backbone_settings {unknown} are not Qwen2Config settings")
    return Qwen2Config(**shape)


def _checkpoint_tokenizer(directory):
    from transformers import AutoTokenizer

    if not (Path(directory) / "tokenizer_config.json").is_file():
        return None
    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)


def load_planner(directory, *, freeze_text_encoder: bool = True):
    """A planner saved with its backbone tokenizer (``causalqwen-train-planner`` does both): ``(model, processor)``."""
    model = ToolPlannerModel.from_pretrained(str(directory), local_files_only=True).eval()
    tokenizer = _checkpoint_tokenizer(directory)
    if tokenizer is None:
        raise ValueError(
            f"{directory} has no tokenizer_config.json: save the backbone tokenizer beside the planner"
        )
    return model, _processor_for(model, tokenizer, freeze_text_encoder)
