"""Training's one-GEMM q/k/v (lmkit/kernels/qkv.py) against the plain attention's three projections.

The backward op (qkv_kernel.rope_qkv_backward) runs a Triton kernel on a Triton device; on CPU that
kernel runs under Triton's interpreter in a subprocess, and the GPU test compares it at GPT-2
small's shape. Its torch reference (qkv.rope_backward_reference) is checked against autograd.
"""

from __future__ import annotations

import copy

import pytest
import torch
from triton_interpreter import requires_triton, run_interpreted

from lmkit.kernels import qkv as qkv_kernel
from lmkit.kernels.linear import Fp32GradLinear
from lmkit.kernels.qkv import StackedQKVAttention
from lmkit.model import CausalSelfAttention, apply_rope, precompute_rope


def _stacked(attn: CausalSelfAttention) -> StackedQKVAttention:
    """A stacked copy of ``attn`` (same weights), the fp32-gradient Linear on its o_proj too."""
    other = copy.deepcopy(attn)
    Fp32GradLinear.from_linear(other.o_proj, torch.bfloat16)
    return StackedQKVAttention.from_attention(other, torch.bfloat16)


def attention_grads(attn: CausalSelfAttention, x0: torch.Tensor, device: str, fn=None):
    """Output, input gradient and every weight gradient of one bf16-autocast training step."""
    attn.zero_grad(set_to_none=True)
    T, hd = x0.shape[1], attn.head_dim
    cos, sin = precompute_rope(hd, T, device=device)
    x = x0.clone().requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16):
        y = (attn if fn is None else fn)(x, cos, sin)  # (B, T, D)
    (y.float() * torch.linspace(-1, 1, y.shape[-1], device=device)).sum().backward()
    return [y, x.grad, *(p.grad for p in attn.parameters())]


@pytest.mark.parametrize("compile", [None, "aot_eager", "inductor"])
def test_stacked_qkv_attention_equals_separate_projections(compile) -> None:
    """Same output and gradients (input and all four weights, fp32) as three separate GEMMs
    under autocast; the parameters and their state dict stay the separate ones."""
    torch.manual_seed(0)
    attn = CausalSelfAttention(d_model=48, num_heads=3)
    stacked = _stacked(attn)
    x0 = torch.randn(2, 7, 48)
    fn = torch.compile(stacked, backend=compile) if compile else None
    ref = attention_grads(attn, x0, device="cpu")
    got = attention_grads(stacked, x0, device="cpu", fn=fn)
    assert all(g.dtype == torch.float32 for g in got[2:])
    for name, g, r in zip(["out", "x", *(n for n, _ in attn.named_parameters())], got, ref):
        torch.testing.assert_close(g, r, rtol=2e-2, atol=2e-3, msg=lambda m: f"{name}: {m}")
    assert list(stacked.state_dict()) == ["q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"]


def test_stacked_qkv_with_a_cache_is_the_plain_forward() -> None:
    """The path is for training: with a KV cache the stacked layer runs the plain forward."""
    from lmkit.model import KVCache

    torch.manual_seed(0)
    attn = CausalSelfAttention(d_model=32, num_heads=2)
    stacked = StackedQKVAttention.from_attention(copy.deepcopy(attn), torch.bfloat16)
    x, cos, sin = torch.randn(1, 5, 32), *precompute_rope(16, 5)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    outs = []
    for layer in (attn, stacked):
        layer.kv_cache = KVCache(1, 2, 5, 16)
        outs.append(layer(x, cos, sin, torch.arange(5), mask))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def backward_matches_autograd(device: str, dtype: torch.dtype, B=2, T=5, H=3, hd=8) -> None:
    """rope_qkv_backward = autograd through apply_rope on q and k, with v passed through, stacked;
    for gradients of any strides (cuDNN's come back in (B, H, T, hd) order)."""
    torch.manual_seed(H * hd)
    cos, sin = precompute_rope(hd, T, device=device)
    qkv = torch.randn(B, T, 3, H, hd, device=device, dtype=dtype, requires_grad=True)
    c, s = cos[:, None], sin[:, None]
    outs = (apply_rope(qkv[:, :, 0], c, s), apply_rope(qkv[:, :, 1], c, s), qkv[:, :, 2])
    # Gradients laid out (B, H, T, hd) and seen as (B, T, H, hd), as attention's backward gives them.
    grads = [torch.randn(B, H, T, hd, device=device, dtype=dtype).transpose(1, 2) for _ in range(3)]
    (want,) = torch.autograd.grad(outs, qkv, grads)
    got = qkv_kernel.rope_qkv_backward(*grads, cos, sin)
    assert got.shape == (B, T, 3, H, hd) and got.dtype == dtype and got.is_contiguous()
    # bf16: one rounding step apart at most (the interpreter truncates where CUDA rounds)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=2**-7, atol=1e-6)
    torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{dtype} H={H} hd={hd}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_op_equals_autograd_through_apply_rope(dtype: torch.dtype) -> None:
    backward_matches_autograd("cpu", dtype)


def test_backward_op_passes_opcheck() -> None:
    """The op's fake (meta) version gives what the real one gives, so torch.compile traces it."""
    cos, sin = precompute_rope(8, 5)
    grads = [torch.randn(2, 3, 5, 8).transpose(1, 2) for _ in range(3)]
    torch.library.opcheck(qkv_kernel.rope_qkv_backward, (*grads, cos, sin))


_INTERPRETED_CHECKS = """
import torch
from tests.kernels.test_qkv import backward_matches_autograd
for dtype in (torch.float32, torch.bfloat16):
    backward_matches_autograd("cpu", dtype, H=3, hd=8)  # H not a power of 2: masked heads
    backward_matches_autograd("cpu", dtype, B=1, T=3, H=4, hd=16)
print("ok")
"""


@requires_triton
def test_kernel_under_triton_interpreter_matches_autograd() -> None:
    run_interpreted(_INTERPRETED_CHECKS)


def test_cpu_gradients_take_the_torch_path() -> None:
    assert not qkv_kernel.supported(torch.zeros(1, 2, 2, 8))


@pytest.mark.gpu
def test_kernel_and_stacked_attention_on_cuda() -> None:
    """The kernel at GPT-2 small's head shape, and stacked attention against separate on CUDA."""
    assert qkv_kernel.supported(torch.zeros(1, 1, 12, 64, device="cuda"))
    for dtype in (torch.float32, torch.bfloat16):
        backward_matches_autograd("cuda", dtype, B=2, T=64, H=12, hd=64)
    torch.manual_seed(0)
    attn = CausalSelfAttention(d_model=768, num_heads=12).cuda()
    x0 = torch.randn(2, 128, 768, device="cuda")
    ref = attention_grads(attn, x0, device="cuda")
    got = attention_grads(_stacked(attn), x0, device="cuda")
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=2e-2, atol=2e-3)
