"""Device, precision and process-group facts the trainer needs, decided once."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from lmkit.errors import ConfigError

# Dense bf16 tensor-core peak (datasheet, TFLOP/s) by device-name fragment, for MFU.
_PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0, "3090": 71.0}


@dataclass
class Runtime:
    """Where the math runs and in what precision."""

    device: torch.device
    dtype: torch.dtype  # autocast dtype (float32 = no autocast)
    compile: bool
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 renders, logs and checkpoints."""
        return self.rank == 0

    def autocast(self):
        """bf16 autocast on CUDA; a no-op in fp32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

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


def resolve_runtime(device: str, dtype: str, compile: bool | None) -> Runtime:
    """Turn the runtime settings into concrete choices (and check CUDA is there if asked for).

    Under torchrun (``LOCAL_RANK`` set) each process takes GPU ``LOCAL_RANK``.
    """
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
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
    return Runtime(dev, dt, use_compile, rank, local_rank, world_size)
