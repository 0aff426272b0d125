"""What a training configuration will need in memory, checked before anything is allocated.

A model or batch that does not fit must be refused with one line naming what to lower, not
discovered by the operating system killing the process (and maybe other work on the machine)
minutes into building it. The estimate counts what dominates a step:

- **state**: fp32 weights, their gradients and AdamW's two moments, 16 bytes a parameter
  (sharded across processes under FSDP), plus the bf16 weight copies autocast makes;
- **activations**: what autograd keeps from forward for backward, per token and layer. Measured
  for lmkit's block (pre-norm attention + SwiGLU, fused attention kernels): eager fp32 on CPU keeps
  about ``16 D + 4 F`` floats a token-layer (within ~10 % of peak RSS over D 128-512, F 2.75 D,
  T 256-1024), compiled bf16 on CUDA about ``7 D + 3 F`` bf16 values (GPT-2 small: 5.5 GiB after
  forward at batch 16). Activation checkpointing keeps one block input a layer plus two blocks'
  working set while recomputing;
- **logits**: the chunked loss holds one chunk of rows x V logits with their fp32 softmax and
  gradient; the plain loss (compiled, several GPUs) holds all of them.

It is an estimate, good to ~10-20 %: it catches a configuration that needs twice the memory there
is, which is what takes machines down, and leaves borderline ones to run (and CUDA's own
out-of-memory error, which the trainer turns into the same advice).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from lmkit.errors import ConfigError
from lmkit.model import ModelConfig
from lmkit.settings import Settings

GB = 1e9
LOSS_CHUNK_ROWS = 4096  # rows of logits the fused loss holds at once (lmkit.training.loss)
# What a run takes besides the tensors counted: modules imported while the Trainer builds,
# allocator slack, kernel workspaces (peak RSS on CPU was 0.2-0.4 GB above the tensors' sum).
OVERHEAD = 3 * 10**8


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training step needs on its device, by part."""

    state: int  # weights, gradients, optimizer moments, autocast weight copies
    activations: int  # kept from forward for backward, one micro-batch
    logits: int  # the loss's logits, softmax and their gradient
    micro_batch: int  # sequences per forward on one process

    @property
    def total(self) -> int:
        """All parts together, with the fixed overhead."""
        return self.state + self.activations + self.logits + OVERHEAD


def parameter_count(config: ModelConfig) -> int:
    """Parameters of ``TransformerLM(config)`` without building it (embedding, blocks, norm, head)."""
    d, f = config.d_model, config.d_ff
    per_block = 4 * d * d + 3 * d * f + 2 * d  # q/k/v/o, SwiGLU's three matrices, two RMSNorm gains
    return 2 * config.vocab_size * d + config.num_layers * per_block + d  # untied embedding + head


def estimate_training_memory(settings: Settings, device_type: str, compute_dtype: torch.dtype, compiled: bool,
                             fused_loss: bool, world_size: int = 1) -> MemoryEstimate:
    """What one training step of ``settings`` needs on one process's device.

    Args:
        settings: the resolved settings (model shape, batch, accumulation, parallelism).
        device_type: "cuda" or "cpu".
        compute_dtype: the autocast dtype (float32 = none).
        compiled: whether the step is compiled (fused kernels keep less).
        fused_loss: the chunked loss (True) or all logits at once (False).
        world_size: processes sharing the batch (and the state, under FSDP).
    """
    m, t = settings.model, settings.train
    config = ModelConfig.from_settings(m)
    n = parameter_count(config)
    low = compute_dtype != torch.float32
    state = 16 * n + (2 * n if low else 0)
    if world_size > 1 and t.parallel == "fsdp":
        state //= world_size
    micro = max(1, t.batch_size // (t.grad_accum_steps * world_size))
    tokens = micro * m.context_length
    d, f = m.d_model, m.d_ff
    if compiled and device_type == "cuda":
        per_layer = (7 * d + 3 * f) * (2 if low else 4)
    else:
        per_layer = (16 * d + 4 * f) * (3 if low else 4)  # eager autocast keeps some fp32 copies
    if t.activation_checkpointing:
        activations = tokens * (m.num_layers * d * (2 if low else 4) + 2 * per_layer)
    else:
        activations = tokens * m.num_layers * per_layer
    if fused_loss:
        rows = min(tokens, LOSS_CHUNK_ROWS)
        per_logit = 4 if device_type == "cuda" else 16  # in place on CUDA (ce_kernel); eager: 4 fp32 buffers
    else:
        rows, per_logit = tokens, (2 if low else 4) + 4 + 4  # logits, their fp32 softmax, gradient
    return MemoryEstimate(state, activations, rows * m.vocab_size * per_logit, micro)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for this process on ``device`` now, or None where it cannot be told."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    limits = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    if not limits:
        try:  # macOS and others without /proc: physical memory, the best there is
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    return min(limits)


def check_training_memory(settings: Settings, device: torch.device, compute_dtype: torch.dtype, compiled: bool,
                          fused_loss: bool, world_size: int = 1, available: int | None = None) -> MemoryEstimate:
    """Refuse a configuration whose step needs more memory than ``device`` has free.

    Args:
        settings, compute_dtype, compiled, fused_loss, world_size: as ``estimate_training_memory``.
        device: where the step runs.
        available: free bytes (default: asked of the device / the operating system).

    Returns:
        The estimate, when it fits (or cannot be checked, or ``runtime.memory_check`` is off).

    Raises:
        ConfigError: one line with the estimate by part, what is free, and the fields to change.
    """
    est = estimate_training_memory(settings, device.type, compute_dtype, compiled, fused_loss, world_size)
    if not settings.runtime.memory_check:
        return est
    free = available_memory(device) if available is None else available
    if free is None or est.total <= free:
        return est
    raise ConfigError(_refusal(settings, est, free, device, compute_dtype, compiled, fused_loss, world_size))


def _refusal(settings: Settings, est: MemoryEstimate, free: int, device: torch.device, compute_dtype: torch.dtype,
             compiled: bool, fused_loss: bool, world_size: int) -> str:
    t, m = settings.train, settings.model
    where = "GPU memory" if device.type == "cuda" else "memory"
    parts = (f"weights+gradients+AdamW {est.state / GB:.1f} GB, activations {est.activations / GB:.1f} GB "
             f"at micro-batch {est.micro_batch} x {m.context_length} tokens, logits {est.logits / GB:.1f} GB")
    advice = []
    if est.state > free:
        advice.append("the model itself does not fit: lower --d-model, --num-layers, --d-ff or --vocab-size"
                      + (" (or shard it with --parallel fsdp)" if world_size > 1 and t.parallel != "fsdp" else ""))
    else:
        accum = _accum_that_fits(settings, device, compute_dtype, compiled, fused_loss, world_size, free)
        if accum is not None:
            advice.append(f"raise --grad-accum-steps to {accum} (same batch, smaller micro-batches)")
        advice.append(f"lower --batch-size ({t.batch_size}) or --context-length ({m.context_length})")
        if not t.activation_checkpointing:
            advice.append("recompute activations with --activation-checkpointing")
    return (f"this configuration needs about {est.total / GB:.1f} GB of {where} on {device} ({parts}) "
            f"but {free / GB:.1f} GB is free: {'; or '.join(advice)}. "
            "(--no-memory-check runs it anyway)")


def _accum_that_fits(settings: Settings, device: torch.device, compute_dtype: torch.dtype, compiled: bool,
                     fused_loss: bool, world_size: int, free: int) -> int | None:
    """The smallest grad_accum_steps dividing batch_size whose micro-batch fits, if any."""
    t = settings.train
    per_process = t.batch_size // world_size
    # Bounded: a batch of 10**8 must not make the advice itself take minutes.
    for accum in range(t.grad_accum_steps + 1, min(per_process, 4096) + 1):
        if t.batch_size % accum:
            continue
        trial = settings.model_copy(update={"train": t.model_copy(update={"grad_accum_steps": accum})})
        if estimate_training_memory(trial, device.type, compute_dtype, compiled, fused_loss, world_size).total <= free:
            return accum
    return None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """What a container's memory limit still allows (cgroup v2, else v1), or None without one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 1 << 60:  # no limit set
            return None
        # The usage counts page cache the kernel would drop before failing an allocation.
        return max(0, int(limit) - usage + _cgroup_inactive_file(Path(limit_file).parent))
    return None


def _cgroup_inactive_file(cgroup: Path) -> int:
    try:
        for line in (cgroup / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in ("inactive_file", "total_inactive_file"):
                return int(value)
    except (OSError, ValueError):
        pass
    return 0
