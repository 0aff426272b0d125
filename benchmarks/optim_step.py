"""Optimizer tail of a training step vs the GPU's memory bandwidth: grad-norm clip + fused AdamW.

Builds lmkit's ``TransformerLM`` (fp32, on the device) at the throughput benchmark's GPT-2 small
or medium shape, gives every parameter a random fp32 ``.grad``, takes warm-up steps (so Adam
state exists), then times each of these (median ms of ``--reps`` calls, CUDA events) and turns
it into effective GB/s from the fewest bytes it must move (N = number of parameters, fp32):
  - ``copy``: ``dst.copy_(src)`` of one flat buffer of N floats (8 B/param): the reference;
  - ``norm``: ``torch.nn.utils.get_total_norm`` over the grads (4 B/param);
  - ``adamw``: ``opt.step()`` of lmkit's ``build_optimizer`` (on CUDA its Triton kernel,
    adamw_kernel.py), ``grad_scale`` None (28 B/param: read p, g, m, v; write p, m, v);
  - ``clip+adamw``: ``clip_gradients`` then ``opt.step()``, what the trainer runs (32 B/param);
  - ``adamw-kernel B/W``: lmkit's kernel with BLOCK=B elements and W warps a program (``--sweep``);
  - ``adamw-torch-fused``: torch's fused AdamW over the same param groups (lmkit before session 7);
  - ``adamw-flat``: the same fused AdamW over ONE flat parameter of N floats (one tensor, not ~110);
  - ``adamw-foreach``: ``AdamW(foreach=True, fused=False)`` over the model's param groups.
The last column is each row's GB/s as a fraction of ``copy``'s.

Imports only torch-level lmkit modules (model, training.optim), so it runs without pydantic.

    PYTHONPATH=. python3 benchmarks/optim_step.py --shape small [--json optim.json]
    uv run python benchmarks/optim_step.py --device cpu --tiny --reps 3        # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any, Callable

import torch
from train_throughput import GPT2_MEDIUM, GPT2_SMALL, TINY, time_steps

from lmkit.model import ModelConfig, TransformerLM
from lmkit.kernels import adamw as adamw_kernel
from lmkit.training.optim import build_optimizer, clip_gradients, param_groups

LR, WEIGHT_DECAY, BETAS, EPS, CLIP = 6e-4, 0.1, (0.9, 0.95), 1e-8, 1.0
SHAPES = {"small": GPT2_SMALL, "medium": GPT2_MEDIUM, "tiny": TINY}


def time_ms(fn: Callable[[], Any], reps: int, device: torch.device) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` calls, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return statistics.median(time_steps(lambda i: fn(), reps, device))


def adamw(params: Any, device: torch.device, **kw: Any) -> tuple[torch.optim.AdamW, str]:
    """``AdamW(fused=True)`` over ``params``, one warm-up step taken; unfused if fused fails."""
    kw = dict(lr=LR, betas=BETAS, eps=EPS, **kw)
    try:
        opt = torch.optim.AdamW(params, fused=True, **kw)
        opt.step()
        opt.step()
        return opt, "fused" if device.type == "cuda" else "fused (cpu)"
    except (RuntimeError, ValueError) as e:  # fused kernel not available for this device
        opt = torch.optim.AdamW(params, **kw)
        opt.step()
        opt.step()
        return opt, f"unfused fallback: {str(e).splitlines()[0][:60]}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=("small", "medium"), default="small")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny model shape (CPU smoke test)")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--sweep", action="store_true", help="also time lmkit's kernel at other BLOCK / warps")
    p.add_argument("--best-out", type=Path, default=None, help="with --sweep: write the fastest block,warps here")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    shape = "tiny" if args.tiny else args.shape
    torch.manual_seed(0)

    model = TransformerLM(ModelConfig(**SHAPES[shape])).to(device).float()
    params = [q for q in model.parameters() if q.requires_grad]
    for q in params:
        q.grad = torch.randn_like(q) * 1e-3
    grads = [q.grad for q in params]
    n = sum(q.numel() for q in params)
    opt = build_optimizer(model, LR, WEIGHT_DECAY, BETAS, EPS, device.type)
    for _ in range(2):  # warm-up: creates the Adam state
        clip_gradients(opt, params, CLIP)
        opt.step()
    lmkit_note = ("lmkit Triton kernel" if type(opt) is not torch.optim.AdamW else
                  "torch fused" if opt.defaults.get("fused") else "torch unfused (build_optimizer: cuda only)")
    rows: list[dict[str, Any]] = []

    def row(name: str, fn: Callable[[], Any], bytes_per_param: int, note: str = "") -> None:
        ms = time_ms(fn, args.reps, device)
        gbps = bytes_per_param * n / 1e9 / (ms * 1e-3)
        rows.append(dict(name=name, ms=ms, gb_per_s=gbps, bytes=bytes_per_param * n, note=note))

    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    row("copy", lambda: dst.copy_(src), 8)
    del src, dst
    row("norm", lambda: torch.nn.utils.get_total_norm(grads), 4)

    def step() -> None:
        opt.grad_scale = None  # type: ignore[attr-defined]
        opt.step()

    def clip_step() -> None:
        clip_gradients(opt, params, CLIP)
        opt.step()

    row("adamw", step, 28, lmkit_note)
    row("clip+adamw", clip_step, 32, lmkit_note)
    opt.grad_scale = None  # type: ignore[attr-defined]
    if args.sweep and type(opt) is not torch.optim.AdamW:
        default = adamw_kernel.BLOCK, adamw_kernel.NUM_WARPS
        for block, warps in ((1024, 4), (2048, 4), (2048, 8), (4096, 4), (4096, 8), (4096, 16), (8192, 8), (8192, 16)):
            opt.block, opt.num_warps = block, warps  # the launch parameters AdamW takes (a new block rebuilds its tables)
            row(f"adamw-kernel {block}/{warps}", step, 28, "default" if (block, warps) == default else "")
        opt.block, opt.num_warps = default
        if args.best_out:
            best = min((r for r in rows if r["name"].startswith("adamw-kernel ")), key=lambda r: r["ms"])
            args.best_out.write_text(best["name"].split()[1].replace("/", ","))

    tf_opt, note = adamw(param_groups(model, WEIGHT_DECAY), device)
    row("adamw-torch-fused", tf_opt.step, 28, note)
    del tf_opt

    flat = torch.nn.Parameter(torch.zeros(n, device=device))
    flat.grad = torch.randn_like(flat) * 1e-3
    flat_opt, note = adamw([flat], device, weight_decay=WEIGHT_DECAY)
    row("adamw-flat", flat_opt.step, 28, note)
    del flat, flat_opt

    fe_opt = torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=LR, betas=BETAS, eps=EPS,
                               foreach=True, fused=False)
    fe_opt.step()
    fe_opt.step()
    row("adamw-foreach", fe_opt.step, 28, "foreach")
    del fe_opt

    copy_gbps = rows[0]["gb_per_s"]
    for r in rows:
        r["frac_copy"] = r["gb_per_s"] / copy_gbps
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"shape {shape} on {dev_name}, torch {torch.__version__}: {n:,} parameters "
          f"({n * 4 / 1e9:.2f} GB fp32) in {len(params)} tensors; median of {args.reps} reps")
    print("| op | ms | GB/s | x copy | bytes/param | note |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['name']} | {r['ms']:.3f} | {r['gb_per_s']:,.1f} | {r['frac_copy']:.2f} | "
              f"{r['bytes'] // n} | {r['note']} |")
    if args.json:
        args.json.write_text(json.dumps(dict(
            shape=shape, device=dev_name, torch=torch.__version__, params=n,
            param_tensors=len(params), reps=args.reps, rows=rows), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
