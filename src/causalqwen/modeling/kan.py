"""A small in-house Kolmogorov-Arnold layer (B-spline basis on a fixed grid plus a SiLU base branch).

Each edge i->j applies ``w_base[j,i] * silu(x_i) + sum_k w_spline[j,i,k] * B_k(x_i)``; ``B_k`` are the
``grid_size + spline_order`` uniform B-splines of order ``spline_order`` on ``grid_range`` (the knot
vector is extended by ``spline_order`` knots each side so the basis is a partition of unity inside the
range). Inputs outside the range get only the base branch (all splines are zero there).
Parameters: ``in * out * (grid_size + spline_order + 1)``. The grid is fixed (no grid update) for
simplicity and determinism.
"""

from __future__ import annotations

import torch
from torch import nn


class KANLayer(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        grid_size: int = 8,
        spline_order: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
    ):
        super().__init__()
        if grid_size < 1 or spline_order < 0:
            raise ValueError(f"grid_size must be >= 1 and spline_order >= 0, got {grid_size}, {spline_order}")
        low, high = float(grid_range[0]), float(grid_range[1])
        if not high > low:
            raise ValueError(f"grid_range must be increasing, got {grid_range}")
        self.in_features, self.out_features = in_features, out_features
        self.grid_size, self.spline_order = grid_size, spline_order
        # Knots are recomputed per call rather than stored as a buffer: a non-persistent buffer is not
        # re-materialised when transformers loads a model from the meta device.
        self.grid_low, self.grid_step = low, (high - low) / grid_size
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, grid_size + spline_order))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.base_weight, a=5**0.5)
        nn.init.normal_(self.spline_weight, std=0.1 / (self.in_features**0.5))

    def b_splines(self, x: torch.Tensor) -> torch.Tensor:
        """Cox-de Boor recursion: x [..., in] -> basis [..., in, grid_size + spline_order]."""
        steps = torch.arange(-self.spline_order, self.grid_size + self.spline_order + 1, device=x.device)
        knots = (self.grid_low + self.grid_step * steps).to(x.dtype)
        x = x.unsqueeze(-1)
        basis = ((x >= knots[:-1]) & (x < knots[1:])).to(x.dtype)
        for k in range(1, self.spline_order + 1):
            # Uniform knots: every denominator of order k is k * grid_step, so one scalar multiply replaces
            # two tensor divisions (the fusion head evaluates this over every (query, tool) pair).
            inv = 1.0 / (k * self.grid_step)
            basis = ((x - knots[: -(k + 1)]) * basis[..., :-1] + (knots[k + 1 :] - x) * basis[..., 1:]) * inv
        return basis

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"KANLayer expects last dim {self.in_features}, got {x.shape[-1]}")
        base = nn.functional.linear(nn.functional.silu(x), self.base_weight)
        spline = torch.einsum("...ik,oik->...o", self.b_splines(x), self.spline_weight)
        return base + spline

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"grid_size={self.grid_size}, spline_order={self.spline_order}"
        )


@torch.no_grad()
def kan_edge_functions(layer: KANLayer, x: torch.Tensor) -> torch.Tensor:
    """The learned 1-d function of every edge evaluated on the points ``x`` [N]: [N, out, in].

    Edge (j, i) is ``w_base[j,i] * silu(x) + sum_k w_spline[j,i,k] * B_k(x)``; the layer's output j is the
    sum over i of its edges, which is what plots of a KAN show.
    """
    inputs = x.to(layer.base_weight.dtype)[:, None].expand(-1, layer.in_features)
    base = nn.functional.silu(inputs)[:, None, :] * layer.base_weight[None]
    spline = torch.einsum("nik,oik->noi", layer.b_splines(inputs), layer.spline_weight)
    return base + spline


__all__ = ["KANLayer", "kan_edge_functions"]
