"""Whether lmkit's Triton kernels can be used at all (decode attention, the CE chunk, AdamW)."""

from __future__ import annotations

import functools


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
