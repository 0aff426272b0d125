"""Generation speed: lmkit's KV-cached decode vs HuggingFace ``generate``, side by side.

Both run the same weights (lmkit's random init, renamed into a ``LlamaForCausalLM``) at the same
shape and dtype, greedy, without stopping early, for batch 1 and batch 8:
- lmkit: ``lmkit.generation.generate`` with a static preallocated KV cache and the decode step
  compiled and captured by hand in CUDA graphs of four steps each (``generation/cuda_graph.py``),
  no host sync per token;
- lmkit-trees (``--trees``): the same step under ``torch.compile``'s own CUDA graphs
  (``triton.cudagraphs``, lmkit's previous decode loop), to size what the hand capture saves;
- HF: ``model.generate`` with ``cache_implementation="static"``, compiled (``reduce-overhead``).

``--profile`` adds, per shape at batch 1, the GPU kernels of one generation per implementation
(per token: GPU time by kernel group, launches, the largest kernels; see kernels.py).
``--no-decode-tuning`` and ``--steps-per-replay N`` set the ``kernels`` settings of the same names
(``decode_tuning``, ``decode_steps_per_replay``) for lmkit's compiled decode.
``--sdpa-too`` adds lmkit-sdpa: lmkit with ``kernels.decode_attention_kernel`` off (one-token
attention through SDPA over the masked cache instead of ``kernels/decode_attention.py``).

Measured per run: prefill latency (prompt in, first new token out) and decode speed (the
remaining tokens; tokens/s summed over the batch). Each configuration is warmed up once
(compilation, graph capture) and the median of ``--repeats`` runs is reported.

Shapes: GPT-2 small (12 layers, d_model 768, 12 heads, d_ff 2048, context 1024, vocab 50304)
and the ``lmkit train --demo`` model (4 layers, d_model 128, 4 heads, d_ff 384, context 128,
vocab 2048). ``--quick`` shrinks everything so the script runs on a CPU in seconds.

Usage: python benchmarks/generate.py [--quick] [--device cuda|cpu] [--json results.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

try:
    import lmkit  # noqa: F401
except ImportError:  # run from a checkout without installing: use the repository's package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmkit.app.export import to_hf_names
from lmkit.generation import generate
from lmkit.kernels import KernelPlan
from lmkit.kernels.decode import apply_decode
from lmkit.model import ModelConfig, TransformerLM

SHAPES = {
    "gpt2-small": dict(vocab_size=50304, context_length=1024, d_model=768, num_layers=12, num_heads=12, d_ff=2048),
    "demo": dict(vocab_size=2048, context_length=128, d_model=128, num_layers=4, num_heads=4, d_ff=384),
}
QUICK_SHAPES = {
    "gpt2-small (tiny)": dict(vocab_size=512, context_length=128, d_model=64, num_layers=2, num_heads=4, d_ff=128),
    "demo": SHAPES["demo"],
}
# (prompt tokens, new tokens) per shape: fits the context with room to spare.
LENGTHS = {"gpt2-small": (64, 256), "demo": (16, 96)}
QUICK_LENGTHS = (8, 16)


@dataclass
class Row:
    """One measurement."""

    shape: str
    batch: int
    impl: str
    prefill_ms: float
    decode_tok_s: float  # tokens per second summed over the batch


@functools.lru_cache(maxsize=1)
def _trees_step():
    from lmkit.generation import decode_one_token

    return torch.compile(decode_one_token, fullgraph=True, options={"triton.cudagraphs": True, "coordinate_descent_tuning": True})


def time_lmkit_trees(model: TransformerLM, prompt: torch.Tensor, new: int) -> tuple[float, float]:
    """``time_lmkit`` for the previous loop: decode_n_tokens over a cudagraph-tree compiled step."""
    from lmkit.generation import decode_n_tokens, prefill

    device = prompt.device
    B, T = prompt.shape
    if not model.has_cache or model.blocks[0].attn.kv_cache.k.shape[0] != B:
        model.setup_cache(B, max_len=model.config.context_length)
    apply_decode(model, stacked_weights=True, kernel=True)  # the decode layers generate() uses
    _sync(device)
    start = time.perf_counter()
    pos = torch.arange(T, device=device)
    token = prefill(model, prompt, pos, temperature=0.0)
    _sync(device)
    first = time.perf_counter()
    for _ in decode_n_tokens(model, token, pos[-1:] + 1, new - 1, temperature=0.0, decode_fn=_trees_step()):
        pass
    _sync(device)
    return first - start, time.perf_counter() - first


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_lmkit(model: TransformerLM, prompt: torch.Tensor, new: int, compile_decode: bool,
               kernels: KernelPlan) -> tuple[float, float]:
    """(prefill seconds, decode seconds for the other new-1 tokens) of one greedy generation.

    ``kernels``: the decode paths (``settings.kernels``), e.g. decode attention through the
    Triton kernel (lmkit's default) or through SDPA.
    """
    device = prompt.device
    _sync(device)
    start = time.perf_counter()
    tokens = generate(model, prompt, new, temperature=0.0, compile_decode=compile_decode, kernels=kernels)
    next(tokens)
    _sync(device)
    first = time.perf_counter()
    for _ in tokens:
        pass  # no read-back: tokens stay on the device
    _sync(device)
    return first - start, time.perf_counter() - first


class _FirstTokenClock:
    """A HF streamer that notes when the first new token arrives (it never reads the tensor)."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        self.calls.append(time.perf_counter())  # call 0 is the prompt, call 1 the first new token

    def end(self) -> None:
        pass


def time_hf(model, prompt: torch.Tensor, new: int) -> tuple[float, float]:
    """Same as ``time_lmkit`` for HuggingFace ``generate``."""
    device = prompt.device
    clock = _FirstTokenClock()
    _sync(device)
    start = time.perf_counter()
    model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                   streamer=clock if prompt.shape[0] == 1 else None, pad_token_id=0)
    _sync(device)
    end = time.perf_counter()
    if prompt.shape[0] > 1:  # HF streamers take batch 1 only: estimate prefill from a 1-token run
        _sync(device)
        t0 = time.perf_counter()
        model(prompt)
        _sync(device)
        prefill = time.perf_counter() - t0
        return prefill, max(end - start - prefill, 1e-9)
    return clock.calls[1] - start, end - clock.calls[1]


def build_hf(model: TransformerLM, device: torch.device, dtype: torch.dtype, compile_hf: bool):
    """A ``LlamaForCausalLM`` with ``model``'s weights, set up for static-cache compiled generate."""
    import transformers

    from lmkit.app.export import hf_config

    cfg = transformers.LlamaConfig(**{k: v for k, v in hf_config(model.config, None, dtype).items()
                                      if k not in ("architectures", "model_type", "torch_dtype", "dtype")})
    hf = transformers.LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    hf.load_state_dict(to_hf_names(model.state_dict(), model.config.num_layers))
    hf.generation_config.cache_implementation = "static"
    hf.generation_config.eos_token_id = None  # never stop early
    if compile_hf:
        if hasattr(hf.generation_config, "compile_config"):  # transformers >= 4.48 compiles inside generate
            hf.generation_config.compile_config = transformers.CompileConfig(fullgraph=True, mode="reduce-overhead")
        else:
            hf.forward = torch.compile(hf.forward, mode="reduce-overhead", fullgraph=True)
    return hf


def measure(name: str, shape: dict, lengths: tuple[int, int], batches: list[int], device: torch.device,
            dtype: torch.dtype, repeats: int, with_hf: bool, trees: bool = False, profile: bool = False,
            sdpa_too: bool = False, kernels: KernelPlan = KernelPlan()) -> list[Row]:
    """Rows for one shape: lmkit and (optionally) HF, for each batch size."""
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**shape)).to(device=device, dtype=dtype).eval()
    compile_on = device.type == "cuda"
    hf = build_hf(model, device, dtype, compile_on) if with_hf else None
    prompt_len, new = lengths
    rows = []
    for batch in batches:
        prompt = torch.randint(0, shape["vocab_size"], (batch, prompt_len), device=device)
        impls = [("lmkit", lambda p=prompt: time_lmkit(model, p, new, compile_on, kernels))]
        if sdpa_too and compile_on:
            sdpa = replace(kernels, decode_attention_kernel=False)
            impls.append(("lmkit-sdpa", lambda p=prompt: time_lmkit(model, p, new, compile_on, sdpa)))
        if trees and compile_on:
            impls.append(("lmkit-trees", lambda p=prompt: time_lmkit_trees(model, p, new)))
        if hf is not None:
            impls.append(("hf", lambda p=prompt: time_hf(hf, p, new)))
        for impl, fn in impls:
            with torch.inference_mode():
                fn()  # warm-up: compilation and CUDA-graph capture
                runs = [fn() for _ in range(repeats)]
                if profile and batch == 1 and device.type == "cuda":
                    from kernels import profile_kernels, render as render_kernels

                    per_token = profile_kernels(fn, reps=1, per_rep=new)
                    print(render_kernels(f"  profile {name} {impl} per token (prefill included)", per_token),
                          file=sys.stderr, flush=True)
            prefill = statistics.median(r[0] for r in runs)
            decode = statistics.median(r[1] for r in runs)
            rows.append(Row(name, batch, impl, prefill * 1e3, batch * (new - 1) / decode))
            print(f"  {name:<18} batch {batch}  {impl:<5}  prefill {prefill * 1e3:8.2f} ms  decode {rows[-1].decode_tok_s:10.1f} tok/s",
                  file=sys.stderr, flush=True)
        model.clear_cache()  # the compiled path keeps its cache between calls; the next batch needs a new one
    return rows


def render(rows: list[Row]) -> str:
    """A table with lmkit and HF side by side and lmkit/HF ratios."""
    out = [f"{'shape':<18} {'batch':>5} | {'lmkit prefill ms':>16} {'lmkit tok/s':>12} | {'HF prefill ms':>13} {'HF tok/s':>10} | {'decode x':>8} {'prefill x':>9}"]
    out.append("-" * len(out[0]))
    by_key = {(r.shape, r.batch, r.impl): r for r in rows}
    for shape, batch in dict.fromkeys((r.shape, r.batch) for r in rows):
        ours, hf = by_key[(shape, batch, "lmkit")], by_key.get((shape, batch, "hf"))
        line = f"{shape:<18} {batch:>5} | {ours.prefill_ms:>16.2f} {ours.decode_tok_s:>12.1f} | "
        if hf is None:
            line += f"{'-':>13} {'-':>10} | {'-':>8} {'-':>9}"
        else:
            line += (f"{hf.prefill_ms:>13.2f} {hf.decode_tok_s:>10.1f} | {ours.decode_tok_s / hf.decode_tok_s:>7.2f}x "
                     f"{hf.prefill_ms / ours.prefill_ms:>8.2f}x")
        out.append(line)
    for r in rows:
        if r.impl not in ("lmkit", "hf"):
            out.append(f"{r.shape:<18} {r.batch:>5} | {r.impl}: prefill {r.prefill_ms:.2f} ms, {r.decode_tok_s:.1f} tok/s")
    out.append("decode x: lmkit tokens/s over HF's (higher is better); prefill x: HF latency over lmkit's.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run every shape and batch size, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("--dtype", default=None, help="bfloat16 (default on CUDA) or float32 (default on CPU)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few tokens (a CPU smoke run)")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per configuration (median)")
    parser.add_argument("--shapes", default=None, help="comma-separated subset of the shapes, e.g. gpt2-small")
    parser.add_argument("--no-hf", action="store_true", help="lmkit only")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--trees", action="store_true", help="also time the step under torch.compile's CUDA graphs")
    parser.add_argument("--sdpa-too", action="store_true", help="also time lmkit with SDPA decode attention (no Triton kernel)")
    parser.add_argument("--profile", action="store_true", help="print the GPU kernels of a batch-1 generation")
    parser.add_argument("--no-decode-tuning", action="store_true", help="kernels.decode_tuning off: Inductor's default options")
    parser.add_argument("--steps-per-replay", type=int, default=KernelPlan().decode_steps_per_replay,
                        help="kernels.decode_steps_per_replay: decode steps per CUDA-graph replay")
    args = parser.parse_args(argv)
    kernels = KernelPlan(decode_tuning=not args.no_decode_tuning, decode_steps_per_replay=args.steps_per_replay)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    with_hf = not args.no_hf
    if with_hf:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("transformers is not installed: measuring lmkit only", file=sys.stderr)
            with_hf = False
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.shapes:
        shapes = {k: v for k, v in shapes.items() if k in args.shapes.split(",")}
    repeats = args.repeats or (1 if args.quick else 5)
    batches = [int(b) for b in args.batches.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {name}, dtype {str(dtype).removeprefix('torch.')}, torch {torch.__version__}, greedy, "
          f"median of {repeats}", file=sys.stderr)
    rows = []
    for shape_name, shape in shapes.items():
        lengths = QUICK_LENGTHS if args.quick else LENGTHS[shape_name]
        rows += measure(shape_name, shape, lengths, batches, device, dtype, repeats, with_hf, args.trees, args.profile, args.sdpa_too,
                        kernels)
    print(render(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")


if __name__ == "__main__":
    main()
