"""Run every benchmark script (what ``make bench`` runs) and print the total wall time.

Each script runs in its own process (as ``python benchmarks/<name>.py <mode flag>``), so one script's
failure or memory use cannot distort the next one's figures, and the scripts stay runnable on their own.
Scripts: ``numeric.py`` and ``perf.py`` always; any other ``benchmarks/*.py`` that defines a ``main`` and
accepts the shared mode flags (for example ``routing.py``) when present. Default mode is ``--quick`` (the
30-minute budget on 2 CPU cores); ``--smoke`` runs everything in seconds; ``--full`` runs each script's
full budget. Extra arguments after ``--`` go to every script (e.g. ``-- --device cuda``).

Exit status: non-zero when any script failed (the others still run).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORE = ("numeric", "perf")
# Modules here that are libraries or drivers, not benchmarks.
NOT_BENCHMARKS = {"common", "run_all"}
# The budget of `make bench` on 2 CPU cores; exceeding it is reported, not fatal.
BUDGET_S = 30 * 60


def discover(directory: Path = HERE, mode: str | None = "smoke") -> list[str]:
    """Benchmark script names in run order: the core ones first, then the others alphabetically.

    A script qualifies when it is a top-level ``*.py`` with a ``main`` that accepts the ``--<mode>`` flag
    (scripts built on :func:`common.base_parser` accept ``--smoke`` and ``--quick``; ``mode=None`` is
    the full run and needs no flag); anything else (helpers, scripts without that mode) is skipped.
    """
    found = []
    for path in sorted(directory.glob("*.py")):
        name = path.stem
        if name in NOT_BENCHMARKS or name.startswith("_"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if "def main(" in text and (mode is None or "base_parser(" in text or f"--{mode}" in text):
            found.append(name)
    return [n for n in CORE if n in found] + [n for n in found if n not in CORE]


def run_script(name: str, mode: str | None, extra: list[str], directory: Path = HERE) -> dict:
    """Run one script to completion, streaming its output; return its exit code and wall time."""
    cmd = [sys.executable, str(directory / f"{name}.py")] + ([f"--{mode}"] if mode else []) + extra
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "USE_HUB_KERNELS": "0", "TOKENIZERS_PARALLELISM": "false"}
    print(f"\n===== {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    code = subprocess.call(cmd, env=env)
    seconds = time.perf_counter() - start
    print(f"===== {name}: exit {code}, {seconds:.1f} s", flush=True)
    return {"name": name, "exit_code": code, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="seconds per script (CI)")
    mode.add_argument("--full", action="store_true", help="each script's full budget (hours on CPU)")
    parser.add_argument("--only", default=None, help="comma list of scripts to run (default: all found)")
    parser.add_argument("extra", nargs="*", help="arguments passed to every script (after --)")
    args = parser.parse_args(argv)
    selected = "smoke" if args.smoke else None if args.full else "quick"

    names = discover(mode=selected)
    if args.only:
        wanted = args.only.split(",")
        missing = [n for n in wanted if n not in names]
        if missing:
            raise ValueError(f"unknown benchmark(s) {missing}; found {', '.join(names)}")
        names = [n for n in names if n in wanted]
    start = time.perf_counter()
    runs = [run_script(name, selected, args.extra) for name in names]
    total = time.perf_counter() - start

    print("\n| script | exit | wall s |\n|---|---|---|")
    for run in runs:
        print(f"| {run['name']} | {run['exit_code']} | {run['seconds']:.1f} |")
    print(f"\ntotal wall time {total:.1f} s ({total / 60:.1f} min)")
    if selected == "quick" and total > BUDGET_S:
        print(f"WARNING: over the {BUDGET_S / 60:.0f}-minute budget of `make bench`", flush=True)
    return 1 if any(run["exit_code"] for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
