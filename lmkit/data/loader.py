"""Random-window batches from memory-mapped token files.

Each optimizer step draws ``batch_size`` windows of ``context_length + 1`` tokens at positions that
are a pure function of ``(seed, step)``. That one choice gives three properties for free:
- exact resume: the sampler's whole state is the step counter;
- several GPUs: each rank takes its own slice of the same global batch, so N ranks see exactly
  the windows one process would (the loss sequence matches a 1-process run);
- prefetching: the next step's batch can be built on a background thread without races.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from lmkit.data.tokens import TokenFileMeta, meta_path, open_tokens, read_meta, tokenizer_vocab
from lmkit.errors import DataError
from lmkit.locking import LockHeldError, lock_output
from lmkit.settings import Settings

# Mixed into the seed so validation windows never coincide with training ones by construction.
_VAL_STREAM = 0x5EED_0F_7A1
# Ids per slice when scanning a whole file: bounded memory (64 MB of uint32) whatever its size.
_SCAN = 1 << 24


def max_token_id(data: np.ndarray) -> int:
    """The largest id in a token array, read in slices so a memmap is never loaded whole."""
    return max(int(data[i : i + _SCAN].max()) for i in range(0, len(data), _SCAN))


def check_batch_ids(windows: np.ndarray, vocab_size: int, source: str) -> None:
    """Refuse ids at or above ``vocab_size`` on the host, before they reach the embedding.

    Metadata can understate a file's ids (it is a separate, editable file); this check costs one
    max over B*(T+1) ids and covers exactly the ids the model is about to see.
    """
    top = int(windows.max()) if windows.size else 0
    if top >= vocab_size:
        raise DataError(
            f"{source}: holds token id {top} but the model's vocab_size is {vocab_size} "
            "(its metadata claims otherwise: the .json does not describe this .bin); re-encode the file"
        )


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
    vocab_size: int | None = None,
    source: str = "token data",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut ``batch_size`` windows from ``data``: inputs and next-token targets.

    Args:
        data: 1-D token array (typically a memmap).
        batch_size: windows to cut (ignored when ``starts`` is given).
        context_length: tokens per window.
        device: where the tensors go; on CUDA they are pinned and copied without blocking.
        starts: explicit start offsets; drawn from ``generator`` (or fresh entropy) otherwise.
        generator: numpy generator used when ``starts`` is None.
        vocab_size: if given, ids at or above it are refused (``DataError`` naming ``source``).
        source: the file, for that message.

    Returns:
        ``(x, y)``, both int64 of shape (B, T), with ``y[:, t] == x[:, t + 1]`` shifted by one.
    """
    if starts is None:
        rng = generator or np.random.default_rng()
        starts = rng.integers(0, len(data) - context_length, size=batch_size, dtype=np.int64)
    # (B, T+1): one contiguous read per window; the memmap only pages in what is touched.
    windows = np.stack([np.asarray(data[s : s + context_length + 1]) for s in starts]).astype(np.int64)
    if vocab_size is not None:
        check_batch_ids(windows, vocab_size, source)
    batch = torch.from_numpy(windows)
    device = torch.device(device)
    if device.type == "cuda":
        # Pinned host memory lets the copy run asynchronously with compute already queued.
        batch = batch.pin_memory().to(device, non_blocking=True)
    else:
        batch = batch.to(device)
    return batch[:, :-1], batch[:, 1:]  # (B, T), (B, T)


# Enough of a file's start to tell token ids, raw text and binary data apart.
_SNIFF_BYTES = 1 << 16
_ID_TEXT = re.compile(rb"[0-9 \t\n\r\f\v]*")


def _sniff(path: Path) -> str:
    """``"ids"`` (text of token ids), ``"text"`` (other text), ``"binary"`` or ``"empty"``, from the file's start."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head.strip():
        return "empty"
    if b"\0" in head:
        return "binary"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut by the sniff window
            return "binary"
    return "ids" if _ID_TEXT.fullmatch(head) else "text"


def _made_from(cached: Path, source: Path) -> bool | None:
    """Whether ``cached`` (and its ``.json``) is a current conversion of ``source``.

    None: nothing is there, or an older conversion of it, so converting is safe. False:
    something else is there, which converting would overwrite.
    """
    if not cached.exists() and not meta_path(cached).exists():
        return None
    try:
        meta = read_meta(cached)
    except DataError:
        return False
    if meta.source != str(source.resolve()):
        return False
    return cached.stat().st_mtime >= source.stat().st_mtime or None


def resolve_token_file(path: Path, notice: Callable[[str], None] = lambda m: None) -> Path:
    """What a data path is, decided in one place for ``train`` and ``eval`` alike.

    A ``.bin`` is a token file (its ``.json`` must be beside it). Any other file is looked at: a
    text file of token ids (the training guide's format) is converted once to a ``.bin`` beside
    it, reused while the text is unchanged; raw text, binary data, metadata passed instead of
    its ``.bin``, directories and missing paths are refused, each saying what the file is.

    Returns:
        The ``.bin`` to memory-map.

    Raises:
        DataError: the path is not token data (the message says what it is and what to do).
    """
    path = Path(path)
    expected = "a .bin token file from `lmkit tokenize encode` (with its .json) or a text file of token ids"
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected {expected}")
    if not path.is_file():
        raise DataError(f"{path}: token file not found (expected {expected})")
    if path.suffix == ".bin":
        if not meta_path(path).is_file() and _sniff(path) in ("ids", "text"):
            raise DataError(f"{path}: has no {meta_path(path).name} beside it and holds text, not binary token ids; "
                            "rename a text file of token ids to .txt, or encode raw text with `lmkit tokenize encode` first")
        return path  # read_meta says what is wrong with it, if anything
    if path.suffix == ".json" and path.with_suffix(".bin").is_file():
        raise DataError(f"{path}: is the metadata of a token file; pass the token file {path.with_suffix('.bin')} itself")
    kind = _sniff(path)
    if kind == "empty":
        raise DataError(f"{path}: is empty; expected {expected}")
    if kind == "binary":
        raise DataError(f"{path}: is binary data but not a token file; expected {expected}")
    if kind == "text":
        raise DataError(f"{path}: is raw text, not token ids; encode it with `lmkit tokenize encode --tokenizer DIR "
                        f"--input {path} --output DIR` first and pass the .bin it writes")
    return _converted(path, notice)


def _converted(path: Path, notice: Callable[[str], None]) -> Path:
    """The ``.bin`` beside a text file of ids, converting it unless a current conversion exists."""
    from lmkit.data.corpus import import_file

    cached = path.with_suffix(".bin")
    lock = lock_output(cached, hint="")
    told = False
    # Several ranks of one torchrun job convert the same file: one converts, the others wait for it.
    while True:
        try:
            lock.acquire()
            break
        except LockHeldError:
            if not told:
                notice(f"{cached}: another lmkit process is converting {path}; waiting for it")
                told = True
            time.sleep(0.2)
    try:
        made = _made_from(cached, path)
        if made:
            return cached
        if made is False:
            raise DataError(f"{cached} (or {meta_path(cached).name}): exists but is not a conversion of {path} (or is damaged), "
                            "and converting would overwrite it; move it away or pass the .bin directly")
        notice(f"{path}: text file of token ids; converting once to {cached} (memory-mapped from now on)")
        import_file(path, cached)
    finally:
        lock.release()
    return cached


def data_vocab_size(settings: Settings, saved: dict | None, notice: Callable[[str], None] = lambda m: None) -> Settings:
    """``settings`` with ``vocab_size`` taken from the data's tokenizer when the user did not set it.

    The default (GPT-2's 50257) fits neither small tokenizers nor large ones; the tokenizer that
    encoded the data knows the number of ids a model needs to use it, generation included. A
    resumed run keeps its checkpoint's size when that is enough. A ``vocab_size`` given by the
    user (flag, YAML, environment or preset) is kept; ``TokenDataset`` refuses it if it is
    smaller than the tokenizer's.

    Raises:
        DataError: training and validation data name two different tokenizers, or are unusable.
    """
    named: list[tuple[Path, TokenFileMeta, int]] = []
    for p in (settings.data.train_data_path, settings.data.val_data_path):
        if p is None:
            continue
        bin_path = resolve_token_file(Path(p), notice)
        meta = read_meta(bin_path)
        vocab = tokenizer_vocab(meta)
        if vocab is not None:
            named.append((bin_path, meta, vocab))
    if len(named) == 2:
        (a, ma, va), (b, mb, vb) = named
        same = ma.tokenizer_hash == mb.tokenizer_hash if ma.tokenizer_hash and mb.tokenizer_hash else va == vb
        if not same:
            raise DataError(
                f"{a} and {b} were encoded with different tokenizers ({ma.tokenizer_hash or ma.tokenizer_dir}, "
                f"{va} ids; {mb.tokenizer_hash or mb.tokenizer_dir}, {vb} ids); encode both with the same tokenizer"
            )
    if not named or "vocab_size" in settings.model.model_fields_set:
        return settings
    bin_path, _, want = named[0]
    saved_vocab = (((saved or {}).get("settings") or {}).get("model") or {}).get("vocab_size")
    if type(saved_vocab) is int and saved_vocab >= want:
        want = saved_vocab  # what the checkpoint's weights were built with
    if want != settings.model.vocab_size:
        notice(f"vocab_size {want}: from the tokenizer that encoded {bin_path} (set --vocab-size to choose another)")
        settings = settings.model_copy(update={"model": settings.model.model_copy(update={"vocab_size": want})})
    return settings


class TokenDataset:
    """One token file, checked against the model's context length and vocabulary."""

    def __init__(self, path: Path, context_length: int, vocab_size: int, role: str = "train", notice: Callable[[str], None] = lambda m: None):
        self.path = resolve_token_file(Path(path), notice)
        self.data, self.meta = open_tokens(self.path)
        self.context_length = context_length
        self.vocab_size = vocab_size
        if self.meta.num_tokens < context_length + 1:
            raise DataError(
                f"{self.path}: {self.meta.num_tokens} tokens is shorter than one window of "
                f"context_length + 1 = {context_length + 1}; use more {role} data or a smaller --context-length"
            )
        self._check_vocab(vocab_size)

    def _check_vocab(self, vocab_size: int) -> None:
        meta: TokenFileMeta = self.meta
        tok_vocab = tokenizer_vocab(meta)
        if tok_vocab is not None and tok_vocab > vocab_size:
            # Training would work on ids that happen to be small, but `generate` could not use the
            # tokenizer: refuse now rather than after the run.
            raise DataError(
                f"{self.path}: encoded with a tokenizer of {tok_vocab} ids ({meta.tokenizer_dir or meta.tokenizer_hash}) "
                f"but the model's vocab_size is {vocab_size}; set --vocab-size to at least {tok_vocab} "
                "(or leave it unset to use the tokenizer's)"
            )
        if meta.vocab_size is not None and meta.vocab_size <= vocab_size:
            return  # what the metadata vouches for; every batch is still checked (check_batch_ids)
        # Unknown (or larger) vocabulary: look at the ids themselves, in slices so a large file
        # is never loaded whole.
        top = max_token_id(self.data)
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
        ds = self.dataset
        return [get_batch(ds.data, self.micro_batch, T, self.device, starts=s, vocab_size=ds.vocab_size, source=str(ds.path))
                for s in starts]

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
        yield get_batch(dataset.data, per_rank, T, device, starts=starts[rank * per_rank : (rank + 1) * per_rank],
                        vocab_size=dataset.vocab_size, source=str(dataset.path))
