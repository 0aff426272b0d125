"""The table and log lines of train_throughput.py: derived MFU figures, ratios against HF."""

from __future__ import annotations

import math
import re
import sys
from typing import Any

from lmkit.model import ModelConfig, flops_per_token

DATASHEET_TFLOPS = 989.0  # H100/H200 SXM dense bf16


def add_derived(row: dict, cfg: ModelConfig, peak_meas: float | None) -> None:
    """Add achieved TFLOP/s and MFU (against the measured and the datasheet peak) to a row."""
    if "tokens_per_s" not in row or "loss_first" not in row:
        return
    achieved = row["tokens_per_s"] * flops_per_token(cfg) / 1e12  # TFLOP/s
    row["tflops"] = achieved
    row["mfu_measured"] = achieved / peak_meas if peak_meas else None
    row["mfu_datasheet"] = achieved / DATASHEET_TFLOPS if peak_meas else None  # GPU only


def fmt(x: Any, spec: str) -> str:
    """``format(x, spec)``, or "-" for a missing value."""
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def pct(x: float | None, width: int) -> str:
    """A fraction as a right-aligned percentage, "-" when missing."""
    if x is None or math.isnan(x):
        return "-".rjust(width)
    return (">999%" if x >= 9.995 else f"{100 * x:.1f}%").rjust(width)


def error_summary(e: BaseException) -> str:
    """One line for the table: dynamo wraps the real error, so prefer the one it quotes."""
    text = str(e)
    quoted = re.search(r"got (\w+\((['\"]).*?\2\))", text, re.S)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(e).__name__}: {quoted.group(1) if quoted else first}"[:200]


def table(rows: list[dict]) -> str:
    """The final fixed-width table, with lmkit/HF ratios against each shape's ``hf`` row."""
    hf = {r["shape"]: r for r in rows if r["variant"] == "hf" and "tokens_per_s" in r}
    head = (f"{'shape':<9}{'variant':<15}{'ms/step':>9}{'spread':>7}{'tok/s':>10}{'MFU':>7}{'MFU989':>7}"
            f"{'peakGiB':>8}{'resGiB':>7}{'comp_s':>7}{'loss0':>7}{'tok/HF':>7}{'mem/HF':>7} {'attn':<6} notes")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['shape']:<9}{r['variant']:<15}  FAILED: {r['error']}")
            continue
        ref = hf.get(r["shape"])
        tok_ratio = r["tokens_per_s"] / ref["tokens_per_s"] if ref and r.get("loss_first") is not None else None
        # Reserved, not allocated: the only measure that sees a CUDA graph's memory pool.
        mem_ratio = r["reserved_gib"] / ref["reserved_gib"] if ref and r.get("reserved_gib") and ref.get("reserved_gib") else None
        notes = []
        if r.get("graph_breaks", 0) > 0:
            notes.append(f"{r['graphs']} graphs/{r['graph_breaks']} breaks")
        if r.get("recompiled_while_timing"):
            notes.append("RECOMPILED while timing")
        lines.append(
            f"{r['shape']:<9}{r['variant']:<15}{fmt(r['ms_step'], '9.2f')}{pct(r.get('spread'), 7)}"
            f"{fmt(r['tokens_per_s'], '10.0f')}{pct(r.get('mfu_measured'), 7)}{pct(r.get('mfu_datasheet'), 7)}"
            f"{fmt(r.get('peak_gib'), '8.2f').rjust(8)}{fmt(r.get('reserved_gib'), '7.2f').rjust(7)}{fmt(r.get('compile_s'), '7.1f').rjust(7)}"
            f"{fmt(r.get('loss_first'), '7.3f').rjust(7)}{fmt(tok_ratio, '7.2f').rjust(7)}"
            f"{fmt(mem_ratio, '7.2f').rjust(7)} {r.get('attn', '-'):<6} {', '.join(notes)}"
        )
    return "\n".join(lines)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
