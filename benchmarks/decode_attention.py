"""One-token decode attention alone: lmkit's Triton kernel vs the SDPA path it replaces.

Times one layer's attention work for a single decoded token (RoPE on q and k, the key/value
cache write, attention over the cache) at GPT-2-small's head layout (12 heads of 64, cache of
1024 slots, bf16), at several positions and batch sizes:
- ``sdpa``: what decoding ran before the kernel, compiled: RoPE, ``index_copy_`` into the
  caches and ``scaled_dot_product_attention`` over all S slots with the additive mask (cuDNN);
- ``kSPLIT/BLOCKxWARPS``: ``lmkit::decode_attention`` with that many cache slots per program,
  slots per loop iteration and warps per program (the module's SPLIT / BLOCK_N / NUM_WARPS).
Each is captured 200 times in one CUDA graph and replayed, so the time per call is GPU time plus
the gaps between kernels, as inside the decoder's graph, without Python or launch overhead.

Usage: python3 benchmarks/decode_attention.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import lmkit  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmkit.kernels import decode_attention
from lmkit.model.rope import apply_rope, precompute_rope

H, HD, S = 12, 64, 1024
CALLS = 200


def sdpa_path(qkv, cos, sin, k_cache, v_cache, pos, mask):
    """The SDPA path of CausalSelfAttention for one token (decode rotates in (B, H, 1, hd))."""
    B = qkv.shape[0]
    q, k, v = (t.view(B, 1, H, HD).transpose(1, 2) for t in qkv.split(H * HD, dim=-1))  # (B, H, 1, hd)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k_cache.index_copy_(2, pos, k)
    v_cache.index_copy_(2, pos, v)
    y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask)  # (B, H, 1, hd)
    return y.transpose(1, 2).reshape(B, 1, H * HD)


def time_graph(fn) -> float:
    """Microseconds per call of ``fn`` replayed from a CUDA graph of CALLS calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(CALLS):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(5):
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / CALLS)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    dtype, device = torch.bfloat16, torch.device("cuda")
    cos_t, sin_t = precompute_rope(HD, S, device=device)
    compiled_sdpa = torch.compile(sdpa_path, fullgraph=True)
    configs = [(64, 64, 4), (128, 64, 4), (128, 128, 4), (128, 128, 8), (256, 64, 4), (256, 128, 8), (1024, 256, 8)]
    names = [f"k{split}/{block}x{warps}" for split, block, warps in configs]
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; us per call (one layer, one token)")
    print(f"{'B':>2} {'pos':>5} {'sdpa':>7} " + " ".join(f"{name:>12}" for name in names))
    for B in (1, 8):
        arrivals = torch.zeros(B, H, dtype=torch.int32, device=device)
        k_cache = torch.randn(B, H, S, HD, device=device, dtype=dtype)
        v_cache = torch.randn(B, H, S, HD, device=device, dtype=dtype)
        qkv = torch.randn(B, 1, 3 * H * HD, device=device, dtype=dtype)
        for p in (64, 320, 1023):
            pos = torch.tensor([p], device=device)
            cos, sin = cos_t[pos], sin_t[pos]
            slots = torch.arange(S, device=device)
            mask = torch.zeros(1, S, device=device, dtype=dtype).masked_fill_(slots[None] > pos, float("-inf"))
            row = {"batch": B, "pos": p}
            row["sdpa"] = time_graph(lambda: compiled_sdpa(qkv, cos, sin, k_cache, v_cache, pos, mask))
            ref = compiled_sdpa(qkv, cos, sin, k_cache, v_cache, pos, mask)
            for name, (split, block, warps) in zip(names, configs):
                op = decode_attention.decode_attention_op(split, block, warps)
                out = op(qkv, cos, sin, k_cache, v_cache, arrivals, pos)
                row["err " + name] = (out.float() - ref.float()).abs().max().item()
                row[name] = time_graph(lambda: op(qkv, cos, sin, k_cache, v_cache, arrivals, pos))
                assert not arrivals.any(), "counters not reset"
            rows.append(row)
            print(f"{B:>2} {p:>5} {row['sdpa']:>7.2f} " + " ".join(f"{row[name]:>12.2f}" for name in names))
    worst = max(v for r in rows for k, v in r.items() if k.startswith("err "))
    print(f"max |kernel - sdpa| over all rows: {worst:.3g}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
