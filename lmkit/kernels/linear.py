"""The fp32-weight-gradient Linear: under mixed precision, weight gradients straight out of the GEMM in fp32.

With fp32 weights under bf16 autocast, ``F.linear``'s weight gradient is a bf16 GEMM output that
a separate kernel then casts to fp32: one more launch per layer per step and a rounding of the
gradient to bf16. ``Fp32GradLinear`` runs ``x @ W.T`` in the low-precision compute dtype itself
and has the weight-gradient GEMM write its fp32 accumulator directly (torch >= 2.8 on CUDA).

Applied from outside (``plan.apply_training``): each ``nn.Linear`` of the model becomes an
``Fp32GradLinear`` over the same Parameter, so the state dict, the optimizer and exports are
those of the plain model. Its torch reference is the plain ``nn.Linear`` under autocast.
"""

from __future__ import annotations

import torch
from torch import nn

LOW_PRECISION = (torch.bfloat16, torch.float16)


def supported(weight_dtype: torch.dtype, compute_dtype: torch.dtype) -> bool:
    """Whether the path applies: fp32 weights multiplied in a half-precision compute dtype."""
    return weight_dtype == torch.float32 and compute_dtype in LOW_PRECISION


def matmul_to(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``a @ b`` (2-D) returned in ``dtype``; on CUDA, half-precision operands' fp32 accumulator
    is written out directly (torch >= 2.8), not rounded to their dtype and cast back."""
    if a.is_cuda and dtype == torch.float32 and a.dtype in LOW_PRECISION:
        return torch.mm(a, b, out_dtype=dtype)
    return (a @ b).to(dtype)


class _LowPrecisionLinear(torch.autograd.Function):
    """``x @ W.T`` in a low-precision ``dtype``, W the given weights stacked along their output
    dimension; each weight's gradient comes out in that weight's dtype, straight from the GEMM."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dtype: torch.dtype, *weights: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype)  # (..., in)
        # The cast to dtype happens anyway; stacking in the same kernel costs nothing more.
        w = torch.cat([w.to(dtype) for w in weights]) if len(weights) > 1 else weights[0].to(dtype)
        ctx.save_for_backward(x, w)  # w: (out1+out2+..., in)
        ctx.weight_dtype = weights[0].dtype
        ctx.splits = [w.shape[0] for w in weights]
        return x @ w.t()  # (..., out1+out2+...)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, w = ctx.saved_tensors
        g = grad_out.to(w.dtype)  # (..., out)
        grad_x = g @ w  # (..., in); autograd casts it to the input's dtype
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])  # (N, out), (N, in)
        grad_w = matmul_to(g2.t(), x2, ctx.weight_dtype)  # (out, in)
        return grad_x, None, *grad_w.split(ctx.splits)


def linear_stacked(x: torch.Tensor, dtype: torch.dtype, *weights: torch.Tensor) -> torch.Tensor:
    """``cat([x @ w.T for w in weights], -1)`` as one GEMM in ``dtype`` over the stacked weights.

    Args:
        x: (..., in) input, any float dtype.
        dtype: the compute dtype (bf16 or fp16).
        *weights: (out_i, in) weights, usually fp32 Parameters; their gradients come out in their
            dtype from one weight-gradient GEMM.

    Returns:
        (..., sum out_i) in ``dtype``.
    """
    return _LowPrecisionLinear.apply(x, dtype, *weights)


class Fp32GradLinear(nn.Linear):
    """Bias-free ``nn.Linear`` that multiplies in ``compute_dtype`` with fp32 weight gradients.

    Built by ``from_linear`` over an existing layer's Parameter; never constructed directly.
    """

    compute_dtype: torch.dtype

    @classmethod
    def from_linear(cls, layer: nn.Linear, compute_dtype: torch.dtype) -> Fp32GradLinear:
        """Turn ``layer`` (bias-free) into this class in place, keeping its Parameter.

        Args:
            layer: the plain layer.
            compute_dtype: bf16 or fp16.

        Returns:
            ``layer`` itself, now an ``Fp32GradLinear``.
        """
        if layer.bias is not None:
            raise ValueError("Fp32GradLinear takes bias-free layers only")
        layer.__class__ = cls
        layer.compute_dtype = compute_dtype
        return layer  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out) in ``compute_dtype``."""
        return _LowPrecisionLinear.apply(x, self.compute_dtype, self.weight)
