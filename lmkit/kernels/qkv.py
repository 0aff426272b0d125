"""Training's one-GEMM q/k/v: the stacked projection, RoPE with a one-op backward, attention.

Notation: B batch, T positions, H heads, hd head_dim, D = H * hd.

The plain attention (model/layers.py) runs three projection GEMMs. ``StackedQKVAttention`` runs
one over the stacked fp32 weights, in the compute dtype, with fp32 weight gradients
(kernels/linear.py). Backward then needs q's, k's and v's gradients stacked again, (B, T, 3D),
for that GEMM's data and weight gradients. Autograd would get there through a cat, which
Inductor compiles as one pointwise kernel that recomputes RoPE's backward under a mask per part,
several times slower than RoPE's backward alone, which made the stacked GEMM a loss; an opaque
cat after RoPE's backward costs a copy. Here backward is one op (``rope_qkv_backward``) that
reads dq, dk and dv once and writes the stacked gradient once: a Triton kernel where
``supported``, elsewhere the same arithmetic in torch (its reference, which the tests compare).

Applied from outside (``plan.apply_training``), only for training without a KV cache; the
parameters stay the separate q/k/v projections (state dict, optimizer, HF export unchanged).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmkit.kernels.linear import linear_stacked
from lmkit.kernels.triton_support import triton_device
from lmkit.model.layers import CausalSelfAttention
from lmkit.model.rope import apply_rope


def rope_backward_reference(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, cos: torch.Tensor,
                            sin: torch.Tensor) -> torch.Tensor:
    """``rope_qkv_backward`` in torch: RoPE's gradient is the rotation by minus the angle (in
    fp32, rounded once, as the kernel). Same arguments and result."""
    cos, sin = cos[:, None], -sin[:, None]  # (T, 1, hd/2): broadcast over heads
    parts = (apply_rope(dq, cos, sin).to(dv.dtype), apply_rope(dk, cos, sin).to(dv.dtype), dv)
    return torch.stack(parts, dim=2)  # (B, T, 3, H, hd)


def supported(d: torch.Tensor) -> bool:
    """Whether the kernel takes this (B, T, H, hd) gradient: a Triton device, unit last stride,
    hd a power of 2."""
    hd = d.shape[-1]
    if d.stride(-1) != 1 or hd < 2 or hd & (hd - 1):
        return False
    return triton_device(d.device)


@torch.library.custom_op("lmkit::rope_qkv_backward", mutates_args=())
def rope_qkv_backward(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, cos: torch.Tensor,
                      sin: torch.Tensor) -> torch.Tensor:
    """The stacked gradient of ``rope_qkv``'s input from its outputs' gradients.

    Args:
        dq, dk: (B, T, H, hd) gradients of the rotated queries and keys, any strides.
        dv: (B, T, H, hd) gradient of the values; its dtype is the result's.
        cos, sin: (T, hd/2) RoPE rows of the positions.

    Returns:
        (B, T, 3, H, hd) contiguous: [rotated-back dq, rotated-back dk, dv] per position.
    """
    tables_ok = cos.stride(-1) == 1 and sin.stride() == cos.stride()
    if not (tables_ok and supported(dq) and supported(dk) and supported(dv)):
        return rope_backward_reference(dq, dk, dv, cos, sin)
    from lmkit.kernels.rope_kernel import rope_qkv_backward_kernel  # imports triton: only when used

    B, T, H, hd = dv.shape
    out = dv.new_empty((B, T, 3, H, hd))
    strides = (*dq.stride()[:3], *dk.stride()[:3], *dv.stride()[:3])  # (b, t, h) of each
    rope_qkv_backward_kernel[(B * T,)](dq, dk, dv, *strides, cos, sin, cos.stride(0), out, T, H,
                                       HP=1 << (H - 1).bit_length(), HALF=hd // 2)  # HP: H up to a power of 2
    return out


@rope_qkv_backward.register_fake
def _(dq, dk, dv, cos, sin):
    B, T, H, hd = dv.shape
    return dv.new_empty((B, T, 3, H, hd))


class _RopeQKV(torch.autograd.Function):
    """rope_qkv's forward in torch (Inductor fuses it as before); its backward is the one op."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        ctx.save_for_backward(cos, sin)
        c, s = cos[:, None], sin[:, None]  # (T, 1, hd/2): broadcast over heads
        # v stays a view of the stacked GEMM output: attention's saved v then keeps all of it
        # alive (a few hundred MB at GPT-2 small, batch 16, still under HF's peak), which costs
        # less than copying v out every step.
        return apply_rope(qkv[:, :, 0], c, s), apply_rope(qkv[:, :, 1], c, s), qkv[:, :, 2]

    @staticmethod
    def backward(ctx, dq, dk, dv):
        cos, sin = ctx.saved_tensors
        like = next(d for d in (dq, dk, dv) if d is not None)  # an output left out of the loss: zeros
        dq, dk, dv = (d if d is not None else torch.zeros_like(like) for d in (dq, dk, dv))
        return rope_qkv_backward(dq, dk, dv, cos, sin), None, None


def rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Queries and keys rotated, values as they are, from one stacked projection.

    Args:
        qkv: (B, T, 3, H, hd) q, k and v of each position (a view of the (B, T, 3D) GEMM output).
        cos, sin: (T, hd/2) RoPE rows of the positions (``precompute_rope``).

    Returns:
        q, k, v: (B, T, H, hd) each; q and k are ``apply_rope`` of theirs, v a view of ``qkv``.
    """
    return _RopeQKV.apply(qkv, cos, sin)


class StackedQKVAttention(CausalSelfAttention):
    """``CausalSelfAttention`` whose q/k/v run as one GEMM in ``compute_dtype`` (see the module doc).

    Made from a plain layer by ``from_attention``, in place; with a KV cache it is the plain
    layer's forward (the path is for training).
    """

    compute_dtype: torch.dtype

    @classmethod
    def from_attention(cls, attn: CausalSelfAttention, compute_dtype: torch.dtype) -> StackedQKVAttention:
        """Turn ``attn`` into this class in place (same Parameters and state dict); returns it."""
        attn.__class__ = cls
        attn.compute_dtype = compute_dtype
        return attn  # type: ignore[return-value]

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        input_pos: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend; the arguments and result are ``CausalSelfAttention.forward``'s."""
        if self.kv_cache is not None:
            return super().forward(x, cos, sin, input_pos, mask)
        B, T, D = x.shape
        w = (self.q_proj.weight, self.k_proj.weight, self.v_proj.weight)
        qkv = linear_stacked(x, self.compute_dtype, *w).view(B, T, 3, self.num_heads, self.head_dim)
        # The rotation and its (B, T, H, hd) order are the plain forward's.
        q, k, v = (t.transpose(1, 2) for t in rope_qkv(qkv, cos, sin))  # (B, H, T, hd) each
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)
