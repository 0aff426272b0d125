"""torch.distributed seams: one object the trainer calls whether it runs on 1 process or N.

With a single process every method is a cheap no-op, so the trainer has no ``if distributed``
branches of its own.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lmkit.errors import ConfigError
from lmkit.training.runtime import Runtime


@dataclass
class Distributed:
    """The process group (if any) and how the model is wrapped."""

    world_size: int = 1
    rank: int = 0
    strategy: str = "none"  # none | ddp | fsdp

    @classmethod
    def setup(cls, rt: Runtime) -> Distributed:
        """Join the process group torchrun described in the environment (no-op for 1 process)."""
        if rt.world_size <= 1 or "MASTER_ADDR" not in os.environ:
            return cls()
        if not dist.is_initialized():
            backend = "nccl" if rt.device.type == "cuda" else "gloo"
            if backend == "nccl" and not dist.is_nccl_available():
                raise ConfigError("NCCL is not available in this torch build; run on CPU (gloo) or install a CUDA build of torch")
            kwargs = {"device_id": rt.device} if rt.device.type == "cuda" else {}
            dist.init_process_group(backend=backend, **kwargs)
        return cls(world_size=dist.get_world_size(), rank=dist.get_rank())

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def wrap(self, module: nn.Module, parallel: str) -> nn.Module:
        """DDP (replicate) or FSDP2 (shard) a loss module (``LMLoss``); unchanged for one process.

        FSDP shards each transformer block on its own (so only one block is gathered at a time)
        and the root for the embeddings, final norm and LM head.
        """
        if not self.active:
            return module
        if parallel == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in module.model.blocks:
                fully_shard(block)
            fully_shard(module)
            self.strategy = "fsdp"
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.strategy = "ddp"
        dev = next(module.parameters()).device
        # 100 MB buckets (default 25) with the gradients living in them: no copy into or out of
        # the buckets each step, and a compiled model is split into fewer graphs at bucket
        # boundaries, so less of the step waits on the all-reduce (benchmarks/README.md).
        return DDP(module, device_ids=[dev.index] if dev.type == "cuda" else None, bucket_cap_mb=100,
                   gradient_as_bucket_view=True)

    def no_sync(self, wrapped: nn.Module, last: bool):
        """Skip the gradient all-reduce on micro-steps that are not the last of a step."""
        if last or not self.active:
            return contextlib.nullcontext()
        if self.strategy == "ddp":
            return wrapped.no_sync()
        if self.strategy == "fsdp":
            wrapped.set_requires_gradient_sync(False)
            return _ResyncOnExit(wrapped)
        return contextlib.nullcontext()

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        """Average a tensor over ranks (stays on device, no host sync)."""
        if not self.active:
            return t
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any rank (a collective, with a host sync)."""
        if not self.active:
            return flag
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor([1.0 if flag else 0.0], device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def replicated(self, t: torch.Tensor) -> torch.Tensor:
        """A plain tensor from a value FSDP returns as a DTensor (e.g. the gradient norm)."""
        return t.full_tensor() if hasattr(t, "full_tensor") else t

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Unsharded CPU weights of ``model`` (a collective under FSDP: every rank must call it)."""
        if self.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """Optimizer state keyed by parameter name (not position) and unsharded, so it loads on
        any number of ranks and under either strategy (a collective under FSDP)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=self.strategy == "fsdp")
        return get_optimizer_state_dict(model, optimizer, options=opts)

    def load_optimizer_state_dict(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Load what ``optimizer_state_dict`` saved, on any number of ranks."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


class _ResyncOnExit(contextlib.AbstractContextManager):
    def __init__(self, module: nn.Module):
        self.module = module

    def __exit__(self, *exc):
        self.module.set_requires_gradient_sync(True)
        return False
