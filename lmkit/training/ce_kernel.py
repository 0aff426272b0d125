"""Cross-entropy of a chunk of logits and its gradient, in one Triton kernel, in place.

Notation: n rows in the chunk, V = vocab_size.

The fused LM-head loss (loss.py) computes a chunk's logits (n, V) and then needs, per row, the
loss ``logsumexp(x) - x[target]`` and the gradient ``softmax(x) - onehot(target)``. Inductor's
compiled version of that took 0.52 ms for GPT-2 small's 4096 x 50304 bf16 chunk on an H200
(1.6 TB/s counting one read and one write) and wrote the gradient to a second (n, V) buffer.
Here one program owns a row: an online max / sum-of-exponentials over it, then the gradient over
the same row, written over the logits: 0.30 ms (2.8 TB/s), no second chunk-sized buffer
(benchmarks/ce_chunk.py; -0.6 ms a training step at GPT-2 small, batch 16).

Used by the fused loss on CUDA when Triton is importable, compiled or not (``ENABLED`` switches it
off); elsewhere the loss keeps ``loss._ce_chunk_grad``, which this must equal (tests).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from lmkit.model.triton_support import triton_available

# Off: the fused loss uses the compiled torch version (loss._ce_chunk_grad) instead.
ENABLED = True
# Columns per loop iteration and warps per row: read at launch, so benchmarks/ce_chunk.py can sweep
# them. Fastest on an H200 (4096 x 50304 bf16): 0.296 ms, 1.74x Inductor's version. (Fewer
# programs walking the rows, so that pass 2 would find its row in L2, measured slower at every
# size tried: 0.32-0.46 ms, too little memory traffic in flight; benchmarks/NOTES.md, session 5.)
BLOCK = 16384
NUM_WARPS = 16


def supported(logits: torch.Tensor) -> bool:
    """Whether the kernel can take these logits: a CUDA (n, V) tensor with unit column stride."""
    if not ENABLED or not logits.is_cuda or logits.dim() != 2 or logits.stride(1) != 1:
        return False
    return triton_available()


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


def ce_loss_and_grad_(logits: torch.Tensor, targets: torch.Tensor, scale: float) -> torch.Tensor:
    """Summed cross-entropy of a chunk; its logits are overwritten with ``scale *`` the gradient.

    Args:
        logits: (n, V), any float dtype, unit column stride; becomes d(loss)/d(logits) * scale
            in the same dtype (softmax in fp32).
        targets: (n,) int64 in [0, V).
        scale: the gradient's factor (1/N for a mean over N rows).

    Returns:
        fp32 scalar: the sum over the rows of ``logsumexp(row) - row[target]``.
    """
    n, V = logits.shape
    losses = torch.empty(n, dtype=torch.float32, device=logits.device)  # (n,)
    _kernel()[(n,)](logits, logits.stride(0), targets, losses, scale, V, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return losses.sum()
