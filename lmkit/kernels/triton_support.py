"""Whether lmkit's Triton kernels can run here: Triton importable, and a device Triton runs on."""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def triton_available() -> bool:
    """Whether Triton imports: it ships with torch's Linux CUDA builds, not with every install.

    Imported here only to answer (once per process); each kernel module builds its kernel lazily.
    """
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def interpreting() -> bool:
    """Whether Triton runs its interpreter (``TRITON_INTERPRET=1``, read by Triton at its import):
    then kernels run on CPU tensors, which is how the tests check them without a GPU."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_device(device: torch.device) -> bool:
    """Whether a Triton kernel can take tensors on ``device``: CUDA, or the CPU under the interpreter."""
    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        return False
    return triton_available()
