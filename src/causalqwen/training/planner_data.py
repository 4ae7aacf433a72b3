"""A synthetic, resource-aware, multi-step tool-planning set for the ToolPlanner (issue #17), and its metrics.

Each request asks for ``k`` steps (``k`` uniform in ``1..max_steps``), each a *distinct* capability family of the
single-step routing set (:mod:`causalqwen.training.router_data`), in an order the text states ("transcribe the
recording of a job interview, then translate it into French, then summarize the result"), under one budget that
applies to every step or, for ``total_latency`` (``budget_mix=TOTAL_BUDGET_MIX``), to the plan's summed latency
("…, all under 2000 ms in total"). The offered tools are every size of ``num_families`` families (the step families plus
distractors), shuffled. The sizes, families, topics, load model, latency noise and budget predicate are imported
from ``router_data``, so a plan step is labelled exactly as a routing query is.

============== ====================== ===========================================================
column         type                   meaning
============== ====================== ===========================================================
id             str                    ``planning_{split}_{i}``
query          str                    the ordered multi-step request, budget included
tool_names     list[str]              offered tools, ``family_size``
tool_texts     list[str]              ``name: description (size model)`` (as in ``router_data``)
resource_vectors list[list[float]]    [T, 6] (cpu, memory, gpu, effective latency, cost, size)
latency        list[float]            observed (heavy-tailed) latency per tool in seconds
runtime_load   float                  machine load in [0, 1] when the request was planned
plan           list[int]              tool index per step, in step order; ``[]`` = abstain
step_families  list[str]              the requested families in step order (also when abstained)
budget_kind    str                    ``latency``, ``memory``, ``cost``, ``cpu_only``, ``none``, ``total_latency``
budget_value   float                  ms, GB or $/1k calls; 0.0 for ``cpu_only`` and ``none``
compliant      list[bool]             per tool: it meets the budget at this load (family ignored; under a
                                      total: its size serving all ``num_steps`` steps fits)
num_steps      int                    ``k``, the number of requested steps
arguments      list[str]              per plan step, its call's arguments as JSON text; ``[]`` when abstained
============== ====================== ===========================================================

A step's arguments restate what the request fixes for it: the target language of a translation and the budget
(``{"target": "French", "timeout_ms": 350}``, ``{"max_memory_gb": 4.5}``, ``{"device": "cpu"}``, ``{}``), with the
number written as the request writes it, so a planner has to copy words and numbers from the request into the
call (:func:`argument_metrics` scores them).

Budget values are drawn log-uniformly and rounded to 2 significant digits, so a model has to compare numbers
rather than recognise a handful of values. Because every family comes in the same sizes, whether a step can be
served depends on the budget and the load only, not on the family: a request is abstained exactly when the
smallest size misses the budget, and every step of a plan uses the same size.
"""

from __future__ import annotations

import json
import math
import operator
import random
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from .router_data import (
    _FAMILIES,
    _SIZES,
    _TOPICS,
    MISSING_LATENCY,
    _effective_latency,
    _heavy_tailed,
    _satisfies,
)

__all__ = [
    "BFCL_PLANNING_TEST_CATEGORIES",
    "BUDGET_KINDS",
    "DEFAULT_BUDGET_MIX",
    "TOTAL_BUDGET_MIX",
    "MISSING_LATENCY",
    "build_bfcl_planning_dataset",
    "argument_metrics",
    "arguments_equal",
    "bfcl_call_arguments",
    "build_synthetic_planning_dataset",
    "multiset_exact_match",
    "MARGIN_BUCKETS",
    "budget_margin",
    "errors_by_budget_margin",
    "format_budget_value",
    "plan_metrics",
    "plan_within_budget",
    "tool_needs",
]

# The first step names what it works on; a follow-up refers back to the previous step's output ("it").
_FIRST_STEPS = {
    "translate": ["translate '{x}' into {lang}", "translate the notes on {x} into {lang}"],
    "summarize": ["summarize this report about {x}", "give me a short summary of the article on {x}"],
    "transcribe": ["transcribe the recording of {x}", "turn the audio about {x} into text"],
    "caption": ["describe the photo of {x}", "caption this picture of {x}"],
    "classify_sentiment": ["classify the sentiment of the review of {x}", "tell me whether the comment on {x} is positive"],
    "detect_objects": ["find all objects in the picture of {x}", "locate the items in the photo of {x}"],
    "answer_sql": ["query the sales table for {x}", "count the orders that mention {x} in the database"],
    "generate_code": ["write a python function for {x}", "generate code that handles {x}"],
}  # fmt: skip
_FOLLOW_UPS = {
    "translate": ["translate it into {lang}", "translate the result into {lang}"],
    "summarize": ["summarize it", "summarize the result"],
    "transcribe": ["transcribe its audio", "turn the spoken part of it into text"],
    "caption": ["caption it", "describe the resulting image"],
    "classify_sentiment": ["classify its sentiment", "tell me whether the result is positive"],
    "detect_objects": ["find all objects in it", "locate the items it shows"],
    "answer_sql": ["look it up in the sales database", "query the database for it"],
    "generate_code": ["write python code that handles it", "generate code for the result"],
}  # fmt: skip
# A family added to router_data without phrasings here must fail at import, not produce a KeyError mid-build.
if set(_FIRST_STEPS) != set(_FAMILIES) or set(_FOLLOW_UPS) != set(_FAMILIES):
    raise RuntimeError("planner_data lacks a first-step or follow-up phrasing for a router_data family")
_LANGUAGES = ("French", "German", "Spanish", "Italian", "Japanese")
_CONNECTORS = ("then", "and then", "after that")

BUDGET_KINDS = ("latency", "memory", "cost", "cpu_only", "none", "total_latency")
# 4 in 5 requests carry a number to compare; cpu_only and none (never abstained) make up the rest. The default mix
# has no total budgets (the set of the README's main table); TOTAL_BUDGET_MIX adds them.
DEFAULT_BUDGET_MIX = {"latency": 0.28, "memory": 0.26, "cost": 0.26, "cpu_only": 0.1, "none": 0.1}
# A fifth of the requests bound the plan's summed latency ("all under 2000 ms in total"), as many as bound each
# step's: the same number means a different limit depending on the words around it.
TOTAL_BUDGET_MIX = {
    "latency": 0.2,
    "total_latency": 0.2,
    "memory": 0.2,
    "cost": 0.2,
    "cpu_only": 0.1,
    "none": 0.1,
}
_BUDGET_PHRASES = {
    "latency": "with every step under {v} ms",
    "total_latency": "all under {v} ms in total",
    "memory": "each tool using at most {v} GB of memory",
    "cost": "for at most {v} dollars per thousand calls per tool",
    "cpu_only": "on CPU only, no GPU",
    "none": "with the best quality",
}
# Log-uniform ranges; each lower end lies below the smallest size's need (20-30 ms, 0.5 GB, $0.01), which makes
# the abstained requests, and each upper end above the largest size's, which lets the large size win.
_BUDGET_RANGES = {"latency": (10.0, 5000.0), "memory": (0.2, 50.0), "cost": (0.003, 5.0),
                  "total_latency": (10.0, 15000.0)}  # fmt: skip
# Budget kinds that bound the sum over the plan's steps rather than each step.
_TOTAL_KINDS = {"total_latency": "latency"}


def _round_significant(value: float, digits: int = 2) -> float:
    return float(f"{value:.{digits - 1}e}")


def format_budget_value(value: float) -> str:
    """``value`` as plain decimal text: no exponent, no trailing zeros (350, 0.25, 1.5, 0.0042)."""
    # Decimal(repr) keeps the shortest round-tripping digits, so the text parses back to the same float.
    text = format(Decimal(repr(float(value))).normalize(), "f")
    return "0" if text in ("-0", "") else text


def _draw_budget(rng: random.Random, mix: dict[str, float]) -> tuple[str, float]:
    kind = rng.choices(tuple(mix), weights=tuple(mix.values()))[0]
    if kind not in _BUDGET_RANGES:
        return kind, 0.0
    low, high = _BUDGET_RANGES[kind]
    # The label is computed from the rounded value, the one the text states.
    return kind, _round_significant(math.exp(rng.uniform(math.log(low), math.log(high))))


def _request_text(rng: random.Random, steps: Sequence[str], kind: str, value: float) -> tuple[str, str]:
    """The request and the language its translation step (if any) names."""
    lang = rng.choice(_LANGUAGES)
    parts = [rng.choice(_FIRST_STEPS[steps[0]]).format(x=rng.choice(_TOPICS), lang=lang)]
    for family in steps[1:]:
        # Steps are distinct families, so translate appears once and one drawn language serves either position.
        follow_up = rng.choice(_FOLLOW_UPS[family]).format(lang=lang)
        parts.append(f"{rng.choice(_CONNECTORS)} {follow_up}")
    parts.append(_BUDGET_PHRASES[kind].format(v=format_budget_value(value)))
    return ", ".join(parts), lang


# The argument a budget kind puts in every call (JSON key); cpu_only and none carry no number.
_BUDGET_ARGUMENTS = {"latency": "timeout_ms", "memory": "max_memory_gb", "cost": "max_cost",
                     "total_latency": "total_timeout_ms"}  # fmt: skip


def _step_arguments(family: str, kind: str, value: float, lang: str) -> str:
    """A step's call arguments as JSON text, numbers written as the request writes them."""
    fields = [f'"target": {json.dumps(lang)}'] if family == "translate" else []
    if kind in _BUDGET_ARGUMENTS:
        fields.append(f'"{_BUDGET_ARGUMENTS[kind]}": {format_budget_value(value)}')
    elif kind == "cpu_only":
        fields.append('"device": "cpu"')
    return "{" + ", ".join(fields) + "}"


def _fits(kind: str, value: float, size: tuple, effective: float, num_steps: int) -> bool:
    """The budget predicate of ``router_data._satisfies``; a total budget holds when this size, serving every one
    of the ``num_steps`` steps, keeps the summed latency within it (steps of a plan share a size)."""
    if kind in _TOTAL_KINDS:
        return _satisfies(_TOTAL_KINDS[kind], value / num_steps, size, effective)
    return _satisfies(kind, value, size, effective)


def _planning_example(
    rng: random.Random, index: int, split: str, num_families: int, max_steps: int, mix: dict[str, float]
) -> dict:
    num_steps = rng.randint(1, max_steps)
    # A random sample is in random order, so its head is an ordered list of distinct step families.
    families = rng.sample(sorted(_FAMILIES), num_families)
    steps = families[:num_steps]
    load = round(rng.random(), 3)
    kind, value = _draw_budget(rng, mix)
    query, lang = _request_text(rng, steps, kind, value)
    order = [(f, s) for f in families for s in _SIZES]
    rng.shuffle(order)
    names, texts, resources, latencies, compliant = [], [], [], [], []
    best: dict[str, int] = {}
    for family, size in order:
        effective = _effective_latency(size, load)
        fits = _fits(kind, value, size, effective, num_steps)
        names.append(f"{family}_{size[0]}")
        texts.append(f"{family}_{size[0]}: {_FAMILIES[family][0]} ({size[0]} model)")
        resources.append([float(size[1]), size[2], float(size[3]), round(effective, 5), size[5], size[6]])
        latencies.append(round(_heavy_tailed(effective, rng), 5))
        compliant.append(fits)
        # Each step's tool is the largest (best-quality) variant of its family that fits, as in routing.
        if fits and (family not in best or size[6] > resources[best[family]][5]):
            best[family] = len(names) - 1
    # A plan with a step left out would do something else than asked: one unservable step abstains it all.
    plan = [best[f] for f in steps] if all(f in best for f in steps) else []
    return {
        "id": f"planning_{split}_{index}",
        "query": query,
        "tool_names": names,
        "tool_texts": texts,
        "resource_vectors": resources,
        "latency": latencies,
        "runtime_load": load,
        "plan": plan,
        "step_families": list(steps),
        "budget_kind": kind,
        "budget_value": value,
        "compliant": compliant,
        "num_steps": num_steps,
        "arguments": [_step_arguments(steps[i], kind, value, lang) for i in range(len(plan))],
    }


def _checked_mix(mix: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(mix) - set(BUDGET_KINDS))
    if unknown:
        raise ValueError(f"budget_mix names unknown budget kinds {unknown}; known: {list(BUDGET_KINDS)}")
    bad = {k: w for k, w in mix.items() if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0)}
    if bad or not sum(mix.values()) > 0:
        raise ValueError(f"budget_mix weights must be finite, non-negative and not all zero, got {dict(mix)}")
    return dict(mix)


def _features():
    from datasets import Features, Sequence, Value

    # Explicit types: a split whose rows are all abstained would otherwise infer ``plan`` as a list of nulls.
    return Features(
        {
            "id": Value("string"),
            "query": Value("string"),
            "tool_names": Sequence(Value("string")),
            "tool_texts": Sequence(Value("string")),
            "resource_vectors": Sequence(Sequence(Value("float64"))),
            "latency": Sequence(Value("float64")),
            "runtime_load": Value("float64"),
            "plan": Sequence(Value("int64")),
            "step_families": Sequence(Value("string")),
            "budget_kind": Value("string"),
            "budget_value": Value("float64"),
            "compliant": Sequence(Value("bool")),
            "num_steps": Value("int64"),
            "arguments": Sequence(Value("string")),
        }
    )


def build_synthetic_planning_dataset(
    num_train: int = 2000,
    num_dev: int = 300,
    num_test: int = 500,
    *,
    num_families: int = 4,
    max_steps: int = 3,
    seed: int = 0,
    budget_mix: dict[str, float] | None = None,
):
    """``DatasetDict(train, dev, test)`` of resource-aware multi-step planning requests.

    A request asks for ``k`` (uniform in ``1..max_steps``) distinct families in a stated order, under one budget
    (max latency per step, max memory per tool, max cost per tool, CPU only, or best quality) while the machine
    runs at a random load. The offered tools are every size of ``num_families`` families. ``plan`` holds, per
    step, the index of the largest variant of that step's family that meets the budget at that load; it is
    ``[]`` (abstain) when some step has no such variant. Deterministic for a ``seed``; each split draws from its
    own ``random.Random(seed * 1000 + offset)``.

    ``budget_mix`` (budget kind -> weight, default :data:`DEFAULT_BUDGET_MIX`) sets how often each kind of
    :data:`BUDGET_KINDS` is drawn. :data:`TOTAL_BUDGET_MIX` adds ``total_latency`` ("all under 2000 ms in
    total"): the plan's summed latency is bounded, every step is served by one size, the largest whose latency
    times the number of steps fits (``compliant`` marks the sizes that do), and a plan is within budget when its
    steps' latencies add up to at most the total (:func:`plan_metrics`).
    """
    from datasets import Dataset, DatasetDict

    for name, n in (("num_train", num_train), ("num_dev", num_dev), ("num_test", num_test)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {n!r}")
    for name, n in (("num_families", num_families), ("max_steps", max_steps)):
        if not isinstance(n, int) or isinstance(n, bool):
            raise ValueError(f"{name} must be an int, got {n!r}")
    if not 1 <= num_families <= len(_FAMILIES):
        raise ValueError(f"num_families must lie in [1, {len(_FAMILIES)}], got {num_families}")
    if not 1 <= max_steps <= num_families:
        raise ValueError(f"max_steps must lie in [1, num_families={num_families}] (steps are distinct families), "
                         f"got {max_steps}")  # fmt: skip
    mix = _checked_mix(DEFAULT_BUDGET_MIX if budget_mix is None else budget_mix)
    features = _features()
    splits = {}
    for offset, (split, n) in enumerate((("train", num_train), ("dev", num_dev), ("test", num_test))):
        rng = random.Random(seed * 1000 + offset)
        rows = [_planning_example(rng, i, split, num_families, max_steps, mix) for i in range(n)]
        splits[split] = Dataset.from_list(rows, features=features)
    return DatasetDict(splits)


# ----------------------------------------------------------------------------- metrics
def _column(examples: Any, name: str) -> list:
    # A datasets split hands out a whole column at once, far faster than row by row.
    if hasattr(examples, "column_names"):
        return list(examples[name])
    return [row[name] for row in examples]


def _total_budget_rows(examples: Any) -> dict[int, dict[str, Any]]:
    """The rows under a total budget, by index (rows without a ``budget_kind`` column have none)."""
    names = examples.column_names if hasattr(examples, "column_names") else set().union(*map(set, examples))
    if "budget_kind" not in names:
        return {}
    kinds = _column(examples, "budget_kind")
    return {i: examples[i] for i, kind in enumerate(kinds) if kind in _TOTAL_KINDS}


def plan_within_budget(plan: Sequence[int], example: dict[str, Any]) -> bool:
    """A plan meets a total budget when its steps' needs (in the budget's unit) add up to at most the budget;
    under a per-step budget, when every chosen tool is ``compliant``."""
    if example["budget_kind"] not in _TOTAL_KINDS:
        return all(example["compliant"][t] for t in plan)
    index, unit = _BUDGET_NEEDS[_TOTAL_KINDS[example["budget_kind"]]]
    return sum(example["resource_vectors"][t][index] * unit for t in plan) <= example["budget_value"]


def _ratio(numerator: float, denominator: float, empty: float) -> float:
    return numerator / denominator if denominator else empty


def plan_metrics(predicted: Sequence[Sequence[int]], examples: Any) -> dict[str, float]:
    """Scores of predicted plans (tool indices per request, ``[]`` = abstain) against the gold ``plan`` of a
    planning split (a ``datasets`` split or a list of row dicts with ``plan`` and ``compliant``).

    * ``exact_match``: the predicted list equals the gold plan, order included; abstain on abstain matches;
    * ``budget_compliance``: among non-empty predictions, the share whose every tool is ``compliant`` (under a
      total budget, whose steps' needs add up to at most it: :func:`plan_within_budget`). With no non-empty
      prediction it is 1.0: nothing was called, so no budget was broken (abstaining too often shows in
      ``abstain_precision`` and ``exact_match`` instead);
    * ``step_accuracy``: over all gold steps, the share whose position holds the same tool in the prediction
      (1.0 when no request has a gold step: there is nothing to get wrong);
    * ``abstain_precision``, ``abstain_recall``, ``abstain_f1``: abstaining (an empty plan) as the positive
      class; each is 0.0 where its denominator is 0;
    * ``length_accuracy``: the share of requests whose predicted plan has the gold length.

    Raises ``ValueError`` when ``predicted`` and ``examples`` differ in length, there are no examples, or a
    predicted index falls outside its request's tools.
    """
    if len(predicted) != len(examples):
        raise ValueError(f"{len(predicted)} predicted plans for {len(examples)} examples")
    if not len(examples):
        raise ValueError("plan_metrics needs at least one example")
    gold_plans, compliant = _column(examples, "plan"), _column(examples, "compliant")
    totals = _total_budget_rows(examples)
    exact = lengths = steps = correct_steps = called = within_budget = 0
    true_abstain = false_abstain = missed_abstain = 0
    for i, (raw, gold, fits) in enumerate(zip(predicted, gold_plans, compliant)):
        plan = [operator.index(t) for t in raw]
        bad = [t for t in plan if not 0 <= t < len(fits)]
        if bad:
            raise ValueError(f"predicted plan {plan} of example {i} points outside its {len(fits)} tools")
        gold = list(gold)
        exact += plan == gold
        lengths += len(plan) == len(gold)
        steps += len(gold)
        correct_steps += sum(j < len(plan) and plan[j] == g for j, g in enumerate(gold))
        if plan:
            called += 1
            within_budget += (
                plan_within_budget(plan, totals[i]) if i in totals else all(fits[t] for t in plan)
            )
        true_abstain += not plan and not gold
        false_abstain += not plan and bool(gold)
        missed_abstain += bool(plan) and not gold
    n = len(gold_plans)
    precision = _ratio(true_abstain, true_abstain + false_abstain, 0.0)
    recall = _ratio(true_abstain, true_abstain + missed_abstain, 0.0)
    return {
        "exact_match": exact / n,
        "budget_compliance": _ratio(within_budget, called, 1.0),
        "step_accuracy": _ratio(correct_steps, steps, 1.0),
        "abstain_precision": precision,
        "abstain_recall": recall,
        "abstain_f1": _ratio(2 * precision * recall, precision + recall, 0.0),
        "length_accuracy": lengths / n,
    }


# Where a numeric budget reads its tool's need in the resource vector ([params, memory GB, GPU, effective latency s,
# cost, quality]) and the factor to the budget's unit: the comparisons of ``router_data._satisfies``.
_BUDGET_NEEDS = {"latency": (3, 1000.0), "memory": (1, 1.0), "cost": (4, 1.0)}
# Upper ends of the margin buckets of ``errors_by_budget_margin`` (log distance; 0.05 is about 5 %).
MARGIN_BUCKETS = (("within_5pct", 0.05), ("within_25pct", 0.25), ("beyond_25pct", math.inf))


def tool_needs(example: dict[str, Any]) -> list[float] | None:
    """Each offered tool's need in the unit of the request's budget (ms of effective latency, GB, dollars per
    thousand calls), read from its resource vector; ``None`` for a budget without a number (``cpu_only``,
    ``none``); under a total budget, the need of serving every step with the tool's size (need x
    ``num_steps``). A tool is ``compliant`` exactly when its need is at most the budget."""
    kind = example["budget_kind"]
    steps = example["num_steps"] if kind in _TOTAL_KINDS else 1
    kind = _TOTAL_KINDS.get(kind, kind)
    if kind not in _BUDGET_NEEDS:
        return None
    index, unit = _BUDGET_NEEDS[kind]
    return [resources[index] * unit * steps for resources in example["resource_vectors"]]


def budget_margin(example: dict[str, Any]) -> float | None:
    """How close a request's stated budget lies to the nearest offered tool's need: ``min |ln budget - ln need|``
    over the tools (0.05: within about 5 % of some tool's need); ``None`` for a budget without a number. A
    planner that reads numbers coarsely errs near 0."""
    needs = tool_needs(example)
    if needs is None:
        return None
    budget = math.log(example["budget_value"])
    return min(abs(budget - math.log(need)) for need in needs)


def errors_by_budget_margin(predicted: Sequence[Sequence[int]], examples: Any) -> dict[str, float]:
    """The share of wrong plans (not the gold plan exactly) among requests grouped by :func:`budget_margin`:
    ``errors_within_5pct``, ``errors_within_25pct`` (5-25 %), ``errors_beyond_25pct`` and
    ``errors_no_number``, with each group's size as ``rows_<group>`` (a group without rows has error 0.0).
    Tells a planner that compares numbers to within some tolerance (errors only near a tool's need) from one
    that misreads them (errors at any margin)."""
    if len(predicted) != len(examples):
        raise ValueError(f"{len(predicted)} predicted plans for {len(examples)} examples")
    rows = [examples[i] for i in range(len(examples))]
    counts = {name: [0, 0] for name, _ in MARGIN_BUCKETS} | {"no_number": [0, 0]}
    for plan, example in zip(predicted, rows):
        margin = budget_margin(example)
        name = "no_number" if margin is None else next(n for n, upper in MARGIN_BUCKETS if margin < upper)
        counts[name][0] += 1
        counts[name][1] += [operator.index(t) for t in plan] != list(example["plan"])
    result = {f"errors_{name}": _ratio(wrong, total, 0.0) for name, (total, wrong) in counts.items()}
    return result | {f"rows_{name}": float(total) for name, (total, _) in counts.items()}


# ----------------------------------------------------------------------------- BFCL
# The multi-call test of issue #17: live parallel / parallel_multiple questions (several calls, often one function
# called several times) and live irrelevance (abstain); training and dev come from the non-live categories.
BFCL_PLANNING_TEST_CATEGORIES = ("live_parallel", "live_parallel_multiple", "live_irrelevance")


def build_bfcl_planning_dataset(wheel=None, *, dev_fraction: float = 0.15, seed: int = 0, max_steps: int = 6,
                                train_categories: Sequence[str] | None = None,
                                test_categories: Sequence[str] = BFCL_PLANNING_TEST_CATEGORIES):  # fmt: skip
    """``DatasetDict(train, dev, test)`` of BFCL questions as plans: the routing rows of
    :func:`~causalqwen.training.router_data.build_bfcl_dataset` plus ``plan`` (the answer's calls in order as
    indices into the offered functions, repeats kept; ``[]`` for irrelevance), ``calls`` (their names) and
    ``compliant`` (all true: BFCL states no budgets). Train/dev rows with more than ``max_steps`` calls are
    dropped (a planner capped at ``max_steps`` could only learn a wrong STOP from them); test rows are all kept,
    so a longer answer counts as a miss. ``arguments`` holds each call's arguments as JSON text
    (:func:`bfcl_call_arguments`). The split is ``build_bfcl_dataset``'s (same seed, same rows)."""
    import zipfile

    from datasets import Dataset, DatasetDict

    from .router_data import (
        BFCL_TRAIN_CATEGORIES,
        build_bfcl_dataset,
        fetch_bfcl_wheel,
        read_bfcl_calls,
    )

    path = wheel if wheel is not None else fetch_bfcl_wheel()
    train_categories = tuple(train_categories or BFCL_TRAIN_CATEGORIES)
    routing = build_bfcl_dataset(path, dev_fraction=dev_fraction, seed=seed, train_categories=train_categories,
                                 test_categories=test_categories)  # fmt: skip
    with zipfile.ZipFile(path) as archive:
        calls, arguments = {}, {}
        for category in (*train_categories, *test_categories):
            calls.update(read_bfcl_calls(archive, category))
            arguments.update(read_bfcl_call_arguments(archive, category))
    splits = {}
    for split, rows in routing.items():
        planned = []
        for row in rows:
            names = calls.get(row["id"], [])
            if split != "test" and len(names) > max_steps:
                continue
            plan = [row["tool_names"].index(name) for name in names]
            planned.append({**row, "plan": plan, "calls": names, "compliant": [True] * len(row["tool_names"]),
                            "arguments": arguments.get(row["id"], [])})  # fmt: skip
        splits[split] = Dataset.from_list(planned)
    return DatasetDict(splits)


def arguments_equal(predicted: str | None, gold: str, rel_tol: float = 0.01) -> bool:
    """Two JSON argument texts name the same fields with equal values, numbers within ``rel_tol`` (relative): a
    numeric head writes the value it predicts, which may differ from the request's in the last digits."""
    try:
        mine, theirs = json.loads(predicted or ""), json.loads(gold)
    except ValueError:
        return False
    return _json_close(mine, theirs, rel_tol)


def _json_close(a: Any, b: Any, rel_tol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_close(a[k], b[k], rel_tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_close(x, y, rel_tol) for x, y in zip(a, b))
    return a == b


def argument_metrics(predicted: Sequence[Sequence[int]], arguments: Sequence[Sequence[str | None]], examples: Any,
                     rel_tol: float = 0.01) -> dict[str, float]:  # fmt: skip
    """Scores of written arguments over every gold plan step (a step whose tool is wrong counts as a miss):

    * ``argument_exact``: right tool at that position and the argument text equal to the gold text;
    * ``argument_match``: right tool and :func:`arguments_equal` (same JSON fields, numbers within ``rel_tol``).
    """
    plans, gold_arguments = _column(examples, "plan"), _column(examples, "arguments")
    if not len(predicted) == len(arguments) == len(plans):
        raise ValueError(
            f"{len(predicted)} plans and {len(arguments)} argument lists for {len(plans)} examples"
        )
    steps = exact = match = 0
    for plan, texts, gold, gold_texts in zip(predicted, arguments, plans, gold_arguments):
        if len(texts) != len(plan):
            raise ValueError(f"a plan of {len(plan)} steps has {len(texts)} argument texts")
        for i, (tool, text) in enumerate(zip(gold, gold_texts)):
            steps += 1
            if i < len(plan) and plan[i] == tool:
                exact += texts[i] == text
                match += arguments_equal(texts[i], text, rel_tol)
    return {"argument_exact": _ratio(exact, steps, 1.0), "argument_match": _ratio(match, steps, 1.0)}


def bfcl_call_arguments(ground_truth: Any, row_id: str) -> list[str]:
    """Each answer call's arguments as JSON text, in answer order. BFCL lists the accepted values of every
    argument; the first is taken, and an argument whose first accepted value is ``""`` (BFCL's "may be left
    out") is left out."""
    if not isinstance(ground_truth, list):
        raise ValueError(f"{row_id}: 'ground_truth' must be a list")
    texts = []
    for call in ground_truth:
        for accepted in call.values():
            chosen = {name: values[0] for name, values in accepted.items() if values and values[0] != ""}
            texts.append(json.dumps(chosen, ensure_ascii=False))
    return texts


def read_bfcl_call_arguments(archive, category: str) -> dict[str, list[str]]:
    """``{row id: argument texts of the answer's calls}`` of one BFCL category (``{}`` for irrelevance)."""
    from .router_data import BFCL_DATA_PREFIX, _read_jsonl

    if "irrelevance" in category:
        return {}
    answers = _read_jsonl(archive, f"{BFCL_DATA_PREFIX}possible_answer/BFCL_v4_{category}.json")
    return {answer["id"]: bfcl_call_arguments(answer.get("ground_truth"), answer["id"]) for answer in answers}


def multiset_exact_match(predicted: Sequence[Sequence[int]], examples: Any) -> float:
    """Share of rows whose predicted calls equal the answer's as a multiset of function names (order ignored,
    repeats counted: BFCL's parallel calls may come in any order); an empty prediction matches an empty answer."""
    from collections import Counter

    plans, names = _column(examples, "plan"), _column(examples, "tool_names")
    if len(predicted) != len(plans):
        raise ValueError(f"{len(predicted)} predictions for {len(plans)} examples")
    hits = 0
    for prediction, gold, row_names in zip(predicted, plans, names):
        if any(not 0 <= int(i) < len(row_names) for i in prediction):
            raise ValueError(f"a predicted index is out of range for {len(row_names)} tools")
        hits += Counter(row_names[int(i)] for i in prediction) == Counter(row_names[i] for i in gold)
    return hits / len(plans)
