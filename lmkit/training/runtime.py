"""Device, precision and rank: decided here, once per command, with one meaning each.

- device: ``auto`` is CUDA when visible; under torchrun each process takes GPU ``LOCAL_RANK``.
- dtype: the compute precision, the dtype matmuls run in. Training and evaluation keep float32
  weights and run under autocast in it (the optimizer needs full-precision weights; evaluation
  matches training's numbers); generation stores the weights in it instead (decoding reads every
  weight once per token and nothing is trained, so half-width weights halve that traffic).
  ``Runtime.weights`` says which of the two a command uses.
- rank: read from torchrun's environment by ``launch()``, the one place that reads it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Literal

import torch

from lmkit.errors import ConfigError

# Dense bf16 tensor-core peak (datasheet, TFLOP/s) by device-name fragment, for MFU.
_PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0, "3090": 71.0}


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun launch (rank 0 of 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    under_torchrun: bool = False  # LOCAL_RANK set: this process is one of torchrun's workers

    @property
    def is_main(self) -> bool:
        """Rank 0 renders, logs and checkpoints; the other ranks stay quiet."""
        return self.rank == 0


def launch() -> Launch:
    """Read the rank, local rank and world size torchrun puts in the environment.

    Returns:
        ``Launch``; defaults (rank 0 of 1) without torchrun.

    Raises:
        ConfigError: one of ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` is not a whole number >= 0
            (>= 1 for ``WORLD_SIZE``), or the rank is not below the world size.
    """
    values = {}
    for name, default, low in (("RANK", 0, 0), ("LOCAL_RANK", 0, 0), ("WORLD_SIZE", 1, 1)):
        raw = os.environ.get(name, "").strip()
        try:
            values[name] = int(raw) if raw else default
        except ValueError:
            values[name] = None
        if values[name] is None or values[name] < low:
            raise ConfigError(f"environment variable {name}={raw!r}: must be a whole number >= {low}; launch through torchrun or unset it")
    if values["RANK"] >= values["WORLD_SIZE"]:
        raise ConfigError(f"environment variable RANK={values['RANK']} must be below WORLD_SIZE={values['WORLD_SIZE']}; launch through torchrun or unset both")
    return Launch(values["RANK"], values["LOCAL_RANK"], values["WORLD_SIZE"], "LOCAL_RANK" in os.environ)


@dataclass
class Runtime:
    """Where the math runs and in what precision (see the module docstring for the meanings)."""

    device: torch.device
    dtype: torch.dtype  # compute precision: what matmuls run in (float32: full precision)
    compile: bool
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    # "float32": float32 weights, compute under autocast in dtype (training, evaluation);
    # "compute": weights stored in dtype, no autocast (generation).
    weights: Literal["float32", "compute"] = "float32"

    @property
    def is_main(self) -> bool:
        """Rank 0 renders, logs and checkpoints."""
        return self.rank == 0

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype the model's weights are held in."""
        return self.dtype if self.weights == "compute" else torch.float32

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype autocast runs matmuls in around float32 weights; None where there is no
        autocast (float32, or the weights already in ``dtype``)."""
        if self.dtype == torch.float32 or self.weights == "compute":
            return None
        return self.dtype

    def autocast(self):
        """Autocast to ``autocast_dtype``; a no-op where that is None."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def peak_flops(self) -> float | None:
        """Datasheet bf16 peak of this GPU in FLOP/s, or None when unknown (CPU, other GPUs)."""
        if self.device.type != "cuda":
            return None
        name = torch.cuda.get_device_name(self.device)
        for frag, tflops in _PEAK_BF16_TFLOPS.items():
            if frag in name:
                return tflops * 1e12
        return None


def resolve_runtime(
    device: str, dtype: str, compile: bool | None, *, weights: Literal["float32", "compute"] = "float32"
) -> Runtime:
    """Turn the runtime settings into concrete choices (and check CUDA is there if asked for).

    Under torchrun (``LOCAL_RANK`` set) each process takes GPU ``LOCAL_RANK``.

    Args:
        device: ``auto`` (CUDA when visible), ``cuda`` or ``cpu``.
        dtype: compute precision: ``auto`` (bfloat16 on CUDA, float32 on CPU), ``bfloat16`` or
            ``float32``.
        compile: torch.compile (None: on for CUDA, off for CPU).
        weights: ``float32`` (train, eval: autocast) or ``compute`` (generate: weights cast).

    Returns:
        ``Runtime``.

    Raises:
        ConfigError: ``cuda`` without a visible CUDA device, more processes than GPUs on this
            node, a malformed torchrun environment, or an unknown device, dtype or weights value.
    """
    if device not in ("auto", "cuda", "cpu"):
        raise ConfigError(f"runtime.device: {device!r} is not one of auto, cuda, cpu")
    if dtype not in ("auto", "bfloat16", "float32"):
        raise ConfigError(f"runtime.dtype: {dtype!r} is not one of auto, bfloat16, float32")
    if weights not in ("float32", "compute"):
        raise ConfigError(f"weights: {weights!r} is not one of float32, compute")
    where = launch()
    rank, local_rank, world_size = where.rank, where.local_rank, where.world_size
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("runtime.device: cuda requested but no CUDA device is visible; use --device cpu or auto")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) visible: launch at most that many processes per node")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        # TF32 for any fp32 matmuls left (the bf16 autocast path does not use it).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        dev = torch.device("cpu")
    if dtype == "auto":
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    else:
        dt = getattr(torch, dtype)
    use_compile = (dev.type == "cuda") if compile is None else compile
    return Runtime(dev, dt, use_compile, rank, local_rank, world_size, weights)
