"""The router's lexical channel: Okapi BM25 (bm25s) over tool texts, identifiers split into words.

Used by :class:`causalqwen.tool_index.ToolIndex`, the router's training collators and the BM25 baseline
of ``benchmarks/routing.py``, so that all of them score exactly the same way.
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


def check_texts(texts: Sequence[str], what: str) -> list[str]:
    """``texts`` as a list, or a TypeError / ValueError naming ``what`` (not strings, or empty)."""
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"{what} must be a sequence of strings")
    if not texts:
        raise ValueError(f"{what} is empty")
    return list(texts)


class BM25Index:
    """BM25 statistics of a tool catalogue; :meth:`scores` gives raw scores [Q, T] for queries.

    English stopwords are dropped; a query made only of stopwords matches nothing (all-zero row).
    Building is deterministic, so an index rebuilt from the same texts scores identically.
    """

    def __init__(self, texts: Sequence[str], k1: float = 1.5, b: float = 0.75):
        try:
            import bm25s
        except ImportError as err:
            raise ImportError(
                "the lexical channel needs bm25s: pip install 'causalqwen[router-data]'"
            ) from err
        texts = check_texts(texts, "catalogue")
        corpus = bm25s.tokenize([split_identifiers(t) for t in texts], stopwords="en", show_progress=False)
        self.size = len(texts)
        # A catalogue whose texts are all stopwords has no terms: bm25s cannot index it, and nothing matches.
        self.retriever = bm25s.BM25(k1=k1, b=b) if any(len(ids) for ids in corpus.ids) else None
        if self.retriever is not None:
            self.retriever.index(corpus, show_progress=False)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        import bm25s

        tokens = bm25s.tokenize(
            [split_identifiers(q) for q in check_texts(queries, "queries")],
            stopwords="en",
            return_ids=False,
            show_progress=False,
        )
        rows = [self.retriever.get_scores(t) if t and self.retriever else np.zeros(self.size) for t in tokens]
        return np.stack(rows).astype(np.float32)


__all__ = ["BM25Index", "check_texts", "split_identifiers"]
