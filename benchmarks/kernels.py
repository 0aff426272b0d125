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


def profile_kernels(fn: Callable[[], Any], reps: int, top: int = 12, per_rep: int = 1, keep_spans: bool = False) -> dict:
    """Run ``fn`` ``reps`` times under the profiler; per-unit GPU time by group and top kernels.

    A unit is one rep, or 1/per_rep of one (e.g. per_rep=256 for a call generating 256 tokens
    gives per-token figures). Returns a dict with ``wall_ms`` (host time per unit,
    synchronised), ``gpu_ms`` (sum of kernel times per unit; less than wall_ms when the GPU
    idles), ``kernels`` (launches per unit), ``by_kind`` {group: ms per unit} and ``top``
    [(ms per unit, launches per unit, group, name)]; with ``keep_spans``, also ``spans``: every
    kernel in launch order as (start us from the first, duration us, name), for reading offline.
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
    spans = []  # (start us, end us, name) of every kernel, for the idle gaps between them
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            total[e.name] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
            count[e.name] += 1
            spans.append((e.time_range.start, e.time_range.end, e.name))
    idle_ms, gaps = idle_gaps(spans)
    spans.sort()
    # What each memset prepares: the kernel launched right after it, counted by name.
    before: dict[str, int] = defaultdict(int)
    for (_, _, name), (_, _, after) in zip(spans, spans[1:]):
        if name.startswith("Memset"):
            before[after[:70]] += 1
    t0_us = spans[0][0] if spans else 0.0
    ordered = [(round(a - t0_us, 2), round(b - a, 2), n[:90]) for a, b, n in spans] if keep_spans else None
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
        "idle_ms": idle_ms / units,
        "gaps": gaps[:top],
        "memset_before": sorted(((n / units, k) for k, n in before.items()), reverse=True)[:8],
        **({"spans": ordered} if keep_spans else {}),
    }


def idle_gaps(spans: list[tuple[float, float, str]], min_us: float = 5.0) -> tuple[float, list]:
    """GPU idle time between kernels (on any stream) and the largest gaps.

    Returns ``(idle ms in all, [(gap us, kernel before, kernel after)] largest first)`` over
    gaps of at least ``min_us``: where the GPU waits on the host (a sync, a Python-side loop,
    a graph boundary) rather than on memory.
    """
    spans = sorted(spans)
    idle, gaps = 0.0, []
    end, before = None, ""
    for start, stop, name in spans:
        if end is not None and start - end >= min_us:
            idle += start - end
            gaps.append((start - end, before[:50], name[:50]))
        if end is None or stop > end:
            end, before = stop, name
    return idle / 1000, sorted(gaps, reverse=True)


def render(label: str, p: dict) -> str:
    """A few lines for a log: totals, groups, top kernels."""
    kinds = ", ".join(f"{k} {ms:.2f}" for k, ms in p["by_kind"].items())
    lines = [f"{label}: wall {p['wall_ms']:.3f} ms, GPU kernels {p['gpu_ms']:.3f} ms "
             f"({p['kernels']:.0f} launches); by group (ms): {kinds}"]
    lines += [f"    {ms:8.3f} ms {n:6.1f}x {kind:<9} {name}" for ms, n, kind, name in p["top"]]
    if "idle_ms" in p:
        lines.append(f"  GPU idle between kernels (gaps >= 5 us): {p['idle_ms']:.3f} ms per unit; largest:")
        lines += [f"    {us:8.1f} us after {a} / before {b}" for us, a, b in p["gaps"]]
    if p.get("memset_before"):
        lines.append("  memsets per rep, by the kernel that follows them:")
        lines += [f"    {n:6.1f}x before {name}" for n, name in p["memset_before"]]
    return "\n".join(lines)
