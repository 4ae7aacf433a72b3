"""A user API for routing: build a tool index once, then ``route`` queries against it (issue #12).

```python
from causalqwen import ToolRouterModel
from causalqwen.tool_index import ToolIndex

index = ToolIndex.build(model, tokenizer, tools)          # OpenAI-style function specs, dicts or strings
index.route("what's the weather in Paris?", k=3)           # -> RouteResult(tools=[RankedTool, ...], abstain=...)
index.save("my_index"); ToolIndex.load("my_index", model, tokenizer)
```

The index holds the tools' states after tool-set attention over the *whole* catalogue (the one
definition of tool states, see :mod:`causalqwen.modeling.modeling_tool_router`), their pooled text
embeddings, and the BM25 statistics of their texts (the lexical channel). Routing a query runs the
query encoder once, BM25 over the catalogue and the matching head; nothing about the tools is recomputed.
``candidates`` restricts a query to some tools (e.g. the ones an agent offers) without changing the
context they were indexed in.

Saved indexes hold ``tools.json`` (names, texts, specs, resource vectors, settings) and
``tool_states.safetensors``; BM25 is rebuilt from the texts on load (deterministic, so rankings are equal).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .lexical import BM25Index
from .modeling.cauchy import cauchy_interval
from .modeling.modeling_tool_router import TextEncoder, ToolEmbeddingCache, ToolRouterModel

# Resource vector fields (the synthetic routing set's units); a budget names any of them.
RESOURCE_FIELDS = ("cpu", "memory", "gpu", "latency", "cost", "size")
INDEX_FORMAT = 1
# Word pieces kept of a query and of a tool text (issue #12: >= 128; 5 % of BFCL live questions and 16 % of the
# training questions are longer than 64).
MAX_TEXT_LENGTH = 128


@torch.no_grad()
def embed_texts(encoder: TextEncoder, tokenizer, texts: Sequence[str], *, max_length: int = MAX_TEXT_LENGTH,
                batch_size: int = 64) -> torch.Tensor:  # fmt: skip
    """Pooled text states [N, E] of ``texts`` through ``encoder``, in batches (right padding).

    Each text's state is independent of its batch (masked-mean pooling; right padding for Mamba), so the
    result does not depend on ``batch_size``.
    """
    if not len(texts):
        raise ValueError("no texts to embed")
    pieces = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[start : start + batch_size]), max_length=max_length, truncation=True,
                        padding="longest", return_tensors="pt")  # fmt: skip
        device = encoder.proj.weight.device
        pieces.append(encoder.embed(enc["input_ids"].to(device), enc["attention_mask"].to(device)))
    return torch.cat(pieces)


def budget_mask(
    resource_vectors: torch.Tensor, budget: dict[str, float] | None, *, has_resources: bool = True
) -> torch.Tensor:
    """[..., T] True where a tool's resource vector ([..., T, 6]) is within every given budget (field name of
    :data:`RESOURCE_FIELDS` -> maximum). ``has_resources=False`` (tools given without resource vectors) refuses
    any budget."""
    keep = torch.ones(resource_vectors.shape[:-1], dtype=torch.bool, device=resource_vectors.device)
    for column, limit in budget_fields(budget, has_resources=has_resources):
        keep &= resource_vectors[..., column] <= limit
    return keep


def budget_fields(budget: dict[str, float] | None, *, has_resources: bool = True) -> list[tuple[int, float]]:
    """A budget (field name of :data:`RESOURCE_FIELDS` -> maximum) as (field index, finite maximum) pairs; an
    unknown field, a non-finite maximum or a budget on tools without resource vectors raises."""
    fields = []
    for key, limit in (budget or {}).items():
        if key not in RESOURCE_FIELDS:
            raise ValueError(f"unknown budget field {key!r}; choose from {RESOURCE_FIELDS}")
        if not has_resources:
            raise ValueError("a budget needs an index built with resource_vectors")
        if not math.isfinite(float(limit)):
            raise ValueError(f"budget {key}={limit} is not finite")
        fields.append((RESOURCE_FIELDS.index(key), float(limit)))
    return fields


def tool_name_and_text(tool: Any) -> tuple[str, str]:
    """A tool as (name, text): an OpenAI-style spec (``{"type": "function", "function": {...}}``), a bare
    function spec (``{"name", "description", "parameters"}``, as BFCL writes them) or a string
    (``"name: description"``; the name is the part before the first colon)."""
    from .training.router_data import function_to_text

    if isinstance(tool, str):
        if not tool.strip():
            raise ValueError("a tool given as text must not be empty")
        return tool.split(":", 1)[0].strip(), tool
    if isinstance(tool, dict):
        spec = tool.get("function", tool) if tool.get("type") == "function" else tool
        if not isinstance(spec, dict) or not spec.get("name"):
            raise ValueError(f"a tool spec needs a 'name', got {tool!r:.200}")
        return str(spec["name"]), function_to_text(spec)
    raise TypeError(f"a tool must be a dict spec or a string, got {type(tool).__name__}")


@dataclass
class RankedTool:
    """One routed tool: its ``name``, catalogue ``index``, ``score`` (logit), ``probability`` (sigmoid of
    the score) and, when the index has resource vectors, the 90 % Cauchy ``latency_interval``."""

    name: str
    index: int
    score: float
    probability: float
    latency_interval: tuple[float, float] | None = None


@dataclass
class RouteResult:
    """The ranked ``tools`` for one query, the ``abstain`` decision (no tool fits) and its logit."""

    query: str
    tools: list[RankedTool] = field(default_factory=list)
    abstain: bool = False
    abstain_score: float = 0.0


class ToolIndex:
    """A catalogue encoded once for a :class:`ToolRouterModel`; see the module docstring."""

    def __init__(self, model: ToolRouterModel, tokenizer, names: list[str], texts: list[str],
                 cache: ToolEmbeddingCache, resource_vectors: torch.Tensor, *, specs: list | None = None,
                 has_resources: bool = False, abstain_threshold: float = 0.0, max_query_length: int = MAX_TEXT_LENGTH,
                 max_tool_length: int = MAX_TEXT_LENGTH):  # fmt: skip
        self.model, self.tokenizer = model.eval(), tokenizer
        self.names, self.texts, self.specs = names, texts, specs
        self.cache, self.resource_vectors, self.has_resources = cache, resource_vectors, has_resources
        self.abstain_threshold = float(abstain_threshold)
        self.max_query_length, self.max_tool_length = max_query_length, max_tool_length
        self.lexical = BM25Index(texts)

    def __len__(self) -> int:
        return len(self.names)

    # ----------------------------------------------------------------- building
    @classmethod
    @torch.no_grad()
    def build(cls, model: ToolRouterModel, tokenizer, tools: Sequence[Any], resource_vectors=None, *,
              abstain_threshold: float = 0.0, max_query_length: int = MAX_TEXT_LENGTH, max_tool_length: int = MAX_TEXT_LENGTH,
              batch_size: int = 64) -> ToolIndex:  # fmt: skip
        """Encode ``tools`` (specs or strings) with optional ``resource_vectors`` [T, 6] in raw units
        (:data:`RESOURCE_FIELDS`; ``log1p`` is applied as in training)."""
        if isinstance(tools, (str, dict)) or not len(tools):
            raise ValueError("ToolIndex.build needs a non-empty sequence of tools")
        named = [tool_name_and_text(t) for t in tools]
        names, texts = [n for n, _ in named], [t for _, t in named]
        raw = cls._resources(resource_vectors, len(tools), model.config.resource_dim)
        model.eval()
        text_states = embed_texts(model.tool_encoder, tokenizer, texts, max_length=max_tool_length,
                                  batch_size=batch_size)  # fmt: skip
        cache = model.encode_tools(tool_text_embeddings=text_states, resource_vectors=torch.log1p(raw))
        specs = [t if isinstance(t, dict) else None for t in tools]
        return cls(model, tokenizer, names, texts, cache, raw, specs=specs, has_resources=resource_vectors is not None,
                   abstain_threshold=abstain_threshold, max_query_length=max_query_length,
                   max_tool_length=max_tool_length)  # fmt: skip

    @staticmethod
    def _resources(resource_vectors, n_tools: int, dim: int) -> torch.Tensor:
        if resource_vectors is None:
            return torch.zeros(n_tools, dim)
        raw = torch.as_tensor(resource_vectors, dtype=torch.float32)
        if raw.shape != (n_tools, dim):
            raise ValueError(f"resource_vectors must be [{n_tools}, {dim}], got {tuple(raw.shape)}")
        if not torch.isfinite(raw).all():
            raise ValueError("resource_vectors contain NaN or inf")
        if (raw < 0).any():
            raise ValueError("resource_vectors must be >= 0 (cores, GB, seconds, dollars, ...)")
        return raw

    # ----------------------------------------------------------------- routing
    def _budget_mask(self, budget: dict[str, float] | None) -> torch.Tensor:
        """Tools whose resource vector is within every given budget (field name -> maximum)."""
        return budget_mask(self.resource_vectors, budget, has_resources=self.has_resources)

    def _candidate_mask(self, candidates: Sequence[int | str] | None) -> torch.Tensor:
        if candidates is None:
            return torch.ones(len(self), dtype=torch.bool)
        mask = torch.zeros(len(self), dtype=torch.bool)
        for c in candidates:
            if isinstance(c, str):
                hits = [i for i, n in enumerate(self.names) if n == c]
                if not hits:
                    raise ValueError(f"candidate {c!r} is not a tool of this index")
                mask[hits] = True
            elif 0 <= int(c) < len(self):
                mask[int(c)] = True
            else:
                raise ValueError(f"candidate index {c} outside 0..{len(self) - 1}")
        return mask

    @torch.no_grad()
    def _forward(self, queries: Sequence[str], batch_size: int = 64):
        """The model's scores [Q, T], abstain logits [Q] and latency (loc, scale) [Q, T] for ``queries``."""
        if isinstance(queries, str) or not len(queries) or not all(isinstance(q, str) for q in queries):
            raise ValueError("queries must be a non-empty sequence of strings")
        lexical = torch.from_numpy(self.lexical.scores(queries))
        outputs = []
        for start in range(0, len(queries), batch_size):
            chunk = list(queries[start : start + batch_size])
            enc = self.tokenizer(chunk, max_length=self.max_query_length, truncation=True, padding="longest",
                                 return_tensors="pt")  # fmt: skip
            out = self.model(enc["input_ids"], enc["attention_mask"], tool_cache=self.cache,
                             lexical_scores=lexical[start : start + len(chunk)])  # fmt: skip
            outputs.append((out.scores, out.abstain_score, out.latency_loc, out.latency_scale))
        return tuple(torch.cat(parts).float() for parts in zip(*outputs))

    def scores(self, queries: Sequence[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw scores [Q, T] over the whole catalogue and abstain logits [Q] (no masking, no top-k)."""
        return self._forward(queries, batch_size)[:2]

    def route(self, queries: str | Sequence[str], k: int = 5, *, budget: dict[str, float] | None = None,
              candidates: Sequence[int | str] | None = None) -> RouteResult | list[RouteResult]:  # fmt: skip
        """Top-``k`` tools per query (a list for a list of queries), best first, with the abstain decision.

        ``budget`` (e.g. ``{"latency": 0.3, "memory": 2}``) drops tools whose resource vector exceeds it;
        ``candidates`` (names or indices) restricts routing to those tools. The query abstains when its
        abstain logit exceeds the best allowed tool's score by more than ``abstain_threshold``, or when no
        tool is allowed.
        """
        single = isinstance(queries, str)
        queries = [queries] if single else list(queries)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if k > len(self):
            raise ValueError(f"k={k} exceeds the {len(self)} tools of this index")
        allowed = self._budget_mask(budget) & self._candidate_mask(candidates)
        # The model's own latency head output (a runtime-context model routes at its neutral zero context).
        scores, abstain, latency_loc, latency_scale = self._forward(queries)
        scores = scores.masked_fill(~allowed, -math.inf)
        low, high = cauchy_interval(latency_loc, latency_scale, 0.9)
        bounds = torch.stack([low, high], -1).tolist() if self.has_resources else [None] * len(queries)
        results = []
        for query, row, abstain_logit, intervals in zip(queries, scores, abstain.tolist(), bounds):
            top = torch.topk(row, min(k, int(allowed.sum()))) if allowed.any() else None
            tools = []
            if top is not None:
                for value, i in zip(top.values.tolist(), top.indices.tolist()):
                    tools.append(RankedTool(self.names[i], i, value, 1.0 / (1.0 + math.exp(-value)),
                                            tuple(intervals[i]) if intervals else None))  # fmt: skip
            best = tools[0].score if tools else -math.inf
            results.append(
                RouteResult(query, tools, abstain_logit - best > self.abstain_threshold, abstain_logit)
            )
        return results[0] if single else results

    # ----------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> None:
        """Write ``tools.json`` and ``tool_states.safetensors`` to ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"tool_states": self.cache.tool_states, "resource_states": self.cache.resource_states,
                   "text_states": self.cache.text_states, "tool_mask": self.cache.tool_mask,
                   "resource_vectors": self.resource_vectors}  # fmt: skip
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()},
            str(directory / "tool_states.safetensors"),
        )
        meta = {"format": INDEX_FORMAT, "names": self.names, "texts": self.texts, "specs": self.specs,
                "has_resources": self.has_resources, "abstain_threshold": self.abstain_threshold,
                "max_query_length": self.max_query_length, "max_tool_length": self.max_tool_length,
                "model_type": self.model.config.model_type}  # fmt: skip
        (directory / "tools.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))

    @classmethod
    def load(cls, directory: str | Path, model: ToolRouterModel, tokenizer) -> ToolIndex:
        """Read an index written by :meth:`save` for ``model`` (the model that built it)."""
        directory = Path(directory)
        meta = json.loads((directory / "tools.json").read_text())
        if meta.get("format") != INDEX_FORMAT:
            raise ValueError(f"{directory}: unsupported index format {meta.get('format')!r}")
        tensors = load_file(str(directory / "tool_states.safetensors"))
        if tensors["text_states"].shape[-1] != model.tool_encoder.hidden_size:
            raise ValueError(f"{directory}: the index was built for another model (text width differs)")
        with torch.no_grad():
            latency_loc, latency_scale = model.tool_latency(tensors["resource_states"])
        cache = ToolEmbeddingCache.with_units(
            tool_states=tensors["tool_states"],
            resource_states=tensors["resource_states"],
            tool_mask=tensors["tool_mask"].bool(),
            text_states=tensors["text_states"],
            latency_loc=latency_loc,
            latency_scale=latency_scale,
        )
        return cls(model, tokenizer, meta["names"], meta["texts"], cache, tensors["resource_vectors"],
                   specs=meta["specs"], has_resources=meta["has_resources"],
                   abstain_threshold=meta["abstain_threshold"], max_query_length=meta["max_query_length"],
                   max_tool_length=meta["max_tool_length"])  # fmt: skip


__all__ = [
    "MAX_TEXT_LENGTH",
    "RESOURCE_FIELDS",
    "RankedTool",
    "RouteResult",
    "ToolIndex",
    "budget_mask",
    "embed_texts",
    "tool_name_and_text",
]
