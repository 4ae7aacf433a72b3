"""Shared fixtures: the tiny tokenizer (fast unit tests build tiny models with vocab_size=len(tokenizer)) and the
router's MiniLM word-piece tokenizer (loaded once per session)."""

import pytest


@pytest.fixture
def tiny_tokenizer():
    from causalqwen.tokenization.testing import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def router_tokenizer():
    from causalqwen.training.router_trainer import load_router_tokenizer

    return load_router_tokenizer()
