"""The fused loss's per-chunk cross-entropy: lmkit's Triton kernel vs Inductor's, same run.

Times, on one chunk of GPT-2-small logits (4096 x 50304 bf16 by default):
  - ``inductor``: ``loss._ce_chunk_grad`` compiled (what the fused loss ran before the kernel);
  - ``kernel B/W``: ``ce_kernel.ce_loss_and_grad_`` with block B and W warps (a small sweep);
and then the whole fused LM head + loss forward and backward at the GPT-2-small step (16,384 rows)
with the kernel (fastest configuration) on and off. GB/s counts one read and one write of the chunk (the least any
version can move), so it reads as the fraction of the card's bandwidth achieved.

    python benchmarks/ce_chunk.py [--rows 4096] [--vocab 50304]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from train_throughput import time_steps

from lmkit.kernels import ce as ce_kernel
from lmkit.training.loss import _ce_chunk_grad, _compiled, fused_linear_cross_entropy


def time_ms(fn, reps: int = 30) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` calls (CUDA events; 3 warm-up calls)."""
    for _ in range(3):
        fn()
    return statistics.median(time_steps(lambda i: fn(), reps, torch.device("cuda")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--best-out", type=Path, default=None, help="write the fastest block,warps here")
    p.add_argument("--step-rows", type=int, default=16384, help="rows of the whole-loss timing")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    n, V = args.rows, args.vocab
    torch.manual_seed(0)
    logits = torch.randn(n, V, device="cuda", dtype=torch.bfloat16) * 3  # (n, V)
    y = torch.randint(0, V, (n,), device="cuda")
    work = torch.empty_like(logits)
    gbytes = 2 * logits.numel() * logits.element_size() / 1e9
    compiled = _compiled(_ce_chunk_grad)

    def inductor():
        compiled(logits, y, 1 / n)

    config = [ce_kernel.BLOCK, ce_kernel.NUM_WARPS]  # the launch parameters timed next

    def kernel():
        work.copy_(logits)  # the kernel overwrites its input; the copy is timed apart below
        ce_kernel.ce_loss_and_grad_(work, y, 1 / n, block=config[0], num_warps=config[1])

    copy_ms = time_ms(lambda: work.copy_(logits))
    base = time_ms(inductor)
    print(f"{n} x {V} bf16 chunk; GB/s counts {gbytes:.2f} GB (one read + one write)")
    print("| version | ms | GB/s | vs inductor |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| inductor (compiled torch) | {base:.3f} | {gbytes / base * 1e3:,.0f} | 1.00 |")
    best = (float("inf"), None)
    for block, warps in ((4096, 8), (8192, 8), (8192, 16), (16384, 16), (16384, 32), (32768, 32)):
        config[:] = block, warps
        ms = time_ms(kernel) - copy_ms
        best = min(best, (ms, (block, warps)))
        print(f"| kernel {block}/{warps} | {ms:.3f} | {gbytes / ms * 1e3:,.0f} | {base / ms:.2f} |")
    print(f"best: {','.join(map(str, best[1]))}")
    if args.best_out:
        args.best_out.write_text(",".join(map(str, best[1])))
    print(f"(the loss below uses the kernel's constants, {ce_kernel.BLOCK}/{ce_kernel.NUM_WARPS})")

    # The whole fused loss at the training step's size, forward + backward, kernel on and off.
    N, D = args.step_rows, args.d_model
    h = (torch.randn(N, D, device="cuda") * 0.5).requires_grad_()
    w = (torch.randn(V, D, device="cuda") * 0.02).requires_grad_()
    ys = torch.randint(0, V, (N,), device="cuda")

    def loss_step(enabled: bool):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fused_linear_cross_entropy(h, w, ys, 4096, compute_dtype=torch.bfloat16, compiled=True,
                                              ce_kernel=enabled)
        loss.backward()
        h.grad = w.grad = None

    rows = {}
    for enabled in (False, True):  # the setting kernels.ce_kernel
        torch.cuda.reset_peak_memory_stats()
        rows[enabled] = (time_ms(lambda: loss_step(enabled), reps=20), torch.cuda.max_memory_allocated() / 2**30)
    (off, off_mem), (on, on_mem) = rows[False], rows[True]
    print(f"\nfused LM head + CE, {N} rows, forward + backward: inductor chunks {off:.3f} ms "
          f"(peak {off_mem:.2f} GiB), kernel {on:.3f} ms (peak {on_mem:.2f} GiB): {off - on:+.3f} ms saved, {off / on:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
