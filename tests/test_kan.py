import math

import pytest
import torch
from torch import nn

from causalqwen.modeling.kan import KANLayer


def test_basis_is_partition_of_unity_inside_range():
    layer = KANLayer(3, 2, grid_size=5, spline_order=3)
    x = torch.linspace(-0.99, 0.99, 50).unsqueeze(-1).expand(50, 3)
    basis = layer.b_splines(x)
    assert basis.shape == (50, 3, 8)
    torch.testing.assert_close(basis.sum(-1), torch.ones(50, 3))
    assert sum(p.numel() for p in layer.parameters()) == 3 * 2 * (5 + 3 + 1)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="grid_range"):
        KANLayer(1, 1, grid_range=(1.0, -1.0))
    with pytest.raises(ValueError, match="last dim 2"):
        KANLayer(2, 1)(torch.zeros(4, 3))


def _fit(model: nn.Module, x, y, steps=600, lr=0.03) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y).item()


def test_kan_fits_nonlinear_function_an_equal_size_mlp_cannot():
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 256).unsqueeze(-1)
    y = torch.sin(3 * math.pi * x)
    # KAN 1->1, grid 18, cubic: 1*(18+3+1) = 22 params; MLP 1->7->1: 7+7+7+1 = 22 params.
    kan = KANLayer(1, 1, grid_size=18, spline_order=3)
    mlp = nn.Sequential(nn.Linear(1, 7), nn.Tanh(), nn.Linear(7, 1))
    n_kan = sum(p.numel() for p in kan.parameters())
    n_mlp = sum(p.numel() for p in mlp.parameters())
    assert n_kan == n_mlp == 22
    mse_kan, mse_mlp = _fit(kan, x, y), _fit(mlp, x, y)
    print(f"KAN mse={mse_kan:.5f} MLP mse={mse_mlp:.5f}")
    assert mse_kan < 0.01
    assert mse_mlp > 10 * mse_kan
