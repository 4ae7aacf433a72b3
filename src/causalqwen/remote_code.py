"""The save hook of the package's models and tokenizer, kept out of the package's Hub tooling.

:class:`RemoteCodeMixin` is the first base of every saved class, so its module travels in every remote-code
bundle. It therefore holds only the hook: on ``save_pretrained`` / ``push_to_hub`` it asks
``causalqwen.hub`` (bundle writer, model cards, card upload) to do the work, imported by name at call time so
that the bundle never contains it. Loaded as remote code on a machine without the package, saving falls back
to transformers' own behaviour, which copies the loaded remote-code files and ``auto_map`` with the weights.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["RemoteCodeMixin"]


def _hub() -> ModuleType | None:
    """``causalqwen.hub``, or ``None`` where the package is not installed (remote code)."""
    try:
        return importlib.import_module("causalqwen.hub")
    except ImportError:
        return None


class RemoteCodeMixin:
    """First base of the package's models and tokenizer: saving also writes the remote-code bundle.

    ``save_pretrained`` writes what the next class in the MRO writes, then the flat code bundle and
    ``auto_map``, and (models only) a README.md model card when the folder has none. ``push_to_hub``
    therefore uploads the bundle too, and replaces transformers' generic card by the rendered one
    (``metrics=`` fill its results table, ``model_card=`` replaces it). See ``causalqwen.hub``.
    """

    def save_pretrained(self, save_directory, *args, **kwargs):
        hub = _hub()
        if hub is None:
            return super().save_pretrained(save_directory, *args, **kwargs)
        return hub.save_with_bundle(self, super().save_pretrained, save_directory, *args, **kwargs)

    def push_to_hub(self, repo_id: str, *, metrics=None, model_card=None, **kwargs):
        hub = _hub()
        if hub is None:
            return super().push_to_hub(repo_id, **kwargs)
        return hub.push_with_card(self, super().push_to_hub, repo_id, metrics=metrics, model_card=model_card,
                                  **kwargs)  # fmt: skip

    def _upload_modified_files(self, working_dir, repo_id, *args, **kwargs):
        hub = _hub()
        if hub is not None:
            hub.write_pending_card(self, working_dir, repo_id)
        return super()._upload_modified_files(working_dir, repo_id, *args, **kwargs)
