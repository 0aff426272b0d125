"""Cross-entropy of a chunk of logits and its gradient, in one Triton kernel, in place.

Notation: n rows in the chunk, V = vocab_size.

The fused LM-head loss (loss.py) computes a chunk's logits (n, V) and then needs, per row, the
loss ``logsumexp(x) - x[target]`` and the gradient ``softmax(x) - onehot(target)``. Inductor's
compiled version of that reaches well under the memory bandwidth and writes the gradient to a
second (n, V) buffer.
Here one program owns a row: an online max / sum-of-exponentials over it, then the gradient over
the same row, written over the logits: near the memory bandwidth, and no second chunk-sized
buffer (benchmarks/ce_chunk.py measures both).

Used by the fused loss (training/loss.py) where ``kernels.ce_kernel`` is on and ``supported``
holds, compiled or not; otherwise the loss runs ``loss._ce_chunk_grad``, its torch reference,
which this must equal (tests).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from lmkit.kernels.triton_support import triton_device

# Columns per loop iteration and warps per row: the fastest at GPT-2 small's chunk on an H200
# (benchmarks/ce_chunk.py sweeps them through ce_loss_and_grad_'s arguments). One program per
# row keeps the most memory traffic in flight; fewer programs walking several rows, so that the
# second pass would find its row in L2, were slower at every size tried.
BLOCK = 16384
NUM_WARPS = 16


def supported(logits: torch.Tensor) -> bool:
    """Whether the kernel can take these logits: an (n, V) tensor with unit column stride on a
    device Triton runs on."""
    if logits.dim() != 2 or logits.stride(1) != 1:
        return False
    return triton_device(logits.device)


@functools.cache
def _kernel() -> Callable:
    # Built on first use: importing triton costs time that most lmkit commands never need.
    import triton
    import triton.language as tl

    @triton.jit
    def ce_grad_inplace(logits_ptr, row_stride, targets_ptr, loss_ptr, scale, V, BLOCK: tl.constexpr):
        # One program per row. Base-2 exponentials throughout (x * log2 e): exp2 is the
        # hardware's instruction.
        row = tl.program_id(0)
        base = logits_ptr + tl.cast(row, tl.int64) * row_stride
        target = tl.load(targets_ptr + row)
        cols = tl.arange(0, BLOCK)
        # Pass 1: running max m and sum s of exp2(x - m). The first block is peeled off so m
        # starts finite (it holds column 0 at least; padding loads as -inf and adds 0).
        x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        x *= 1.4426950408889634
        m = tl.max(x, 0)
        s = tl.sum(tl.exp2(x - m), 0)
        for start in range(BLOCK, V, BLOCK):
            x = tl.load(base + start + cols, mask=start + cols < V, other=float("-inf")).to(tl.float32)
            x *= 1.4426950408889634
            m_new = tl.maximum(m, tl.max(x, 0))
            s = s * tl.exp2(m - m_new) + tl.sum(tl.exp2(x - m_new), 0)
            m = m_new
        lse2 = m + tl.log2(s)  # logsumexp of the row, base 2
        x_target = tl.load(base + target).to(tl.float32)
        tl.store(loss_ptr + row, lse2 * 0.6931471805599453 - x_target)  # ln 2 * lse2 = natural lse
        # Pass 2: (softmax - onehot) * scale over the same row, in the logits' dtype, in place.
        for start in range(0, V, BLOCK):
            c = start + cols
            x = tl.load(base + c, mask=c < V, other=0.0).to(tl.float32)
            g = tl.exp2(x * 1.4426950408889634 - lse2)
            g = tl.where(c == target, g - 1.0, g) * scale
            tl.store(base + c, g.to(logits_ptr.dtype.element_ty), mask=c < V)

    return ce_grad_inplace


def ce_loss_and_grad_(logits: torch.Tensor, targets: torch.Tensor, scale: float, block: int = BLOCK,
                      num_warps: int = NUM_WARPS) -> torch.Tensor:
    """Summed cross-entropy of a chunk; its logits are overwritten with ``scale *`` the gradient.

    Args:
        logits: (n, V), any float dtype, unit column stride; becomes d(loss)/d(logits) * scale
            in the same dtype (softmax in fp32).
        targets: (n,) int64 in [0, V).
        scale: the gradient's factor (1/N for a mean over N rows).
        block, num_warps: launch parameters; the defaults are the tuned ones (benchmarks sweep them).

    Returns:
        fp32 scalar: the sum over the rows of ``logsumexp(row) - row[target]``.
    """
    n, V = logits.shape
    losses = torch.empty(n, dtype=torch.float32, device=logits.device)  # (n,)
    _kernel()[(n,)](logits, logits.stride(0), targets, losses, scale, V, BLOCK=block, num_warps=num_warps)
    return losses.sum()
