"""The training memory check's estimate against the peak a real ``Trainer`` reaches.

For each shape, a fresh process builds lmkit's Trainer on random token data, runs a few steps
and reports the peak: on CUDA ``torch.cuda.max_memory_reserved`` (what the allocator took from
the device), on CPU the growth of peak RSS over the process before the Trainer was built. The
ratio estimate / measured says how far ``lmkit.training.memory`` is off (the check refuses
only when the estimate exceeds free memory, so > 1 errs on the safe side).

Usage: python benchmarks/memory_estimate.py [--device cuda|cpu] [--shapes small16,...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name: (vocab, d_model, layers, heads, d_ff, batch, context, activation checkpointing)
SHAPES = {
    "small16": (50304, 768, 12, 12, 2048, 16, 1024, False),
    "small16-ac": (50304, 768, 12, 12, 2048, 16, 1024, True),
    "small32": (50304, 768, 12, 12, 2048, 32, 1024, False),
    "medium8": (50304, 1024, 24, 16, 2816, 8, 1024, False),
    "cpu-a": (8192, 256, 4, 4, 704, 16, 512, False),
    "cpu-a-ac": (8192, 256, 4, 4, 704, 16, 512, True),
    "cpu-b": (32768, 128, 2, 4, 352, 8, 256, False),
    "cpu-c": (1024, 512, 8, 8, 1408, 4, 1024, False),
}

_CHILD = """
import json, resource, sys
from pathlib import Path
import numpy as np
import torch
from lmkit.data.tokens import TokenFileMeta, write_tokens
from lmkit.settings import resolve_settings
from lmkit.training.compile_plan import plan_compile
from lmkit.training.memory import estimate_training_memory
from lmkit.training.trainer import Trainer
V, D, L, H, F, B, T, ac = json.loads(sys.argv[1]); device = sys.argv[2]; tmp = Path(sys.argv[3])
ids = np.random.default_rng(0).integers(0, V, B * T * 4 + 1).astype(np.uint16 if V <= 2**16 else np.uint32)
write_tokens(tmp / "train.bin", ids, TokenFileMeta(dtype=str(ids.dtype), num_tokens=0, vocab_size=V))
s = resolve_settings(overrides=dict(vocab_size=V, d_model=D, num_layers=L, num_heads=H, d_ff=F, batch_size=B,
    context_length=T, activation_checkpointing=ac, max_iters=3, warmup_iters=1, lr_decay_iters=3, log_interval=1,
    eval_interval=100, checkpoint_interval=100, train_data_path=str(tmp / "train.bin"), val_data_path="",
    checkpoint_dir=str(tmp / "run"), wandb=False, device=device, memory_check=False), environ={})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
t = Trainer(s)
plan = plan_compile(s, t.rt, lambda m: None)  # the plan the Trainer chose (a pure function of both)
est = estimate_training_memory(s, t.rt.device.type, t.rt.dtype, t.rt.compile, plan.fused_loss, t.rt.world_size)
t.run()
if device == "cuda":
    peak = torch.cuda.max_memory_reserved()
else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
print(json.dumps({"estimate": est.total, "measured": peak}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", default=None, help="comma-separated names (default: the cpu-* or the GPU shapes)")
    args = parser.parse_args()
    names = args.shapes.split(",") if args.shapes else [n for n in SHAPES if n.startswith("cpu") == (args.device == "cpu")]
    print(f"{'shape':<12} {'estimate GB':>12} {'measured GB':>12} {'est/meas':>9}")
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(SHAPES[name]), args.device, tmp], cwd=ROOT,
                               capture_output=True, text=True)
        if r.returncode:
            print(f"{name:<12} failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{name:<12} {row['estimate'] / 1e9:>12.2f} {row['measured'] / 1e9:>12.2f} {row['estimate'] / row['measured']:>9.2f}")


if __name__ == "__main__":
    main()
