"""Rotary position embedding: the tables, the rotation, and the stacked q/k/v path of training.

When q, k and v come out of one GEMM (layers.STACKED_QKV), backward needs their gradients
stacked again, (B, T, 3D), for that GEMM's data and weight gradients. Autograd would get there
through a cat, which Inductor (torch 2.11) compiles as one pointwise kernel that recomputes
RoPE's backward under a mask per part: 300 us a layer at GPT-2 small, batch 16, against 40 for
RoPE's backward alone, which made the stacked GEMM a loss. An opaque cat after RoPE's backward
costs a copy (+35 us a layer). Here backward is one op that reads dq, dk and dv once and writes
the stacked gradient once: on CUDA a Triton kernel, elsewhere the same arithmetic in torch.
"""

from __future__ import annotations

import torch

from lmkit.model.triton_support import triton_available

# Off: the torch version runs on CUDA too (tests compare the two).
ENABLED = True
# On: rope_qkv returns v as its own tensor. Off (the default): v is a view of the stacked GEMM
# output, so attention's saved v keeps all of it alive (+0.35-0.56 GiB at GPT-2 small, batch 16,
# still under HF's peak); the copy measured 0.42 ms a step there (30.48 vs 30.06 ms).
COPY_V = False


def precompute_rope(
    head_dim: int,
    context_length: int,
    theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables for rotary position embedding, in fp32.

    Frequency i (of head_dim/2) rotates at ``theta ** (-2i / head_dim)`` radians per position.

    Args:
        head_dim: width of one attention head (even).
        context_length: number of positions to tabulate.
        theta: base period.
        device: where to build the tables.

    Returns:
        ``(cos, sin)``, each of shape (context_length, head_dim // 2), dtype float32.
    """
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    even = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)  # (hd/2,)
    inv_freq = theta ** (-even / head_dim)  # (hd/2,)
    pos = torch.arange(context_length, device=device, dtype=torch.float32)
    angles = torch.outer(pos, inv_freq)  # (context_length, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate query or key vectors by their positions' angles.

    Pairing convention ("rotate_half", as in Meta's HF Llama export): dimension j is paired
    with dimension j + hd/2, not with its neighbour j + 1. Weights exported to a HuggingFace
    ``LlamaForCausalLM`` therefore need no row permutation of q_proj / k_proj, and weights from
    one load directly. (The original Meta checkpoints pair interleaved neighbours instead.)

    Args:
        x: (..., T, hd) queries or keys, e.g. (B, H, T, hd); or (B, T, H, hd) with cos and sin
            given as (T, 1, hd/2).
        cos: (T, hd/2) table rows for the T positions of ``x`` (``precompute_rope`` output,
            indexed by position), broadcastable against ``x[..., :hd/2]``.
        sin: likewise.

    Returns:
        The rotated tensor, same shape and dtype as ``x``.
    """
    # In fp32 so that large angles (late positions) keep their precision under bf16.
    xf = x.float()
    half = xf.shape[-1] // 2
    x1, x2 = xf[..., :half], xf[..., half:]  # (..., T, hd/2) each
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # (..., T, hd)
    return out.type_as(x)


def _backward_torch(dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, cos: torch.Tensor,
                    sin: torch.Tensor) -> torch.Tensor:
    # RoPE's gradient is the rotation by minus the angle (in fp32, rounded once, as the kernel).
    cos, sin = cos[:, None], -sin[:, None]  # (T, 1, hd/2): broadcast over heads
    parts = (apply_rope(dq, cos, sin).to(dv.dtype), apply_rope(dk, cos, sin).to(dv.dtype), dv)
    return torch.stack(parts, dim=2)  # (B, T, 3, H, hd)


def supported(d: torch.Tensor) -> bool:
    """Whether the kernel takes this (B, T, H, hd) gradient: CUDA, unit last stride, hd a power of 2."""
    hd = d.shape[-1]
    if not ENABLED or not d.is_cuda or d.stride(-1) != 1 or hd < 2 or hd & (hd - 1):
        return False
    return triton_available()


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
        return _backward_torch(dq, dk, dv, cos, sin)
    from lmkit.model.rope_kernel import rope_qkv_backward_kernel  # imports triton: only when used

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
        v = qkv[:, :, 2].contiguous() if COPY_V else qkv[:, :, 2]
        return apply_rope(qkv[:, :, 0], c, s), apply_rope(qkv[:, :, 1], c, s), v

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
        q, k, v: (B, T, H, hd) each; q and k are ``apply_rope`` of theirs, v a view of ``qkv``
            (a copy with ``COPY_V``).
    """
    return _RopeQKV.apply(qkv, cos, sin)
