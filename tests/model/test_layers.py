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


def _linear_grads(layer: torch.nn.Module, x: torch.Tensor, device_type: str):
    """Output and (input, weight) gradients of ``layer(x)`` under bf16 autocast."""
    x = x.clone().requires_grad_()
    with torch.autocast(device_type, dtype=torch.bfloat16):
        y = layer(x)
    (y.float() * torch.linspace(-1, 1, y.shape[-1], device=x.device)).sum().backward()
    return y, x.grad, layer.weight.grad


@pytest.mark.parametrize("compile", [False, True])
def test_linear_under_autocast_matches_nn_linear(compile: bool) -> None:
    """lmkit's Linear takes its own backward under autocast; on CPU (no fp32-output GEMM) it must
    give nn.Linear's output and gradients bit for bit, eager and through AOTAutograd."""
    from lmkit.model.layers import Linear

    torch.manual_seed(0)
    ours, ref = Linear(16, 24), torch.nn.Linear(16, 24, bias=False)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 16)  # fp32 input, as an fp32 residual stream gives
    run = torch.compile(ours, backend="aot_eager") if compile else ours
    y, gx, gw = _linear_grads(run, x, "cpu")
    y_ref, gx_ref, gw_ref = _linear_grads(ref, x, "cpu")
    assert y.dtype == torch.bfloat16 and gx.dtype == torch.float32 and gw.dtype == torch.float32
    for got, want in ((y, y_ref), (gx, gx_ref), (gw, gw_ref)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


@pytest.mark.gpu
def test_linear_weight_gradient_in_fp32_on_cuda() -> None:
    """On CUDA the weight gradient leaves the GEMM in fp32: closer to the fp32 gradient than
    nn.Linear's (rounded to bf16 before the cast), with the same output and input gradient."""
    from lmkit.model.layers import Linear

    torch.manual_seed(0)
    ours, ref = Linear(256, 384).cuda(), torch.nn.Linear(256, 384, bias=False).cuda()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(8, 512, 256, device="cuda")
    y, gx, gw = _linear_grads(ours, x, "cuda")
    y_ref, gx_ref, gw_ref = _linear_grads(ref, x, "cuda")
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=0)
    # fp32 truth: the same bf16-rounded operands, multiplied in fp64
    xb = x.to(torch.bfloat16).double().reshape(-1, 256)
    g = (torch.ones_like(y, dtype=torch.float32) * torch.linspace(-1, 1, 384, device="cuda")).to(torch.bfloat16).double().reshape(-1, 384)
    truth = g.t() @ xb
    err, err_ref = (gw.double() - truth).abs().max(), (gw_ref.double() - truth).abs().max()
    assert err < err_ref / 4, (err, err_ref)
