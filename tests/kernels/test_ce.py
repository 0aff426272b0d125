"""The in-place cross-entropy kernel (lmkit/kernels/ce.py) against the torch version.

On CPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1`` must be set before
triton is imported, hence a subprocess); the GPU tests run the compiled kernel at GPT-2's vocab.
"""

from __future__ import annotations

import pytest
import torch
from triton_interpreter import requires_triton, run_interpreted

from lmkit.kernels import ce as ce_kernel
from lmkit.training.loss import _ce_chunk_grad, cross_entropy_loss, fused_linear_cross_entropy


def kernel_matches_chunk_grad(device: str, vocab_sizes: tuple[int, ...], block: int) -> None:
    """Loss and in-place gradient equal ``_ce_chunk_grad``'s for vocabularies shorter than a
    block, an exact multiple of it and neither; fp32 and bf16 logits; a scaled gradient."""
    for V in vocab_sizes:
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(V)
            logits = (torch.randn(9, V, device=device) * 4).to(dtype)  # (n, V), peaky rows
            y = torch.randint(0, V, (9,), device=device)
            y[0], y[1] = 0, V - 1  # targets at both ends of a row
            ref_loss, ref_grad = _ce_chunk_grad(logits.clone(), y, 1 / 36)
            grad = logits.clone()
            loss = ce_kernel.ce_loss_and_grad_(grad, y, 1 / 36, block=block)
            where = f"V={V} {dtype}"
            torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4, msg=lambda m: f"{where}: {m}")
            # bf16: one rounding step (the interpreter truncates where CUDA rounds)
            tol = dict(rtol=0, atol=1e-6) if dtype == torch.float32 else dict(rtol=2**-7, atol=1e-6)
            torch.testing.assert_close(grad, ref_grad, **tol, msg=lambda m: f"{where}: {m}")


def fused_loss_through_kernel_matches_plain(device: str, ce_kernel_on: bool = True) -> None:
    """The fused LM-head loss with the kernel doing every chunk (or, off, none): same loss and
    gradients as the plain loss over all logits (fp32, several chunks, a short last one)."""
    calls = []
    launch = ce_kernel.ce_loss_and_grad_
    ce_kernel.ce_loss_and_grad_ = lambda *a, **k: calls.append(1) or launch(*a, **k)
    torch.manual_seed(0)
    N, D, V = 150, 24, 97
    h = torch.randn(N, D, device=device, requires_grad=True)
    w = (torch.randn(V, D, device=device) * 0.3).requires_grad_()
    y = torch.randint(0, V, (N,), device=device)
    ref = cross_entropy_loss((h @ w.t())[None], y[None])
    ref_grads = torch.autograd.grad(ref, (h, w))
    try:
        got = fused_linear_cross_entropy(h, w, y, chunk_rows=64, ce_kernel=ce_kernel_on)
    finally:
        ce_kernel.ce_loss_and_grad_ = launch
    assert len(calls) == (3 if ce_kernel_on else 0)
    got_grads = torch.autograd.grad(got, (h, w))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(got_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


_INTERPRETED_CHECKS = """
from tests.kernels.test_ce import fused_loss_through_kernel_matches_plain, kernel_matches_chunk_grad
kernel_matches_chunk_grad("cpu", (5, 16, 48, 97), block=16)
fused_loss_through_kernel_matches_plain("cpu")
fused_loss_through_kernel_matches_plain("cpu", ce_kernel_on=False)
print("ok")
"""


@requires_triton
def test_kernel_under_triton_interpreter_matches_torch():
    run_interpreted(_INTERPRETED_CHECKS)


def test_cpu_logits_take_the_torch_path():
    assert not ce_kernel.supported(torch.zeros(4, 8))


gpu = pytest.mark.gpu


@gpu
def test_kernel_matches_torch_on_cuda():
    kernel_matches_chunk_grad("cuda", (97, 8192, 50304), block=ce_kernel.BLOCK)
    kernel_matches_chunk_grad("cuda", (97, 1000), block=64)
    assert not ce_kernel.supported(torch.zeros(8, 4, device="cuda").t())  # column stride 8


@gpu
def test_fused_loss_through_kernel_matches_plain_on_cuda():
    assert ce_kernel.supported(torch.zeros(2, 8, device="cuda"))
    fused_loss_through_kernel_matches_plain("cuda")
    fused_loss_through_kernel_matches_plain("cuda", ce_kernel_on=False)
