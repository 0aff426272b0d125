"""Training throughput: lmkit's TransformerLM vs HuggingFace ``LlamaForCausalLM`` (issue #5).

One process, one table: ms/step, tokens/s, MFU, peak GPU memory and compile time for each
(shape, variant). Both systems train the same way the lmkit trainer does: bf16 autocast,
torch.compile, a fused AdamW (decay on >= 2-D weights), the LR set every step,
grad clipping at 1.0, ``zero_grad(set_to_none=True)``. The AdamW is each system's own: lmkit's
``build_optimizer`` (on CUDA lmkit's one-launch Triton kernel, the same update as torch's) and
torch's fused AdamW for HF; ``cg-torchadam`` / ``hf-lmkitadam`` swap them. The HF model is configured to the identical
shape (untied head, no biases, SDPA attention, fp32 parameters) and trained on the same plain
cross-entropy as lmkit's ``fused=False`` path, so the only differences are the model code and
lmkit's optional fused LM-head + CE.

Data are random tokens made on the GPU beforehand (a pool of batches, rotated): this is the raw
step rate, with no loader. ``--loader`` adds rows that feed the same step from lmkit's real
``BatchLoader`` over a random token file, and time that loader alone.

MFU uses ``lmkit.model.flops_per_token`` (6 x linear weights incl. the LM head + 12 x L x D x T)
for both systems, against two peaks: an 8192^3 bf16 matmul timed in this run, and the 989 TFLOP/s
datasheet figure of the H100/H200.

Timing: each variant gets a fresh model and a fresh ``torch._dynamo`` state; the warm-up steps
(which compile) are timed on the host clock; then ``--steps`` steps are timed one by one with
CUDA events and the median is reported. Peak memory is ``max_memory_allocated`` over the timed
steps (reset after warm-up). A failing variant prints its error and the rest still run.

Imports only torch-level lmkit modules (model, training.loss/optim/schedule; data.loader needs
numpy), so it runs on a bare PyTorch image without pydantic, typer, rich or wandb.

Usage (compile dominates: the core set on three shapes is ~8 min on an H100, so the levers
go in a second call when each call is capped at 10 minutes; see NOTES.md):
    PYTHONPATH=. python3 benchmarks/train_throughput.py --levers '' --json core.json
    PYTHONPATH=. python3 benchmarks/train_throughput.py --shapes small16 --variants fused8k,hf-fused8k \
        --levers fused4k,fused32k,step,flash,cudnn,regional --loader --json levers.json
    uv run python benchmarks/train_throughput.py --device cpu --tiny --quick            # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lmkit.kernels import KernelPlan, apply_training
from lmkit.kernels import adamw as adamw_kernel
from lmkit.kernels import ce as ce_kernel
from lmkit.model import ModelConfig, TransformerLM, flops_per_token
from lmkit.training.loss import cross_entropy_loss, fused_linear_cross_entropy, lm_loss
from lmkit.training.optim import build_optimizer, clip_gradients, param_groups
from lmkit.training.schedule import get_lr
from throughput_report import DATASHEET_TFLOPS, add_derived, error_summary, fmt, log, table

# Trainer-like optimizer settings (GPT-2 style).
LR, MIN_LR, WARMUP, DECAY_ITERS = 6e-4, 6e-5, 100, 10_000
WEIGHT_DECAY, BETAS, ADAM_EPS, GRAD_CLIP = 0.1, (0.9, 0.95), 1e-8, 1.0

GPT2_SMALL = dict(num_layers=12, d_model=768, num_heads=12, d_ff=2048, context_length=1024, vocab_size=50304)
GPT2_MEDIUM = dict(num_layers=24, d_model=1024, num_heads=16, d_ff=2816, context_length=1024, vocab_size=50304)
TINY = dict(num_layers=2, d_model=64, num_heads=4, d_ff=128, context_length=64, vocab_size=512)
# name -> (model shape, batch size)
SHAPES: dict[str, tuple[dict, int]] = {
    "small16": (GPT2_SMALL, 16),
    "small32": (GPT2_SMALL, 32),
    "medium16": (GPT2_MEDIUM, 16),
    "tiny4": (TINY, 4),
    "tiny8": (TINY, 8),
}


@dataclass(frozen=True)
class Variant:
    """One way of running the training step."""

    system: str = "lmkit"  # "lmkit" | "hf"
    fused: bool = True  # lmkit: fused chunked LM-head + CE (lm_loss fused=True); hf: always plain
    chunk_rows: int = 8192
    compile_mode: str | None = "default"  # None: eager; else torch.compile's mode
    whole_step: bool = False  # compile forward+backward+clip+optimizer as one function
    sdpa: str | None = None  # force an SDPA backend: "flash" | "cudnn"
    loader: bool = False  # feed batches from lmkit's BatchLoader instead of the GPU pool
    regional: bool = False  # compile each Block and the fused CE separately (not the whole loss)
    inductor: tuple[tuple[str, Any], ...] = ()  # torch.compile options= (Inductor config) for the loss
    stacked: bool = False  # q/k/v and w1/w3 as one parameter each (fused_proj.py)
    recompute: bool = False  # activation checkpointing (TransformerLM.set_activation_checkpointing)
    bf16_residual: bool = True  # residual stream in bf16 (lmkit's default; False: --fp32-residual)
    # The `kernels` settings a run of `lmkit train` would have (lmkit/kernels/plan.py):
    ce_kernel: bool = True  # kernels.ce_kernel: lmkit's Triton kernel for each fused-CE chunk (off: Inductor's)
    fp32_wgrad: bool = True  # kernels.fp32_weight_grad: weight gradients written in fp32 by the GEMM (off: F.linear)
    # build_optimizer's AdamW (lmkit's Triton kernel on CUDA) or torch's fused one; None: lmkit's for
    # lmkit, torch's for hf (what each system's users run)
    lmkit_adamw: bool | None = None
    stacked_qkv: bool = True  # kernels.stacked_qkv: q/k/v as one GEMM over their stacked weights
    help: str = ""

    @property
    def lmkit_optimizer(self) -> bool:
        return self.lmkit_adamw if self.lmkit_adamw is not None else self.system == "lmkit"

    @property
    def cuda_graphs(self) -> bool:
        return self.compile_mode == "reduce-overhead" or ("triton.cudagraphs", True) in self.inductor


# Inductor options of `lmkit train`'s compile on one GPU: CUDA graphs + combo kernels.
TRAINER = (("triton.cudagraphs", True), ("combo_kernels", True))

VARIANTS: dict[str, Variant] = {
    "plain": Variant(fused=False, help="compile lm_loss, plain CE over full (N, V) logits"),
    "fused8k": Variant(chunk_rows=8192, help="compile the model, fused chunked CE outside its graph, 8192 rows"),
    "fused4k": Variant(chunk_rows=4096, help="as fused8k with 4096-row chunks (the trainer's chunk)"),
    "fused32k": Variant(chunk_rows=32768, help="as fused8k with 32768-row chunks"),
    "regional": Variant(regional=True, help="compile each Block + the fused CE separately (fast compile)"),
    "step": Variant(whole_step=True, help="torch.compile of the whole train step (fused8k loss)"),
    "flash": Variant(sdpa="flash", help="fused8k, SDPA forced to FlashAttention"),
    "cudnn": Variant(sdpa="cudnn", help="fused8k, SDPA forced to cuDNN attention"),
    "autotune": Variant(compile_mode="max-autotune-no-cudagraphs", help="fused8k, max-autotune-no-cudagraphs"),
    "eager": Variant(compile_mode=None, help="fused8k without torch.compile"),
    "fused2k": Variant(chunk_rows=2048, help="as fused8k with 2048-row chunks"),
    "cdt": Variant(fused=False, inductor=(("coordinate_descent_tuning", True),),
                   help="plain, Inductor coordinate-descent tuning of its Triton kernels"),
    "cg": Variant(fused=False, compile_mode="reduce-overhead", help="plain, CUDA graphs (reduce-overhead)"),
    "cg-fused4k": Variant(chunk_rows=4096, inductor=TRAINER,
                          help="fused4k + CUDA graphs + combo kernels: what `lmkit train` runs on one GPU"),
    "cg-fused8k": Variant(chunk_rows=8192, inductor=TRAINER,
                          help="cg-fused4k with 8192-row loss chunks (bigger LM-head GEMMs, one more chunk's memory)"),
    "cg-nocombo": Variant(chunk_rows=4096, compile_mode="reduce-overhead",
                          help="cg-fused4k without Inductor's combo_kernels (the trainer before session 6)"),
    "cg-fusedproj": Variant(chunk_rows=4096, inductor=TRAINER, stacked=True,
                            help="cg-fused4k with q/k/v and w1/w3 stacked into one parameter each"),
    "cg-ac": Variant(chunk_rows=4096, inductor=TRAINER, recompute=True,
                     help="cg-fused4k with activation checkpointing (--activation-checkpointing)"),
    "cg-fp32res": Variant(chunk_rows=4096, inductor=TRAINER, bf16_residual=False,
                          help="cg-fused4k with the residual stream in fp32 (--fp32-residual)"),
    "cg-noce": Variant(chunk_rows=4096, inductor=TRAINER, ce_kernel=False,
                       help="cg-fused4k with Inductor's CE chunk instead of lmkit's Triton kernel (kernels.ce_kernel off)"),
    "cg-nolin": Variant(chunk_rows=4096, inductor=TRAINER, fp32_wgrad=False,
                        help="cg-fused4k with plain F.linear (weight gradients cast to fp32 by separate kernels)"),
    "cg-torchadam": Variant(chunk_rows=4096, inductor=TRAINER, lmkit_adamw=False,
                            help="cg-fused4k with torch's fused AdamW instead of lmkit's kernel (the trainer before session 7)"),
    "hf-lmkitadam": Variant(system="hf", fused=False, lmkit_adamw=True,
                            help="hf with lmkit's AdamW kernel instead of torch's fused AdamW"),
    "cg-nomix": Variant(chunk_rows=4096, inductor=TRAINER + (("triton.mix_order_reduction", False),),
                        help="cg-fused4k without Inductor's mix-order reductions (RMSNorm backward's gain gradient apart)"),
    "cg-mixtune": Variant(chunk_rows=4096, inductor=TRAINER + (("triton.mix_order_reduction_autotune_split_size", True),),
                          help="cg-fused4k with Inductor's mix-order reductions' split size autotuned"),
    "cg-sepqkv": Variant(chunk_rows=4096, inductor=TRAINER, stacked_qkv=False,
                         help="cg-fused4k with q/k/v as three GEMMs (the trainer before session 8)"),
    "cg-pdl": Variant(chunk_rows=4096, inductor=TRAINER + (("triton.enable_pdl", True),),
                      help="cg-fused4k with programmatic dependent launch for Inductor's Triton kernels"),
    "cg-af": Variant(chunk_rows=4096, inductor=TRAINER + (("aggressive_fusion", True),),
                     help="cg-fused4k with Inductor's aggressive_fusion"),
    "fusedproj": Variant(chunk_rows=4096, stacked=True, help="fused4k with stacked q/k/v and w1/w3 parameters"),
    "hf-cdt": Variant(system="hf", fused=False, inductor=(("coordinate_descent_tuning", True),),
                      help="HF with coordinate-descent tuning"),
    "hf": Variant(system="hf", fused=False, help="HF LlamaForCausalLM, compiled, plain CE, torch's fused AdamW"),
    "hf-eager": Variant(system="hf", fused=False, compile_mode=None, help="HF, no compile"),
    "hf-fused8k": Variant(system="hf", help="HF body + lmkit fused CE on its lm_head"),
    "fused8k+loader": Variant(loader=True, help="fused8k fed by lmkit BatchLoader"),
}
CORE = "plain,fused8k,hf"  # run on every shape
LEVERS = "fused32k,step,flash,cudnn"  # run on the first shape only


# ---------------------------------------------------------------------------- models and loss


def hf_llama(cfg: ModelConfig) -> nn.Module:
    """``LlamaForCausalLM`` with lmkit's shape: untied head, no biases, SDPA, fp32 parameters."""
    import transformers

    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.context_length,
        rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        attn_implementation="sdpa", use_cache=False,
    )
    return transformers.LlamaForCausalLM(hf_cfg).float()


def _hf_plain_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Same loss as lmkit's fused=False path; y is already shifted, so no labels= (HF would shift).
    return cross_entropy_loss(model(input_ids=x, use_cache=False).logits, y)


def _hf_fused_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_rows: int) -> torch.Tensor:
    h = model.model(input_ids=x, use_cache=False).last_hidden_state  # (B, T, D), final-normed
    return fused_linear_cross_entropy(h, model.lm_head.weight, y, chunk_rows, compute_dtype=torch.bfloat16)


def build_model(v: Variant, cfg: ModelConfig, device: torch.device) -> tuple[nn.Module, Callable]:
    """A fresh model (seed 0) on ``device`` and its un-compiled loss function ``(x, y) -> loss``."""
    torch.manual_seed(0)
    if v.system == "hf":
        model = hf_llama(cfg).to(device).train()
        loss = partial(_hf_fused_loss, model, chunk_rows=v.chunk_rows) if v.fused else partial(_hf_plain_loss, model)
        return model, loss
    model = TransformerLM(cfg)
    if v.stacked:
        from fused_proj import stack_projections

        stack_projections(model)
    model.set_activation_checkpointing(v.recompute)
    if v.bf16_residual:
        # Every block then adds its bf16 output into a bf16 stream (RMSNorm still upcasts inside).
        model.set_residual_dtype(torch.bfloat16)
    model = model.to(device).train()
    # The training fast paths as the trainer applies them, from the variant's kernel settings.
    kernels = variant_kernels(v).for_training(device, torch.bfloat16)
    apply_training(model, kernels, torch.bfloat16)
    if v.regional:
        # Identical blocks share one compiled graph, so compile time no longer grows with depth.
        for block in model.blocks:
            block.compile()
        return model, lambda x, y: fused_linear_cross_entropy(model.hidden(x), model.lm_head.weight, y, v.chunk_rows,
                                                              compute_dtype=torch.bfloat16, compiled=True,
                                                              ce_kernel=kernels.ce_kernel)
    return model, partial(lm_loss, model, fused=v.fused, chunk_rows=v.chunk_rows, compiled=v.compile_mode is not None,
                          compute_dtype=torch.bfloat16, ce_kernel=kernels.ce_kernel)


def variant_kernels(v: Variant) -> KernelPlan:
    """The ``kernels`` settings of a variant (before resolution against the device)."""
    return KernelPlan(fp32_weight_grad=v.fp32_wgrad, stacked_qkv=v.stacked_qkv, ce_kernel=v.ce_kernel,
                      adamw_kernel=v.lmkit_optimizer)


# ---------------------------------------------------------------------------- the step


def make_step(model: nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, device: torch.device) -> Callable:
    """The trainer's inner step (one micro-batch): loss, backward, clip, optimizer step, zero_grad."""
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Under CUDA graphs (reduce-overhead) a new step must be announced, and the loss copied
        # out before the next replay reuses its memory -- as the trainer does.
        torch.compiler.cudagraph_mark_step_begin()
        with autocast:
            loss = loss_fn(x, y)
        loss.backward()
        grad_norm = clip_gradients(optimizer, params, GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach().clone(), grad_norm

    return step


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Per-step LR as the trainer sets it; a tensor LR (compiled whole step) is filled in place."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def sdpa_context(backend: str | None):
    """Force one SDPA backend for tracing and running, or leave torch's choice."""
    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend])


def inductor_options(options: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """``options`` as torch.compile's options=, less those this torch's Inductor does not have."""
    import torch._inductor.config as inductor_config

    def has(name: str) -> bool:
        obj = inductor_config
        for part in name.split("."):
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True

    known = {k: v for k, v in options if has(k)}
    if dropped := sorted({k for k, _ in options} - known.keys()):
        print(f"  (Inductor options not in torch {torch.__version__}, dropped: {', '.join(dropped)})")
    return known


def no_compile_caches() -> contextlib.ExitStack:
    """Turn off Inductor's and AOTAutograd's on-disk caches for this variant.

    Their keys do not include the SDPA backend flags, so a forced-backend variant would otherwise
    be served the graph compiled earlier for the default backend (seen on the H100: `cudnn`
    compiled in 8 s and timed identical to `fused8k`).
    """
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    stack = contextlib.ExitStack()
    stack.enter_context(inductor_config.patch(fx_graph_cache=False))
    with contextlib.suppress(Exception):  # the option's name moves between torch versions
        stack.enter_context(functorch_config.patch(enable_autograd_cache=False))
    return stack


def attention_backend(run_one: Callable[[int], Any], i: int, device: torch.device) -> tuple[str, list[str]]:
    """Which SDPA backend one profiled step ran, judged from its GPU kernel names."""
    if device.type != "cuda":
        return "-", []
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run_one(i)
            sync(device)
        names = sorted({e.key for e in prof.key_averages() if re.search(r"flash|fmha|cudnn|attention|sdpa", e.key, re.I)})
    except Exception as e:  # a diagnostic only
        return f"? ({type(e).__name__})", []
    low = " ".join(names).lower()
    for tag, pattern in (("cudnn", "cudnn"), ("flash", "flash"), ("effic", r"fmha|efficient"), ("math", "attention")):
        if re.search(pattern, low):
            return tag, [n[:120] for n in names[:6]]
    return "none", []


def reset_dynamo_counts() -> None:
    """Zero dynamo's counters (``torch._dynamo.reset`` leaves them)."""
    with contextlib.suppress(Exception):  # private API; the counts are a diagnostic only
        from torch._dynamo.utils import counters

        counters.clear()


def dynamo_counts() -> tuple[int, int]:
    """(unique graphs, graph breaks) compiled so far in this dynamo state."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values()))
    except Exception:  # private API; the counts are a diagnostic only
        return -1, -1


def cleanup() -> None:
    """Forget compiled code and free memory so the next variant starts from scratch."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- measuring


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batches(cfg: ModelConfig, batch: int, device: torch.device, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` random-token batches made on the device, sliced like the loader's (x, y) views."""
    g = torch.Generator(device=device).manual_seed(1234)
    out = []
    for _ in range(count):
        w = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length + 1), device=device, generator=g)  # (B, T+1)
        out.append((w[:, :-1], w[:, 1:]))  # (B, T) each
    return out


def time_steps(run_one: Callable[[int], Any], steps: int, device: torch.device) -> list[float]:
    """Milliseconds of each of ``steps`` calls: CUDA events on GPU (no host sync in the loop)."""
    if device.type != "cuda":
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            run_one(i)
            times.append(1000 * (time.perf_counter() - t0))
        return times
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
    for i, (start, end) in enumerate(events):
        start.record()
        run_one(i)
        end.record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) for s, e in events]


def matmul_tflops(device: torch.device, n: int = 8192, reps: int = 20) -> float | None:
    """Achieved bf16 TFLOP/s of an n^3 matmul on random data (median of ``reps``, events)."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        torch.mm(a, b, out=out)
    ms = statistics.median(time_steps(lambda i: torch.mm(a, b, out=out), reps, device))
    del a, b, out
    torch.cuda.empty_cache()
    return 2 * n**3 / (ms * 1e-3) / 1e12


def loader_source(cfg: ModelConfig, batch: int, device: torch.device, tmp: Path):
    """A BatchLoader over a random uint16 token file (page-cache resident, ~64 MB)."""
    import numpy as np

    from lmkit.data.loader import BatchLoader, TokenDataset
    from lmkit.data.tokens import TokenFileMeta, write_tokens

    path = tmp / "train.bin"
    if not path.exists():
        n = max(1 << 25, 4 * batch * (cfg.context_length + 1)) if device.type == "cuda" else 1 << 16
        ids = np.random.default_rng(0).integers(0, cfg.vocab_size, n, dtype=np.uint16)
        write_tokens(path, ids, TokenFileMeta(dtype="uint16", num_tokens=0, vocab_size=cfg.vocab_size))
    return BatchLoader(TokenDataset(path, cfg.context_length, cfg.vocab_size), batch, 1, device, seed=0)


def run_variant(name: str, v: Variant, cfg: ModelConfig, batch: int, device: torch.device, args, tmp: Path) -> dict:
    """Build, warm up (compile) and time one variant; returns its result row."""
    row: dict[str, Any] = {"variant": name}
    reset_dynamo_counts()
    model, loss_fn = build_model(v, cfg, device)
    row["params"] = sum(p.numel() for p in model.parameters())
    if v.whole_step:
        # A float LR would be a compile-time constant (a recompile every step); fused AdamW
        # accepts a 0-d tensor LR that set_lr fills in place.
        optimizer = torch.optim.AdamW(
            param_groups(model, WEIGHT_DECAY), lr=torch.tensor(LR, device=device), betas=BETAS, eps=ADAM_EPS, fused=True
        )
    else:
        if v.lmkit_optimizer:
            optimizer = build_optimizer(model, LR, WEIGHT_DECAY, BETAS, ADAM_EPS, device.type, kernel=True)
        else:  # the reference: torch's fused AdamW (its unfused one off CUDA)
            optimizer = torch.optim.AdamW(param_groups(model, WEIGHT_DECAY), lr=LR, betas=BETAS, eps=ADAM_EPS,
                                          fused=device.type == "cuda")
        if v.compile_mode is not None and not v.regional:
            if v.inductor:
                loss_fn = torch.compile(loss_fn, options=inductor_options(v.inductor))
            else:
                loss_fn = torch.compile(loss_fn, mode=None if v.compile_mode == "default" else v.compile_mode)
    step = make_step(model, loss_fn, optimizer, device)
    if v.whole_step:
        step = torch.compile(step, mode=None if v.compile_mode == "default" else v.compile_mode)
    loader = loader_source(cfg, batch, device, tmp) if v.loader else None
    pool = None if loader else random_batches(cfg, batch, device)
    losses: list[torch.Tensor] = []

    def one(i: int) -> None:
        set_lr(optimizer, get_lr(i, LR, MIN_LR, WARMUP, DECAY_ITERS))
        x, y = loader.step_batches(i)[0] if loader else pool[i % len(pool)]
        loss, _ = step(x, y)
        losses.append(loss)

    try:
        with sdpa_context(v.sdpa), (no_compile_caches() if v.sdpa else contextlib.nullcontext()):
            sync(device)
            t0 = time.perf_counter()
            one(0)
            sync(device)
            row["first_step_s"] = time.perf_counter() - t0
            for i in range(1, args.warmup):
                one(i)
            sync(device)
            row["compile_s"] = time.perf_counter() - t0  # all warm-up steps (compile dominates)
            graphs0, breaks0 = dynamo_counts()
            if device.type == "cuda":
                torch.cuda.empty_cache()  # drop blocks cached by compilation, so reserved = what steps use
                torch.cuda.reset_peak_memory_stats(device)
            t1 = time.perf_counter()
            ms = time_steps(lambda i: one(args.warmup + i), args.steps, device)
            wall = time.perf_counter() - t1
            graphs1, breaks1 = dynamo_counts()
            # Allocated peak misses memory a CUDA graph's private pool holds across replays; the
            # reserved peak (what nvidia-smi shows, less the CUDA context) counts it.
            peaks = (torch.cuda.max_memory_allocated(device) / 2**30, torch.cuda.max_memory_reserved(device) / 2**30) if device.type == "cuda" else None
            row["attn"], row["attn_kernels"] = attention_backend(one, args.warmup + args.steps, device)
            if args.profile and device.type == "cuda":
                from kernels import profile_kernels, render

                row["profile"] = profile_kernels(lambda: one(args.warmup + args.steps + 1), reps=3, top=args.profile_top,
                                                keep_spans=args.profile_spans)
                log(render(f"    profile {name}", row["profile"]))
            # Not for a whole-step compile (no separate phases) or CUDA graphs (replays allocate
            # nothing, so every phase would read as idle).
            phased = not v.whole_step and not v.cuda_graphs
            if args.mem_phases and device.type == "cuda" and phased:
                row["mem_phases"] = memory_phases(model, loss_fn, optimizer, pool[0] if pool else loader.step_batches(0)[0], device)
                log("    memory peaks (GiB): " + ", ".join(f"{k} {g:.2f}" for k, g in row["mem_phases"].items()))
    finally:
        if loader is not None:
            loader.close()
    ms_sorted = sorted(ms)
    med = statistics.median(ms)
    tokens = batch * cfg.context_length
    row.update(
        ms_step=med, ms_min=ms_sorted[0], ms_mean_wall=1000 * wall / args.steps,
        spread=(ms_sorted[int(0.9 * (len(ms) - 1))] - ms_sorted[int(0.1 * (len(ms) - 1))]) / med,
        tokens_per_s=tokens / (med / 1000), loss_first=float(losses[0]), loss_last=float(losses[-1]),
        graphs=graphs0, graph_breaks=breaks0, recompiled_while_timing=graphs1 > graphs0,
    )
    if device.type == "cuda":
        row["peak_gib"], row["reserved_gib"] = peaks
    del model, optimizer, step, loss_fn, losses, pool
    return row


def memory_phases(model: nn.Module, loss_fn: Callable, optimizer, batch, device: torch.device) -> dict[str, float]:
    """Peak GPU memory (GiB) of one step's forward, backward and clip+optimizer, measured apart."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    out = {}

    def phase(name: str, fn: Callable) -> Any:
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        sync(device)
        out[name] = torch.cuda.max_memory_allocated(device) / 2**30
        return result

    out["idle"] = torch.cuda.memory_allocated(device) / 2**30

    def forward() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return loss_fn(x, y)

    loss = phase("forward", forward)
    out["after_forward"] = torch.cuda.memory_allocated(device) / 2**30
    phase("backward", loss.backward)

    def tail() -> None:
        clip_gradients(optimizer, params, GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    phase("optimizer", tail)
    return out


def time_loader_alone(cfg: ModelConfig, batch: int, device: torch.device, steps: int, tmp: Path) -> dict:
    """How fast the BatchLoader alone delivers device batches (prefetch one step ahead)."""
    loader = loader_source(cfg, batch, device, tmp)
    try:
        for i in range(3):
            loader.step_batches(i)
        sync(device)
        t0 = time.perf_counter()
        for i in range(3, 3 + steps):
            x, y = loader.step_batches(i)[0]
        sync(device)
        ms = 1000 * (time.perf_counter() - t0) / steps
    finally:
        loader.close()
    return {"variant": "loader-only", "ms_step": ms, "tokens_per_s": batch * cfg.context_length / (ms / 1000)}


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="variants:\n" + "\n".join(f"  {k:<15}{v.help}" for k, v in VARIANTS.items()))
    p.add_argument("--shapes", default=None, help="comma list of " + ",".join(SHAPES) + " (default small16,small32,medium16; tiny4,tiny8 with --tiny)")
    p.add_argument("--variants", default=CORE, help=f"variants run on every shape (default {CORE})")
    p.add_argument("--levers", default=LEVERS, help=f"extra variants run on the first shape only (default {LEVERS}; '' for none)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 30; 10 with --quick)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up steps (compile happens here)")
    p.add_argument("--quick", action="store_true", help="fewer timed steps")
    p.add_argument("--loader", action="store_true", help="also time lmkit's BatchLoader, alone and feeding fused8k")
    p.add_argument("--profile", action="store_true", help="print each variant's GPU kernels by group (kernels.py)")
    p.add_argument("--profile-top", type=int, default=15, help="kernels (and idle gaps) listed per profile")
    p.add_argument("--profile-spans", action="store_true", help="keep every profiled kernel, in order, in --json")
    p.add_argument("--mem-phases", action="store_true", help="peak memory of forward, backward and optimizer apart")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny shapes (for a CPU end-to-end check)")
    p.add_argument("--json", type=Path, default=None, help="write all results here (rewritten after every variant)")
    p.add_argument("--budget-s", type=float, default=480.0, help="skip variants not started within this many seconds, so the table still prints")
    args = p.parse_args(argv)
    args.steps = args.steps or (10 if args.quick else 30)
    args.shapes = (args.shapes or ("tiny4,tiny8" if args.tiny else "small16,small32,medium16")).split(",")
    for name in [*args.shapes]:
        if name not in SHAPES:
            p.error(f"unknown shape {name!r}; choose from {', '.join(SHAPES)}")
    args.variants = [v for v in args.variants.split(",") if v]
    args.levers = [v for v in args.levers.split(",") if v]
    for name in args.variants + args.levers:
        if name not in VARIANTS:
            p.error(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    return args


def plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(shape, variant) in run order: the core set on every shape first, then the levers."""
    work = [(s, v) for s in args.shapes for v in args.variants]
    work += [(args.shapes[0], v) for v in args.levers if v not in args.variants]
    if args.loader:
        work += [(args.shapes[0], "loader-only"), (args.shapes[0], "fused8k+loader")]
    return work


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except Exception as e:  # the HF rows then fail with this error
        env["transformers"] = f"unavailable: {e}"
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return env


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible; use --device cpu --tiny for a smoke run", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda":
        # As the trainer does: TF32 for any fp32 matmul left outside autocast.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t_start = time.perf_counter()
    env = environment(device)
    log(f"env: {env}")
    peak = matmul_tflops(device)
    log(f"bf16 8192^3 matmul: {fmt(peak, '.0f')} TFLOP/s measured; datasheet {DATASHEET_TFLOPS:.0f}")
    rows: list[dict] = []
    out = {"env": env, "args": {k: str(v) for k, v in vars(args).items()}, "matmul_tflops": peak,
           "datasheet_tflops": DATASHEET_TFLOPS, "ce_kernel": [ce_kernel.BLOCK, ce_kernel.NUM_WARPS], "adamw_kernel": [adamw_kernel.BLOCK, adamw_kernel.NUM_WARPS],
           "variants": {k: asdict(v) for k, v in VARIANTS.items()}, "results": rows}
    with tempfile.TemporaryDirectory(prefix="lmkit-bench-") as tmp:
        for shape, name in plan(args):
            shape_kw, batch = SHAPES[shape]
            cfg = ModelConfig(**shape_kw)
            base = {"shape": shape, "batch": batch, "flops_per_token": flops_per_token(cfg)}
            if time.perf_counter() - t_start > args.budget_s:
                rows.append({**base, "variant": name, "error": f"skipped: --budget-s {args.budget_s:.0f} s used up"})
                continue
            log(f"[{time.perf_counter() - t_start:6.0f}s] {shape} {name} ...")
            try:
                if name == "loader-only":
                    row = {**base, **time_loader_alone(cfg, batch, device, args.steps, Path(tmp))}
                else:
                    row = {**base, **run_variant(name, VARIANTS[name], cfg, batch, device, args, Path(tmp))}
                add_derived(row, cfg, peak)
                log(f"    {fmt(row['ms_step'], '.2f')} ms/step, {fmt(row['tokens_per_s'], '.0f')} tok/s, "
                    f"peak {fmt(row.get('peak_gib'), '.2f')} GiB, compile {fmt(row.get('compile_s'), '.1f')} s, "
                    f"loss {fmt(row.get('loss_first'), '.3f')} -> {fmt(row.get('loss_last'), '.3f')}")
            except Exception as e:
                tb = traceback.format_exc().strip().splitlines()
                log("    FAILED:\n      " + "\n      ".join(tb[-6:]))
                row = {**base, "variant": name, "error": error_summary(e)}
            rows.append(row)
            cleanup()
            if args.json:
                args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"\n{env.get('gpu', env['device'])}, torch {env['torch']}, transformers {env['transformers']}; "
          f"matmul peak {fmt(peak, '.0f')} TFLOP/s (MFU) and {DATASHEET_TFLOPS:.0f} (MFU989); "
          f"{args.steps} timed steps, median; total {time.perf_counter() - t_start:.0f} s")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
