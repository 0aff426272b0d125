"""Optimizer step time: lmkit's AdamW vs Muon (MuonAdamW) at GPT-2 small (issue #23).

Gives every parameter of lmkit's ``TransformerLM`` a random fp32 gradient, warms up, then times
(median ms of ``--reps`` calls, CUDA events) ``clip_gradients`` + ``opt.step()`` for each
optimizer, and the Newton-Schulz part alone (``orthogonalise`` on each shape's stack). The
Newton-Schulz cost is matmuls: for an r x c matrix (r <= c), 5 x (4 r^2 c + 2 r^3) flops; at
GPT-2 small (d_ff 2048) that is ~1.5 TFLOP a step, which is what bounds Muon's tokens/s against
AdamW's at batch 16 x 1024 (about 10 TFLOP of forward and backward a step).

    PYTHONPATH=. python3 benchmarks/muon_step.py [--json muon_step.json]
    uv run python benchmarks/muon_step.py --device cpu --tiny --reps 2        # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

import torch

from lmkit.model import ModelConfig, TransformerLM
from lmkit.training.muon import MuonAdamW, orthogonalise, split_parameters
from lmkit.training.optim import build_optimizer, clip_gradients

SMALL = dict(vocab_size=50304, context_length=1024, d_model=768, num_layers=12, num_heads=12, d_ff=2048, rope_theta=1e4)
TINY = dict(vocab_size=512, context_length=64, d_model=64, num_layers=2, num_heads=4, d_ff=192, rope_theta=1e4)


def timed(fn, reps: int, device: str) -> float:
    """Median milliseconds of ``fn()``."""
    out = []
    for _ in range(reps):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            out.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            out.append(1000 * (time.perf_counter() - t))
    return statistics.median(out)


def ns_tflop(model) -> float:
    muon, _ = split_parameters(model)
    total = 0
    for _, p in muon:
        r, c = sorted(p.shape)
        total += 5 * (4 * r * r * c + 2 * r**3)
    return total / 1e12


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--json", default=None)
    p.add_argument("--no-overlap", action="store_true", help="skip the forward+backward overlap (compiles the model)")
    a = p.parse_args()
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**(TINY if a.tiny else SMALL))).to(a.device)
    params = list(model.parameters())
    for q in params:
        q.grad = torch.randn_like(q) * 1e-3

    def adamw(m):
        return build_optimizer(m, 6e-4, 0.1, (0.9, 0.95), 1e-8, a.device)

    muon_list, rest = split_parameters(model)
    from lmkit.training.muon import _Params

    opts = {
        "adamw": adamw(model),
        "muon": MuonAdamW([q for _, q in muon_list], adamw(_Params([q for _, q in rest])), 0.02, 6e-4, 0.95, True, 5, 0.0, "original"),
    }
    rows = {}
    for name, opt in opts.items():
        def step(opt=opt):
            clip_gradients(opt, params, 1.0)
            opt.step()
        for _ in range(3):
            step()
        rows[f"clip+{name}"] = timed(step, a.reps, a.device)
    stacks = defaultdict(list)
    for _, q in muon_list:
        stacks[tuple(q.shape)].append(q.grad)
    stacked = [torch.stack(v) for v in stacks.values()]
    def newton_schulz():
        return [orthogonalise(s, 5) for s in stacked]

    rows["newton-schulz only"] = timed(newton_schulz, a.reps, a.device)
    tf = ns_tflop(model)
    bounds = {}
    if a.device == "cuda":
        bounds["peak_tflops"] = peak_tflops(a.reps)
        bounds["ns_floor_ms"] = 1000 * tf / bounds["peak_tflops"]
        if not a.no_overlap:
            bounds |= overlap(model, newton_schulz, rows["newton-schulz only"], a.reps)
    print(f"Newton-Schulz: {tf:.2f} TFLOP a step over {len(muon_list)} matrices in {len(stacked)} shapes")
    for k, v in rows.items():
        extra = f"  ({tf / (v / 1000):.0f} TFLOP/s)" if k == "newton-schulz only" and v > 0 else ""
        print(f"{k:>20}: {v:8.2f} ms{extra}")
    if bounds:
        print(f"practical bf16 peak (8192^3 matmul): {bounds['peak_tflops']:.0f} TFLOP/s; "
              f"Newton-Schulz at that rate: {bounds['ns_floor_ms']:.2f} ms a step")
    if "fwd_bwd_ms" in bounds:
        step = bounds["fwd_bwd_ms"] + rows["clip+adamw"]
        print(f"compiled forward+backward {bounds['fwd_bwd_ms']:.2f} ms; with Newton-Schulz on a side stream "
              f"{bounds['together_ms']:.2f} ms: hides {bounds['hidden_ms']:.2f} of {rows['newton-schulz only']:.2f} ms")
        print(f"Muon's floor against this run's AdamW step ({step:.1f} ms): "
              f"{100 * bounds['ns_floor_ms'] / step:.1f} % at the peak rate, "
              f"{100 * (rows['clip+muon'] - rows['clip+adamw'] - bounds['hidden_ms']) / step:.1f} % as measured with the overlap")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"ms": rows, "ns_tflop": tf, "bounds": bounds, "device": a.device, "tiny": a.tiny}, f, indent=1)


def peak_tflops(reps: int) -> float:
    """This GPU's practical bf16 matmul rate: one large square product, which cuBLAS runs near peak."""
    n = 8192
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return 2 * n**3 / 1e12 / (timed(lambda: x @ x, reps, "cuda") / 1000)


def overlap(model, newton_schulz, ns_ms: float, reps: int) -> dict:
    """Median ms of a compiled bf16 forward+backward at batch 16 x context alone, and with
    ``newton_schulz()`` (``ns_ms`` alone) launched at the same time on a side stream: what
    overlapping Muon's work with the backward pass could hide at best (the two share the SMs)."""
    cfg = model.config
    tokens = torch.randint(0, cfg.vocab_size, (16, cfg.context_length), device="cuda")
    compiled = torch.compile(model)

    def fwd_bwd():
        with torch.autocast("cuda", torch.bfloat16):
            logits = compiled(tokens)  # (16, T, vocab)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten()).backward()

    side = torch.cuda.Stream()

    def together():
        main = torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            newton_schulz()
        fwd_bwd()
        main.wait_stream(side)

    for _ in range(3):
        fwd_bwd()  # compile and warm up
    alone = timed(fwd_bwd, reps, "cuda")
    both = timed(together, reps, "cuda")
    return {"fwd_bwd_ms": alone, "together_ms": both, "hidden_ms": alone + ns_ms - both}


if __name__ == "__main__":
    main()
