"""`lmkit train` end to end vs the raw step rate of the same model, in one run (issues #5, #7).

Three measurements on a random-token .bin (GPT-2-small shape by default):
  raw       the trainer's own pieces (TransformerLM + LMLoss, torch.compile with CUDA graphs, fused
            AdamW, clip)
            in a bare loop on GPU-resident random batches: no loader, logging, eval, checkpoints;
  train     `python -m lmkit train` with the default log/eval/checkpoint intervals, plain log lines;
  torchrun  the same command under `torchrun --nproc-per-node 1`.
For `train` and `torchrun` the steady-state rate is the median tokens/s of the logged windows
after the first two (compile and warm-up), which is what the dashboard shows; the wall-clock
rate (everything, including compile, evals and checkpoint writes) is printed beside it.

Usage (device machine; pydantic/typer wheels on PYTHONPATH):
    PYTHONPATH=. python3 benchmarks/train_e2e.py --steps 300 --out $OUT/e2e
    uv run python benchmarks/train_e2e.py --tiny --device cpu --steps 30   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

SMALL = dict(vocab_size=50304, context_length=1024, d_model=768, num_layers=12, num_heads=12, d_ff=2048)
TINY = dict(vocab_size=512, context_length=64, d_model=64, num_layers=2, num_heads=4, d_ff=192)


def write_random_tokens(path: Path, n: int, vocab: int) -> None:
    from lmkit.data.tokens import TokenFileMeta, write_tokens

    ids = np.random.default_rng(0).integers(0, vocab, n, dtype=np.int64).astype(np.uint16)
    write_tokens(path, ids, TokenFileMeta(dtype="uint16", num_tokens=n, vocab_size=vocab))


def raw_rate(shape: dict, batch: int, steps: int, device: str) -> float:
    """Tokens/s of a bare loop over the trainer's components."""
    from lmkit.kernels import KernelPlan, apply_training
    from lmkit.model import ModelConfig, TransformerLM
    from lmkit.training.loss import LMLoss
    from lmkit.training.optim import build_optimizer, clip_gradients

    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**shape)).to(device)
    # As the trainer runs one GPU: the default kernels, fused loss with compiled chunks, CUDA
    # graphs, combo kernels.
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    kernels = KernelPlan().for_training(torch.device(device), dtype)
    apply_training(model, kernels, dtype)
    step_fn = LMLoss(model, compiled=device == "cuda", compute_dtype=dtype if device == "cuda" else None,
                     ce_kernel=kernels.ce_kernel)
    if device == "cuda":
        step_fn = torch.compile(step_fn, options={"triton.cudagraphs": True, "combo_kernels": True})
    opt = build_optimizer(model, 6e-4, 0.1, (0.9, 0.95), 1e-8, device, kernel=kernels.adamw_kernel)
    T, V = shape["context_length"], shape["vocab_size"]
    data = [torch.randint(0, V, (batch, T + 1), device=device) for _ in range(4)]
    ctx = torch.autocast(device, dtype=torch.bfloat16) if device == "cuda" else torch.autocast(device, enabled=False)

    def one(i: int) -> None:
        b = data[i % len(data)]
        if device == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        with ctx:
            loss = step_fn(b[:, :-1], b[:, 1:])
        loss.backward()
        clip_gradients(opt, list(model.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(5):
        one(i)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(steps):
        one(i)
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch * T / (time.perf_counter() - t)


def run_cli(prefix: list[str], args: list[str], run_dir: Path) -> dict:
    """One `lmkit train` run (train_scaling.run_train), with its failure made fatal."""
    from train_scaling import run_train

    r = run_train(prefix, args, run_dir, dict(os.environ), gpus=1)
    if "error" in r:
        print(r["stderr"], file=sys.stderr)
        raise SystemExit(f"{' '.join(prefix)} failed: {r['error']}")
    return {"steady_tok_s": r["tok_s"], "mfu": r["mfu"], "wall_s": r["wall_s"], "steps": r["last_step"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--out", type=Path, default=Path("/tmp/lmkit-e2e"))
    a = p.parse_args()
    shape = TINY if a.tiny else SMALL
    a.out.mkdir(parents=True, exist_ok=True)
    data = a.out / "random.bin"
    write_random_tokens(data, 20_000_000 if not a.tiny else 200_000, shape["vocab_size"])
    args = ["train", "--train-data-path", str(data), "--val-data-path", str(data), "--batch-size", str(a.batch),
            "--max-iters", str(a.steps), "--lr-decay-iters", str(a.steps), "--warmup-iters", "20", "--learning-rate", "6e-4",
            "--min-lr", "6e-5", "--no-wandb", "--device", a.device, "--dashboard", "plain", "--resume", "never",
            "--checkpoint-interval", str(max(a.steps // 2, 1))]  # log 10 / eval 100 x 20 iters: the defaults
    for k, v in shape.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    results = {"raw": {"steady_tok_s": raw_rate(shape, a.batch, min(a.steps, 50), a.device)}}
    results["train"] = run_cli([sys.executable, "-m", "lmkit"], args, a.out / "train")
    results["torchrun"] = run_cli([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m", "lmkit"], args, a.out / "torchrun")
    (a.out / "e2e.json").write_text(json.dumps(results, indent=2))
    raw = results["raw"]["steady_tok_s"]
    print(f"\n{'run':<10} {'tok/s':>10} {'vs raw':>7} {'vs train':>9} {'MFU':>6} {'wall s':>7} steps")
    for name, r in results.items():
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        vs_train = r["steady_tok_s"] / results["train"]["steady_tok_s"]
        print(f"{name:<10} {r['steady_tok_s']:>10,.0f} {r['steady_tok_s'] / raw:>7.3f} {vs_train:>9.3f} {mfu:>6} {r.get('wall_s', 0):>7.1f} {r.get('steps', '')}")


if __name__ == "__main__":
    main()
