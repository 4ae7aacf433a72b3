"""``pipeline("numeric-text-generation")``: transformers' text-generation pipeline for CausalQwen.

transformers' ``TextGenerationPipeline`` passes ``generate`` only ``input_ids`` and ``attention_mask`` and decodes
the ids alone. For CausalQwen that loses every number: a prompt with a number fails (``generate`` needs the value of
each ``<NUM>``), and a generated ``<NUM>`` would be written as the token's name, not the value the model predicted.
This subclass threads the tokenizer's ``numeric_values`` / ``numeric_formats`` into ``generate``, asks it for the
generated values (``return_dict_in_generate``) and decodes with them, so the text holds real numbers, the prompt's
written as they were. Everything else (batching with left padding, ``max_new_tokens``, ``return_full_text``,
``return_tensors``, decoding strategies) is the parent's; a chat's reply is appended as the assistant's message
(a tokenizer's ``response_template`` is not parsed, as CausalQwen's tokenizer has none).

Importing ``causalqwen`` registers it under the task ``"numeric-text-generation"``::

    pipe = pipeline("numeric-text-generation", model=model, tokenizer=tokenizer)
    pipe("The loan is 50000 yuan at", max_new_tokens=8)

and ``pipeline("text-generation", ..., pipeline_class=NumericTextGenerationPipeline)`` does the same.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForCausalLM
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.text_generation import Chat, ReturnType, TextGenerationPipeline

__all__ = ["NUMERIC_TEXT_GENERATION", "NumericTextGenerationPipeline", "register_pipeline"]

NUMERIC_TEXT_GENERATION = "numeric-text-generation"
_NUMERIC_KEYS = ("numeric_values", "numeric_formats")


class NumericTextGenerationPipeline(TextGenerationPipeline):
    """Text generation whose prompts and outputs carry numbers (CausalQwen and its tokenizer)."""

    def _forward(self, model_inputs: dict[str, Any], **generate_kwargs) -> dict[str, Any]:
        numbers = {key: model_inputs.pop(key) for key in _NUMERIC_KEYS if key in model_inputs}
        if model_inputs["input_ids"].shape[1] == 0:
            numbers = {}  # an empty prompt: generate starts from nothing, the value track too
        # The generated values come back in the output (and are reshaped per prompt by the parent).
        return super()._forward(
            model_inputs, **{**generate_kwargs, **numbers, "return_dict_in_generate": True}
        )

    def postprocess(
        self,
        model_outputs: dict[str, Any],
        return_type: ReturnType = ReturnType.FULL_TEXT,
        clean_up_tokenization_spaces: bool | None = None,
        continue_final_message: bool | None = None,
        skip_special_tokens: bool | None = None,
        tools=None,
    ) -> list[dict[str, Any]]:
        numbers = {key: model_outputs.pop(key, None) for key in _NUMERIC_KEYS}
        if numbers["numeric_values"] is None or return_type == ReturnType.TENSORS:
            records = super().postprocess(model_outputs, return_type, clean_up_tokenization_spaces,
                                          continue_final_message, skip_special_tokens, tools)  # fmt: skip
            if numbers["numeric_values"] is not None:
                for record, values in zip(records, numbers["numeric_values"][0], strict=True):
                    record["generated_numeric_values"] = values.tolist()
            return records
        prompt_text, input_ids = model_outputs["prompt_text"], model_outputs["input_ids"]
        prompt_length = 0 if input_ids is None else input_ids.shape[-1]
        options = dict(
            skip_special_tokens=True if skip_special_tokens is None else skip_special_tokens,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
        )
        records = []
        for index, sequence in enumerate(model_outputs["generated_sequence"][0]):
            rows = {key: None if value is None else value[0][index] for key, value in numbers.items()}
            # Decoded after the prompt's text, so that a generated number gets the space its context asks for
            # ("is 5", not "is5": the tokenizer spaces a number by the text before it).
            whole = self._decode(sequence, rows, 0, None, options)
            head = self._decode(sequence, rows, 0, prompt_length, options)
            if whole.startswith(head):
                text = whole[len(head) :]
            else:
                text = self._decode(sequence, rows, prompt_length, None, options)
            records.append(
                {"generated_text": _with_prompt(prompt_text, text, return_type, continue_final_message)}
            )
        return records

    def _decode(
        self, sequence, rows: dict[str, Any], start: int, end: int | None, options: dict[str, Any]
    ) -> str:
        """Text of ``sequence[start:end]`` with its numbers (``rows``: the values and formats of the sequence)."""
        numbers = {key: None if row is None else row[start:end] for key, row in rows.items()}
        return self.tokenizer.decode(sequence[start:end], **options, **numbers)


def _with_prompt(prompt, text: str, return_type: ReturnType, continue_final_message: bool | None):
    """The generated ``text`` as the parent returns it: alone, after a string prompt, or as a chat's next (or
    continued) assistant message."""
    if return_type != ReturnType.FULL_TEXT:
        return text
    if not isinstance(prompt, Chat):
        return prompt + text
    messages = list(prompt.messages)
    if continue_final_message is None:
        continue_final_message = messages[-1]["role"] == "assistant"
    if continue_final_message:
        return [*messages[:-1], {**messages[-1], "content": messages[-1]["content"] + text}]
    return [*messages, {"role": "assistant", "content": text}]


def register_pipeline() -> None:
    """Register :class:`NumericTextGenerationPipeline` as the ``"numeric-text-generation"`` task (idempotent)."""
    if NUMERIC_TEXT_GENERATION not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(
            NUMERIC_TEXT_GENERATION,
            pipeline_class=NumericTextGenerationPipeline,
            pt_model=AutoModelForCausalLM,
            type="text",
        )
