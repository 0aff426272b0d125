"""Cached bytecode for torch, written once even where PYTHONDONTWRITEBYTECODE forbids it.

``import torch`` from ``.py`` sources takes about twice the CPU time it takes from cached ``.pyc``
files (the measurement is in the changelog). Python writes the cache itself on first import,
except under ``PYTHONDONTWRITEBYTECODE``/``-B`` (common in CI and Docker images): there every
``lmkit`` process, and every rank of a torchrun job, would compile torch again. uv's
``compile-bytecode`` setting used to write the cache at install time, but uv then re-compiles
the whole environment on every ``uv run`` (astral-sh/uv#12202), which costs more than it saves.

So the ``lmkit`` command checks, with one file lookup and without importing torch, whether
torch's cache exists; if it does not and the environment forbids writing it, this one process
writes the cache for what it imports. Every later process finds it and changes nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys

HEAVY_PACKAGE = "torch"  # the import whose cache matters: seconds, against milliseconds for the rest


def allow_bytecode_once(package: str = HEAVY_PACKAGE) -> bool:
    """Let this process write ``.pyc`` files if ``package`` has none and Python may not write them.

    Args:
        package: a top-level package name; it is located, not imported.

    Returns:
        Whether writing was switched on (``sys.dont_write_bytecode`` set to False) for this process.
    """
    if not sys.dont_write_bytecode:
        return False  # Python writes the cache itself on first import
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.has_location or not spec.origin or not spec.origin.endswith(".py"):
        return False
    try:
        cached = importlib.util.cache_from_source(spec.origin)  # honours PYTHONPYCACHEPREFIX
    except NotImplementedError:  # an implementation without a bytecode cache
        return False
    if os.path.exists(cached):
        return False
    sys.dont_write_bytecode = False
    return True
