"""Datasets for the ToolRouter (issue #7): the Berkeley Function Calling Leaderboard and a synthetic
resource-aware routing set.

Both builders return a ``datasets.DatasetDict`` with one row per query and the same columns, so the
collator, the Trainer and the benchmark handle them alike:

============== ====================== ===========================================================
column         type                   meaning
============== ====================== ===========================================================
id             str                    stable example id (BFCL's own id for BFCL)
category       str                    BFCL category (``simple_python``...) or synthetic family
query          str                    the user's request
tool_names     list[str]              candidate tools offered with the query
tool_texts     list[str]              ``name: description | parameters: ...`` (what encoders read)
labels         list[int]              multi-hot over the candidates; all zeros = no tool fits
resource_vectors list[list[float]]    [T, 6] (cpu, memory, gpu, latency, cost, size); zeros for BFCL
latency        list[float]            observed latency per candidate in seconds; -1 = not observed
runtime_load   float                  machine load in [0, 1] when the query was routed (0 for BFCL)
============== ====================== ===========================================================

BFCL: the data ships inside the ``bfcl-eval`` wheel; :func:`fetch_bfcl_wheel` downloads the wheel alone
(``pip download --no-deps``: its pinned dependencies are irrelevant to reading JSON) into the cache, and
:func:`build_bfcl_dataset` reads the JSON lines straight from the zip. Only single-turn categories are
used (multi-turn/memory/web-search rows have no one-query/one-candidate-set shape). Non-live categories
are split into ``train``/``dev`` by a seeded shuffle; ``live_*`` categories form ``test`` only.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RESOURCE_FIELDS = ("cpu", "memory", "gpu", "latency", "cost", "size")
BFCL_VERSION = "2026.3.23"
BFCL_DATA_PREFIX = "bfcl_eval/data/"
# Non-live, single-turn categories: train/dev material.
BFCL_TRAIN_CATEGORIES = (
    "simple_python",
    "simple_java",
    "simple_javascript",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
)
# Live (user-contributed) categories: the held-out test split, never used for tuning.
# live_relevance is left out: its questions have a relevant function but no ground truth naming it.
BFCL_TEST_CATEGORIES = (
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
    "live_irrelevance",
)
MISSING_LATENCY = -1.0


def cache_dir() -> Path:
    """``$CAUSALQWEN_CACHE`` or ``~/.cache/causalqwen`` (created on demand)."""
    root = Path(os.environ.get("CAUSALQWEN_CACHE") or Path.home() / ".cache" / "causalqwen")
    return root.expanduser()


def fetch_bfcl_wheel(version: str = BFCL_VERSION, directory: str | os.PathLike | None = None) -> Path:
    """Path to the ``bfcl-eval`` wheel, downloading it with ``pip download --no-deps`` if not cached."""
    target = Path(directory) if directory is not None else cache_dir() / "bfcl"
    wheel = target / f"bfcl_eval-{version}-py3-none-any.whl"
    if wheel.is_file():
        return wheel
    target.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        f"bfcl-eval=={version}",
        "-d",
        str(target),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not wheel.is_file():
        raise RuntimeError(
            f"could not download bfcl-eval=={version} with {' '.join(command)}:\n{result.stderr}"
        )
    return wheel


# ----------------------------------------------------------------------------- BFCL parsing
def _param_text(name: str, spec: dict[str, Any], required: set[str]) -> str:
    kind = spec.get("type", "any")
    if kind == "array" and isinstance(spec.get("items"), dict):
        kind = f"array of {spec['items'].get('type', 'any')}"
    flag = "" if name in required else ", optional"
    description = str(spec.get("description", "")).strip()
    return f"{name} ({kind}{flag}): {description}".rstrip(": ")


def function_to_text(function: dict[str, Any]) -> str:
    """One line of text for a BFCL function schema: ``name: description | parameters: p (type): desc; ...``.

    Parameter names and descriptions carry most of the matching signal for argument-heavy queries, so they
    are kept; JSON punctuation is dropped because it only costs tokens.
    """
    if not isinstance(function, dict) or not function.get("name"):
        raise ValueError(f"a BFCL function needs a 'name', got {function!r:.200}")
    params = function.get("parameters") or {}
    properties = params.get("properties") or {}
    required = set(params.get("required") or [])
    text = f"{function['name']}: {str(function.get('description', '')).strip()}".rstrip()
    if properties:
        text += " | parameters: " + "; ".join(_param_text(k, v, required) for k, v in properties.items())
    return text


def _query_text(question: Any, row_id: str) -> str:
    # BFCL questions are a list of turns, each a list of chat messages; single-turn rows have one turn.
    # Only user content is the request (system prompts are deployment boilerplate).
    if not isinstance(question, list):
        raise ValueError(f"{row_id}: 'question' must be a list of turns")
    parts = [
        str(m.get("content", "")).strip()
        for turn in question
        for m in (turn if isinstance(turn, list) else [turn])
        if isinstance(m, dict) and m.get("role") == "user"
    ]
    text = "\n".join(p for p in parts if p)
    if not text:
        raise ValueError(f"{row_id}: no user message in 'question'")
    return text


def _read_jsonl(archive: zipfile.ZipFile, member: str) -> list[dict[str, Any]]:
    try:
        raw = archive.read(member).decode("utf-8")
    except KeyError as err:
        raise ValueError(
            f"{archive.filename} has no {member}: not a bfcl-eval wheel of the expected layout"
        ) from err
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def _answer_calls(ground_truth: Any, row_id: str) -> list[str]:
    # ground_truth is a list of {function_name: {arg: [accepted values]}}; parallel calls repeat names.
    if not isinstance(ground_truth, list):
        raise ValueError(f"{row_id}: 'ground_truth' must be a list")
    return [name for call in ground_truth for name in call]


def _answer_names(ground_truth: Any, row_id: str) -> list[str]:
    return list(dict.fromkeys(_answer_calls(ground_truth, row_id)))


def read_bfcl_calls(archive: zipfile.ZipFile, category: str) -> dict[str, list[str]]:
    """``{row id: called function names in answer order, repeats kept}`` of one BFCL category (``{}`` for the
    irrelevance categories, which have no answer file): what a planner must call, where routing only needs the
    set of names."""
    if "irrelevance" in category:
        return {}
    answers = _read_jsonl(archive, f"{BFCL_DATA_PREFIX}possible_answer/BFCL_v4_{category}.json")
    return {answer["id"]: _answer_calls(answer.get("ground_truth"), answer["id"]) for answer in answers}


def read_bfcl_category(archive: zipfile.ZipFile, category: str) -> list[dict[str, Any]]:
    """Examples of one BFCL category (rows with the columns of the module docstring).

    Categories whose name contains ``irrelevance`` have no answer file: every candidate is wrong, so the
    label row is all zeros (the abstain target). Otherwise the correct function names come from
    ``possible_answer/``; an answer naming no offered candidate is an inconsistent file and raises. Rows
    offering no function at all are skipped.
    """
    rows = _read_jsonl(archive, f"{BFCL_DATA_PREFIX}BFCL_v4_{category}.json")
    answers: dict[str, list[str]] = {}
    if "irrelevance" not in category:
        for answer in _read_jsonl(archive, f"{BFCL_DATA_PREFIX}possible_answer/BFCL_v4_{category}.json"):
            answers[answer["id"]] = _answer_names(answer.get("ground_truth"), answer["id"])
    examples = []
    for row in rows:
        row_id = row.get("id")
        if not row_id:
            raise ValueError(f"BFCL row without an id in category {category}")
        functions = row.get("function") or []
        if not functions:
            continue  # a few live_irrelevance rows offer no function: there is no candidate set to route
        names = [str(f.get("name", "")) for f in functions]
        if "irrelevance" in category:
            labels = [0] * len(names)
        else:
            if row_id not in answers:
                raise ValueError(f"{row_id}: missing from possible_answer/BFCL_v4_{category}.json")
            labels = [int(n in answers[row_id]) for n in names]
            if not any(labels):
                raise ValueError(f"{row_id}: answer {answers[row_id]} names none of the candidates {names}")
        examples.append(
            {
                "id": row_id,
                "category": category,
                "query": _query_text(row.get("question"), row_id),
                "tool_names": names,
                "tool_texts": [function_to_text(f) for f in functions],
                "labels": labels,
                "resource_vectors": [[0.0] * len(RESOURCE_FIELDS) for _ in names],
                "latency": [MISSING_LATENCY] * len(names),
                "runtime_load": 0.0,
            }
        )
    return examples


def _seeded_split(examples: list[dict], dev_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    # Sort first so the split depends only on the data and the seed, not on file or category order.
    ordered = sorted(examples, key=lambda e: e["id"])
    random.Random(seed).shuffle(ordered)
    n_dev = round(len(ordered) * dev_fraction)
    return ordered[n_dev:], ordered[:n_dev]


def build_bfcl_dataset(
    wheel: str | os.PathLike | None = None,
    *,
    dev_fraction: float = 0.15,
    seed: int = 0,
    train_categories: Sequence[str] = BFCL_TRAIN_CATEGORIES,
    test_categories: Sequence[str] = BFCL_TEST_CATEGORIES,
):
    """``DatasetDict(train, dev, test)`` from the BFCL data inside the ``bfcl-eval`` wheel.

    ``wheel`` defaults to :func:`fetch_bfcl_wheel` (cached download). ``train``/``dev`` come from
    ``train_categories`` by a seeded shuffle (same seed, same split); ``test`` is ``test_categories``
    (the live ones) in file order.
    """
    from datasets import Dataset, DatasetDict

    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction must lie in (0, 1), got {dev_fraction}")
    leaked = [c for c in train_categories if c.startswith("live")]
    if leaked:
        raise ValueError(f"live categories are test-only and cannot be train categories: {leaked}")
    path = Path(wheel) if wheel is not None else fetch_bfcl_wheel()
    if not path.is_file():
        raise ValueError(f"bfcl-eval wheel not found: {path}")
    with zipfile.ZipFile(path) as archive:
        pool = [e for c in train_categories for e in read_bfcl_category(archive, c)]
        test = [e for c in test_categories for e in read_bfcl_category(archive, c)]
    train, dev = _seeded_split(pool, dev_fraction, seed)
    return DatasetDict(
        {name: Dataset.from_list(rows) for name, rows in (("train", train), ("dev", dev), ("test", test))}
    )


# ----------------------------------------------------------------------------- global catalogue
def build_tool_catalogue(splits: Iterable) -> Any:
    """All distinct tools of the given splits as a ``Dataset(tool_id, name, text)``, for retrieval.

    Tools are identified by their full text (name + description + parameters): BFCL reuses some names with
    different schemas, and those are different tools for a retriever. Order: first appearance.
    """
    from datasets import Dataset

    seen: dict[str, int] = {}
    names: list[str] = []
    for split in splits:
        for tool_names, tool_texts in zip(split["tool_names"], split["tool_texts"]):
            for name, text in zip(tool_names, tool_texts):
                if text not in seen:
                    seen[text] = len(seen)
                    names.append(name)
    texts = list(seen)
    return Dataset.from_dict({"tool_id": list(range(len(texts))), "name": names, "text": texts})


def catalogue_targets(split, catalogue) -> list[list[int]]:
    """Per example, the catalogue ids of its correct tools (empty for no-tool examples)."""
    index = {text: i for i, text in zip(catalogue["tool_id"], catalogue["text"])}
    targets = []
    for texts, labels in zip(split["tool_texts"], split["labels"]):
        try:
            targets.append(sorted({index[t] for t, y in zip(texts, labels) if y}))
        except KeyError as err:
            raise ValueError("the catalogue does not contain every tool of the split") from err
    return targets


# ----------------------------------------------------------------------------- synthetic, resource-aware
# Each family is one capability offered in several sizes. Sizes trade quality for resources:
# (suffix, cpu cores, memory GB, gpu, nominal latency s, cost $/1k calls, size B params, load sensitivity).
_SIZES = (
    ("tiny", 1, 0.5, 0, 0.02, 0.01, 0.05, 0.5),
    ("small", 2, 2.0, 0, 0.08, 0.05, 0.3, 1.0),
    ("medium", 4, 8.0, 1, 0.3, 0.4, 2.0, 2.0),
    ("large", 8, 32.0, 1, 1.2, 2.0, 14.0, 3.0),
)
_FAMILIES = {
    "translate": ("translate text between languages", ["translate '{x}' into French", "what is '{x}' in German"]),
    "summarize": ("summarize a long document", ["summarize this report about {x}", "give me a short summary of {x}"]),
    "transcribe": ("transcribe speech audio to text", ["transcribe the recording of {x}", "turn the audio about {x} into text"]),
    "caption": ("describe the content of an image", ["describe the photo of {x}", "caption this picture of {x}"]),
    "classify_sentiment": ("classify the sentiment of a review", ["is this review of {x} positive", "sentiment of the comment on {x}"]),
    "detect_objects": ("detect objects in an image", ["find all objects in the picture of {x}", "locate items in the photo of {x}"]),
    "answer_sql": ("answer a question with an SQL query over a database", ["how many orders mention {x} in the database", "query the sales table for {x}"]),
    "generate_code": ("write source code from a specification", ["write a python function for {x}", "generate code that handles {x}"]),
}  # fmt: skip
_TOPICS = ("the quarterly budget", "a red bicycle", "the football match", "climate policy", "a birthday party",
           "the new phone", "river pollution", "a job interview", "the museum visit", "solar panels")  # fmt: skip
# Budgets: (phrase, predicate on a size row and its effective latency).
_BUDGETS = (
    ("as fast as possible, under {ms} ms", "latency"),
    ("on CPU only, no GPU available", "cpu_only"),
    ("with at most {gb} GB of memory", "memory"),
    ("for under {cost} dollars per thousand calls", "cost"),
    ("with the best quality", "none"),
)
# The tightest value of each budget excludes every size, which makes "no tool fits" (abstain) examples.
_LATENCY_BUDGETS_MS = (15, 50, 200, 1000)
_MEMORY_BUDGETS_GB = (0.25, 1, 4, 16)
_COST_BUDGETS = (0.005, 0.02, 0.1, 1.0)


def _effective_latency(size_row: tuple, load: float) -> float:
    # Queueing makes big models slow down more under load than small ones.
    return size_row[4] * (1.0 + size_row[7] * load)


def _heavy_tailed(median: float, rng: random.Random, tail: float = 0.15) -> float:
    # |Cauchy| multiplicative noise: mostly near the median, occasionally many times slower (stragglers).
    factor = 1.0 + abs(tail * math.tan(math.pi * (rng.random() - 0.5)))
    return median * min(factor, 1e3)


def _satisfies(kind: str, value: float, size_row: tuple, latency: float) -> bool:
    if kind == "latency":
        return latency * 1000.0 <= value
    if kind == "cpu_only":
        return size_row[3] == 0
    if kind == "memory":
        return size_row[2] <= value
    if kind == "cost":
        return size_row[5] <= value
    return True


def _synthetic_example(rng: random.Random, index: int, split: str, num_families: int) -> dict[str, Any]:
    families = rng.sample(sorted(_FAMILIES), num_families)
    target = families[0]
    description, templates = _FAMILIES[target]
    load = round(rng.random(), 3)
    phrase, kind = rng.choice(_BUDGETS)
    value = {
        "latency": rng.choice(_LATENCY_BUDGETS_MS),
        "memory": rng.choice(_MEMORY_BUDGETS_GB),
        "cost": rng.choice(_COST_BUDGETS),
    }.get(kind, 0.0)
    request = rng.choice(templates).format(x=rng.choice(_TOPICS))
    query = f"{request}, {phrase.format(ms=value, gb=value, cost=value)}"
    names, texts, resources, latencies, labels = [], [], [], [], []
    best = None
    order = [(f, s) for f in families for s in _SIZES]
    rng.shuffle(order)
    for family, size in order:
        effective = _effective_latency(size, load)
        names.append(f"{family}_{size[0]}")
        texts.append(f"{family}_{size[0]}: {_FAMILIES[family][0]} ({size[0]} model)")
        resources.append([float(size[1]), size[2], float(size[3]), round(effective, 5), size[5], size[6]])
        latencies.append(round(_heavy_tailed(effective, rng), 5))
        fits = family == target and _satisfies(kind, value, size, effective)
        # The label is the largest (best-quality) variant of the requested family that fits the budget.
        if fits and (best is None or size[6] > resources[best][5]):
            best = len(names) - 1
        labels.append(0)
    if best is not None:
        labels[best] = 1
    return {
        "id": f"synthetic_{split}_{index}",
        "category": target,
        "query": query,
        "tool_names": names,
        "tool_texts": texts,
        "labels": labels,
        "resource_vectors": resources,
        "latency": latencies,
        "runtime_load": load,
    }


def build_synthetic_routing_dataset(
    num_train: int = 2000, num_dev: int = 300, num_test: int = 500, *, num_families: int = 3, seed: int = 0
):
    """``DatasetDict(train, dev, test)`` of resource-aware routing queries.

    Each query asks for one capability under a budget (max latency, CPU only, max memory, max cost, or
    best quality) while the machine runs at a random load. Candidates are every size of ``num_families``
    families (the requested one plus distractors). Resource vectors hold the *effective* latency at that
    load, so the right variant depends on the resources, not only on the text. The label is the largest
    variant of the requested family that satisfies the budget, none (abstain) if no variant does. Observed
    latencies are the effective latency times heavy-tailed (|Cauchy|) noise, the Cauchy head's target.
    """
    from datasets import Dataset, DatasetDict

    for name, n in (("num_train", num_train), ("num_dev", num_dev), ("num_test", num_test)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {n!r}")
    if not 1 <= num_families <= len(_FAMILIES):
        raise ValueError(f"num_families must lie in [1, {len(_FAMILIES)}], got {num_families}")
    splits = {}
    for offset, (split, n) in enumerate((("train", num_train), ("dev", num_dev), ("test", num_test))):
        rng = random.Random(seed * 1000 + offset)
        splits[split] = Dataset.from_list([_synthetic_example(rng, i, split, num_families) for i in range(n)])
    return DatasetDict(splits)


__all__ = [
    "BFCL_TEST_CATEGORIES",
    "BFCL_TRAIN_CATEGORIES",
    "BFCL_VERSION",
    "MISSING_LATENCY",
    "RESOURCE_FIELDS",
    "build_bfcl_dataset",
    "build_synthetic_routing_dataset",
    "build_tool_catalogue",
    "cache_dir",
    "catalogue_targets",
    "fetch_bfcl_wheel",
    "function_to_text",
    "read_bfcl_calls",
    "read_bfcl_category",
]
