"""lmkit/bytecode.py and the uv settings: start-up without per-command compile cost or noise."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import importlib.util, sys
from lmkit.bytecode import allow_bytecode_once
print(allow_bytecode_once("heavypkg"), sys.dont_write_bytecode)
import heavypkg
print(importlib.util.cache_from_source(heavypkg.__file__))
"""


def _probe(tmp_path: Path, *, dont_write: bool) -> tuple[str, Path]:
    """Run PROBE in a fresh interpreter with a fake heavy package; return its output and the
    .pyc path the package's __init__ would be cached at (under a private pycache prefix, so the
    real environment's caches are neither read nor written)."""
    pkg = tmp_path / "site" / "heavypkg"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("VALUE = 1\n")
    prefix = tmp_path / "pycache"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), str(REPO)]), PYTHONPYCACHEPREFIX=str(prefix))
    if dont_write:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60, check=True)
    flags, cached = out.stdout.strip().splitlines()
    assert Path(cached).is_relative_to(prefix)
    return flags, Path(cached)


def test_writes_the_cache_once_where_the_environment_forbids_it(tmp_path: Path):
    first, cached = _probe(tmp_path, dont_write=True)
    assert first == "True False"  # no cache yet: this process may write it
    assert cached.is_file()
    second, _ = _probe(tmp_path, dont_write=True)
    assert second == "False True"  # cache found: the environment's choice stands


def test_leaves_python_alone_where_it_writes_the_cache_itself(tmp_path: Path):
    out, cached = _probe(tmp_path, dont_write=False)
    assert out == "False False"
    assert cached.is_file()  # written by Python's own first import


def test_unknown_package_changes_nothing(monkeypatch):
    from lmkit.bytecode import allow_bytecode_once

    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert allow_bytecode_once("no_such_package_lmkit_test") is False
    assert sys.dont_write_bytecode is True


def test_lmkit_version_does_not_import_torch(tmp_path: Path):
    # The check runs on every command, so it must not cost an import of torch.
    code = "import sys; sys.argv = ['lmkit', '--version']\nfrom lmkit.cli.app import main\ntry:\n    main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True, cwd=tmp_path)
    assert out.stdout.splitlines() == ["lmkit 0.1.0", "False"]


@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv")
def test_uv_run_does_not_recompile_the_environment():
    # With `[tool.uv] compile-bytecode = true`, every `uv run` compiled all ~12,000 files again
    # and said "Bytecode compiled 12027 files in 1.2s" (astral-sh/uv#12202).
    env = {k: v for k, v in os.environ.items() if k != "UV_COMPILE_BYTECODE"}
    proc = subprocess.run(
        ["uv", "run", "--project", str(REPO), "--frozen", "--offline", "lmkit", "--version"],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Bytecode compiled" not in proc.stderr
    assert proc.stdout.strip() == "lmkit 0.1.0"
