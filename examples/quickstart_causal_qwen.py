"""Quickstart: build a small CausalQwen, read a sentence with numbers, generate text with a number in it.

Runs offline on a CPU in seconds. With a real checkpoint, replace the config by
``CausalQwenForNumericCausalLM.from_qwen2("path/to/Qwen2.5-0.5B")`` and the tokenizer by
``CausalQwenTokenizer.from_qwen_vocab()`` (or ``AutoTokenizer.from_pretrained`` of a saved CausalQwen).
"""

import torch

from causalqwen import CausalQwenConfig, CausalQwenForNumericCausalLM, CausalQwenTokenizer
from causalqwen.modeling.cauchy import cauchy_interval, ovr_probability

tokenizer = CausalQwenTokenizer.from_qwen_vocab()  # the real Qwen2.5 vocabulary, offline, with <NUM> = 151665
enc = tokenizer("The loan is 50000 yuan at 3.5% for 25 years", return_tensors="pt")
print(enc["input_ids"][0].tolist())
print(enc["numeric_values"][0].tolist())

torch.manual_seed(0)
config = CausalQwenConfig(
    vocab_size=len(tokenizer),
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_token_id=tokenizer.convert_tokens_to_ids("<NUM>"),
    pad_token_id=tokenizer.pad_token_id,
)
model = CausalQwenForNumericCausalLM(config).eval()

out = model(**enc)  # input_ids, attention_mask, numeric_values
print(out.logits.shape, out.loc_S.shape, out.value_loc.shape)  # [1, S, V], [1, S, V], [1, S]
# One-vs-Rest probability that the next token is <NUM>, and the Cauchy prediction of its value.
p_num = ovr_probability(out.loc_S[0, -1], out.scale_S[0, -1], model.action.ovr_thresholds)[
    config.num_token_id
]
low, high = cauchy_interval(out.value_loc[0, -1], out.value_scale[0, -1], 0.9)
print(
    f"P(<NUM>) = {p_num:.3f}; value median {out.value_loc[0, -1]:.3f}, 90% interval [{low:.3f}, {high:.3f}]"
)

gen = model.generate(**enc, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
print(gen.sequences.shape, gen.numeric_values.shape)
print(tokenizer.decode(gen.sequences[0], numeric_values=gen.numeric_values[0]))
