"""How the console scripts fail: one line naming the problem, exit code 2, no traceback (``--debug`` shows it).

A bad flag, a missing file or column, or a target that is not a number is the user's to fix, not a bug of the
package: argparse's own convention (``prog: error: message``, exit status 2) fits it. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

__all__ = ["UsageError", "add_debug_flag", "exit_on_usage_error", "require_positive"]

T = TypeVar("T")


class UsageError(Exception):
    """A problem with the command line or its inputs; the message is shown as is."""


def require_positive(args, *names: str) -> None:
    """A :class:`UsageError` naming the first flag among ``names`` (argparse dests) whose value is below 1."""
    for name in names:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


def add_debug_flag(parser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")


def exit_on_usage_error(prog: str, argv: list[str], body: Callable[[], T]) -> T:
    """Run ``body``; a :class:`UsageError` becomes ``prog: error: message`` on stderr and exit status 2."""
    try:
        return body()
    except UsageError as err:
        if "--debug" in argv:
            raise
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
