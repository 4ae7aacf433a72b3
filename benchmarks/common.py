"""Helpers shared by the benchmark scripts: timing, peak memory, markdown tables, JSON results, CLI flags.

Every script under ``benchmarks/`` prints markdown tables and writes one JSON file
``bench_results/<name>.json`` (git-ignored) through :func:`write_results`, so ``run_all.py`` and CI can
collect them the same way. Scripts accept ``--smoke`` (seconds, for CI) and ``--quick`` (what
``make bench`` runs) through :func:`base_parser`.

Peak memory on CPU is the peak resident set size (RSS) sampled by a background thread, not
``tracemalloc``: tracemalloc only sees allocations made through Python's allocator, and PyTorch's CPU
tensors bypass it, so it would report almost nothing for a training step.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "RESULTS_DIR",
    "MemoryMeter",
    "Timing",
    "apply_threads",
    "base_parser",
    "environment_info",
    "fmt",
    "markdown_table",
    "mean_std",
    "release_memory",
    "resolve_device",
    "synchronize",
    "time_call",
    "time_interleaved",
    "wall_clock",
    "write_results",
]

RESULTS_DIR = Path(__file__).resolve().parent.parent / "bench_results"


def base_parser(description: str) -> argparse.ArgumentParser:
    """Argument parser with the flags every benchmark script shares."""
    parser = argparse.ArgumentParser(description=description)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="a few seconds: proves the script runs (CI)")
    size.add_argument("--quick", action="store_true", help="the reduced budget that `make bench` uses")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output path (default: bench_results/)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    return parser


def apply_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads (a fixed count makes timings on a shared machine less jumpy)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    """``torch.device`` for ``name``; refuses a CUDA request on a machine without CUDA."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but torch.cuda.is_available() is False")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"benchmarks support cpu and cuda devices, got {name!r}")
    return device


def synchronize(device: torch.device) -> None:
    # CUDA kernels run asynchronously: without a sync a timer measures the launch, not the work.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Wall-clock seconds of repeated calls; ``median`` is the figure the benchmarks compare."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": min(self.seconds), "runs_s": self.seconds}


def time_call(
    fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1, device: torch.device | None = None
) -> Timing:
    """Time ``fn`` ``repeats`` times after ``warmup`` untimed calls (lazy inits and caches settle first)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    device = device or torch.device("cpu")
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return Timing(seconds)


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    repeats: int = 5,
    warmup: int = 1,
    device: torch.device | None = None,
) -> dict[str, Timing]:
    """Like :func:`time_call` for several functions, alternating them run by run.

    On a shared machine the load drifts over seconds; alternating A, B, A, B... exposes every function to
    the same drift, so their *ratio* stays meaningful even when absolute times are noisy. Each round starts one
    function later (A B C, B C A, C A B, ...): a step can pay for what the one before it left behind (freed
    pages the kernel reclaims, a cold cache), and a fixed order would charge that to the same function every
    round (seen at 0.5B: whichever train step came first in a round had the slower optimizer step, by ~0.4 s).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = device or torch.device("cpu")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_index in range(repeats):
        start_at = round_index % len(names)
        for name in names[start_at:] + names[:start_at]:
            fn = fns[name]
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: Timing(values) for name, values in seconds.items()}


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS so the next RSS baseline is honest."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        # Not glibc (e.g. musl): no malloc_trim, and RSS baselines are then only approximate.
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_bytes() -> int:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
    )]  # fmt: skip


def _load_mallinfo2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL("libc.so.6").mallinfo2  # glibc >= 2.33
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    return function


_MALLINFO2 = _load_mallinfo2()


def malloc_live_bytes() -> int | None:
    """Bytes malloc has handed out and not had back, over every arena (glibc's ``mallinfo2``: in-use chunks plus
    mmapped blocks), or ``None`` without glibc >= 2.33. torch's CPU tensors are allocated there."""
    if _MALLINFO2 is None:
        return None
    info = _MALLINFO2()
    return info.uordblks + info.hblkhd


class _AfterEveryOp(TorchDispatchMode):
    """Calls ``record`` after every tensor operation run on this thread (autograd's CPU backward included)."""

    def __init__(self, record: Callable[[], None]):
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.record()
        return out


class MemoryMeter:
    """Peak memory growth of a block of code, in bytes above the level at entry.

    CUDA: ``torch.cuda.max_memory_allocated`` (exact, allocator-level). CPU: the peak of the bytes malloc has
    allocated (:func:`malloc_live_bytes`, glibc), the CPU counterpart of the CUDA figure, read after every
    tensor operation of the measuring thread and every ``interval`` seconds by a daemon thread (allocations
    outside tensor operations), with the peak RSS sampled beside it (``peak_rss_bytes``); without glibc the
    sampled RSS is the figure (``kind``). Allocated bytes, not RSS, because the RSS also holds heap pages malloc
    has freed but not returned and moves with them: at the 0.5B shape (1 x 64 tokens) the RSS peak of the same
    step varied by 500 MiB between two repetitions, the allocated peak by 0 (2026-12-05). After every operation,
    not only sampled, because a step's peak is an instant (one operation's temporaries): at the tiny 4 x 128
    shape a 2 ms sampler read 11.3 / 12.4 MiB where the peaks were 12.3 / 13.5 MiB. The per-operation reads
    cost a few microseconds each (a 0.5B step at 4 x 1,024 tokens, timed inside the meter, runs ~1 % slower;
    other steps are timed outside it). ``per_operation=False`` keeps only the sampler: code that runs
    ``torch.compile``-d functions needs it (dynamo does not run compiled frames under a dispatch mode). Use as
    ``with MemoryMeter(device) as meter: ...`` and read ``meter.peak_bytes``.
    """

    def __init__(self, device: torch.device, interval: float = 0.002, per_operation: bool = True):
        self.device = device
        self.per_operation = per_operation
        self.interval = interval
        self.peak_bytes = 0
        self.peak_rss_bytes = 0
        self.kind = "allocated" if device.type == "cuda" or _MALLINFO2 is not None else "rss"
        self._baseline: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._per_op: _AfterEveryOp | None = None
        self._lock = threading.Lock()

    def _levels(self) -> dict[str, int]:
        levels = {"rss": _rss_bytes()}
        allocated = malloc_live_bytes()
        if allocated is not None:
            levels["allocated"] = allocated
        return levels

    def _raise_peaks(self, levels: dict[str, int]) -> None:
        with self._lock:  # the sampler thread and the per-operation hook update the same peaks
            for name, level in levels.items():
                self._peak[name] = max(self._peak.get(name, 0), level)

    def _record(self) -> None:
        self._raise_peaks(self._levels())

    def _record_allocated(self) -> None:
        # After every tensor operation: malloc's count only (reading the RSS costs a system call).
        self._raise_peaks({"allocated": malloc_live_bytes()})

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._record()
            time.sleep(self.interval)

    def __enter__(self) -> MemoryMeter:
        release_memory()
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = {"allocated": torch.cuda.memory_allocated(self.device)}
        else:
            self._baseline = self._levels()
            self._peak = dict(self._baseline)
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
            if self.kind == "allocated" and self.per_operation:
                self._per_op = _AfterEveryOp(self._record_allocated)
                self._per_op.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self._peak = {"allocated": torch.cuda.max_memory_allocated(self.device)}
        else:
            if self._per_op is not None:
                self._per_op.__exit__(None, None, None)
                self._per_op = None
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self._record()
        growth = {name: max(self._peak[name] - self._baseline[name], 0) for name in self._peak}
        self.peak_bytes = growth[self.kind]
        self.peak_rss_bytes = growth.get("rss", 0)


@contextmanager
def wall_clock(label: str) -> Iterator[dict[str, float]]:
    """Print and record the wall time of a block (``make bench`` reports its total this way)."""
    record: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield record
    finally:
        record["seconds"] = time.perf_counter() - start
        print(f"[{label}] wall time {record['seconds']:.1f} s", flush=True)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaNs propagate (a failed metric shows)."""
    if not values:
        raise ValueError("mean_std needs at least one value")
    mean = sum(values) / len(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def fmt(value: Any, digits: int = 3) -> str:
    """Compact cell text: floats to ``digits`` significant digits, ``None`` as an em dash (not applicable)."""
    if value is None:
        return "—"
    if isinstance(value, tuple) and len(value) == 2:
        return f"{fmt(value[0], digits)} ± {fmt(value[1], 2)}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) >= 10**digits or abs(value) < 10 ** -(digits - 1)):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub markdown table; every row must have one cell per header."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {list(row)!r} has {len(row)} cells, expected {len(headers)}")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(cell, digits) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def environment_info(device: torch.device) -> dict[str, Any]:
    """What a reader needs to compare two result files: library versions, threads, hardware."""
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _jsonable(value: Any) -> Any:
    # Tensors, numpy scalars, tuples and NaN have no faithful JSON form by default; NaN becomes null.
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_results(name: str, results: dict[str, Any], out: Path | None = None) -> Path:
    """Write ``results`` as ``bench_results/<name>.json`` (or ``out``) and return the path."""
    if not name or "/" in name:
        raise ValueError(f"result name must be a plain file stem, got {name!r}")
    path = Path(out) if out is not None else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(results), indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}", flush=True)
    return path
