"""Triton kernels on CPU: Triton's interpreter, run in a subprocess.

``TRITON_INTERPRET=1`` must be set before triton is first imported, so the checks run in a fresh
Python; they are plain functions of the test modules, imported there by name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]

requires_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def run_interpreted(code: str, timeout: float = 300) -> None:
    """Run ``code`` under Triton's interpreter from the repository root; it must print ``ok`` last."""
    # The root for `tests.<module>` imports, tests/ for the helpers those modules import by name.
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join((str(ROOT), str(ROOT / "tests")))}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


@contextlib.contextmanager
def constants(module: ModuleType, **values) -> Iterator[None]:
    """Set a kernel module's launch constants (e.g. BLOCK) for the duration, then restore them."""
    saved = {k: getattr(module, k) for k in values}
    for k, v in values.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(module, k, v)
