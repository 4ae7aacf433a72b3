"""ToolRouter: score a catalogue of tools for a natural-language query (issue #6).

Data flow (shapes for B queries, T tools, Lq/Lt tokens)::

    query_input_ids [B,Lq] -> Mamba -> masked mean -> Linear -> q [B, d_model]
    tool_input_ids [T,Lt] or [B,T,Lt] -> Mamba -> masked mean -> Linear -> [.., T, d_tool]
    resource_vectors [T,6] or [B,T,6] -> ResourceMLP -> [.., T, d_resource]
    concat -> [.., T, d_model] -> ToolSetEncoder (key padding = ~tool_mask) -> h [.., T, d_model]
    scores = match(q, h) [B,T]; abstain_score = match(q, null_tool) [B]
    latency (loc, scale) = Cauchy head(resource embedding, runtime_context) [B,T]

Mamba is causal, so right-padded text gives exactly the unpadded states on the valid positions: pad on the
right. A tool catalogue given unbatched ([T, ...]) is encoded once and shared by every query.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import MambaConfig, MambaModel, PreTrainedModel
from transformers.utils import ModelOutput

from ..configuration.configuration_tool_router import ToolRouterConfig
from ..hub import RemoteCodeMixin
from .cauchy import cauchy_nll, softplus_inverse
from .kan import KANLayer
from .tool_set import ResourceMLP, ToolSetEncoder


@dataclass
class ToolEmbeddingCache(ModelOutput):
    """A catalogue encoded once by :meth:`ToolRouterModel.encode_tools`; reusable for any number of queries.

    ``tool_states`` are contextualised over the *whole* catalogue given to ``encode_tools`` (tool-set
    attention saw all of it). Passing ``tool_mask`` to ``forward`` with a cache restricts which tools are
    scored, not the context they were encoded in; to route over a candidate subset with subset-only
    context, encode that subset (it is a different tool set). Tensors are ``[T, ...]`` (shared catalogue)
    or ``[B, T, ...]`` (one tool set per query).
    """

    tool_states: torch.Tensor | None = None
    resource_states: torch.Tensor | None = None
    tool_mask: torch.Tensor | None = None
    tool_set_attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class ToolRouterOutput(ModelOutput):
    """``scores`` [B,T] (logits; padded tools are ``finfo.min``), ``abstain_score`` [B] (logit of "no
    tool fits"), ``latency_loc``/``latency_scale`` [B,T] (Cauchy), ``tool_set_attentions`` (per layer,
    ``[(B,) H, T, T]``, only with ``output_attentions``), ``loss`` (with ``labels``)."""

    loss: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    abstain_score: torch.Tensor | None = None
    latency_loc: torch.Tensor | None = None
    latency_scale: torch.Tensor | None = None
    query_states: torch.Tensor | None = None
    tool_states: torch.Tensor | None = None
    tool_set_attentions: tuple[torch.Tensor, ...] | None = None


def _mamba_config(config: ToolRouterConfig) -> MambaConfig:
    return MambaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.encoder_hidden_size,
        num_hidden_layers=config.encoder_num_layers,
        state_size=config.encoder_state_size,
        expand=config.encoder_expand,
        conv_kernel=config.encoder_conv_kernel,
        use_mambapy=config.use_mambapy,
        pad_token_id=config.pad_token_id,
        use_cache=False,
    )


def _masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # An all-padding row (a padded tool slot) pools to zeros instead of 0/0.
    mask = mask.to(states.dtype).unsqueeze(-1)
    return (states * mask).sum(-2) / mask.sum(-2).clamp_min(1.0)


class TextEncoder(nn.Module):
    """Mamba over token ids, masked-mean pooled and projected to ``out_dim``."""

    def __init__(self, mamba: MambaModel, out_dim: int):
        super().__init__()
        self.mamba = mamba
        self.proj = nn.Linear(mamba.config.hidden_size, out_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lead = input_ids.shape[:-1]
        ids, mask = (
            input_ids.reshape(-1, input_ids.shape[-1]),
            attention_mask.reshape(-1, input_ids.shape[-1]),
        )
        hidden = self.mamba(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return self.proj(_masked_mean(hidden, mask)).reshape(*lead, -1)


class LatencyHead(nn.Module):
    """Cauchy(loc, scale) of a tool's latency from its resource embedding and optional runtime context."""

    def __init__(self, config: ToolRouterConfig):
        super().__init__()
        in_dim = config.d_resource + config.runtime_context_dim
        self.net = nn.Sequential(nn.Linear(in_dim, config.latency_hidden_size), nn.GELU())
        self.loc = nn.Linear(config.latency_hidden_size, 1)
        self.scale = nn.Linear(config.latency_hidden_size, 1)

    def forward(self, resource_states: torch.Tensor, runtime_context: torch.Tensor | None):
        x = resource_states
        if runtime_context is not None:
            x = torch.cat([x, runtime_context[:, None, :].expand(*x.shape[:-1], -1)], dim=-1)
        hidden = self.net(x)
        return self.loc(hidden).squeeze(-1), nn.functional.softplus(self.scale(hidden)).squeeze(-1)


class ToolRouterPreTrainedModel(PreTrainedModel):
    config_class = ToolRouterConfig
    base_model_prefix = "tool_router"
    main_input_name = "query_input_ids"
    _supports_sdpa = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, ToolRouterModel):
            # CLIP-style learnable temperature, stored as log(1/T).
            module.logit_scale.fill_(-torch.log(torch.tensor(float(self.config.init_temperature))).item())
            module.null_tool.normal_(std=self.config.initializer_range)
        elif isinstance(module, LatencyHead):
            module.scale.weight.zero_()
            module.scale.bias.fill_(float(softplus_inverse(1.0)))
        elif isinstance(module, KANLayer):
            module.reset_parameters()


class ToolRouterModel(RemoteCodeMixin, ToolRouterPreTrainedModel):
    """Routes queries over a tool catalogue. See the module docstring for the data flow and shapes."""

    def __init__(self, config: ToolRouterConfig):
        super().__init__(config)
        self.query_encoder = TextEncoder(MambaModel(_mamba_config(config)), config.d_model)
        tool_mamba = self.query_encoder.mamba if config.share_encoder else MambaModel(_mamba_config(config))
        self.tool_encoder = TextEncoder(tool_mamba, config.d_tool)
        self.resource_mlp = ResourceMLP(config.resource_dim, config.d_resource, config.dropout)
        self.tool_set_encoder = ToolSetEncoder(
            config.d_model,
            config.num_attention_heads,
            config.num_tool_set_layers,
            config.dropout,
            config.dim_feedforward,
            config.use_ffn,
        )
        # The null tool is scored like a tool but never joins tool-set attention, so caches stay valid.
        self.null_tool = nn.Parameter(torch.zeros(config.d_model))
        self.logit_scale = nn.Parameter(torch.zeros(()))
        self.kan_head = (
            KANLayer(config.d_model, 1, config.kan_grid_size, config.kan_spline_order)
            if config.matching == "kan"
            else None
        )
        self.latency_head = LatencyHead(config)
        self.post_init()

    # ----------------------------------------------------------------- validation
    def _check_tools(self, tool_input_ids, tool_attention_mask, resource_vectors, tool_mask) -> None:
        if tool_input_ids is None or resource_vectors is None:
            raise ValueError("tool_input_ids and resource_vectors are required when no tool_cache is given")
        if tool_input_ids.dim() not in (2, 3):
            raise ValueError(
                f"tool_input_ids must be [T, Lt] or [B, T, Lt], got {tuple(tool_input_ids.shape)}"
            )
        set_shape = tool_input_ids.shape[:-1]
        if set_shape[-1] == 0:
            raise ValueError("empty tool set: tool_input_ids has 0 tools")
        if tool_attention_mask is not None and tool_attention_mask.shape != tool_input_ids.shape:
            raise ValueError(
                f"tool_attention_mask {tuple(tool_attention_mask.shape)} must match tool_input_ids "
                f"{tuple(tool_input_ids.shape)}"
            )
        if resource_vectors.shape[-1] != self.config.resource_dim:
            raise ValueError(
                f"resource vectors must be {self.config.resource_dim}-d, got last dim {resource_vectors.shape[-1]}"
            )
        if resource_vectors.shape[:-1] != set_shape:
            raise ValueError(
                f"resource_vectors {tuple(resource_vectors.shape)} do not match the tool set {tuple(set_shape)}"
            )
        if not torch.isfinite(resource_vectors).all():
            raise ValueError("resource_vectors contain NaN or inf")
        if tool_mask is not None and tool_mask.shape != set_shape:
            raise ValueError(f"tool_mask {tuple(tool_mask.shape)} must have shape {tuple(set_shape)}")

    # ----------------------------------------------------------------- tools
    def encode_tools(
        self,
        tool_input_ids: torch.Tensor,
        tool_attention_mask: torch.Tensor | None = None,
        resource_vectors: torch.Tensor | None = None,
        tool_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> ToolEmbeddingCache:
        """Encode a tool set once ([T, Lt] shared by all queries, or [B, T, Lt]); see ToolEmbeddingCache."""
        self._check_tools(tool_input_ids, tool_attention_mask, resource_vectors, tool_mask)
        if tool_attention_mask is None:
            tool_attention_mask = torch.ones_like(tool_input_ids)
        if tool_mask is None:
            tool_mask = torch.ones(tool_input_ids.shape[:-1], dtype=torch.bool, device=tool_input_ids.device)
        tool_mask = tool_mask.bool()
        text = self.tool_encoder(tool_input_ids, tool_attention_mask)
        resource_states = self.resource_mlp(resource_vectors.to(text.dtype))
        tool_states, attentions = self.tool_set_encoder(
            torch.cat([text, resource_states], dim=-1),
            key_padding_mask=~tool_mask,
            return_all_attentions=True,
        )
        return ToolEmbeddingCache(
            tool_states=tool_states,
            resource_states=resource_states,
            tool_mask=tool_mask,
            tool_set_attentions=tuple(attentions) if output_attentions else None,
        )

    def _match(self, query: torch.Tensor, tools: torch.Tensor) -> torch.Tensor:
        """query [B, d], tools [B, T, d] -> logits [B, T] (cosine / temperature, or KAN on the product)."""
        q = nn.functional.normalize(query, dim=-1)[:, None, :]
        t = nn.functional.normalize(tools, dim=-1)
        if self.kan_head is not None:
            # Unit-vector products lie in [-1, 1] per coordinate: the KAN grid range.
            return self.kan_head(q * t).squeeze(-1) * self.logit_scale.exp()
        return (q * t).sum(-1) * self.logit_scale.exp()

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        query_input_ids: torch.Tensor,
        query_attention_mask: torch.Tensor | None = None,
        tool_input_ids: torch.Tensor | None = None,
        tool_attention_mask: torch.Tensor | None = None,
        resource_vectors: torch.Tensor | None = None,
        tool_mask: torch.Tensor | None = None,
        runtime_context: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        latency_labels: torch.Tensor | None = None,
        tool_cache: ToolEmbeddingCache | None = None,
        output_attentions: bool = False,
        **kwargs,
    ) -> ToolRouterOutput:
        """Score the tools for each query.

        Tools come either as ``tool_input_ids``/``tool_attention_mask``/``resource_vectors`` ([T, ...] shared
        or [B, T, ...]) or as a precomputed ``tool_cache`` (then the tool encoders do not run). ``tool_mask``
        [B,T] or [T] (1 = candidate) restricts scoring; with a cache it is combined with the cache's mask.
        ``labels`` [B,T] multi-hot (an all-zero row trains the abstain score); ``latency_labels`` [B,T]
        (NaN or negative = missing); ``runtime_context`` [B, runtime_context_dim].
        """
        if query_input_ids.dim() != 2:
            raise ValueError(f"query_input_ids must be [B, Lq], got {tuple(query_input_ids.shape)}")
        batch = query_input_ids.shape[0]
        if query_attention_mask is None:
            query_attention_mask = torch.ones_like(query_input_ids)
        elif query_attention_mask.shape != query_input_ids.shape:
            raise ValueError(
                f"query_attention_mask {tuple(query_attention_mask.shape)} must match query_input_ids "
                f"{tuple(query_input_ids.shape)}"
            )
        if tool_cache is None:
            tool_cache = self.encode_tools(
                tool_input_ids, tool_attention_mask, resource_vectors, tool_mask, output_attentions
            )
        elif tool_input_ids is not None or resource_vectors is not None:
            raise ValueError("pass either tool_cache or tool_input_ids/resource_vectors, not both")
        elif tool_mask is not None:
            if tool_mask.shape != tool_cache.tool_mask.shape[-tool_mask.dim() :]:
                raise ValueError(f"tool_mask {tuple(tool_mask.shape)} does not match the cached tool set")
            tool_cache = ToolEmbeddingCache(
                tool_states=tool_cache.tool_states,
                resource_states=tool_cache.resource_states,
                tool_mask=tool_cache.tool_mask & tool_mask.bool(),
                tool_set_attentions=tool_cache.tool_set_attentions,
            )
        tool_states, resource_states, mask = (
            tool_cache.tool_states,
            tool_cache.resource_states,
            tool_cache.tool_mask,
        )
        if tool_states.dim() == 2:
            tool_states, resource_states = (
                tool_states.expand(batch, -1, -1),
                resource_states.expand(batch, -1, -1),
            )
        if mask.dim() == 1:
            mask = mask.expand(batch, -1)
        if tool_states.shape[0] != batch or mask.shape[0] != batch:
            raise ValueError(f"tool set batch {tool_states.shape[0]} does not match query batch {batch}")
        if runtime_context is not None:
            if (
                runtime_context.shape != (batch, self.config.runtime_context_dim)
                or not self.config.runtime_context_dim
            ):
                raise ValueError(
                    f"runtime_context must be [B={batch}, runtime_context_dim={self.config.runtime_context_dim}], "
                    f"got {tuple(runtime_context.shape)}"
                )
            if not torch.isfinite(runtime_context).all():
                raise ValueError("runtime_context contains NaN or inf")
        elif self.config.runtime_context_dim:
            runtime_context = torch.zeros(batch, self.config.runtime_context_dim, dtype=tool_states.dtype,
                                          device=tool_states.device)  # fmt: skip

        query = self.query_encoder(query_input_ids, query_attention_mask)
        scores = self._match(query, tool_states).masked_fill(~mask, torch.finfo(tool_states.dtype).min)
        abstain_score = self._match(query, self.null_tool.expand(batch, 1, -1)).squeeze(-1)
        latency_loc, latency_scale = self.latency_head(resource_states, runtime_context)

        loss = None
        if labels is not None or latency_labels is not None:
            loss = self.compute_loss(
                scores, abstain_score, mask, labels, latency_loc, latency_scale, latency_labels
            )
        return ToolRouterOutput(
            loss=loss,
            scores=scores,
            abstain_score=abstain_score,
            latency_loc=latency_loc,
            latency_scale=latency_scale,
            query_states=query,
            tool_states=tool_states,
            tool_set_attentions=tool_cache.tool_set_attentions if output_attentions else None,
        )

    def compute_loss(self, scores, abstain_score, mask, labels, latency_loc, latency_scale, latency_labels):
        """BCE over candidate tools and the abstain logit + listwise CE over [abstain, candidates] + latency NLL.

        Listwise target: uniform over the positive tools, or the abstain slot when the label set is empty.
        """
        cfg = self.config
        loss = scores.new_zeros(())
        if labels is not None:
            if labels.shape != scores.shape:
                raise ValueError(f"labels {tuple(labels.shape)} must have shape {tuple(scores.shape)}")
            labels = labels.to(scores.dtype) * mask
            empty = (labels.sum(-1) == 0).to(scores.dtype)
            bce_tools = nn.functional.binary_cross_entropy_with_logits(scores, labels, reduction="none")
            bce_tools = (bce_tools * mask).sum(-1)
            bce_abstain = nn.functional.binary_cross_entropy_with_logits(
                abstain_score, empty, reduction="none"
            )
            bce = ((bce_tools + bce_abstain) / (mask.sum(-1) + 1)).mean()
            logits = torch.cat([abstain_score[:, None], scores], dim=-1)
            target = torch.cat([empty[:, None], labels], dim=-1)
            target = target / target.sum(-1, keepdim=True)
            listwise = -(target * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
            loss = loss + cfg.bce_weight * bce + cfg.listwise_weight * listwise
        if latency_labels is not None:
            if latency_labels.shape != scores.shape:
                raise ValueError(
                    f"latency_labels {tuple(latency_labels.shape)} must have shape {tuple(scores.shape)}"
                )
            observed = torch.isfinite(latency_labels) & (latency_labels >= 0) & mask
            if observed.any():
                nll = cauchy_nll(latency_labels[observed].to(latency_loc.dtype), latency_loc[observed],
                                 latency_scale[observed])  # fmt: skip
                loss = loss + cfg.latency_weight * nll.mean()
        return loss


__all__ = ["ToolEmbeddingCache", "ToolRouterModel", "ToolRouterOutput", "ToolRouterPreTrainedModel"]
