import pytest
import torch

from causalqwen.modeling.tool_set import ResourceMLP, ToolSetAttention, ToolSetEncoder


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_seed_001_parameter_counts():
    assert n_params(ResourceMLP(6, 256)) == 134_912
    assert n_params(ToolSetEncoder(1024, 8, num_layers=1)) == 4_200_448
    assert n_params(ToolSetEncoder(1024, 8, num_layers=2)) == 8_400_896
    assert n_params(ToolSetEncoder(1024, 8, num_layers=2, use_ffn=True, dim_feedforward=2048)) == 16_799_744
    assert ToolSetAttention(1024, 8).head_dim == 128


def test_unbatched_and_batched_shapes_and_rows_sum_to_one():
    torch.manual_seed(0)
    enc = ToolSetEncoder(32, 4, num_layers=2, use_ffn=True, dim_feedforward=64).eval()
    x = torch.randn(5, 32)
    out, attn = enc(x, return_all_attentions=True)
    assert out.shape == (5, 32) and len(attn) == 2 and attn[0].shape == (4, 5, 5)
    torch.testing.assert_close(attn[1].sum(-1), torch.ones(4, 5))
    outb, attnb = enc(x.expand(3, 5, 32), return_all_attentions=True)
    assert outb.shape == (3, 5, 32) and attnb[0].shape == (3, 4, 5, 5)
    torch.testing.assert_close(outb[1], out)


def test_padding_and_fully_padded_set_passthrough():
    torch.manual_seed(0)
    enc = ToolSetEncoder(32, 4, num_layers=1, use_ffn=True, dim_feedforward=64).eval()
    x = torch.randn(2, 4, 32)
    kpm = torch.tensor([[False, False, True, True], [True, True, True, True]])
    out, attn = enc(x, key_padding_mask=kpm, return_all_attentions=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], x[1], rtol=0, atol=0)
    assert attn[0][1].abs().sum() == 0
    assert attn[0][0][..., 2:].abs().max() == 0
    # Padded tools do not change the valid tools' outputs.
    torch.testing.assert_close(out[0, :2], enc(x[0, :2]), rtol=1e-5, atol=1e-5)


def test_attn_mask_and_gradient_flow_and_equivariance():
    torch.manual_seed(0)
    enc = ToolSetEncoder(32, 4, num_layers=2).eval()
    x = torch.randn(6, 32, requires_grad=True)
    enc(x).sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is not None for p in enc.parameters())
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        torch.testing.assert_close(enc(x[perm]), enc(x)[perm], rtol=1e-5, atol=1e-5)
        eye_only = torch.full((6, 6), float("-inf")).fill_diagonal_(0.0)
        _, attn = enc(x, attn_mask=eye_only, return_all_attentions=True)
    torch.testing.assert_close(attn[0], torch.eye(6).expand(4, 6, 6))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="divisible"):
        ToolSetAttention(30, 4)
    enc = ToolSetEncoder(32, 4)
    with pytest.raises(ValueError, match="key_padding_mask"):
        enc(torch.randn(2, 3, 32), key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="x must be"):
        enc(torch.randn(32))
