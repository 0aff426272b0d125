"""Layers against oracles: torch.nn.RMSNorm, hand formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmkit.model import CausalSelfAttention, RMSNorm, SwiGLU, apply_rope, precompute_rope


@pytest.mark.parametrize("shape", [(4, 16), (2, 3, 16)])
def test_rmsnorm_matches_torch(shape: tuple[int, ...]) -> None:
    if not hasattr(torch.nn, "RMSNorm"):
        pytest.skip("torch.nn.RMSNorm needs torch >= 2.4")
    torch.manual_seed(0)
    ours, ref = RMSNorm(16, eps=1e-5), torch.nn.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        ours.weight.normal_()
    ref.load_state_dict(ours.state_dict())  # the same name, `weight`
    x = torch.randn(shape) * 3
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-6)


def test_rmsnorm_keeps_low_precision_dtype() -> None:
    x = torch.randn(2, 8, dtype=torch.bfloat16)
    assert RMSNorm(8)(x).dtype == torch.bfloat16


def test_swiglu_formula() -> None:
    torch.manual_seed(0)
    ffn = SwiGLU(8, 12)
    x = torch.randn(3, 8)
    expected = (F.silu(x @ ffn.w1.weight.T) * (x @ ffn.w3.weight.T)) @ ffn.w2.weight.T
    torch.testing.assert_close(ffn(x), expected)
    assert ffn.w1.bias is None and ffn.w2.weight.shape == (8, 12)


def test_attention_matches_hand_written_causal_attention() -> None:
    torch.manual_seed(0)
    B, T, D, H = 2, 6, 16, 4
    hd = D // H
    attn = CausalSelfAttention(D, H)
    cos, sin = precompute_rope(hd, T)
    x = torch.randn(B, T, D)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(B, T, H, hd).transpose(1, 2)  # (B, H, T, hd)

    q = apply_rope(heads(x @ attn.q_proj.weight.T), cos, sin)
    k = apply_rope(heads(x @ attn.k_proj.weight.T), cos, sin)
    v = heads(x @ attn.v_proj.weight.T)
    scores = q @ k.transpose(-1, -2) / hd**0.5  # (B, H, T, T)
    scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)  # (B, T, D)
    torch.testing.assert_close(attn(x, cos, sin), y @ attn.o_proj.weight.T, atol=1e-5, rtol=1e-5)


def test_attention_loads_alone_from_state_dict() -> None:
    src, dst = CausalSelfAttention(16, 2), CausalSelfAttention(16, 2)
    dst.load_state_dict(src.state_dict())
    assert set(src.state_dict()) == {f"{n}_proj.weight" for n in "qkvo"}
    cos, sin = precompute_rope(8, 4)
    x = torch.randn(1, 4, 16)
    torch.testing.assert_close(dst(x, cos, sin), src(x, cos, sin))


def test_attention_rejects_indivisible_heads() -> None:
    with pytest.raises(ValueError):
        CausalSelfAttention(10, 4)
