"""The fp32-weight-gradient Linear (lmkit/kernels/linear.py) against nn.Linear under autocast."""

from __future__ import annotations

import copy

import pytest
import torch

from lmkit.kernels import linear
from lmkit.kernels.linear import Fp32GradLinear


def test_supported_only_for_fp32_weights_in_half_precision() -> None:
    assert linear.supported(torch.float32, torch.bfloat16) and linear.supported(torch.float32, torch.float16)
    assert not linear.supported(torch.float32, torch.float32)
    assert not linear.supported(torch.bfloat16, torch.bfloat16)


def test_stacked_linear_equals_separate_layers() -> None:
    """One GEMM over stacked weights: the outputs and each weight's gradient of the separate ones."""
    torch.manual_seed(0)
    w = [torch.randn(n, 16, requires_grad=True) for n in (8, 8, 4)]
    x = torch.randn(3, 5, 16)
    y = linear.linear_stacked(x, torch.bfloat16, *w)  # (3, 5, 20)
    (y.float() ** 2).sum().backward()
    got = [t.grad for t in w]
    for t in w:
        t.grad = None
    sep = torch.cat([linear.linear_stacked(x, torch.bfloat16, t) for t in w], dim=-1)
    (sep.float() ** 2).sum().backward()
    torch.testing.assert_close(y, sep, rtol=0, atol=0)
    for g, t in zip(got, w):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, t.grad, rtol=0, atol=0)


def _linear_grads(layer: torch.nn.Module, x: torch.Tensor, device_type: str):
    """Output and (input, weight) gradients of ``layer(x)`` under bf16 autocast."""
    x = x.clone().requires_grad_()
    with torch.autocast(device_type, dtype=torch.bfloat16):
        y = layer(x)
    (y.float() * torch.linspace(-1, 1, y.shape[-1], device=x.device)).sum().backward()
    return y, x.grad, layer.weight.grad


@pytest.mark.parametrize("compile", [False, True])
def test_linear_under_autocast_matches_nn_linear(compile: bool) -> None:
    """The fp32-gradient Linear takes its own backward; on CPU (no fp32-output GEMM) it must give
    nn.Linear's output and gradients under autocast bit for bit, eager and through AOTAutograd."""
    torch.manual_seed(0)
    ref = torch.nn.Linear(16, 24, bias=False)
    ours = Fp32GradLinear.from_linear(copy.deepcopy(ref), torch.bfloat16)
    assert list(ours.state_dict()) == ["weight"]
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
    torch.manual_seed(0)
    ref = torch.nn.Linear(256, 384, bias=False).cuda()
    ours = Fp32GradLinear.from_linear(copy.deepcopy(ref), torch.bfloat16)
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
