"""Which compile the trainer picks for each kind of run (one GPU, DDP, FSDP, CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmkit.settings import Settings
from lmkit.training.compile_plan import AUTO_BLOCKS_MAX_ITERS, plan_compile
from lmkit.training.runtime import Runtime


def plan(device="cuda", compile=True, world_size=1, parallel="ddp", accum=1, cuda_graphs=None, scope="auto", recompute=False,
         max_iters=100_000):
    said: list[str] = []
    settings = Settings.model_validate({"train": {"parallel": parallel, "grad_accum_steps": accum, "activation_checkpointing": recompute,
                                                  "max_iters": max_iters},
                                        "runtime": {"cuda_graphs": cuda_graphs, "compile_scope": scope}})
    rt = Runtime(torch.device(device), torch.bfloat16 if device == "cuda" else torch.float32, compile, world_size=world_size)
    return plan_compile(settings, rt, said.append), said


def test_one_gpu_long_run_compiles_whole_with_graphs_combo_kernels_and_the_fused_loss():
    p, said = plan(max_iters=AUTO_BLOCKS_MAX_ITERS + 1)
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


def test_blocks_scope_on_one_gpu_compiles_each_block_with_graphs_and_the_fused_loss():
    p, said = plan(scope="blocks")
    assert (p.regional, p.fused_loss, p.cuda_graphs, p.combo_kernels) == (True, True, True, True)
    assert p.options == {"triton.cudagraphs": True, "combo_kernels": True}  # what compile_blocks is given
    module = nn.Linear(2, 2)
    assert p.apply(module) is module and said == []


def test_blocks_scope_with_activation_checkpointing_runs_without_graphs_and_says_so_when_asked():
    assert not plan(scope="blocks", recompute=True)[0].cuda_graphs
    p, said = plan(scope="blocks", recompute=True, cuda_graphs=True)
    assert p.regional and not p.cuda_graphs and "activation_checkpointing" in said[0]
    assert plan(recompute=True)[0].cuda_graphs  # a whole-model compile records the recompute inside its graph


def test_model_scope_compiles_whole_even_under_fsdp_and_ddp_can_take_blocks():
    assert not plan(world_size=2, parallel="fsdp", scope="model")[0].regional
    p, _ = plan(world_size=2, scope="blocks")
    assert p.regional and p.fused_loss and not p.cuda_graphs


def test_without_compile_no_scope_compiles_anything():
    p, _ = plan(device="cpu", compile=False, scope="blocks")
    assert not p.regional and not p.cuda_graphs


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_auto_compiles_a_short_one_process_run_block_by_block_and_ddp_whole(device):
    """auto: a run of at most AUTO_BLOCKS_MAX_ITERS steps in one process starts sooner compiled
    block by block; the same run under DDP, and a longer one, compile the whole model."""
    p, said = plan(device=device, max_iters=AUTO_BLOCKS_MAX_ITERS)
    assert p.regional and p.fused_loss and p.cuda_graphs == (device == "cuda") and said == []
    assert not plan(device=device, max_iters=AUTO_BLOCKS_MAX_ITERS + 1)[0].regional
    assert not plan(max_iters=2000, world_size=2)[0].regional
    assert plan(max_iters=2000, world_size=2, parallel="fsdp")[0].regional
    assert not plan(max_iters=2000, scope="model")[0].regional
