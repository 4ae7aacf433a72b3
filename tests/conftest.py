"""Shared fixtures: the tiny tokenizer (fast unit tests build tiny models with vocab_size=len(tokenizer))."""

import pytest


@pytest.fixture
def tiny_tokenizer():
    from causalqwen.tokenization.testing import build_tiny_tokenizer

    return build_tiny_tokenizer()
