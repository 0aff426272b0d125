"""AdamW's update of every fp32 tensor of a parameter group in one Triton kernel launch.

torch's fused AdamW (``multi_tensor_apply``) reads parameter, gradient and both moments and
writes three of them back: 28 bytes a parameter, 4.5 GB a step at GPT-2 small's 162 M. On an H200
it ran at 0.84 of a device-to-device copy's bandwidth (1.31 ms against 1.09, with one flat tensor
instead of 111 no faster); this kernel at 1.00-1.02 (1.08-1.10 ms; at GPT-2 medium 2.72-2.79 ms
against torch's 3.33; benchmarks/optim_step.py). Here each program updates one BLOCK-sized
slice of one tensor, found through small tables (which tensor, where in it) that are built once
and rebuilt only when a tensor's address changes. Every access is a 16-byte vector: the tensors'
addresses are given as element offsets from one base tensor per kind, with alignment hints that
``supported`` makes true (a kernel that loaded raw addresses from its table ran at 0.4-0.7 of
copy bandwidth, its loads scalar).

The arithmetic is torch's fused AdamW's, in the same order (fp32 throughout):
``p *= 1 - lr * wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``, with ``g`` divided by
``grad_scale`` when one is set (the gradient clip, folded in; see optim.clip_gradients).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch

from lmkit.model.triton_support import triton_available

# Off: build_optimizer returns torch's fused AdamW (benchmarks compare).
ENABLED = True
# Elements per program and warps per program: read at launch (benchmarks/optim_step.py sweeps them).
# On an H200: 1.02 / 1.00 of copy bandwidth at GPT-2 small / medium (4096/8: 1.00 / 0.98; 8192/8:
# 0.78 / 0.77).
BLOCK = 1024
NUM_WARPS = 4
# Where the kernel runs; tests add "cpu" under Triton's interpreter.
DEVICES = ("cuda",)


def supported(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether the kernel can update these: plain (not sharded), contiguous fp32 tensors on a
    CUDA device whose sizes are multiples of 4 and addresses of 16 bytes (so every load and
    store is a 16-byte vector), with Triton present."""
    if not ENABLED or not tensors:
        return False
    for t in tensors:
        if type(t.data) is not torch.Tensor or t.device.type not in DEVICES or t.dtype != torch.float32:
            return False
        if not t.is_contiguous() or t.numel() % 4 or t.data_ptr() % 16:
            return False
    return triton_available()


@functools.cache
def _kernel() -> Callable:
    # Built on first use: importing triton costs time that most lmkit commands never need.
    import triton
    import triton.language as tl

    @triton.jit
    def adamw_update(p_base, g_base, m_base, v_base, offsets_ptr, numels_ptr, block_tensor_ptr, block_start_ptr,
                     grad_scale_ptr, decay, beta1, beta2, eps, step_size, bc2_sqrt,
                     HAS_SCALE: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        t = tl.load(block_tensor_ptr + pid)  # which tensor this program updates
        # Where that tensor's parameter, gradient and moments start, in elements from the first
        # tensor of each kind; the hints (true by `supported`) let every access be a 16-byte vector.
        row = offsets_ptr + 4 * t
        p_off = tl.multiple_of(tl.load(row), 4)
        g_off = tl.multiple_of(tl.load(row + 1), 4)
        m_off = tl.multiple_of(tl.load(row + 2), 4)
        v_off = tl.multiple_of(tl.load(row + 3), 4)
        offs = tl.multiple_of(tl.load(block_start_ptr + pid), BLOCK) + tl.arange(0, BLOCK)  # (BLOCK,) int64
        mask = offs < tl.multiple_of(tl.load(numels_ptr + t), 4)
        p = tl.load(p_base + p_off + offs, mask=mask)
        g = tl.load(g_base + g_off + offs, mask=mask)
        m = tl.load(m_base + m_off + offs, mask=mask)
        v = tl.load(v_base + v_off + offs, mask=mask)
        if HAS_SCALE:
            g = g / tl.load(grad_scale_ptr)
        p = p * decay
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        p = p - step_size * m / (tl.sqrt(v) / bc2_sqrt + eps)
        tl.store(p_base + p_off + offs, p, mask=mask)
        tl.store(m_base + m_off + offs, m, mask=mask)
        tl.store(v_base + v_off + offs, v, mask=mask)

    return adamw_update


class Plan:
    """The tables one launch reads for a list of (param, grad, exp_avg, exp_avg_sq) tensors.

    ``key`` is the tensors' addresses: the same key means the tables still hold. It keeps no
    tensor: gradients may be CUDA-graph outputs, which must not be held from one step to the next.
    """

    def __init__(self, tensors: list[tuple[torch.Tensor, ...]], block: int) -> None:
        self.key = tuple(t.data_ptr() for group in tensors for t in group)
        self.block = block
        bases = tensors[0]  # the first (param, grad, exp_avg, exp_avg_sq): offsets count from them
        device = bases[0].device
        # Element offsets from the bases (negative where a tensor lies below its base).
        offsets = [(t.data_ptr() - base.data_ptr()) // 4 for group in tensors for t, base in zip(group, bases)]
        numels = [group[0].numel() for group in tensors]
        blocks = [math.ceil(n / block) for n in numels]
        self.offsets = torch.tensor(offsets, dtype=torch.int64).to(device)  # (4 * tensors,)
        self.numels = torch.tensor(numels, dtype=torch.int64).to(device)  # (tensors,)
        tensor_of = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32), torch.tensor(blocks))
        first = torch.cat([torch.arange(b, dtype=torch.int64) * block for b in blocks])
        self.block_tensor, self.block_start = tensor_of.to(device), first.to(device)  # (blocks,) each


def adamw_update_(plan: Plan, bases: tuple[torch.Tensor, ...], grad_scale: torch.Tensor | None, lr: float,
                  weight_decay: float, beta1: float, beta2: float, eps: float, step: int) -> None:
    """One AdamW step, in place, over the tensors ``plan`` was built for (all at the same ``step``,
    counted from 1); ``bases`` are this step's first (param, grad, exp_avg, exp_avg_sq)."""
    bc1, bc2 = 1.0 - beta1**step, 1.0 - beta2**step
    scale = grad_scale if grad_scale is not None else plan.numels  # any pointer; not read then
    _kernel()[(plan.block_tensor.numel(),)](
        *bases, plan.offsets, plan.numels, plan.block_tensor, plan.block_start, scale,
        1.0 - lr * weight_decay, beta1, beta2, eps, lr / bc1, math.sqrt(bc2),
        HAS_SCALE=grad_scale is not None, BLOCK=plan.block, num_warps=NUM_WARPS,
    )
