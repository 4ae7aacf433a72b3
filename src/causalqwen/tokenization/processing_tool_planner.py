"""ToolPlannerProcessor: requests and their tools -> the inputs of :class:`ToolPlannerModel` (issue #17).

It plays the part a processor plays for a vision-language model: the backbone's tokenizer reads the request
(a :class:`CausalQwenTokenizer` turns its numbers into ``<NUM>`` + values; any other Qwen2 tokenizer, or the
package's ``BackendDigitsView``, leaves them as digit text), placeholder tokens stand for the runtime context, the
tools and the plan steps, and the tool tower's tokenizer reads the tool texts::

    input_ids:  <request tokens> [<QUERY>] [<CTX>] <TOOL> x T <PLAN> x S [<CALL> arguments <END_CALL>] x calls

A tool is ``{"name", "text", "resources"}`` (``resources``: the 6 raw resource fields of
:data:`causalqwen.tool_index.RESOURCE_FIELDS`, missing = zeros), a ``(text, resources)`` pair, an OpenAI-style
function spec, or a plain string; a :class:`~causalqwen.tool_index.ToolIndex` offers all of its tools. Resource
vectors reach the model through ``log1p``, as in router training. With ``tool_text_cache`` (a frozen tool tower)
the tool texts are embedded once each and the model gets ``tool_text_embeddings`` instead of token ids; with
``use_query_state`` the tool tower's query encoder also reads the request (``query_input_ids``, or
``query_embeddings`` through ``query_text_cache``). With ``arguments`` (one text per planned call, for a planner
with ``generate_arguments``) each call follows the plan slots and ``argument_labels`` mark its tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["ToolPlannerProcessor", "ToolTextCache"]

# 6 raw resource fields per tool, as the synthetic sets and the ToolIndex use them.
RESOURCE_DIM = 6


class ToolTextCache:
    """Pooled text states of a (frozen) tool tower's tool encoder (``encoder="query"``: its query encoder),
    computed once per distinct text."""

    def __init__(self, tool_tower, tokenizer, max_length: int = 128, encoder: str = "tool"):
        if encoder not in ("tool", "query"):
            raise ValueError(f"encoder must be 'tool' or 'query', got {encoder!r}")
        self.encoder = tool_tower.tool_encoder if encoder == "tool" else tool_tower.query_encoder
        self.tokenizer, self.max_length = tokenizer, max_length
        self._states: dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        from ..tool_index import embed_texts

        missing = sorted({t for t in texts if t not in self._states})
        if missing:
            states = embed_texts(self.encoder, self.tokenizer, missing, max_length=self.max_length)
            self._states.update(zip(missing, states.cpu()))
        return torch.stack([self._states[t] for t in texts])


def _tool_fields(tool: Any) -> tuple[str, str, list[float]]:
    """(name, text, raw resources) of one tool in any accepted form."""
    from ..tool_index import tool_name_and_text

    resources: Any = None
    if isinstance(tool, tuple):
        if len(tool) != 2:
            raise ValueError(f"a tool tuple is (text, resources), got {len(tool)} items")
        (name, text), resources = tool_name_and_text(tool[0]), tool[1]
    elif isinstance(tool, dict) and "text" in tool:
        text = str(tool["text"])
        if not text.strip():
            raise ValueError("a tool's text must not be empty")
        name, resources = str(tool.get("name") or text.split(":", 1)[0]), tool.get("resources")
    else:
        name, text = tool_name_and_text(tool)
        if isinstance(tool, dict):
            resources = tool.get("resources")
    vector = [0.0] * RESOURCE_DIM if resources is None else [float(v) for v in resources]
    if len(vector) != RESOURCE_DIM:
        raise ValueError(f"tool {name!r}: resources must have {RESOURCE_DIM} fields, got {len(vector)}")
    if not all(v == v and abs(v) != float("inf") for v in vector):
        raise ValueError(f"tool {name!r}: resources contain NaN or inf")
    return name, text, vector


class ToolPlannerProcessor:
    """Builds planner batches; see the module docstring. Token ids come from the planner's config."""

    def __init__(self, tokenizer, tool_tokenizer, config, *, tool_text_cache: Callable | None = None,
                 query_text_cache: Callable | None = None, max_query_length: int = 256,
                 max_tool_length: int = 64):  # fmt: skip
        self.tokenizer, self.tool_tokenizer = tokenizer, tool_tokenizer
        self.tool_token_id, self.plan_token_id = config.tool_token_id, config.plan_token_id
        self.context_token_id = config.context_token_id
        self.runtime_context_dim = config.runtime_context_dim
        self.max_plan_steps = config.max_plan_steps
        self.call_token_id = config.call_token_id if config.generate_arguments else None
        self.call_end_token_id = config.call_end_token_id
        self.tool_text_cache, self.query_text_cache = tool_text_cache, query_text_cache
        self.query_token_id = config.query_token_id if config.use_query_state else None
        self.max_query_length, self.max_tool_length = max_query_length, max_tool_length
        self.pad_token_id = getattr(tokenizer, "pad_token_id", None) or 0

    # ----------------------------------------------------------------- pieces
    def _tools_per_query(self, tools, n_queries: int) -> list[list[tuple[str, str, list[float]]]]:
        from ..tool_index import ToolIndex

        if isinstance(tools, ToolIndex):
            shared = [(n, t, v) for n, t, v in zip(tools.names, tools.texts, tools.resource_vectors.tolist())]
            return [shared] * n_queries
        if not isinstance(tools, Sequence) or isinstance(tools, str) or not len(tools):
            raise ValueError("tools must be a non-empty list of tools, a list of tool lists, or a ToolIndex")
        per_query = isinstance(tools[0], list)
        if per_query and len(tools) != n_queries:
            raise ValueError(f"{len(tools)} tool lists for {n_queries} queries")
        lists = tools if per_query else [tools] * n_queries
        out = []
        for i, row in enumerate(lists):
            if not len(row):
                raise ValueError(f"empty tool set for query {i}")
            out.append([_tool_fields(tool) for tool in row])
        return out

    def _encode_query(self, query: str) -> tuple[list[int], list[float] | None]:
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"a query must be non-empty text, got {query!r:.80}")
        return self._encode_text(query)

    def _encode_text(self, text: str) -> tuple[list[int], list[float] | None]:
        encoded = self.tokenizer(text, add_special_tokens=False)
        ids = list(encoded["input_ids"])[: self.max_query_length]
        values = encoded.get("numeric_values")
        return ids, (list(values)[: self.max_query_length] if values is not None else None)

    def budget_mask(self, raw_resources: torch.Tensor, budget: dict[str, float] | None) -> torch.Tensor:
        from ..tool_index import budget_mask

        return budget_mask(raw_resources, budget)

    def budget_fields(self, budget: dict[str, float] | None) -> list[tuple[int, float]]:
        """``budget`` (resource field -> maximum) as (index into the raw resource vectors, maximum) pairs."""
        from ..tool_index import budget_fields

        return budget_fields(budget)

    # ----------------------------------------------------------------- call
    def __call__(
        self,
        queries: str | Sequence[str],
        tools,
        *,
        runtime_context=None,
        plans: Sequence[Sequence[int]] | None = None,
        latencies: Sequence[Sequence[float]] | None = None,
        num_plan_tokens: int | None = None,
        arguments: Sequence[Sequence[str]] | None = None,
    ) -> dict[str, Any]:
        """A padded batch. With ``plans`` (tool indices per query, ``[]`` = abstain) it holds ``len(plan) + 1``
        plan tokens and ``plan_labels`` per row; otherwise ``num_plan_tokens`` (default 1) plan tokens. With
        ``arguments`` (needs ``plans``: one text per planned tool, e.g. JSON) the calls follow and
        ``argument_labels`` [B, L] hold their token ids and each ``<END_CALL>`` (-100 elsewhere). Also
        returns ``tool_names`` (per row) and ``raw_resource_vectors`` for decoding; drop them before ``forward``.
        """
        queries = [queries] if isinstance(queries, str) else list(queries)
        if not queries:
            raise ValueError("no queries")
        tool_rows = self._tools_per_query(tools, len(queries))
        if plans is not None and len(plans) != len(queries):
            raise ValueError(f"{len(plans)} plans for {len(queries)} queries")
        context = self._context(runtime_context, len(queries))
        self._check_arguments(arguments, plans, len(queries))
        rows_ids, rows_values, rows_labels, rows_argument_labels = [], [], [], []
        for i, (query, tool_row) in enumerate(zip(queries, tool_rows)):
            ids, values = self._encode_query(query)
            if self.query_token_id is not None:
                ids, values = ids + [self.query_token_id], (values + [0.0] if values is not None else None)
            if context is not None:
                ids, values = ids + [self.context_token_id], (values + [0.0] if values is not None else None)
            n_plan = num_plan_tokens if num_plan_tokens is not None else 1
            if plans is not None:
                plan = [int(t) for t in plans[i]]
                if any(not 0 <= t < len(tool_row) for t in plan):
                    raise ValueError(f"plan {plan} of query {i} points outside its {len(tool_row)} tools")
                if len(plan) > self.max_plan_steps:
                    raise ValueError(
                        f"plan of query {i} has {len(plan)} steps > max_plan_steps {self.max_plan_steps}"
                    )
                rows_labels.append([t + 1 for t in plan] + [0])
                n_plan = len(plan) + 1
            extra = [self.tool_token_id] * len(tool_row) + [self.plan_token_id] * n_plan
            ids, values = ids + extra, (values + [0.0] * len(extra) if values is not None else None)
            labels = [-100] * len(ids)
            for text in arguments[i] if arguments is not None else ():
                call_ids, call_values = self._encode_text(text)
                call_ids = [self.call_token_id, *call_ids, self.call_end_token_id]
                labels += [-100, *call_ids[1:]]
                ids = ids + call_ids
                if values is not None:
                    values = values + [0.0, *call_values, 0.0]
            rows_ids.append(ids)
            rows_values.append(values)
            rows_argument_labels.append(labels)
        width = max(len(r) for r in rows_ids)
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([r + [self.pad_token_id] * (width - len(r)) for r in rows_ids]),
            "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows_ids]),
        }
        if all(v is not None for v in rows_values):
            batch["numeric_values"] = torch.tensor(
                [v + [0.0] * (width - len(v)) for v in rows_values], dtype=torch.float64
            )
        if context is not None:
            batch["runtime_context"] = context
        batch.update(self._tool_tensors(tool_rows))
        if self.query_token_id is not None:
            batch.update(self._query_tensors(queries))
        if arguments is not None:
            batch["argument_labels"] = torch.tensor(
                [r + [-100] * (width - len(r)) for r in rows_argument_labels]
            )
        if plans is not None:
            steps = max(len(r) for r in rows_labels)
            batch["plan_labels"] = torch.tensor([r + [-100] * (steps - len(r)) for r in rows_labels])
        if latencies is not None:
            n_tools = batch["tool_mask"].shape[1]
            if [len(r) for r in latencies] != [len(r) for r in tool_rows]:
                raise ValueError("latencies must give one value per offered tool")
            batch["latency_labels"] = torch.tensor(
                [[float(v) for v in r] + [-1.0] * (n_tools - len(r)) for r in latencies]
            )
        return batch

    def _check_arguments(self, arguments, plans, n: int) -> None:
        if arguments is None:
            return
        if self.call_token_id is None:
            raise ValueError("arguments given but the planner has generate_arguments=False")
        if plans is None or len(arguments) != n:
            raise ValueError(f"arguments need plans and one list of texts per query ({n})")
        for i, (texts, plan) in enumerate(zip(arguments, plans)):
            if isinstance(texts, str) or len(texts) != len(plan):
                raise ValueError(
                    f"query {i}: {len(plan)} planned tools need {len(plan)} argument texts, got {texts!r:.80}"
                )

    def decode_arguments(self, ids: Sequence[int], values: Sequence[float]) -> str:
        """Argument text of generated ids (numbers from ``values`` where the tokenizer takes them)."""
        if getattr(self.tokenizer, "num_token_id", None) is not None:
            # A numeric tokenizer (CausalQwenTokenizer) writes each <NUM> from its value.
            return self.tokenizer.decode(list(ids), numeric_values=list(values))
        return self.tokenizer.decode(list(ids))

    def _context(self, runtime_context, n: int) -> torch.Tensor | None:
        if not self.runtime_context_dim:
            if runtime_context is not None:
                raise ValueError("runtime_context given but the planner has runtime_context_dim=0")
            return None
        if runtime_context is None:
            return torch.zeros(n, self.runtime_context_dim)
        context = torch.as_tensor(runtime_context, dtype=torch.float32).reshape(n, -1)
        if context.shape[1] != self.runtime_context_dim:
            raise ValueError(f"runtime_context must have {self.runtime_context_dim} values per query")
        if not torch.isfinite(context).all():
            raise ValueError("runtime_context contains NaN or inf")
        return context

    def _query_tensors(self, queries: list[str]) -> dict[str, torch.Tensor]:
        if self.query_text_cache is not None:
            return {"query_embeddings": self.query_text_cache(queries)}
        enc = self.tool_tokenizer(queries, max_length=self.max_query_length, truncation=True, padding="longest",
                                  return_tensors="pt")  # fmt: skip
        return {"query_input_ids": enc["input_ids"], "query_attention_mask": enc["attention_mask"]}

    def _tool_tensors(self, tool_rows) -> dict[str, Any]:
        n_tools = max(len(r) for r in tool_rows)
        raw = torch.zeros(len(tool_rows), n_tools, RESOURCE_DIM)
        mask = torch.zeros(len(tool_rows), n_tools, dtype=torch.bool)
        texts = []
        for i, row in enumerate(tool_rows):
            mask[i, : len(row)] = True
            raw[i, : len(row)] = torch.tensor([v for _, _, v in row])
            texts.append([t for _, t, _ in row] + [row[0][1]] * (n_tools - len(row)))
        out: dict[str, Any] = {
            "resource_vectors": torch.log1p(raw.clamp_min(0.0)),
            "raw_resource_vectors": raw,
            "tool_mask": mask,
            "tool_names": [[n for n, _, _ in row] for row in tool_rows],
        }
        flat = [t for row in texts for t in row]
        if self.tool_text_cache is not None:
            out["tool_text_embeddings"] = self.tool_text_cache(flat).reshape(len(tool_rows), n_tools, -1)
        else:
            enc = self.tool_tokenizer(flat, max_length=self.max_tool_length, truncation=True, padding="longest",
                                      return_tensors="pt")  # fmt: skip
            out["tool_input_ids"] = enc["input_ids"].reshape(len(tool_rows), n_tools, -1)
            out["tool_attention_mask"] = enc["attention_mask"].reshape(len(tool_rows), n_tools, -1)
        return out
