"""Where a GPU step's time goes: its CUDA kernels from torch.profiler, grouped by kind.

Used by train_throughput.py and generate.py (``--profile``). The groups are read from kernel
names (cuBLAS/CUTLASS GEMMs, attention, Inductor's Triton kernels, the optimizer, copies, other),
so they are a guide, not an exact accounting.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any, Callable

import torch

KINDS = (
    ("attention", r"flash|fmha|cudnn|attention|sdpa"),
    ("gemm", r"gemm|xmma|cutlass|nvjet|cublas|gemv|splitk|sm\d\d_"),
    ("optimizer", r"multi_tensor|adam|foreach"),
    ("triton", r"^triton_|triton"),
    ("copy", r"copy|memcpy|memset|cat|fill|index"),
)


def kind_of(name: str) -> str:
    """The group a kernel name belongs to (first match in KINDS, else "other")."""
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.I):
            return kind
    return "other"


def profile_kernels(fn: Callable[[], Any], reps: int, top: int = 12, per_rep: int = 1) -> dict:
    """Run ``fn`` ``reps`` times under the profiler; per-unit GPU time by group and top kernels.

    A unit is one rep, or 1/per_rep of one (e.g. per_rep=256 for a call generating 256 tokens
    gives per-token figures). Returns a dict with ``wall_ms`` (host time per unit,
    synchronised), ``gpu_ms`` (sum of kernel times per unit; less than wall_ms when the GPU
    idles), ``kernels`` (launches per unit), ``by_kind`` {group: ms per unit} and ``top``
    [(ms per unit, launches per unit, group, name)].
    """
    units = reps * per_rep
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    total: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            total[e.name] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
            count[e.name] += 1
    by_kind: dict[str, float] = defaultdict(float)
    for name, us in total.items():
        by_kind[kind_of(name)] += us / 1000 / units
    ranked = sorted(total, key=total.get, reverse=True)[:top]
    return {
        "wall_ms": 1000 * wall / units,
        "gpu_ms": sum(total.values()) / 1000 / units,
        "kernels": sum(count.values()) / units,
        "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "top": [(total[n] / 1000 / units, count[n] / units, kind_of(n), n[:110]) for n in ranked],
    }


def render(label: str, p: dict) -> str:
    """A few lines for a log: totals, groups, top kernels."""
    kinds = ", ".join(f"{k} {ms:.2f}" for k, ms in p["by_kind"].items())
    lines = [f"{label}: wall {p['wall_ms']:.3f} ms, GPU kernels {p['gpu_ms']:.3f} ms "
             f"({p['kernels']:.0f} launches); by group (ms): {kinds}"]
    lines += [f"    {ms:8.3f} ms {n:6.1f}x {kind:<9} {name}" for ms, n, kind, name in p["top"]]
    return "\n".join(lines)
