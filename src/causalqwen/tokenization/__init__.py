"""Numbers in text, the CausalQwen tokenizer and the offline Qwen vocabulary."""

from .numbers import NUM_TOKEN, NumberSpan, extract_numbers, format_number, parse_number, split_numbers
from .tokenization_causal_qwen import QWEN25_NUM_TOKEN_ID, CausalQwenTokenizer, add_num_token

__all__ = [
    "NUM_TOKEN",
    "QWEN25_NUM_TOKEN_ID",
    "CausalQwenTokenizer",
    "NumberSpan",
    "add_num_token",
    "extract_numbers",
    "format_number",
    "parse_number",
    "split_numbers",
]
