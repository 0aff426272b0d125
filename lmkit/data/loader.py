"""Random-window batches from memory-mapped token files.

Each optimizer step draws ``batch_size`` windows of ``context_length + 1`` tokens at positions that
are a pure function of ``(seed, step)``. That one choice gives three properties for free:
- exact resume: the sampler's whole state is the step counter;
- several GPUs: each rank takes its own slice of the same global batch, so N ranks see exactly
  the windows one process would (the loss sequence matches a 1-process run);
- prefetching: the next step's batch can be built on a background thread without races.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from lmkit.data.tokens import TokenFileMeta, meta_path, open_tokens, read_meta
from lmkit.errors import DataError

# Mixed into the seed so validation windows never coincide with training ones by construction.
_VAL_STREAM = 0x5EED_0F_7A1


def window_starts(num_tokens: int, context_length: int, count: int, seed: int, step: int) -> np.ndarray:
    """``count`` window start offsets for one step; depends only on its arguments.

    Args:
        num_tokens: length of the token file.
        context_length: tokens per input window (each window reads ``context_length + 1``).
        count: number of windows (the global batch size).
        seed: run seed.
        step: optimizer step (or evaluation batch index).

    Returns:
        int64 array of shape (count,), each in ``[0, num_tokens - context_length - 1]``.
    """
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, num_tokens - context_length, size=count, dtype=np.int64)


def get_batch(
    data: np.ndarray,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    starts: np.ndarray | None = None,
    generator: np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut ``batch_size`` windows from ``data``: inputs and next-token targets.

    Args:
        data: 1-D token array (typically a memmap).
        batch_size: windows to cut (ignored when ``starts`` is given).
        context_length: tokens per window.
        device: where the tensors go; on CUDA they are pinned and copied without blocking.
        starts: explicit start offsets; drawn from ``generator`` (or fresh entropy) otherwise.
        generator: numpy generator used when ``starts`` is None.

    Returns:
        ``(x, y)``, both int64 of shape (B, T), with ``y[:, t] == x[:, t + 1]`` shifted by one.
    """
    if starts is None:
        rng = generator or np.random.default_rng()
        starts = rng.integers(0, len(data) - context_length, size=batch_size, dtype=np.int64)
    # (B, T+1): one contiguous read per window; the memmap only pages in what is touched.
    windows = np.stack([np.asarray(data[s : s + context_length + 1]) for s in starts]).astype(np.int64)
    batch = torch.from_numpy(windows)
    device = torch.device(device)
    if device.type == "cuda":
        # Pinned host memory lets the copy run asynchronously with compute already queued.
        batch = batch.pin_memory().to(device, non_blocking=True)
    else:
        batch = batch.to(device)
    return batch[:, :-1], batch[:, 1:]  # (B, T), (B, T)


def resolve_token_file(path: Path, vocab_size: int, notice: Callable[[str], None] = lambda m: None) -> Path:
    """The ``.bin`` to read for ``path``: itself, or for a text file of token ids (the training
    guide's format) a ``.bin`` converted once beside it and reused while the text is unchanged."""
    path = Path(path)
    if path.suffix == ".bin":
        return path
    if not path.is_file():
        raise DataError(f"{path}: data file not found (expected a .bin from `lmkit tokenize encode` or a text file of token ids)")
    cached = path.with_suffix(".bin")
    if cached.is_file() and meta_path(cached).is_file():
        meta = read_meta(cached)
        if meta.source == str(path.resolve()) and cached.stat().st_mtime >= path.stat().st_mtime:
            return cached
        if meta.source != str(path.resolve()):
            raise DataError(f"{cached}: exists but was not made from {path}; move it away or pass the .bin directly")
    from lmkit.data.corpus import import_ids

    notice(f"{path}: text file of token ids; converting once to {cached} (memory-mapped from now on)")
    import_ids(path, path.parent, vocab_size=vocab_size)
    return cached


class TokenDataset:
    """One token file, checked against the model's context length and vocabulary."""

    def __init__(self, path: Path, context_length: int, vocab_size: int, role: str = "train", notice: Callable[[str], None] = lambda m: None):
        self.path = resolve_token_file(Path(path), vocab_size, notice)
        self.data, self.meta = open_tokens(self.path)
        self.context_length = context_length
        if self.meta.num_tokens < context_length + 1:
            raise DataError(
                f"{self.path}: {self.meta.num_tokens} tokens is shorter than one window of "
                f"context_length + 1 = {context_length + 1}; use more {role} data or a smaller --context-length"
            )
        self._check_vocab(vocab_size)

    def _check_vocab(self, vocab_size: int) -> None:
        meta: TokenFileMeta = self.meta
        if meta.vocab_size is not None and meta.vocab_size <= vocab_size:
            return  # the tokenizer cannot produce an id the model lacks
        # Unknown (or larger) tokenizer vocabulary: look at the ids themselves, in slices so a
        # large file is never loaded whole.
        top = 0
        step = 1 << 24
        for i in range(0, meta.num_tokens, step):
            top = max(top, int(self.data[i : i + step].max()))
        if top >= vocab_size:
            raise DataError(
                f"{self.path}: holds token id {top} but the model's vocab_size is {vocab_size}; "
                f"set --vocab-size to at least {top + 1} (or encode with the matching tokenizer)"
            )

    def __len__(self) -> int:
        return self.meta.num_tokens


class BatchLoader:
    """Deterministic per-step batches for one rank, prefetched one step ahead on a thread.

    The global batch of step ``s`` is ``batch_size`` windows; it is laid out as
    ``[micro_step][rank][b]`` so rank ``r`` of ``world_size`` takes micro-batch ``m`` as its own
    contiguous slice.
    """

    def __init__(
        self,
        dataset: TokenDataset,
        batch_size: int,
        grad_accum_steps: int,
        device: str | torch.device,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        prefetch: bool = True,
    ):
        if batch_size % (grad_accum_steps * world_size):
            raise DataError(
                f"batch_size {batch_size} is not divisible by grad_accum_steps x world size "
                f"({grad_accum_steps} x {world_size}); pick a multiple"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.accum = grad_accum_steps
        self.micro_batch = batch_size // (grad_accum_steps * world_size)
        self.device = torch.device(device)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmkit-loader") if prefetch else None
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()

    def _build(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        T = self.dataset.context_length
        starts = window_starts(len(self.dataset), T, self.batch_size, self.seed, step)
        starts = starts.reshape(self.accum, self.world_size, self.micro_batch)[:, self.rank]  # (A, b)
        return [get_batch(self.dataset.data, self.micro_batch, T, self.device, starts=s) for s in starts]

    def step_batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The ``grad_accum_steps`` micro-batches ``(x, y)`` of this rank for optimizer step ``step``."""
        if self._pool is None:
            return self._build(step)
        with self._lock:
            fut = self._pending.pop(step, None) or self._pool.submit(self._build, step)
            # Start on the next step while the caller computes on this one.
            self._pending = {step + 1: self._pending.get(step + 1) or self._pool.submit(self._build, step + 1)}
        return fut.result()

    def state_dict(self) -> dict:
        """Everything needed to continue the same data stream (positions derive from the step)."""
        return {"seed": self.seed, "batch_size": self.batch_size}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def eval_batches(dataset: TokenDataset, batch_size: int, eval_iters: int, device, seed: int, rank: int = 0, world_size: int = 1):
    """The same ``eval_iters`` batches every time, so validation losses are comparable over a run.

    ``batch_size`` is the global evaluation batch; each rank takes its own contiguous slice, so
    the mean over ranks covers exactly the windows a single process would evaluate.
    """
    T = dataset.context_length
    per_rank = batch_size // world_size
    for k in range(eval_iters):
        starts = window_starts(len(dataset), T, batch_size, seed ^ _VAL_STREAM, k)
        yield get_batch(dataset.data, per_rank, T, device, starts=starts[rank * per_rank : (rank + 1) * per_rank])
