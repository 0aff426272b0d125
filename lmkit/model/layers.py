"""Building blocks of the transformer: RMSNorm, rotary position embedding, SwiGLU, attention.

Notation used in shape comments:
    B  batch size
    T  sequence length of the current call (the whole sequence in training, 1 when decoding)
    D  d_model, width of the residual stream
    H  num_heads
    hd head_dim = D // H
    F  d_ff, SwiGLU hidden width
    S  max_len of the KV cache (keys attended to when decoding)

Each layer works alone given its weights (e.g. ``layer.load_state_dict(...)``); the only thing
the transformer supplies is the RoPE table rows for the current positions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lmkit.model.kv_cache import KVCache
from lmkit.model.rope import apply_rope, rope_qkv


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (no bias, no mean subtraction).

    Matches ``torch.nn.RMSNorm(d, eps)`` numerically; written out because that module only
    exists from torch 2.4 and does not upcast low-precision inputs.
    """

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        """Args:
        d: size of the last dimension being normalised.
        eps: added to the mean square so an all-zero vector does not divide by zero.
        """
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise the last dimension of ``x`` (any leading shape); returns x's dtype."""
        # In fp32: the mean of squares of bf16 activations loses too much precision.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).type_as(x)


def concat_weights(*layers: nn.Linear, out: torch.Tensor | None = None) -> torch.Tensor:
    """The layers' weights stacked along the output dimension: (N1+N2+..., D).

    Decoding uses the result to run several projections of the same input as one matrix-vector
    product (one launch instead of several, which is what a token's latency is made of). It is a
    detached copy, made once per generation rather than per token; ``out`` refreshes an existing
    copy in place, so a captured CUDA graph that reads it stays valid.
    """
    with torch.no_grad():
        return torch.cat([layer.weight for layer in layers], dim=0, out=out)


# Off: every Linear runs plain F.linear under autocast (benchmarks/train_throughput.py compares).
FP32_WEIGHT_GRAD = True
# Training under autocast runs q/k/v as one GEMM over their stacked weights, RoPE's backward
# writing the stacked gradient (rope.py). Off: three GEMMs (train_throughput.py's cg-sepqkv).
STACKED_QKV = True


def matmul_to(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``a @ b`` (2-D) returned in ``dtype``; on CUDA, half-precision operands' fp32 accumulator
    is written out directly (torch >= 2.8), not rounded to their dtype and cast back."""
    if a.is_cuda and dtype == torch.float32 and a.dtype in (torch.bfloat16, torch.float16):
        return torch.mm(a, b, out_dtype=dtype)
    return (a @ b).to(dtype)


class _AutocastLinear(torch.autograd.Function):
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


class Linear(nn.Linear):
    """Bias-free ``nn.Linear`` whose weight gradient, under autocast, leaves the GEMM in fp32.

    With fp32 weights under bf16 autocast, ``F.linear``'s weight gradient is a bf16 GEMM output
    that a separate kernel then casts to fp32: one launch per layer per step (84 at GPT-2 small)
    and a rounding of the gradient to bf16. Here the GEMM writes its fp32 accumulator directly.
    Otherwise (no autocast, no gradient, or weights already in the autocast dtype) it is
    ``F.linear``. The state dict is nn.Linear's.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        """Args:
        in_features: input width.
        out_features: output width.
        """
        super().__init__(in_features, out_features, bias=False)

    def autocast_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype to run ``x @ weight.T`` in through ``_AutocastLinear``, or None for F.linear."""
        device = x.device.type
        training = torch.is_grad_enabled() and self.weight.requires_grad
        if FP32_WEIGHT_GRAD and training and torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            if self.weight.dtype != dtype:
                return dtype
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out)."""
        if (dtype := self.autocast_dtype(x)) is not None:
            return _AutocastLinear.apply(x, dtype, self.weight)
        return F.linear(x, self.weight)


def stacked_linear(x: torch.Tensor, *layers: Linear) -> torch.Tensor | None:
    """``cat([layer(x) for layer in layers], -1)`` as one GEMM over the stacked weights, (..., sum out_i),
    when training under autocast; None otherwise (run the layers one by one).

    Backward is one data-gradient and one weight-gradient GEMM (no split-K reductions: the
    stacked weight gradient is wide enough to fill the GPU). The parameters stay separate
    (state dict, optimizer, HF export unchanged); only the computation is shared.
    """
    dtype = layers[0].autocast_dtype(x)
    if dtype is None or any(layer.autocast_dtype(x) != dtype for layer in layers):
        return None
    return _AutocastLinear.apply(x, dtype, *(layer.weight for layer in layers))


class SwiGLU(nn.Module):
    """Gated feed-forward: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        """Args:
        d_model: input and output width D.
        d_ff: hidden width F.
        """
        super().__init__()
        self.w1 = Linear(d_model, d_ff)  # gate
        self.w3 = Linear(d_model, d_ff)  # value
        self.w2 = Linear(d_ff, d_model)  # back to the residual stream
        # (2F, D) copy of [w1; w3] for decoding, set by TransformerLM.setup_cache. It has no
        # autograd link to w1/w3, so it is used only while no gradient is being recorded.
        self.decode_w13: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., D)."""
        if self.decode_w13 is not None and not torch.is_grad_enabled():
            gate, value = F.linear(x, self.decode_w13).chunk(2, dim=-1)  # (..., F) each
        else:
            # Training: two GEMMs. One over [w1; w3] saved GEMM time, but stacking the gradient
            # again cost more (benchmarks/NOTES.md, sessions 7-8).
            gate, value = self.w1(x), self.w3(x)  # (..., F) each
        return self.w2(F.silu(gate) * value)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE on queries and keys.

    Separate q/k/v/o projections (bias-free) whose output rows are grouped by head: rows
    ``h*hd:(h+1)*hd`` of ``q_proj.weight`` belong to head h, the layout HF Llama uses.

    Without a KV cache the call attends within ``x`` only (training, or a plain forward).
    With ``kv_cache`` set (see ``TransformerLM.setup_cache``) the new keys and values are
    written at ``input_pos`` and the queries attend over the whole cache through ``mask``.
    """

    def __init__(self, d_model: int, num_heads: int) -> None:
        """Args:
        d_model: width D; must be divisible by num_heads.
        num_heads: number of heads H.
        """
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide d_model ({d_model})")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.q_proj = Linear(d_model, d_model)
        self.k_proj = Linear(d_model, d_model)
        self.v_proj = Linear(d_model, d_model)
        self.o_proj = Linear(d_model, d_model)
        self.kv_cache: KVCache | None = None
        # (3D, D) copy of [q; k; v] for decoding, set together with kv_cache (see SwiGLU).
        self.decode_qkv: torch.Tensor | None = None
        # One-token decode attention kernel (decode_attention.py), set with a CUDA kv_cache.
        self.decode_kernel: Callable[..., torch.Tensor] | None = None

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend.

        Args:
            x: (B, T, D) input.
            cos: (T, hd/2) RoPE rows for the positions of x.
            sin: (T, hd/2), likewise.
            input_pos: (T,) absolute positions of x; needed only with a KV cache.
            mask: (T, S) mask over the cache slots, bool or additive (see
                ``TransformerLM.cache_mask``); needed only with a KV cache.

        Returns:
            (B, T, D) output.
        """
        B, T, D = x.shape
        if self.decode_qkv is not None and not torch.is_grad_enabled():
            # Decoding is one token of matrix-vector products: one launch instead of three
            # matters there. (Training stacks the fp32 weights' casts instead: stacked_linear.)
            qkv = F.linear(x, self.decode_qkv)  # (B, T, 3D)
            if T == 1 and self.decode_kernel is not None:
                # RoPE, the cache write and attention over the filled slots in one kernel.
                cache = self.kv_cache
                y = self.decode_kernel(qkv, cos, sin, cache.k, cache.v, cache.arrivals, input_pos)
                return self.o_proj(y)  # y: (B, 1, D)
            q, k, v = qkv.split(D, dim=-1)  # (B, T, D) each
        elif (
            self.kv_cache is None
            and STACKED_QKV
            and (qkv := stacked_linear(x, self.q_proj, self.k_proj, self.v_proj)) is not None
        ):
            # Training under autocast: one GEMM, and RoPE's backward writes the stacked gradient
            # (rope.py); the rotation and its (B, T, H, hd) order are as below.
            qkv = qkv.view(B, T, 3, self.num_heads, self.head_dim)
            q, k, v = (t.transpose(1, 2) for t in rope_qkv(qkv, cos, sin))  # (B, H, T, hd) each
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, D))
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)  # (B, T, D) each
        H, hd = self.num_heads, self.head_dim
        q, k, v = (t.view(B, T, H, hd) for t in (q, k, v))  # (B, T, H, hd) each
        # Training rotates before moving the head axis forward: q and k stay in (B, T, H, hd) order,
        # attention returns its output in that order, and the transpose(1, 2).reshape below is a
        # view. Rotated as (B, H, T, hd) they came out contiguous in that order, which cost a
        # copy of the output and one more (B, T, D) tensor saved per layer for backward (~0.25
        # GiB at GPT-2-small, batch 16).
        if self.kv_cache is None:
            cos, sin = cos[:, None], sin[:, None]  # (T, 1, hd/2): broadcast over heads
            q = apply_rope(q, cos, sin).transpose(1, 2)  # (B, H, T, hd)
            k = apply_rope(k, cos, sin).transpose(1, 2)  # (B, H, T, hd)
            y = F.scaled_dot_product_attention(q, k, v.transpose(1, 2), is_causal=True)  # (B, H, T, hd)
        else:
            # Decoding rotates in (B, H, T, hd) order: the memory-efficient kernel (fp32) rejected
            # the strides Inductor gave a batch-1, one-token query rotated the other way.
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd) each
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if input_pos is None or mask is None:
                raise ValueError("attention with a KV cache needs input_pos and mask")
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, H, S, hd) each
            # The cache may be kept in another dtype than the activations (e.g. under autocast).
            k, v = k.to(q.dtype), v.to(q.dtype)
            mask = mask if mask.dtype == torch.bool else mask.to(q.dtype)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, hd)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D): heads concatenated again
        return self.o_proj(y)
