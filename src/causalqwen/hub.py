"""Remote-code bundle and model cards (skeleton; implemented by issue #8).

Classes that should be loadable with ``trust_remote_code=True`` list :class:`RemoteCodeMixin` first among
their bases; its ``save_pretrained`` writes the self-contained code bundle next to the weights.
"""

from __future__ import annotations


class RemoteCodeMixin:
    """Placeholder: ``save_pretrained`` behaves exactly as the next class in the MRO until #8 lands."""
