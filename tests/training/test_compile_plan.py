"""Which compile the trainer picks for each kind of run (one GPU, DDP, FSDP, CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmkit.settings import Settings
from lmkit.training.compile_plan import plan_compile
from lmkit.training.runtime import Runtime


def plan(device="cuda", compile=True, world_size=1, parallel="ddp", accum=1, cuda_graphs=None):
    said: list[str] = []
    settings = Settings.model_validate({"train": {"parallel": parallel, "grad_accum_steps": accum},
                                        "runtime": {"cuda_graphs": cuda_graphs}})
    rt = Runtime(torch.device(device), torch.bfloat16 if device == "cuda" else torch.float32, compile, world_size=world_size)
    return plan_compile(settings, rt, said.append), said


def test_one_gpu_compiles_whole_with_graphs_combo_kernels_and_the_fused_loss():
    p, said = plan()
    assert (p.regional, p.fused_loss, p.cuda_graphs, p.combo_kernels) == (False, True, True, True)
    assert type(p.apply(nn.Linear(2, 2))).__name__ == "OptimizedModule"  # compiled lazily, on first call
    assert said == []


def test_accumulation_turns_graphs_off_and_says_so_only_when_asked_for():
    p, said = plan(accum=2)
    assert not p.cuda_graphs and said == []
    p, said = plan(accum=2, cuda_graphs=True)
    assert not p.cuda_graphs and "cuda_graphs needs compile on one CUDA device" in said[0]
    assert not plan(cuda_graphs=False)[0].cuda_graphs


def test_ddp_compiles_whole_with_the_plain_loss_and_no_graphs():
    p, _ = plan(world_size=2)
    assert (p.regional, p.fused_loss, p.cuda_graphs, p.combo_kernels) == (False, False, False, False)


def test_fsdp_compiles_block_by_block_and_leaves_the_rest_eager():
    p, _ = plan(world_size=2, parallel="fsdp")
    assert p.regional and p.fused_loss and not p.cuda_graphs
    module = nn.Linear(2, 2)
    assert p.apply(module) is module  # the blocks are compiled by TransformerLM.compile_blocks


@pytest.mark.parametrize("world_size", [1, 2])
def test_without_compile_nothing_is_compiled_and_the_loss_is_fused(world_size):
    p, _ = plan(device="cpu", compile=False, world_size=world_size, parallel="fsdp")
    module = nn.Linear(2, 2)
    assert p.apply(module) is module
    assert p.fused_loss and not p.regional and not p.cuda_graphs
