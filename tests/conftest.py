"""Shared fixtures: where the shared data lives, tiny settings for CPU tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lmkit.bytecode import allow_bytecode_once

# Under PYTHONDONTWRITEBYTECODE (CI images set it) this session writes the .pyc files of what it
# imports, torch and Inductor included, once: the suite's many `python -m lmkit` / torchrun
# subprocesses then read them instead of compiling torch's sources again, seconds each.
allow_bytecode_once()

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Point lmkit's user cache (LMKIT_CACHE_DIR: the fast encoder's live-merge tables, the demo
    corpus) at a folder of this session, so tests never write into the user's ~/.cache."""
    import os

    saved = os.environ.get("LMKIT_CACHE_DIR")
    os.environ["LMKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("lmkit-cache"))
    yield
    if saved is None:
        os.environ.pop("LMKIT_CACHE_DIR", None)
    else:
        os.environ["LMKIT_CACHE_DIR"] = saved


@pytest.fixture
def shared_data() -> Path:
    """The ../shared/data folder (real text and GPT-2 tokenizer files); skips when absent."""
    if not (SHARED_DATA / "tinyshakespeare.txt").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA} (tests that use real text need ../shared)")
    return SHARED_DATA


TINY_MODEL = dict(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64)


def write_token_data(path: Path, num_tokens: int = 20000, vocab_size: int = 64, seed: int = 0) -> Path:
    """A learnable token stream (a noisy repeating pattern) as an lmkit .bin + .json."""
    import numpy as np

    from lmkit.data.tokens import TokenFileMeta, write_tokens

    rng = np.random.default_rng(seed)
    ids = (np.arange(num_tokens) * 7 % 61).astype(np.uint16)
    noise = rng.random(num_tokens) < 0.05
    ids[noise] = rng.integers(0, vocab_size, noise.sum())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tokens(path, ids, TokenFileMeta(dtype="uint16", num_tokens=0, vocab_size=vocab_size, source_bytes=num_tokens * 3))
    return path


@pytest.fixture
def token_data(tmp_path: Path) -> tuple[Path, Path]:
    """(train.bin, val.bin) of a tiny learnable stream, vocab 64."""
    return write_token_data(tmp_path / "data" / "train.bin"), write_token_data(tmp_path / "data" / "val.bin", 4000, seed=1)


@pytest.fixture
def tiny_overrides(tmp_path: Path, token_data) -> dict:
    """Flat settings for a seconds-long CPU run of a tiny model."""
    train, val = token_data
    return dict(
        TINY_MODEL, batch_size=8, max_iters=20, learning_rate=3e-3, min_lr=3e-4, warmup_iters=4, lr_decay_iters=20,
        eval_interval=10, eval_iters=2, log_interval=5, checkpoint_interval=10, train_data_path=str(train),
        val_data_path=str(val), checkpoint_dir=str(tmp_path / "run"), wandb=False, device="cpu", seed=1,
    )


@pytest.fixture(autouse=True)
def _restore_tf32():
    """Give every test the TF32 flags it started with.

    ``resolve_runtime`` turns TF32 on for the process when it picks CUDA (what a training or
    generation process wants); left on, it changed later tests' fp32 matmuls, and a reference
    comparison such as test_adamw_kernel's failed only when a CUDA test ran before it.
    """
    torch = sys.modules.get("torch")  # no import here: tests that never load torch stay quick
    if torch is None:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def pytest_xdist_auto_num_workers(config) -> int | None:
    """``-n auto`` (pyproject's addopts) runs ``-m gpu`` in one process: GPU tests share one device,
    and a worker per core would run many CUDA tests on it at once."""
    markexpr = config.getoption("markexpr", "") or ""
    if "gpu" in markexpr and "not gpu" not in markexpr:
        return 0
    return None  # xdist's own choice: one worker per core
