"""RoPE (lmkit/model/rope.py): the tables and rotation against their properties and HF's
formulation; training's stacked q/k/v path (one GEMM, rope.rope_qkv) against the separate
projections.

The backward op (rope.rope_qkv_backward) runs a Triton kernel on CUDA; on CPU that kernel runs
under Triton's interpreter in a subprocess, and the GPU test compares it at GPT-2 small's shape.
"""

from __future__ import annotations

import pytest
import torch
from triton_interpreter import constants, requires_triton, run_interpreted

from lmkit.model import CausalSelfAttention, apply_rope, precompute_rope
from lmkit.model import layers, rope


def test_rope_tables_shape_and_dtype() -> None:
    cos, sin = precompute_rope(head_dim=8, context_length=5, theta=10000.0)
    assert cos.shape == sin.shape == (5, 4)
    assert cos.dtype == torch.float32
    torch.testing.assert_close(cos[0], torch.ones(4))  # position 0 is not rotated
    torch.testing.assert_close(cos**2 + sin**2, torch.ones(5, 4))


def test_rope_rejects_odd_head_dim() -> None:
    with pytest.raises(ValueError):
        precompute_rope(head_dim=7, context_length=4)


def test_rope_preserves_norm() -> None:
    cos, sin = precompute_rope(8, 6)
    x = torch.randn(1, 2, 6, 8)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


def test_rope_pairs_halves_like_hf_rotate_half() -> None:
    """Dimension j pairs with j + hd/2 (HF Llama), written here in HF's own formulation."""
    hd, T = 8, 5
    cos, sin = precompute_rope(hd, T)
    x = torch.randn(1, 1, T, hd)
    cos_full, sin_full = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)  # (T, hd)
    rotate_half = torch.cat((-x[..., hd // 2 :], x[..., : hd // 2]), dim=-1)
    torch.testing.assert_close(apply_rope(x, cos, sin), x * cos_full + rotate_half * sin_full)


def test_rope_scores_depend_only_on_relative_position() -> None:
    """q rotated at m dotted with k rotated at n depends only on m - n."""
    torch.manual_seed(0)
    hd, T = 16, 32
    cos, sin = precompute_rope(hd, T)
    q, k = torch.randn(hd), torch.randn(hd)

    def score(m: int, n: int) -> torch.Tensor:
        qm = apply_rope(q.view(1, 1, 1, hd), cos[m : m + 1], sin[m : m + 1])
        kn = apply_rope(k.view(1, 1, 1, hd), cos[n : n + 1], sin[n : n + 1])
        return (qm * kn).sum()

    for offset in (0, 1, 5):
        ref = score(offset, 0)
        for shift in (3, 10, 20):
            torch.testing.assert_close(score(offset + shift, shift), ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(1, 0), score(2, 0))  # yet it does depend on the offset


def attention_grads(attn: CausalSelfAttention, x0: torch.Tensor, stacked: bool, device: str, fn=None):
    """Output, input gradient and every weight gradient of one bf16-autocast training step."""
    attn.zero_grad(set_to_none=True)
    T, hd = x0.shape[1], attn.head_dim
    cos, sin = precompute_rope(hd, T, device=device)
    x = x0.clone().requires_grad_()
    with constants(layers, STACKED_QKV=stacked), torch.autocast(device, dtype=torch.bfloat16):
        y = (attn if fn is None else fn)(x, cos, sin)  # (B, T, D)
    (y.float() * torch.linspace(-1, 1, y.shape[-1], device=device)).sum().backward()
    return [y, x.grad, *(p.grad for p in attn.parameters())]


@pytest.mark.parametrize(
    ("compile", "copy_v"), [(None, False), (None, True), ("aot_eager", False), ("inductor", False)]
)
def test_stacked_qkv_attention_equals_separate_projections(compile, copy_v, monkeypatch) -> None:
    """Same output and gradients (input and all four weights, fp32) as three separate GEMMs,
    whether v is copied out of the stacked output or left a view of it; the parameters and
    their state dict stay the separate ones."""
    monkeypatch.setattr(rope, "COPY_V", copy_v)
    torch.manual_seed(0)
    attn = CausalSelfAttention(d_model=48, num_heads=3)
    x0 = torch.randn(2, 7, 48)
    fn = torch.compile(attn, backend=compile) if compile else None
    ref = attention_grads(attn, x0, stacked=False, device="cpu")
    got = attention_grads(attn, x0, stacked=True, device="cpu", fn=fn)
    assert all(g.dtype == torch.float32 for g in got[2:])
    for name, g, r in zip(["out", "x", *(n for n, _ in attn.named_parameters())], got, ref):
        torch.testing.assert_close(g, r, rtol=2e-2, atol=2e-3, msg=lambda m: f"{name}: {m}")
    assert list(attn.state_dict()) == ["q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"]


def test_stacked_qkv_runs_only_when_training_under_autocast() -> None:
    """Evaluation (no grad) and fp32 training keep the three projections: bit-identical results."""
    torch.manual_seed(0)
    attn = CausalSelfAttention(d_model=32, num_heads=2)
    x = torch.randn(1, 5, 32)
    cos, sin = precompute_rope(16, 5)
    for stacked in (True, False):
        with constants(layers, STACKED_QKV=stacked):
            with torch.no_grad():
                out = attn(x, cos, sin)
            fp32 = attn(x, cos, sin)
        if stacked:
            out_s, fp32_s = out, fp32
    torch.testing.assert_close(out_s, out, rtol=0, atol=0)
    torch.testing.assert_close(fp32_s, fp32, rtol=0, atol=0)


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
    got = rope.rope_qkv_backward(*grads, cos, sin)
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
    torch.library.opcheck(rope.rope_qkv_backward, (*grads, cos, sin))


_INTERPRETED_CHECKS = """
import torch
from lmkit.model import rope
from tests.model.test_rope import backward_matches_autograd
rope.supported = lambda d: True  # the interpreter runs on CPU tensors
for dtype in (torch.float32, torch.bfloat16):
    backward_matches_autograd("cpu", dtype, H=3, hd=8)  # H not a power of 2: masked heads
    backward_matches_autograd("cpu", dtype, B=1, T=3, H=4, hd=16)
print("ok")
"""


@requires_triton
def test_kernel_under_triton_interpreter_matches_autograd() -> None:
    run_interpreted(_INTERPRETED_CHECKS)


def test_cpu_gradients_take_the_torch_path() -> None:
    assert not rope.supported(torch.zeros(1, 2, 2, 8))


@pytest.mark.gpu
def test_kernel_and_stacked_attention_on_cuda() -> None:
    """The kernel at GPT-2 small's head shape, and stacked attention against separate on CUDA."""
    assert rope.supported(torch.zeros(1, 1, 12, 64, device="cuda"))
    for dtype in (torch.float32, torch.bfloat16):
        backward_matches_autograd("cuda", dtype, B=2, T=64, H=12, hd=64)
    torch.manual_seed(0)
    attn = CausalSelfAttention(d_model=768, num_heads=12).cuda()
    x0 = torch.randn(2, 128, 768, device="cuda")
    ref = attention_grads(attn, x0, stacked=False, device="cuda")
    got = attention_grads(attn, x0, stacked=True, device="cuda")
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=2e-2, atol=2e-3)
