"""Tool-set building blocks of the ToolRouter: resource encoder and tool-set self-attention (seed 001).

Parameter counts reproduce seed 001 exactly (checked in tests/test_tool_set.py):

* ``ResourceMLP(6, 256)``: 134,912 = Linear(6,256)+LN + Linear(256,256)+LN + Linear(256,256)+LN.
* ``ToolSetEncoder(1024, 8, num_layers=1)``: 4,200,448 (MultiheadAttention 4,198,400 + LayerNorm 2,048);
  2 layers: 8,400,896; 2 layers with FFN 2048: 16,799,744.
"""

from __future__ import annotations

import torch
from torch import nn


class ResourceMLP(nn.Module):
    """Maps a tool's resource vector (e.g. 6 cost/latency/memory features) to ``d_resource``.

    Three Linear+LayerNorm stages; the LayerNorms keep raw resource scales (which differ by orders of
    magnitude between features) from dominating the tool embedding after concatenation.
    """

    def __init__(self, resource_dim: int = 6, d_resource: int = 256, dropout: float = 0.0):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(resource_dim, d_resource),
            nn.LayerNorm(d_resource),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_resource, d_resource),
            nn.LayerNorm(d_resource),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_resource, d_resource),
            nn.LayerNorm(d_resource),
        )

    def forward(self, resource_vectors: torch.Tensor) -> torch.Tensor:
        return self.net(resource_vectors)


def _as_batched(x: torch.Tensor, key_padding_mask: torch.Tensor | None):
    if x.dim() == 2:
        if key_padding_mask is not None and key_padding_mask.dim() != 1:
            raise ValueError(
                f"unbatched x {tuple(x.shape)} needs key_padding_mask of shape [num_tools], "
                f"got {tuple(key_padding_mask.shape)}"
            )
        return x.unsqueeze(0), None if key_padding_mask is None else key_padding_mask.unsqueeze(0), True
    if x.dim() != 3:
        raise ValueError(
            f"x must be [num_tools, d_model] or [batch, num_tools, d_model], got {tuple(x.shape)}"
        )
    if key_padding_mask is not None and key_padding_mask.shape != x.shape[:2]:
        raise ValueError(
            f"key_padding_mask must have shape {tuple(x.shape[:2])}, got {tuple(key_padding_mask.shape)}"
        )
    return x, key_padding_mask, False


class ToolSetAttention(nn.Module):
    """One post-norm self-attention block over the tools of a set: ``LN(x + Dropout(MHA(x, x, x)))``.

    ``key_padding_mask`` follows torch's convention (True = padded tool, ignored as a key). A set whose
    tools are all padded would make softmax NaN; such a set passes through unchanged (output == input,
    attention weights zero) so batches may contain empty slots.
    """

    def __init__(self, d_model: int = 1024, num_heads: int = 8, dropout: float = 0.1):
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, d_model // num_heads
        self.attention = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        return_attention: bool = False,
    ):
        """x: [T, d] or [B, T, d]. Returns output (same shape) and, if asked, weights [(B,) H, T, T]."""
        xb, kpm, unbatched = _as_batched(x, key_padding_mask)
        empty = None
        if kpm is not None:
            kpm = kpm.bool()
            empty = kpm.all(dim=-1)
            # Unmask empty sets so softmax stays finite; their output is replaced by the input below.
            kpm = kpm & ~empty.unsqueeze(-1)
        attn_out, weights = self.attention(
            xb,
            xb,
            xb,
            key_padding_mask=kpm,
            attn_mask=attn_mask,
            need_weights=return_attention,
            average_attn_weights=False,
        )
        out = self.norm(xb + self.dropout(attn_out))
        # Unconditional under torch.compile (no data-dependent branch); eagerly, only when a set is empty.
        if empty is not None and (torch.compiler.is_compiling() or bool(empty.any())):
            out = torch.where(empty[:, None, None], xb, out)
            if weights is not None:
                weights = weights.masked_fill(empty[:, None, None, None], 0.0)
        if unbatched:
            out = out.squeeze(0)
            weights = None if weights is None else weights.squeeze(0)
        return (out, weights) if return_attention else out

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, num_heads={self.num_heads}, head_dim={self.head_dim}"


class ToolSetEncoder(nn.Module):
    """``num_layers`` x [ToolSetAttention -> optional post-norm FFN]; contextualises tool embeddings."""

    def __init__(
        self,
        d_model: int = 1024,
        num_heads: int = 8,
        num_layers: int = 1,
        dropout: float = 0.1,
        dim_feedforward: int | None = None,
        use_ffn: bool = False,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        dim_feedforward = 4 * d_model if dim_feedforward is None else dim_feedforward
        self.num_layers, self.use_ffn, self.dim_feedforward = num_layers, use_ffn, dim_feedforward
        self.layers = nn.ModuleList(ToolSetAttention(d_model, num_heads, dropout) for _ in range(num_layers))
        self.ffns = (
            nn.ModuleList(self._make_ffn(d_model, dim_feedforward, dropout) for _ in range(num_layers))
            if use_ffn
            else None
        )
        self.ffn_norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(num_layers)) if use_ffn else None

    @staticmethod
    def _make_ffn(d_model: int, dim_feedforward: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(d_model, dim_feedforward),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(dim_feedforward, d_model),
            nn.Dropout(dropout),
        )

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        return_all_attentions: bool = False,
    ):
        """Returns the output (same shape as x) and, if asked, a list of per-layer attention weights."""
        attentions = []
        empty = None
        if key_padding_mask is not None:
            empty = key_padding_mask.bool().all(dim=-1)
        for i, layer in enumerate(self.layers):
            # Weights only when asked: need_weights=True materialises [B, H, T, T] and leaves torch's fused
            # attention path (1.6 GB at 10k tools, 4 heads).
            if return_all_attentions:
                x, weights = layer(x, key_padding_mask, attn_mask, return_attention=True)
                attentions.append(weights)
            else:
                x = layer(x, key_padding_mask, attn_mask)
            if self.ffns is not None:
                ffn_out = self.ffn_norms[i](x + self.ffns[i](x))
                # Empty sets stay a passthrough through the FFN as well (see ToolSetAttention).
                x = ffn_out if empty is None else torch.where(empty[..., None, None], x, ffn_out)
        return (x, attentions) if return_all_attentions else x

    def get_output_dim(self) -> int:
        return self.layers[0].d_model


__all__ = ["ResourceMLP", "ToolSetAttention", "ToolSetEncoder"]
