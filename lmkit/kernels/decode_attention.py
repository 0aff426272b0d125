"""One-token decode attention as a single Triton kernel: RoPE, the cache write and attention.

Notation used in shape comments:
    B  batch size
    H  num_heads
    hd head_dim, D = H * hd
    S  max_len of the KV cache

Decoding a token of a small model is latency-bound: each layer's attention was four kernels
(rotate the query, rotate the key and write key and value into the cache, cuDNN's decode kernel
over all S slots under a mask, and its split reduction), each a few microseconds of mostly
launch and tail. Here one kernel does all of it: each program takes a (sequence, head) and a
split of up to SPLIT cache slots among those written so far (0..pos, not all S), rotates q (and
k, in the split that holds pos, which also writes the new key and value), and runs an online
softmax over its slots; with several splits, the last program to finish merges them
(flash-decoding's reduction without a second launch).

Used by the decode attention layer (kernels/decode.py) for one-token steps where
``kernels.decode_attention_kernel`` is on and ``supported`` holds; everything else (prefill,
CPU, head dims that are not a power of two) takes the plain model's SDPA path over the masked
cache, its reference. Triton is imported only when the op is first built, so importing lmkit
stays light.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from lmkit.kernels.triton_support import triton_device

LOG2E = 1.4426950408889634
# Cache slots per program (a split), slots per loop iteration and warps per program: the
# fastest at GPT-2-small shape on an H200 (benchmarks/decode_attention.py sweeps them through
# decode_attention_op's arguments).
SPLIT = 128
BLOCK_N = 128
NUM_WARPS = 4


def supported(head_dim: int, device: torch.device) -> bool:
    """Whether the kernel can serve this model's decode steps on ``device``."""
    if head_dim < 16 or head_dim & (head_dim - 1):
        return False  # tl.arange needs a power-of-two half head width
    return triton_device(device)


@functools.cache
def decode_attention_op(split: int = SPLIT, block_n: int = BLOCK_N, num_warps: int = NUM_WARPS) -> Callable[..., torch.Tensor]:
    """The kernel registered as the custom op ``lmkit::decode_attention`` (once per process).

    The launch parameters are the tuned constants unless a benchmark asks for others (each set
    its own op, ``lmkit::decode_attention_<split>_<block_n>_<num_warps>``).

    As a ``torch.library.triton_op`` it runs eagerly, and ``torch.compile`` sees it as one node
    that writes the caches in place (no copies of them).

    Signature: ``op(qkv, cos, sin, k_cache, v_cache, arrivals, input_pos) -> (B, 1, D)`` with qkv
    (B, 1, 3D) the fused q/k/v projection of the token (before RoPE), cos and sin (1, hd/2) the
    RoPE rows of its position, the caches (B, H, S, hd), ``arrivals`` (B, H) int32 zeros (the
    kernel's scratch counters, left at zero) and input_pos (1,) the position.
    """
    import triton
    import triton.language as tl
    from torch.library import triton_op, wrap_triton

    @triton.jit
    def kernel(
        qkv_ptr, cos_ptr, sin_ptr, k_cache_ptr, v_cache_ptr, arrivals_ptr, pos_ptr, out_ptr,
        part_acc_ptr, part_stat_ptr,
        stride_qkv_b, stride_cache_b, stride_cache_h, stride_cache_s, stride_out_b,
        D: tl.constexpr, H: tl.constexpr, QK_SCALE: tl.constexpr,
        NUM_SPLITS: tl.constexpr, SPLITS_P2: tl.constexpr,
        HALF: tl.constexpr, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        # Program (b, h, split): split i covers cache slots [i*SPLIT, (i+1)*SPLIT) up to pos.
        # The splits past pos exit at once; the one holding pos also writes the new key/value.
        b = tl.program_id(0)
        h = tl.program_id(1)
        split = tl.program_id(2)
        pos = tl.load(pos_ptr)
        active = pos // SPLIT + 1  # splits that cover slots 0..pos
        if split < active:
            d = tl.arange(0, HALF)  # (hd/2,): the two rotated halves are handled apart
            # This head's slices of q, k and v: columns h*hd .. (h+1)*hd of each D-wide third.
            row = qkv_ptr + b * stride_qkv_b + h * 2 * HALF
            q1 = tl.load(row + d).to(tl.float32)
            q2 = tl.load(row + HALF + d).to(tl.float32)
            k1 = tl.load(row + D + d).to(tl.float32)
            k2 = tl.load(row + D + HALF + d).to(tl.float32)
            v1 = tl.load(row + 2 * D + d)
            v2 = tl.load(row + 2 * D + HALF + d)
            cos = tl.load(cos_ptr + d)
            sin = tl.load(sin_ptr + d)
            # RoPE ("rotate_half" pairing, as rope.apply_rope), rounded to the activations'
            # dtype as there, so the result matches the SDPA path.
            act = qkv_ptr.dtype.element_ty
            cache = k_cache_ptr.dtype.element_ty
            q1, q2 = (q1 * cos - q2 * sin).to(act), (q2 * cos + q1 * sin).to(act)
            k1, k2 = (k1 * cos - k2 * sin).to(act), (k2 * cos + k1 * sin).to(act)  # both from old k
            k1, k2 = k1.to(cache), k2.to(cache)
            v1, v2 = v1.to(cache), v2.to(cache)
            q1 = q1.to(tl.float32) * QK_SCALE  # scores in base 2: QK_SCALE folds in log2(e)
            q2 = q2.to(tl.float32) * QK_SCALE
            head = b * stride_cache_b + h * stride_cache_h
            holds_pos = split == active - 1
            here = (split + 0 * d) == active - 1  # (hd/2,) of holds_pos: store only from that split
            tl.store(k_cache_ptr + head + pos * stride_cache_s + d, k1, mask=here)
            tl.store(k_cache_ptr + head + pos * stride_cache_s + HALF + d, k2, mask=here)
            tl.store(v_cache_ptr + head + pos * stride_cache_s + d, v1, mask=here)
            tl.store(v_cache_ptr + head + pos * stride_cache_s + HALF + d, v2, mask=here)

            # Online softmax. The new token's own slot seeds the split that holds pos, from
            # registers, so the loops read only slots below pos, which no program writes now.
            own = tl.sum(q1 * k1.to(tl.float32), 0) + tl.sum(q2 * k2.to(tl.float32), 0)
            m = tl.where(holds_pos, own, float("-inf"))  # running max
            denom = tl.where(holds_pos, 1.0, 0.0)  # running sum of exp2(score - m)
            acc1 = tl.where(here, v1.to(tl.float32), 0.0)  # (hd/2,) weighted sum of values
            acc2 = tl.where(here, v2.to(tl.float32), 0.0)
            n = tl.arange(0, BLOCK_N)
            first = split * SPLIT
            stop = tl.minimum(first + SPLIT, pos)
            for start in range(first, stop, BLOCK_N):
                slot = start + n  # (BLOCK_N,)
                valid = slot < stop
                ptr = head + slot[:, None] * stride_cache_s + d[None, :]  # (BLOCK_N, hd/2)
                ka = tl.load(k_cache_ptr + ptr, mask=valid[:, None], other=0.0).to(tl.float32)
                kb = tl.load(k_cache_ptr + ptr + HALF, mask=valid[:, None], other=0.0)
                kb = kb.to(tl.float32)
                score = tl.sum(ka * q1[None, :], 1) + tl.sum(kb * q2[None, :], 1)  # (BLOCK_N,)
                score = tl.where(valid, score, float("-inf"))
                m_new = tl.maximum(m, tl.max(score, axis=0))
                alpha = tl.exp2(m - m_new)
                p = tl.exp2(score - m_new)  # (BLOCK_N,); 0 for invalid slots
                va = tl.load(v_cache_ptr + ptr, mask=valid[:, None], other=0.0).to(tl.float32)
                vb = tl.load(v_cache_ptr + ptr + HALF, mask=valid[:, None], other=0.0)
                vb = vb.to(tl.float32)
                acc1 = acc1 * alpha + tl.sum(p[:, None] * va, axis=0)
                acc2 = acc2 * alpha + tl.sum(p[:, None] * vb, axis=0)
                denom = denom * alpha + tl.sum(p, axis=0)
                m = m_new

            out = out_ptr + b * stride_out_b + h * 2 * HALF
            out_ty = out_ptr.dtype.element_ty
            if active == 1:  # one split saw every slot: done
                tl.store(out + d, (acc1 / denom).to(out_ty))
                tl.store(out + HALF + d, (acc2 / denom).to(out_ty))
            else:
                # Several splits: each leaves (max, sum, weighted values) in the scratch, and the
                # last to arrive merges them (flash-decoding's reduction, without a second
                # kernel launch). The barrier makes every thread's stores precede the counter's
                # release; the counter's acquire makes them visible to the merging program.
                bh = b * H + h
                part = (bh * NUM_SPLITS + split) * 2 * HALF
                tl.store(part_acc_ptr + part + d, acc1)
                tl.store(part_acc_ptr + part + HALF + d, acc2)
                tl.store(part_stat_ptr + (bh * NUM_SPLITS + split) * 2, m)
                tl.store(part_stat_ptr + (bh * NUM_SPLITS + split) * 2 + 1, denom)
                tl.debug_barrier()
                arrived = tl.atomic_add(arrivals_ptr + bh, 1, sem="acq_rel")
                if arrived == active - 1:
                    i = tl.arange(0, SPLITS_P2)  # (splits,), rounded up to a power of two
                    used = i < active
                    stat = part_stat_ptr + (bh * NUM_SPLITS + i) * 2
                    ms = tl.load(stat, mask=used, other=float("-inf"), cache_modifier=".cg")
                    sums = tl.load(stat + 1, mask=used, other=0.0, cache_modifier=".cg")
                    weight = tl.exp2(ms - tl.max(ms, axis=0))  # (splits,); 0 for unused
                    rows = part_acc_ptr + (bh * NUM_SPLITS + i[:, None]) * 2 * HALF + d[None, :]
                    # (splits, hd/2) each
                    a1 = tl.load(rows, mask=used[:, None], other=0.0, cache_modifier=".cg")
                    a2 = tl.load(rows + HALF, mask=used[:, None], other=0.0, cache_modifier=".cg")
                    total = tl.sum(weight * sums, axis=0)
                    out1 = tl.sum(weight[:, None] * a1, axis=0) / total
                    tl.store(out + d, out1.to(out_ty))
                    out2 = tl.sum(weight[:, None] * a2, axis=0) / total
                    tl.store(out + HALF + d, out2.to(out_ty))
                    tl.store(arrivals_ptr + bh, 0)  # ready for the next call

    tuned = (split, block_n, num_warps) == (SPLIT, BLOCK_N, NUM_WARPS)
    name = "lmkit::decode_attention" if tuned else f"lmkit::decode_attention_{split}_{block_n}_{num_warps}"

    @triton_op(name, mutates_args={"k_cache", "v_cache", "arrivals"})
    def decode_attention(
        qkv: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        arrivals: torch.Tensor,
        input_pos: torch.Tensor,
    ) -> torch.Tensor:
        """Launch the kernel over (B, H, splits) programs; see ``decode_attention_op``."""
        B, _, three_d = qkv.shape  # (B, 1, 3D)
        _, H, S, hd = k_cache.shape  # (B, H, S, hd)
        D = three_d // 3
        qkv = qkv.contiguous()
        cos, sin = cos.contiguous(), sin.contiguous()
        splits = triton.cdiv(S, split)
        out = qkv.new_empty(B, 1, D)  # (B, 1, D): heads concatenated, o_proj's input
        part_acc = qkv.new_empty(B, H, splits, hd, dtype=torch.float32)  # per split: values
        part_stat = qkv.new_empty(B, H, splits, 2, dtype=torch.float32)  # per split: max, sum
        wrap_triton(kernel)[(B, H, splits)](
            qkv, cos, sin, k_cache, v_cache, arrivals, input_pos, out, part_acc, part_stat,
            qkv.stride(0), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), out.stride(0),
            D=D, H=H, QK_SCALE=LOG2E / math.sqrt(hd),
            NUM_SPLITS=splits, SPLITS_P2=triton.next_power_of_2(splits),
            HALF=hd // 2, SPLIT=split, BLOCK_N=min(block_n, split), num_warps=num_warps,
        )
        return out

    return decode_attention

