"""Golden loss curves: a tiny model trained on CPU through ``api.train`` must reproduce stored losses.

Any change to the numerics of the model, the loss, the optimizer or the schedule shows up here
as a curve that no longer matches. Two precisions: float32 (the default on CPU) and bfloat16
autocast, which takes the training fast paths that autocast turns on (the fp32-weight-gradient
Linear, one q/k/v GEMM with RoPE's stacked backward, the fused LM-head loss).

The bfloat16 curve depends on which kernels oneDNN runs its bfloat16 matmuls with (AMX tiles,
AVX-512, AVX2 give different roundings), so one is stored per kernel family; one machine with
AMX records all three, as ``ONEDNN_MAX_CPU_ISA`` caps what oneDNN uses.

A deliberate numerical change regenerates the stored values with
``LMKIT_UPDATE_GOLDEN=1 uv run pytest tests/training/test_golden_curve.py -p no:xdist`` (and the
same with ``ONEDNN_MAX_CPU_ISA=AVX512_CORE`` and ``=AVX2``) and says why in its commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lmkit.api import resolve_settings, train
from lmkit.observe.base import MultiSink
from tests.training.test_trainer import Recorder

GOLDEN = Path(__file__).with_name("golden_curve.json")
STEPS = 30
# Relative. Tight enough that rounding the weight gradients to bfloat16 once per step (3e-4 here
# by step 30) fails; another CPU's bfloat16 kernels (AVX-512 vs AMX) may need the curve rewritten.
TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-4}


def _curve_key(dtype: str) -> str:
    """Which stored curve this machine must reproduce: float32's is one for every x86 CPU;
    bfloat16's is per kernel family oneDNN picks (the best the CPU has, under ONEDNN_MAX_CPU_ISA)."""
    if dtype == "float32":
        return dtype
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if torch.cpu._is_amx_tile_supported() and (cap in ("ALL", "DEFAULT") or "AMX" in cap):
        return f"{dtype}/amx"
    if torch.cpu._is_avx512_supported() and (cap in ("ALL", "DEFAULT") or cap.startswith("AVX512") or "AMX" in cap):
        return f"{dtype}/avx512"
    return f"{dtype}/avx2"


def _curve(tiny_overrides: dict, dtype: str) -> dict[str, float]:
    overrides = dict(
        tiny_overrides, dtype=dtype, max_iters=STEPS, lr_decay_iters=STEPS, log_interval=1, eval_interval=STEPS,
        checkpoint_interval=STEPS, seed=1234,
    )
    rec = Recorder()
    train(resolve_settings(overrides=overrides, environ={}), MultiSink([rec]))
    curve = {str(step): loss for step, loss in rec.losses().items()}
    val = [m["val_loss"] for _, m in rec.logs if "val_loss" in m]
    curve["val"] = val[-1]
    return curve


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_golden_loss_curve(tiny_overrides, dtype):
    curve = _curve(tiny_overrides, dtype)
    assert len(curve) == STEPS + 1, sorted(curve)
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    key = _curve_key(dtype)
    if os.environ.get("LMKIT_UPDATE_GOLDEN"):
        stored[key] = curve
        GOLDEN.write_text(json.dumps(stored, indent=1) + "\n")
        pytest.skip(f"golden curve for {key} written to {GOLDEN.name}")
    assert key in stored, f"no golden curve for {key} in {GOLDEN.name}: record it (module docstring) on such a CPU"
    want = stored[key]
    tol = TOLERANCE[dtype]
    bad = {k: (curve[k], want[k]) for k in want if abs(curve[k] - want[k]) > tol * max(1.0, abs(want[k]))}
    assert not bad, f"{key} loss curve moved (got, stored): {bad}"
    # The curve is a real training curve, not a constant: it must have fallen.
    assert curve[str(STEPS)] < curve["1"] * 0.8
