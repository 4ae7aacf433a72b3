"""PEFT LoRA for CausalQwen: what is adapted, what is trained in full, and why (issue #5).

:func:`lora_config_for` builds a ``peft.LoraConfig`` that

* puts LoRA adapters on the Qwen2 projections of every decoder layer (:data:`LORA_TARGET_MODULES`: attention
  q/k/v/o and MLP gate/up/down), as LoRA fine-tunes of Qwen2 usually do;
* trains the modules CausalQwen adds to Qwen2 in full (``modules_to_save``): the abduction network
  (``abduction``), the action noise (``action``: ``b_noise``; its ``ovr_thresholds`` buffer is saved with it but
  is not trained), the value head (``value_head``) and the numeric fusion of the input embedding
  (``model.value_encoding``, when the chosen encoding has parameters; ``xval`` has none). They start from an
  identity-like init rather than from pretraining, are small (~2 C H + 4 H^2 parameters: 4.8M for Qwen2.5-0.5B), and low-rank updates of
  them would make little sense;
* makes the ``<NUM>`` rows trainable (``trainable_token_indices``): ``<NUM>`` is a new token (a reserved Qwen2.5
  row, or the mean embedding) that never saw training, both as an input and as a prediction target.

``trainable_token_indices`` and this model. PEFT replaces the target layer by a ``TrainableTokensWrapper`` whose
forward and whose ``weight`` property both apply the trained delta rows. That matters twice here:
``embed_numbers`` calls ``model.embed_tokens(input_ids)`` and fuses the values on top (so the trained ``<NUM>``
input row flows into the fusion), while the token head reads ``lm_head.weight`` directly (``linear_cauchy``
needs the weight itself to propagate Cauchy scales), which still sees the delta through that property. That
property builds a new tensor (``index_copy`` of the trained rows) at every read, so the forward reads it once and
the loss differentiates against that tensor (``_gated_loss``'s ``weight``): until 2026-12-05 the chunks read it
again, and only the scale path's share of the gradient (through the shared ``|W|``) reached the ``<NUM>`` row;
``test_num_head_row_gets_the_whole_gradient_under_peft`` compares the row's gradient with the plain model's. Checked
before choosing: after a few LoRA steps the ``<NUM>`` head row moves (by 0.048 untied, 0.039 tied, tiny model)
and ``merge_and_unload`` reproduces the adapted ``loc_S``/``value_loc`` to 2e-7 / 4e-7, tied or not. So no
fallback (such as ``modules_to_save`` on the whole embedding) is needed. Untied models get the ``<NUM>`` row of
both ``embed_tokens`` and ``lm_head`` (2 H parameters); tied models (Qwen2.5-0.5B/1.5B,
``tie_word_embeddings=True``) get one shared row (H parameters; PEFT ties the head's delta to the embedding's).
"""

from __future__ import annotations

from typing import Any

from ..modeling.modeling_causal_qwen import CausalQwenForNumericCausalLM

__all__ = ["LORA_TARGET_MODULES", "apply_lora", "full_training_modules", "lora_config_for"]

LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _check_model(model) -> CausalQwenForNumericCausalLM:
    if not isinstance(model, CausalQwenForNumericCausalLM):
        raise TypeError(f"LoRA helpers need a CausalQwenForNumericCausalLM, got {type(model).__name__}")
    return model


def _peft():
    try:
        import peft
    except ImportError as err:
        raise ImportError("LoRA needs the peft package: pip install 'causalqwen[peft]'") from err
    return peft


def full_training_modules(model: CausalQwenForNumericCausalLM) -> list[str]:
    """Names (as PEFT's ``modules_to_save`` matches them) of the CausalQwen modules trained in full."""
    names = ["abduction", "action", "value_head"]
    if any(True for _ in _check_model(model).model.value_encoding.parameters()):
        names.append("value_encoding")
    return names


def lora_config_for(
    model: CausalQwenForNumericCausalLM,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    *,
    num_token_trainable: bool = True,
    **overrides: Any,
):
    """A ``peft.LoraConfig`` for ``model`` (see the module docstring for what is adapted and why).

    ``num_token_trainable=False`` leaves the ``<NUM>`` rows frozen. ``overrides`` go to ``LoraConfig`` as they are.
    """
    peft = _peft()
    model = _check_model(model)
    if not (isinstance(r, int) and r > 0):
        raise ValueError(f"LoRA rank r must be a positive integer, got {r!r}")
    if not alpha > 0:
        raise ValueError(f"LoRA alpha must be positive, got {alpha!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must lie in [0, 1), got {dropout!r}")
    settings: dict[str, Any] = dict(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(LORA_TARGET_MODULES),
        modules_to_save=full_training_modules(model),
        task_type="CAUSAL_LM",
    )
    if num_token_trainable:
        rows = [int(model.config.num_token_id)]
        # Tied: PEFT finds the input embedding and ties lm_head's delta to it. Untied: name both layers.
        tied = bool(model.config.tie_word_embeddings)
        settings["trainable_token_indices"] = rows if tied else {"embed_tokens": rows, "lm_head": rows}
    settings.update(overrides)
    return peft.LoraConfig(**settings)


def apply_lora(
    model: CausalQwenForNumericCausalLM, r: int = 8, alpha: int = 16, dropout: float = 0.0, **kwargs
):
    """Wrap ``model`` in a ``peft.PeftModel`` configured by :func:`lora_config_for` (same arguments)."""
    return _peft().get_peft_model(model, lora_config_for(model, r, alpha, dropout, **kwargs))
