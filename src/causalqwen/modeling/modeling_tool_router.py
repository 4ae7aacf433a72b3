"""ToolRouter: score a catalogue of tools for a natural-language query (issue #6).

Data flow (shapes for B queries, T tools, Lq/Lt tokens)::

    query_input_ids [B,Lq] -> encoder -> masked mean -> e_q [B, E] -> Linear -> q [B, d_model]
    tool_input_ids [T,Lt] or [B,T,Lt] -> encoder -> masked mean -> e_t [.., T, E] -> Linear -> [.., T, d_tool]
    resource_vectors [T,6] or [B,T,6] -> ResourceMLP -> [.., T, d_resource]
    concat -> [.., T, d_model] -> ToolSetEncoder (key padding = ~tool_mask) -> h [.., T, d_model]
    cosine/kan: scores = match(q, h) [B,T]; abstain_score = match(q, null_tool) [B]
    fusion:     scores = KAN(dense cos(e_q, e_t), its z-score, z-scored lexical_scores, cos(q, h), resource fit)
                abstain_score = KAN(max dense, max lexical z, cos(q, null_tool), max score) over the tool set
    latency (loc, scale) = Cauchy head(resource embedding, runtime_context) [B,T]

The encoder is transformers' ``MambaModel`` (``encoder_type="mamba"``; causal, so right-padded text gives
exactly the unpadded states on the valid positions: pad on the right) or any transformers text encoder
(``encoder_type="pretrained"``, e.g. all-MiniLM-L6-v2). A tool catalogue given unbatched ([T, ...]) is
encoded once and shared by every query.

One definition of tool states: tool-set attention and the z-scores of the fusion features run over the
*tool set the tools were encoded in* (the catalogue of a :class:`ToolEmbeddingCache`); ``tool_mask`` given
to ``forward`` with a cache only restricts which tools are scored. Routing among a query's candidates is
therefore the catalogue ranking restricted to them, in training, candidate scoring and retrieval alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, MambaConfig, MambaModel, PreTrainedModel
from transformers.utils import ModelOutput
from transformers.utils import logging as hf_logging

from ..configuration.configuration_tool_router import ToolRouterConfig
from ..remote_code import RemoteCodeMixin
from ._checks import check_finite
from ._init import apply_special_init, unit_softplus_scale, with_init
from .cauchy import cauchy_nll
from .kan import KANLayer
from .tool_set import ResourceMLP, ToolSetEncoder


class _CudaOnlyKernelAdvice(logging.Filter):
    """Drops transformers' advice to install ``mamba_ssm`` / ``causal_conv1d`` on a machine without CUDA.

    The Mamba encoder runs transformers' reference PyTorch path on CPU; both kernel packages are CUDA-only, so on
    such a machine the advice ("falling back ... install mamba_ssm") cannot be acted on. Other kernels' advice and
    every message on a CUDA machine pass through.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            "reference PyTorch implementation" in message and ("mamba" in message or "conv1d" in message)
        )


if not torch.cuda.is_available():
    logging.getLogger("transformers.integrations.hub_kernels").addFilter(_CudaOnlyKernelAdvice())


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
    text_states: torch.Tensor | None = None
    # Unit-normalised text and tool states (matching="fusion"): its cosines then cost one matmul per batch
    # of queries instead of re-normalising the whole catalogue each time. Derived: recomputed, never saved.
    text_units: torch.Tensor | None = None
    tool_units: torch.Tensor | None = None
    # Latency Cauchy (loc, scale) per tool when it depends on the tools alone (runtime_context_dim == 0).
    latency_loc: torch.Tensor | None = None
    latency_scale: torch.Tensor | None = None

    @classmethod
    def with_units(cls, **fields) -> ToolEmbeddingCache:
        """A cache with ``text_units`` / ``tool_units`` derived from ``text_states`` / ``tool_states``."""
        return cls(
            **fields,
            text_units=nn.functional.normalize(fields["text_states"], dim=-1),
            tool_units=nn.functional.normalize(fields["tool_states"], dim=-1),
        )


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


def _pretrained_encoder(config: ToolRouterConfig) -> nn.Module:
    """A randomly initialised transformers encoder of ``text_encoder_config``'s architecture.

    Its pooler (BERT's ``[CLS]`` dense layer) is left out where the architecture allows: the router pools
    by masked mean, as sentence-transformers does for MiniLM/MPNet, and an unused layer would only add
    parameters without gradients.
    """
    return _without_pooler(AutoModel.from_config, AutoConfig.for_model(**config.text_encoder_config))


def _without_pooler(build, *args, **kwargs) -> nn.Module:
    """``build(..., add_pooling_layer=False)`` where the architecture takes that flag (BERT, MPNet, ...)."""
    try:
        return build(*args, add_pooling_layer=False, **kwargs)
    except TypeError:
        return build(*args, **kwargs)


class TextEncoder(nn.Module):
    """A text encoder (``MambaModel`` or a pretrained transformers encoder), masked-mean pooled
    (:meth:`embed`, width E) and projected to ``out_dim`` (``forward``).

    ``mamba`` is the backbone attribute for both kinds (the name predates the pretrained encoders and is
    kept so that checkpoints keep their parameter names).
    """

    def __init__(self, backbone: nn.Module, out_dim: int, shared: bool = False):
        super().__init__()
        if shared:
            # Borrowed from the query encoder: a tuple is not registered as a submodule, so the weights are
            # saved once (under query_encoder.mamba) and transformers sees no unexplained shared tensors.
            self._shared_backbone = (backbone,)
        else:
            self.add_module("mamba", backbone)
        self.proj = nn.Linear(backbone.config.hidden_size, out_dim)

    @property
    def mamba(self) -> nn.Module:
        """The backbone: this encoder's own, or the query encoder's when the towers share weights."""
        return self._modules["mamba"] if "mamba" in self._modules else self._shared_backbone[0]

    @property
    def hidden_size(self) -> int:
        return self.mamba.config.hidden_size

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids [..., L] -> masked-mean pooled states [..., E] (before the projection)."""
        lead = input_ids.shape[:-1]
        ids, mask = (
            input_ids.reshape(-1, input_ids.shape[-1]),
            attention_mask.reshape(-1, input_ids.shape[-1]),
        )
        if isinstance(self.mamba, MambaModel):
            hidden = self.mamba(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        else:
            hidden = self.mamba(input_ids=ids, attention_mask=mask).last_hidden_state
        return _masked_mean(hidden, mask).reshape(*lead, -1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(input_ids, attention_mask))


def _zscore(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Standardise ``values`` [B,T] over the valid tools of each row (a set of one tool gets 0).

    The squash ``tanh(z / 3)`` maps the z-scores into the KAN's grid range (-1, 1) while keeping the
    order of everything within about 3 standard deviations of the set's mean.
    """
    maskf = mask.to(values.dtype)
    count = maskf.sum(-1, keepdim=True).clamp_min(1.0)
    mean = (values * maskf).sum(-1, keepdim=True) / count
    var = (((values - mean) * maskf) ** 2).sum(-1, keepdim=True) / count
    return torch.tanh((values - mean) / (var.sqrt() + 1e-4) / 3.0) * maskf


def _pairwise_dot(query: torch.Tensor, tools: torch.Tensor) -> torch.Tensor:
    """query [B, D] . tools [T, D] (shared) or [B, T, D] -> [B, T], as a matmul (no [B, T, D] product)."""
    if tools.dim() == 2:
        return query @ tools.T
    return torch.bmm(tools, query.unsqueeze(-1)).squeeze(-1)


def _masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return values.masked_fill(~mask, torch.finfo(values.dtype).min).amax(-1)


class FusionKAN(nn.Module):
    """Two KAN layers, ``in -> hidden -> 1``, with ``tanh`` between them to keep the hidden values on the
    second layer's fixed grid (seed 000, scenario 3: KAN as the final matching layer over a few scalars).

    The first layer's learned 1-d functions (one per feature and hidden unit) are what
    ``benchmarks/routing.py`` plots: with a handful of named scalar inputs they can be read.
    """

    def __init__(self, in_features: int, config: ToolRouterConfig):
        super().__init__()
        self.inner = KANLayer(
            in_features, config.kan_hidden_size, config.kan_grid_size, config.kan_spline_order
        )
        self.outer = KANLayer(config.kan_hidden_size, 1, config.kan_grid_size, config.kan_spline_order)
        self.bias = nn.Parameter(torch.zeros(()))

    @torch.no_grad()
    def init_as_weighted_sum(self, weights: dict[int, float]) -> None:
        """Start as ``tanh(sum_i weights[i] * x_i)`` through hidden unit 0 (other units keep a small random
        init, which breaks their symmetry): the head then ranks like a fixed hybrid of its features before
        any training, and training refines that instead of starting from noise.

        Linear edges are represented exactly enough by least-squares B-spline coefficients on the grid
        (residual < 1e-3 on [-1, 1] for the default grid), with the SiLU base branch switched off.
        """
        for layer, edges in ((self.inner, weights), (self.outer, {0: 1.0})):
            x = torch.linspace(-1.0, 1.0, 201, dtype=layer.spline_weight.dtype)
            basis = layer.b_splines(x[:, None])[:, 0, :]  # [201, n_basis]
            identity = torch.linalg.lstsq(basis, x[:, None]).solution[:, 0]
            layer.spline_weight[0].mul_(0.1)
            layer.base_weight[0].zero_()
            for i, w in edges.items():
                layer.spline_weight[0, i] = w * identity

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Features [..., in] -> unscaled score [...]; ``bias`` is added by the caller after the temperature."""
        return self.outer(torch.tanh(self.inner(features))).squeeze(-1)


# Names of the fusion head's inputs, in order (docs/routing.md explains each).
FUSION_FEATURES = ("dense", "dense_z", "lexical_z", "context", "resource_fit")
ABSTAIN_FEATURES = ("max_dense", "max_lexical_z", "null_context", "max_score")
# The fusion head's starting point: the z-scored hybrid of dense and lexical scores (issue #12's strongest
# baseline family), with a little of the raw cosine; training moves it from there.
FUSION_INIT = {"dense_z": 0.5, "lexical_z": 0.4, "dense": 0.3}


class LatencyHead(nn.Module):
    """Cauchy(loc, scale) of a tool's latency from its resource embedding and optional runtime context."""

    def __init__(self, config: ToolRouterConfig):
        super().__init__()
        in_dim = config.d_resource + config.runtime_context_dim
        self.net = nn.Sequential(nn.Linear(in_dim, config.latency_hidden_size), nn.GELU())
        self.loc = nn.Linear(config.latency_hidden_size, 1)
        # Unit latency scale at init (carried by the layer: see _init.py for why not in _init_weights).
        self.scale = with_init(nn.Linear(config.latency_hidden_size, 1), unit_softplus_scale)

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
        apply_special_init(module)
        if isinstance(module, ToolRouterModel):
            # CLIP-style learnable temperature, stored as log(1/T).
            module.logit_scale.fill_(-torch.log(torch.tensor(float(self.config.init_temperature))).item())
            module.null_tool.normal_(std=self.config.initializer_range)
        elif isinstance(module, KANLayer):
            module.reset_parameters()
        elif isinstance(module, FusionKAN):
            module.inner.reset_parameters()
            module.outer.reset_parameters()
            if module is getattr(self, "fusion_head", None):
                # Untrained, the head ranks like the z-normalised dense + lexical hybrid (FUSION_INIT).
                module.init_as_weighted_sum({FUSION_FEATURES.index(k): w for k, w in FUSION_INIT.items()})
                # SigLIP-style negative bias: almost every (query, tool) pair of a catalogue is a negative,
                # so the sigmoid starts near 0 instead of spending the first steps getting there.
                module.bias.fill_(-4.0)
            else:
                # The abstain head starts near 0, i.e. at the baselines' rule "abstain when the best tool
                # scores below a threshold" (the margin is abstain - best score), and learns from there.
                module.init_as_weighted_sum({})
                module.bias.zero_()


class ToolRouterModel(RemoteCodeMixin, ToolRouterPreTrainedModel):
    """Routes queries over a tool catalogue. See the module docstring for the data flow and shapes."""

    def __init__(self, config: ToolRouterConfig):
        super().__init__(config)
        make_backbone = (
            (lambda: MambaModel(_mamba_config(config)))
            if config.encoder_type == "mamba"
            else (lambda: _pretrained_encoder(config))
        )
        self.query_encoder = TextEncoder(make_backbone(), config.d_model)
        tool_backbone = self.query_encoder.mamba if config.share_encoder else make_backbone()
        self.tool_encoder = TextEncoder(tool_backbone, config.d_tool, shared=config.share_encoder)
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
        if config.matching == "fusion":
            self.fusion_head = FusionKAN(len(FUSION_FEATURES), config)
            self.abstain_head = FusionKAN(len(ABSTAIN_FEATURES), config)
            self.resource_query = nn.Linear(config.d_model, config.d_resource, bias=False)
        self.latency_head = LatencyHead(config)
        self.post_init()

    @classmethod
    def from_pretrained_encoder(cls, encoder_path: str, **config_kwargs) -> ToolRouterModel:
        """A v2 router whose query and tool encoders start from the transformers encoder in ``encoder_path``
        (e.g. ``causalqwen.training.minilm_path()``), read locally; the rest is freshly initialised.

        The tool projection starts as the identity (``d_tool`` = encoder width by default), so tool-set
        attention first sees the pretrained sentence embeddings unchanged. After this, the encoder weights
        are part of the router: ``save_pretrained`` writes them and loading never needs ``encoder_path``.
        """
        config = ToolRouterConfig.for_pretrained_encoder(encoder_path, **config_kwargs)
        model = cls(config)
        # transformers' load report would list the checkpoint's unused pooler as "UNEXPECTED": the router
        # pools by mean on purpose, and any missing encoder weight is caught below instead.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            pretrained = _without_pooler(AutoModel.from_pretrained, encoder_path, local_files_only=True)
        finally:
            hf_logging.set_verbosity(verbosity)
        backbones = [model.query_encoder.mamba]
        if model.tool_encoder.mamba is not model.query_encoder.mamba:
            backbones.append(model.tool_encoder.mamba)
        state = pretrained.state_dict()
        for backbone in backbones:
            missing, _ = backbone.load_state_dict(state, strict=False)
            if missing:
                raise ValueError(f"{encoder_path}: encoder weights missing for {missing[:5]}")
        proj = model.tool_encoder.proj
        if proj.in_features == proj.out_features:
            with torch.no_grad():
                proj.weight.copy_(torch.eye(proj.in_features))
                proj.bias.zero_()
        return model

    # ----------------------------------------------------------------- validation
    def _check_tools(self, tool_input_ids, tool_attention_mask, resource_vectors, tool_mask) -> None:
        if tool_input_ids is None or resource_vectors is None:
            raise ValueError(
                "tool_input_ids (or tool_text_embeddings) and resource_vectors are required when no "
                "tool_cache is given"
            )
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
        check_finite(resource_vectors, "resource_vectors contain NaN or inf")
        if tool_mask is not None and tool_mask.shape != set_shape:
            raise ValueError(f"tool_mask {tuple(tool_mask.shape)} must have shape {tuple(set_shape)}")

    # ----------------------------------------------------------------- tools
    def encode_tools(
        self,
        tool_input_ids: torch.Tensor | None = None,
        tool_attention_mask: torch.Tensor | None = None,
        resource_vectors: torch.Tensor | None = None,
        tool_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        tool_text_embeddings: torch.Tensor | None = None,
    ) -> ToolEmbeddingCache:
        """Encode a tool set once ([T, Lt] shared by all queries, or [B, T, Lt]); see ToolEmbeddingCache.

        ``tool_text_embeddings`` ([T, E] or [B, T, E], the tool encoder's pooled output, e.g. precomputed
        with a frozen encoder) replaces ``tool_input_ids``: only tool-set attention and the resource MLP run.
        """
        if tool_text_embeddings is not None:
            if tool_input_ids is not None:
                raise ValueError("pass either tool_input_ids or tool_text_embeddings, not both")
            if tool_text_embeddings.shape[-1] != self.tool_encoder.hidden_size:
                raise ValueError(
                    f"tool_text_embeddings must be {self.tool_encoder.hidden_size}-d, got "
                    f"{tool_text_embeddings.shape[-1]}"
                )
            # Shape checks against a stand-in id tensor of the same tool-set shape.
            self._check_tools(tool_text_embeddings[..., :1], None, resource_vectors, tool_mask)
            set_shape, device = tool_text_embeddings.shape[:-1], tool_text_embeddings.device
            text_states = tool_text_embeddings.to(self.tool_encoder.proj.weight.dtype)
        else:
            self._check_tools(tool_input_ids, tool_attention_mask, resource_vectors, tool_mask)
            set_shape, device = tool_input_ids.shape[:-1], tool_input_ids.device
            if tool_attention_mask is None:
                tool_attention_mask = torch.ones_like(tool_input_ids)
            text_states = self.tool_encoder.embed(tool_input_ids, tool_attention_mask)
        if tool_mask is None:
            tool_mask = torch.ones(set_shape, dtype=torch.bool, device=device)
        tool_mask = tool_mask.bool()
        text = self.tool_encoder.proj(text_states)
        resource_states = self.resource_mlp(resource_vectors.to(text.dtype))
        encoded = self.tool_set_encoder(
            torch.cat([text, resource_states], dim=-1),
            key_padding_mask=~tool_mask,
            return_all_attentions=output_attentions,
        )
        tool_states, attentions = encoded if output_attentions else (encoded, None)
        latency_loc, latency_scale = self.tool_latency(resource_states)
        # Only the fusion head reads the unit-normalised states; other matchers normalise per call.
        build = ToolEmbeddingCache.with_units if self.config.matching == "fusion" else ToolEmbeddingCache
        return build(
            tool_states=tool_states,
            resource_states=resource_states,
            tool_mask=tool_mask,
            tool_set_attentions=tuple(attentions) if output_attentions else None,
            text_states=text_states,
            latency_loc=latency_loc,
            latency_scale=latency_scale,
        )

    def tool_latency(self, resource_states: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-tool latency (loc, scale) when no runtime context enters it, else ``(None, None)``: then it
        is a property of the tool set, computed once per cache instead of once per query."""
        if self.config.runtime_context_dim:
            return None, None
        return self.latency_head(resource_states, None)

    def _match(self, query: torch.Tensor, tools: torch.Tensor) -> torch.Tensor:
        """query [B, d], tools [B, T, d] -> logits [B, T] (cosine / temperature, or KAN on the product)."""
        q = nn.functional.normalize(query, dim=-1)[:, None, :]
        t = nn.functional.normalize(tools, dim=-1)
        if self.kan_head is not None:
            # Unit-vector products lie in [-1, 1] per coordinate: the KAN grid range.
            return self.kan_head(q * t).squeeze(-1) * self.logit_scale.exp()
        return (q * t).sum(-1) * self.logit_scale.exp()

    def fusion_features(
        self,
        query_text: torch.Tensor,
        query: torch.Tensor,
        text_units: torch.Tensor,
        tool_units: torch.Tensor,
        resource_states: torch.Tensor,
        context_mask: torch.Tensor,
        lexical_scores: torch.Tensor | None,
    ) -> torch.Tensor:
        """The fusion head's inputs [B, T, len(FUSION_FEATURES)], each in [-1, 1].

        ``text_units`` / ``tool_units`` are the unit-normalised pooled text and tool-set states
        (``ToolEmbeddingCache.text_units`` / ``tool_units``). Tool tensors are [T, ...] (one catalogue shared
        by the batch: scored with one matmul, never expanded to [B, T, ...]) or [B, T, ...].

        z-scores are taken over ``context_mask`` (the tool set the tools were encoded in), never over the
        scored subset, so a tool's features do not depend on which other candidates a query offers.
        """
        dense = _pairwise_dot(nn.functional.normalize(query_text, dim=-1), text_units)
        context = _pairwise_dot(nn.functional.normalize(query, dim=-1), tool_units)
        lexical = (
            torch.zeros_like(dense)
            if lexical_scores is None
            else _zscore(lexical_scores.to(dense.dtype), context_mask)
        )
        fit = torch.tanh(
            _pairwise_dot(self.resource_query(query), resource_states) / resource_states.shape[-1] ** 0.5
        )
        return torch.stack([dense, _zscore(dense, context_mask), lexical, context, fit], dim=-1)

    def _fusion_scores(self, query_text, query, tool_cache, tool_states, resource_states, context_mask,
                       lexical_scores):  # fmt: skip
        """Fusion scores [B, T] over the context set and the abstain logit [B] (matching="fusion")."""
        if tool_cache.text_states is None:
            raise ValueError(
                "this tool_cache has no text_states (built by an older version): re-encode the tools"
            )
        text_units = tool_cache.text_units
        if text_units is None:
            text_units = nn.functional.normalize(tool_cache.text_states, dim=-1)
        if tool_cache.tool_units is not None and tool_states is tool_cache.tool_states:
            tool_units = tool_cache.tool_units
        else:
            tool_units = nn.functional.normalize(tool_states, dim=-1)
        features = self.fusion_features(query_text, query, text_units, tool_units, resource_states,
                                        context_mask, lexical_scores)  # fmt: skip
        scale = self.logit_scale.exp()
        scores = self.fusion_head(features) * scale + self.fusion_head.bias
        null_context = (
            nn.functional.normalize(query, dim=-1) * nn.functional.normalize(self.null_tool, dim=-1)
        ).sum(-1)
        abstain_features = torch.stack(
            [
                _masked_max(features[..., 0], context_mask),
                _masked_max(features[..., 2], context_mask),
                null_context,
                torch.tanh(_masked_max(scores, context_mask) / 10.0),
            ],
            dim=-1,
        )
        return scores, self.abstain_head(abstain_features) * scale + self.abstain_head.bias

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        query_input_ids: torch.Tensor | None = None,
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
        lexical_scores: torch.Tensor | None = None,
        query_embeddings: torch.Tensor | None = None,
        tool_text_embeddings: torch.Tensor | None = None,
        **kwargs,
    ) -> ToolRouterOutput:
        """Score the tools for each query.

        Tools come either as ``tool_input_ids``/``tool_attention_mask``/``resource_vectors`` ([T, ...] shared
        or [B, T, ...]), as ``tool_text_embeddings`` + ``resource_vectors``, or as a precomputed
        ``tool_cache`` (then the tool encoders do not run). ``tool_mask`` [B,T] or [T] (1 = candidate)
        restricts scoring; with a cache it is combined with the cache's mask and does not change the tool
        set the states (and fusion z-scores) were computed over. ``labels`` [B,T] multi-hot (an all-zero
        row trains the abstain score); ``latency_labels`` [B,T] (NaN or negative = missing);
        ``runtime_context`` [B, runtime_context_dim]; ``lexical_scores`` [B,T] (raw BM25 scores of each
        query against each tool; used by ``matching="fusion"``, zeros when omitted); ``query_embeddings``
        [B, E] replaces ``query_input_ids`` with the query encoder's pooled output.
        """
        query_text = self._encode_queries(query_input_ids, query_attention_mask, query_embeddings)
        batch = query_text.shape[0]
        if tool_cache is None:
            tool_cache = self.encode_tools(tool_input_ids, tool_attention_mask, resource_vectors, tool_mask,
                                           output_attentions, tool_text_embeddings)  # fmt: skip
            score_mask = tool_cache.tool_mask
        elif tool_input_ids is not None or resource_vectors is not None or tool_text_embeddings is not None:
            raise ValueError("pass either tool_cache or tool_input_ids/resource_vectors, not both")
        elif tool_mask is not None:
            if tool_mask.shape != tool_cache.tool_mask.shape[-tool_mask.dim() :]:
                raise ValueError(f"tool_mask {tuple(tool_mask.shape)} does not match the cached tool set")
            score_mask = tool_cache.tool_mask & tool_mask.bool()
        else:
            score_mask = tool_cache.tool_mask
        tool_states, resource_states, context_mask = (
            tool_cache.tool_states,
            tool_cache.resource_states,
            tool_cache.tool_mask,
        )
        # A shared catalogue ([T, ...]) is expanded to [B, T, ...] only as views; the fusion scores work on
        # the [T, ...] tensors directly, and the per-tool latency comes from the cache (no per-query copies
        # of the catalogue's work).
        shared_tools, shared_resources = tool_states, resource_states
        if tool_states.dim() == 2:
            tool_states, resource_states = (
                tool_states.expand(batch, -1, -1),
                resource_states.expand(batch, -1, -1),
            )
        context_mask, score_mask = (
            m.expand(batch, -1) if m.dim() == 1 else m for m in (context_mask, score_mask)
        )
        if tool_states.shape[0] != batch or score_mask.shape[0] != batch:
            raise ValueError(f"tool set batch {tool_states.shape[0]} does not match query batch {batch}")
        if lexical_scores is not None:
            if lexical_scores.shape != score_mask.shape:
                raise ValueError(
                    f"lexical_scores {tuple(lexical_scores.shape)} must have shape [B, T] = {tuple(score_mask.shape)}"
                )
            check_finite(lexical_scores, "lexical_scores contain NaN or inf")
        runtime_context = self._check_runtime_context(runtime_context, batch, tool_states)

        query = self.query_encoder.proj(query_text)
        if self.config.matching == "fusion":
            scores, abstain_score = self._fusion_scores(query_text, query, tool_cache, shared_tools, shared_resources,
                                                        context_mask, lexical_scores)  # fmt: skip
        else:
            scores = self._match(query, tool_states)
            abstain_score = self._match(query, self.null_tool.expand(batch, 1, -1)).squeeze(-1)
        scores = scores.masked_fill(~score_mask, torch.finfo(scores.dtype).min)
        if runtime_context is None and tool_cache.latency_loc is not None:
            latency_loc, latency_scale = tool_cache.latency_loc, tool_cache.latency_scale
            if latency_loc.dim() == 1:
                latency_loc, latency_scale = latency_loc.expand(batch, -1), latency_scale.expand(batch, -1)
        else:
            latency_loc, latency_scale = self.latency_head(resource_states, runtime_context)

        loss = None
        if labels is not None or latency_labels is not None:
            loss = self.compute_loss(
                scores, abstain_score, score_mask, labels, latency_loc, latency_scale, latency_labels
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

    def _encode_queries(self, query_input_ids, query_attention_mask, query_embeddings) -> torch.Tensor:
        """Pooled query states [B, E] from token ids, or the given ``query_embeddings`` checked."""
        if query_embeddings is not None:
            if query_input_ids is not None:
                raise ValueError("pass either query_input_ids or query_embeddings, not both")
            if query_embeddings.dim() != 2 or query_embeddings.shape[-1] != self.query_encoder.hidden_size:
                raise ValueError(
                    f"query_embeddings must be [B, {self.query_encoder.hidden_size}], got "
                    f"{tuple(query_embeddings.shape)}"
                )
            return query_embeddings.to(self.query_encoder.proj.weight.dtype)
        if query_input_ids is None:
            raise ValueError("query_input_ids (or query_embeddings) is required")
        if query_input_ids.dim() != 2:
            raise ValueError(f"query_input_ids must be [B, Lq], got {tuple(query_input_ids.shape)}")
        if query_attention_mask is None:
            query_attention_mask = torch.ones_like(query_input_ids)
        elif query_attention_mask.shape != query_input_ids.shape:
            raise ValueError(
                f"query_attention_mask {tuple(query_attention_mask.shape)} must match query_input_ids "
                f"{tuple(query_input_ids.shape)}"
            )
        return self.query_encoder.embed(query_input_ids, query_attention_mask)

    def _check_runtime_context(self, runtime_context, batch: int, like: torch.Tensor) -> torch.Tensor | None:
        if runtime_context is not None:
            if (
                runtime_context.shape != (batch, self.config.runtime_context_dim)
                or not self.config.runtime_context_dim
            ):
                raise ValueError(
                    f"runtime_context must be [B={batch}, runtime_context_dim={self.config.runtime_context_dim}], "
                    f"got {tuple(runtime_context.shape)}"
                )
            check_finite(runtime_context, "runtime_context contains NaN or inf")
            return runtime_context
        if self.config.runtime_context_dim:
            return torch.zeros(batch, self.config.runtime_context_dim, dtype=like.dtype, device=like.device)
        return None

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


__all__ = [
    "ABSTAIN_FEATURES",
    "FUSION_FEATURES",
    "ToolEmbeddingCache",
    "ToolRouterModel",
    "ToolRouterOutput",
    "ToolRouterPreTrainedModel",
]
