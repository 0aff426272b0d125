"""How the training step is compiled, decided once from the settings and the runtime.

On one GPU and under DDP the loss module (model + loss) is compiled as a whole; under FSDP each
block is compiled on its own so FSDP's hooks stay eager. Which fast paths the compiled code
runs is the kernel plan's (lmkit/kernels/plan.py), applied to the model before this.
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

    def apply(self, module: nn.Module) -> nn.Module:
        """The loss module compiled as a whole, or as it is (not compiling, or regional)."""
        if not self.compile or self.regional:
            return module
        return torch.compile(module, options={"triton.cudagraphs": self.cuda_graphs, "combo_kernels": self.combo_kernels})


def plan_compile(settings: Settings, rt: Runtime, notice: Callable[[str], None]) -> CompilePlan:
    """The plan for ``settings`` on ``rt``; ``notice`` hears why asked-for CUDA graphs are off."""
    one_gpu = rt.device.type == "cuda" and rt.world_size == 1
    # FSDP + a whole-model compile traces around FSDP's hooks, much slower than block by block.
    regional = rt.compile and rt.world_size > 1 and settings.train.parallel == "fsdp"
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
    possible = rt.compile and one_gpu and settings.train.grad_accum_steps == 1
    if wanted and not possible:
        notice("cuda_graphs needs compile on one CUDA device and grad_accum_steps 1; running without")
    cuda_graphs = possible if wanted is None else bool(wanted and possible)
    # combo_kernels: fewer launches on one GPU (mostly the weight casts before each matmul
    # launched together). Not measured across processes yet.
    return CompilePlan(rt.compile, regional, fused_loss, cuda_graphs, combo_kernels=one_gpu)
