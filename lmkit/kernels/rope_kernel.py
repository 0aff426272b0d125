"""Triton kernel of rope.rope_qkv_backward (imported on first use: it imports triton)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _part(src, s_b, s_t, s_h, b, t, h, j, mask, c, s, dst, HALF: tl.constexpr, ROTATE: tl.constexpr):
    p = src + b * s_b + t * s_t + h * s_h + j  # (HP, HALF): the first halves of the heads
    g1 = tl.load(p, mask=mask)
    g2 = tl.load(p + HALF, mask=mask)
    if ROTATE:  # apply_rope by minus the angle: in fp32, rounded once to the output's dtype
        g1, g2 = g1.to(tl.float32), g2.to(tl.float32)
        g1, g2 = g1 * c + g2 * s, g2 * c - g1 * s
    tl.store(dst, g1.to(dst.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, g2.to(dst.dtype.element_ty), mask=mask)


@triton.jit
def rope_qkv_backward_kernel(dq, dk, dv, sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h,
                             cos, sin, sc_t, out, T, H, HP: tl.constexpr, HALF: tl.constexpr):
    # One program per position (b, t): all heads of dq, dk and dv there, as (HP, HALF) tiles of
    # first and second halves (HP: H rounded up to a power of 2, masked). out is (B, T, 3, H, hd)
    # contiguous; the inputs may have any strides but a unit last one.
    row = tl.program_id(0).to(tl.int64)
    b, t = row // T, row % T
    h = tl.arange(0, HP)[:, None]
    j = tl.arange(0, HALF)[None, :]
    mask = (h < H) & (j < HALF)  # (HP, HALF): the padded heads off
    c = tl.load(cos + t * sc_t + j).to(tl.float32)  # (1, HALF)
    s = tl.load(sin + t * sc_t + j).to(tl.float32)
    D = H * 2 * HALF
    o = out + row * 3 * D + h * (2 * HALF) + j
    _part(dq, sq_b, sq_t, sq_h, b, t, h, j, mask, c, s, o, HALF, True)
    _part(dk, sk_b, sk_t, sk_h, b, t, h, j, mask, c, s, o + D, HALF, True)
    _part(dv, sv_b, sv_t, sv_h, b, t, h, j, mask, c, s, o + 2 * D, HALF, False)
