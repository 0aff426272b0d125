"""AdamW's update of every fp32 tensor of a parameter group in one Triton kernel launch.

torch's fused AdamW (``multi_tensor_apply``) reads parameter, gradient and both moments and
writes three of them back: 28 bytes a parameter, and it runs well below a device-to-device
copy's bandwidth (one flat tensor instead of many is no faster); this kernel runs at about that
bandwidth (benchmarks/optim_step.py measures both). Here each program updates one BLOCK-sized
slice of one tensor, found through small tables (which tensor, where in it) that are built once
and rebuilt only when a tensor's address changes. Every access is a 16-byte vector: the tensors'
addresses are given as element offsets from one base tensor per kind, with alignment hints that
``supported`` makes true (a kernel that loaded raw addresses from its table had scalar loads
and ran at about half the bandwidth).

``AdamW`` is the optimizer that runs it, with the state dict of ``torch.optim.AdamW``; its torch
reference is ``torch.optim.AdamW``, which the tests compare it with.

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

from lmkit.kernels.triton_support import triton_device

# Elements per program and warps per program: the fastest at GPT-2 small and medium on an H200
# (benchmarks/optim_step.py sweeps them through AdamW's block/num_warps arguments).
BLOCK = 1024
NUM_WARPS = 4


def supported(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether the kernel can update these: plain (not sharded), contiguous fp32 tensors on a
    device Triton runs on, whose sizes are multiples of 4 and addresses of 16 bytes (so every
    load and store is a 16-byte vector)."""
    if not tensors:
        return False
    for t in tensors:
        if type(t.data) is not torch.Tensor or t.dtype != torch.float32:
            return False
        if not t.is_contiguous() or t.numel() % 4 or t.data_ptr() % 16:
            return False
    return triton_device(tensors[0].device) and all(t.device == tensors[0].device for t in tensors)


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
                  weight_decay: float, beta1: float, beta2: float, eps: float, step: int,
                  num_warps: int = NUM_WARPS) -> None:
    """One AdamW step, in place, over the tensors ``plan`` was built for (all at the same ``step``,
    counted from 1); ``bases`` are this step's first (param, grad, exp_avg, exp_avg_sq)."""
    bc1, bc2 = 1.0 - beta1**step, 1.0 - beta2**step
    scale = grad_scale if grad_scale is not None else plan.numels  # any pointer; not read then
    _kernel()[(plan.block_tensor.numel(),)](
        *bases, plan.offsets, plan.numels, plan.block_tensor, plan.block_start, scale,
        1.0 - lr * weight_decay, beta1, beta2, eps, lr / bc1, math.sqrt(bc2),
        HAS_SCALE=grad_scale is not None, BLOCK=plan.block, num_warps=num_warps,
    )


class AdamW(torch.optim.AdamW):
    """torch's AdamW whose step is one Triton launch per parameter group (``adamw_update_``).

    Same hyperparameters, same state (``exp_avg``, ``exp_avg_sq``, ``step``) and so the same
    state dict as ``torch.optim.AdamW``: checkpoints move between the two. Like torch's fused
    version it takes the gradient clip as ``grad_scale`` (see ``clip_gradients``). Anything the
    kernel does not cover (sharded or non-fp32 tensors, differing step counts, amsgrad) takes
    torch's own step, with ``grad_scale`` applied to the gradients first.
    """

    takes_grad_scale = True

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float, weight_decay: float,
                 block: int = BLOCK, num_warps: int = NUM_WARPS) -> None:
        """Args as ``torch.optim.AdamW``'s; ``block`` and ``num_warps`` are the kernel's launch
        parameters (the defaults are the tuned ones; benchmarks sweep them)."""
        # Unfused: the fallback step keeps the step counts on the CPU, where this class keeps them.
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=False)
        self.grad_scale: torch.Tensor | None = None
        self.block, self.num_warps = block, num_warps
        self._plans: dict[int, Plan] = {}

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch.optim.AdamW.step)
        if closure is not None:
            raise ValueError("lmkit's AdamW takes no closure")
        work = []
        for i, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["amsgrad"] or group["maximize"]:
                return self._torch_step()
            for p in params:
                if not self.state[p]:
                    self.state[p].update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            tensors = [(p, p.grad, self.state[p]["exp_avg"], self.state[p]["exp_avg_sq"]) for p in params]
            plan = self._plans.get(i)
            if plan is None or plan.block != self.block or plan.key != tuple(t.data_ptr() for ts in tensors for t in ts):
                # New tensors (first step, a resume, a parameter that had no gradient before).
                if not supported([t for ts in tensors for t in ts]):
                    return self._torch_step()
                steps = {float(self.state[p]["step"]) for p in params}
                if len(steps) != 1:
                    return self._torch_step()
                # One step count for the group, on the CPU (as torch's unfused AdamW keeps it):
                # read without a device sync, and one increment a step instead of one per tensor.
                shared = torch.tensor(steps.pop(), dtype=torch.float32)
                for p in params:
                    self.state[p]["step"] = shared
                plan = self._plans[i] = Plan(tensors, self.block)
            work.append((group, plan, tensors[0], self.state[params[0]]["step"]))
        for group, plan, bases, step in work:
            step += 1
            beta1, beta2 = group["betas"]
            adamw_update_(
                plan, bases, self.grad_scale, float(group["lr"]), group["weight_decay"], beta1, beta2, group["eps"], int(step),
                self.num_warps,
            )
        return None

    def load_state_dict(self, state_dict: dict) -> None:  # noqa: D102 (torch.optim.Optimizer.load_state_dict)
        super().load_state_dict(state_dict)
        # A state dict from torch's fused AdamW carries fused=True into the groups; the fallback
        # step must stay torch's unfused one, which takes the CPU step counts kept here.
        for group in self.param_groups:
            group.update(fused=False, capturable=False)
        self._plans.clear()

    def state_dict(self) -> dict:  # noqa: D102 (torch.optim.Optimizer.state_dict)
        # A group's tensors share one step count here (see step); the state dict gives each its
        # own, as torch's AdamW, which increments each in place, expects.
        out = super().state_dict()
        out["state"] = {k: {**v, "step": v["step"].clone()} if "step" in v else v for k, v in out["state"].items()}
        return out

    def _torch_step(self):
        """torch's own step over everything, the clip (``grad_scale``) applied to the gradients first."""
        self._plans.clear()
        for state in self.state.values():  # one step count each again: torch increments each
            if "step" in state:
                state["step"] = state["step"].clone()
        if self.grad_scale is not None:
            grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
            torch._foreach_div_(grads, self.grad_scale)
            self.grad_scale = None  # torch's unfused step refuses one
        return super().step()
