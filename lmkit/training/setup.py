"""What a run is built from: the settings resolved against the checkpoint it continues, its
data, the model with its fast paths and compile plan, the optimizer and the batch loader.

``build_run`` does it in the one order that works: the checkpoint decides the settings (resume,
cooldown, ``--init-from``); the data decides an unset vocabulary; the memory check comes before
the first large allocation; the fast paths are swapped into the plain model before it is compiled
or wrapped; and the model is wrapped (DDP/FSDP) before the optimizer is built, since FSDP replaces
the parameters. The ``Trainer`` (trainer.py) runs what this returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lmkit.data.loader import BatchLoader, TokenDataset, data_vocab_size, open_run_data
from lmkit.kernels import KernelPlan, apply_training
from lmkit.model import ModelConfig, TransformerLM
from lmkit.settings import Settings
from lmkit.training.compile_plan import plan_compile
from lmkit.training.cooldown import load_cooldown_source, resume_cooldown
from lmkit.training.distributed import Distributed
from lmkit.training.init_from import check_init_tokenizer, load_init_source
from lmkit.training.loss import LMLoss
from lmkit.training.memory import check_training_memory
from lmkit.training.muon import build_muon
from lmkit.training.optim import build_optimizer
from lmkit.training.resume import load_resume_state, reconcile_settings
from lmkit.training.runtime import Runtime


@dataclass
class RunParts:
    """A built run, ready for the training loop."""

    settings: Settings  # as the checkpoint continued (if any) and the data fixed them
    state: dict[str, Any] | None  # the checkpoint continued (resume or a cooldown's source): counters, RNG
    fresh_cooldown: bool  # the first segment of a cooldown: a run of its own, not a resume
    init_from: dict[str, Any] | None  # {path, sha256, iter} of the checkpoint the weights came from
    cooldown: dict[str, Any] | None  # {path, sha256, iter, cooldown_iters} of the wsd checkpoint decayed
    train_data: TokenDataset
    val_data: TokenDataset | None
    config: ModelConfig
    kernels: KernelPlan  # the fast paths, resolved for this device and precision
    model: TransformerLM  # the plain model (its state dict is what checkpoints hold)
    wrapped: torch.nn.Module  # the loss over the model, under DDP/FSDP when launched so
    optimizer: torch.optim.Optimizer  # its state loaded when continuing a checkpoint
    cuda_graphs: bool
    regional: bool  # compiled block by block (runtime.compile_scope)
    loss_fn: Callable  # ``wrapped``, compiled as the plan says
    loader: BatchLoader  # its per-source counts restored when continuing
    task_eval: Callable | None  # train.eval_tasks on rank 0, built now so a task that cannot run fails before step 1


def build_run(settings: Settings, rt: Runtime, dist: Distributed, run_dir: Path, notice: Callable[[str], None]) -> RunParts:
    """Build everything a run needs from ``settings`` and the checkpoint it continues.

    Raises:
        LmkitError: a checkpoint, data file or setting that cannot make this run, in one line.
    """
    s = settings
    found = load_resume_state(s.checkpoint.resume, run_dir, notice)
    state = init = cool = None
    if found is not None:
        resume_path, state = found
        if s.checkpoint.cooldown_from is not None or state.get("cooldown"):  # a cooldown run, resumed: its settings derived again
            s = resume_cooldown(s, state, resume_path)
        s = reconcile_settings(s, state, resume_path, notice)
    elif s.checkpoint.cooldown_from is not None:  # a new run continuing a wsd checkpoint (see cooldown.py)
        cool = load_cooldown_source(s, notice)
        s, state = cool.settings, cool.state
    elif s.checkpoint.init_from is not None:  # a new run from trained weights (resume wins: above)
        init = load_init_source(s, notice)
        s = init.settings
    init_from = init.record if init is not None else (state or {}).get("init_from")
    cooldown = cool.record if cool is not None else (state or {}).get("cooldown")
    # Unset vocab_size: the data's tokenizer's (after resume/init, which fix the architecture).
    s = data_vocab_size(s, state, notice)
    torch.manual_seed(s.runtime.seed)
    train_data, val_data = open_run_data(s, notice)
    if init is not None:
        check_init_tokenizer(init, [train_data, val_data])
    config = ModelConfig.from_settings(s.model)
    plan = plan_compile(s, rt, notice)
    # Before the first large allocation: a model or batch that cannot fit is refused in one
    # line instead of being found out by the operating system killing the process.
    check_training_memory(s, rt.device, rt.dtype, rt.compile, plan.fused_loss, rt.world_size)
    model = TransformerLM(config)
    if state is not None or init is not None:
        model.load_state_dict(state["model"] if state is not None else init.weights)
    model.set_activation_checkpointing(s.train.activation_checkpointing)
    if not s.runtime.fp32_residual and rt.dtype != torch.float32:
        # bf16 between blocks: faster (half the bytes the residual stream moves), and paired-seed
        # runs showed no difference in validation loss (benchmarks/README.md).
        model.set_residual_dtype(rt.dtype)
    model = model.to(rt.device)
    # The fast paths, resolved once against the device and precision, swapped into the plain
    # model before it is compiled or wrapped; the state dict stays the plain model's.
    kernels = KernelPlan.from_settings(s.kernels).for_training(rt.device, rt.dtype)
    apply_training(model, kernels, rt.dtype)
    if plan.regional:
        model.compile_blocks(options=plan.options)
    loss = LMLoss(model, fused=plan.fused_loss, compiled=rt.compile, compute_dtype=rt.autocast_dtype, ce_kernel=kernels.ce_kernel)
    # Wrap before building the optimizer: FSDP replaces the parameters with sharded ones.
    wrapped = dist.wrap(loss, s.train.parallel)

    def adamw(module: torch.nn.Module) -> torch.optim.Optimizer:
        o = s.optim
        return build_optimizer(
            module, o.learning_rate, o.weight_decay, (o.beta1, o.beta2), o.adam_eps, rt.device.type, kernel=kernels.adamw_kernel
        )

    if s.optim.optimizer == "muon":
        optimizer = build_muon(model, adamw, s.optim, rt.rank, rt.world_size)
    else:
        optimizer = adamw(model)
    if state is not None:
        dist.load_optimizer_state_dict(model, optimizer, state["optimizer"])
    loader = BatchLoader(
        train_data, s.train.batch_size, s.train.grad_accum_steps, rt.device, s.runtime.seed, rt.rank, rt.world_size,
        align_documents=s.data.align_documents, notice=notice,
    )
    if state is not None:
        loader.load_state_dict(state.get("sampler"))  # tokens seen per source so far
    task_eval = None
    if s.train.eval_tasks and rt.is_main:
        from lmkit.harness.in_loop import task_evaluator_for

        meta = train_data.meta
        record = {"dir": meta.tokenizer_dir, "hash": meta.tokenizer_hash, "vocab_size": meta.vocab_size}
        task_eval = task_evaluator_for(s, record, run_dir, world_size=rt.world_size, parallel=s.train.parallel)
    return RunParts(
        settings=s, state=state, fresh_cooldown=cool is not None, init_from=init_from, cooldown=cooldown,
        train_data=train_data, val_data=val_data, config=config, kernels=kernels, model=model, wrapped=wrapped,
        optimizer=optimizer, cuda_graphs=plan.cuda_graphs, regional=plan.regional, loss_fn=plan.apply(wrapped),
        loader=loader, task_eval=task_eval,
    )
