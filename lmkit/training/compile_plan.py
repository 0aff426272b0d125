"""How the training step is compiled, decided once from the settings and the runtime.

``runtime.compile_scope`` picks what is traced: the loss module (model + loss) as a whole, or
each transformer block on its own (one block's graph, shared by every identical block: a start-up
several times shorter, steps a few per cent slower). ``auto``: blocks under FSDP, so FSDP's hooks
stay eager, and in one process for runs short enough that the quicker start-up outweighs the
slower steps; the whole model otherwise. Which fast paths the compiled code runs is the kernel
plan's (lmkit/kernels/plan.py), applied to the model before this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lmkit.settings import Settings
from lmkit.training.runtime import Runtime


@dataclass(frozen=True)
class CompilePlan:
    """What to compile and how; ``compile`` False means nothing is."""

    compile: bool
    regional: bool  # each block's computation on its own (TransformerLM.compile_blocks), nothing else
    fused_loss: bool  # LM head + cross-entropy fused, in chunks of 4096 rows
    cuda_graphs: bool  # the compiled step recorded once and replayed as CUDA graphs
    combo_kernels: bool  # Inductor launches independent small kernels together

    @property
    def options(self) -> dict[str, bool]:
        """Inductor's options for what this plan compiles."""
        return {"triton.cudagraphs": self.cuda_graphs, "combo_kernels": self.combo_kernels}

    def apply(self, module: nn.Module) -> nn.Module:
        """The loss module compiled as a whole, or as it is (not compiling, or regional: see
        ``TransformerLM.compile_blocks``, called with ``options``)."""
        if not self.compile or self.regional:
            return module
        return torch.compile(module, options=self.options)


AUTO_BLOCKS_MAX_ITERS = 20_000  # compile_scope auto: one process compiles block by block up to this many steps


def plan_compile(settings: Settings, rt: Runtime, notice: Callable[[str], None]) -> CompilePlan:
    """The plan for ``settings`` on ``rt``; ``notice`` hears why asked-for CUDA graphs are off."""
    one_gpu = rt.device.type == "cuda" and rt.world_size == 1
    scope = settings.runtime.compile_scope
    if scope == "auto":
        # FSDP + a whole-model compile traces around FSDP's hooks, much slower than block by block.
        fsdp = rt.world_size > 1 and settings.train.parallel == "fsdp"
        # One process, GPT-2 small, H200, warm caches: blocks reached the first step ~23 s sooner
        # and the first evaluation ~6 s sooner (cold caches: ~56 s in all), and then ran 4 % fewer
        # tokens/s (1.35 ms a step): the whole model repays its compile only after ~21,000 steps.
        # DDP keeps the whole model: blocks under DDP are not measured yet.
        short = rt.world_size == 1 and settings.train.max_iters <= AUTO_BLOCKS_MAX_ITERS
        scope = "blocks" if fsdp or short else "model"
    regional = rt.compile and scope == "blocks"
    # The fused loss never holds all (N, V) logits; on one GPU, each chunk's softmax compiled on
    # its own, it ran at the plain compiled loss's speed with less memory than HF's. Under DDP,
    # inside a whole-model compile, the plain loss was faster;
    # a regional compile leaves the loss eager, where only the fused one is quick.
    fused_loss = not rt.compile or rt.world_size == 1 or regional
    # A graph replays fixed memory: gradients accumulated across micro-steps and the collectives
    # of several processes would need more than one, so those run without. At GPT-2 small on an
    # H200 graphs are within noise; they matter for small models whose kernels are
    # shorter than their launches.
    wanted = settings.runtime.cuda_graphs
    # Recomputing a block in backward (activation checkpointing) calls a regionally compiled
    # block again inside backward, which a replayed graph's fixed memory does not allow for.
    recompute = regional and settings.train.activation_checkpointing
    possible = rt.compile and one_gpu and settings.train.grad_accum_steps == 1 and not recompute
    if wanted and not possible:
        notice("cuda_graphs needs compile on one CUDA device, grad_accum_steps 1 and, with compile_scope blocks, "
               "no activation_checkpointing; running without")
    cuda_graphs = possible if wanted is None else bool(wanted and possible)
    # combo_kernels: fewer launches on one GPU (mostly the weight casts before each matmul
    # launched together). Not measured across processes yet.
    return CompilePlan(rt.compile, regional, fused_loss, cuda_graphs, combo_kernels=one_gpu)
