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
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from lmkit.data.dataset import TokenData, check_same_tokenizer, open_data
from lmkit.data.paths import resolve_token_file  # noqa: F401 - re-exported: its home before datasets
from lmkit.data.tokens import tokenizer_vocab
from lmkit.errors import DataError
from lmkit.settings import Settings
from lmkit.settings_mixture import DataSource

# Mixed into the seed so validation windows never coincide with training ones by construction.
_VAL_STREAM = 0x5EED_0F_7A1
# Ids per slice when scanning a whole file: bounded memory (64 MB of uint32) whatever its size.
_SCAN = 1 << 24


def max_token_id(data: np.ndarray | TokenData, stop: int | None = None) -> int:
    """The largest id in ``data[:stop]`` (a token array or dataset), read in slices so a memmap
    is never loaded whole."""
    stop = len(data) if stop is None else min(stop, len(data))
    return max(int(data[i : min(i + _SCAN, stop)].max()) for i in range(0, stop, _SCAN))


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
    return _to_device(windows, vocab_size, source, device)


def _to_device(windows: np.ndarray, vocab_size: int | None, source: str, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T+1) int64 windows, ids checked, as ``(x, y)`` on ``device``."""
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


def data_vocab_size(settings: Settings, saved: dict | None, notice: Callable[[str], None] = lambda m: None) -> Settings:
    """``settings`` with ``vocab_size`` taken from the data's tokenizer when the user did not set it.

    The default (GPT-2's 50257) fits neither small tokenizers nor large ones; the tokenizer that
    encoded the data knows the number of ids a model needs to use it, generation included. A
    resumed run keeps its checkpoint's size when that is enough. A ``vocab_size`` given by the
    user (flag, YAML, environment or preset) is kept; ``TokenDataset`` refuses it if it is
    smaller than the tokenizer's.

    Raises:
        DataError: the datasets of the run (training and validation, every source of a mixture)
            name two different tokenizers, or are unusable.
    """
    datasets = []
    for value in (settings.data.train_data_path, settings.data.val_data_path):
        if value is not None:
            datasets += open_data(value, notice).sources
    check_same_tokenizer(datasets)
    named = [d for d in datasets if tokenizer_vocab(d.meta()) is not None]
    if not named or "vocab_size" in settings.model.model_fields_set:
        return settings
    want = named[0].vocab_size
    saved_vocab = (((saved or {}).get("settings") or {}).get("model") or {}).get("vocab_size")
    if type(saved_vocab) is int and saved_vocab >= want:
        want = saved_vocab  # what the checkpoint's weights were built with
    if want != settings.model.vocab_size:
        notice(f"vocab_size {want}: from the tokenizer that encoded {named[0].path} (set --vocab-size to choose another)")
        settings = settings.model_copy(update={"model": settings.model.model_copy(update={"vocab_size": want})})
    return settings


class TokenDataset:
    """The data of one role (train or validation), checked against the model's context and vocabulary.

    Args:
        path: a data path (``open_dataset`` forms) or mixture sources, as the settings hold them.
        context_length: the model's; every source must hold at least one window.
        vocab_size: the model's; a tokenizer or ids beyond it are refused.
        role: "train" or "validation", for messages.
        notice: one-line notices (a text file of ids being converted, a directory's files).
    """

    def __init__(self, path: Path | str | list[DataSource], context_length: int, vocab_size: int, role: str = "train",
                 notice: Callable[[str], None] = lambda m: None):
        self.mixture = open_data(path, notice)
        self.context_length = context_length
        self.vocab_size = vocab_size
        for d in self.mixture.sources:
            if d.num_tokens < context_length + 1:
                raise DataError(
                    f"{d.path}: {d.num_tokens} tokens is shorter than one window of "
                    f"context_length + 1 = {context_length + 1}; use more {role} data or a smaller --context-length"
                )
            self._check_vocab(d, vocab_size)
        first = self.mixture.sources[0]
        self.data = first  # one dataset's stream (read as one array: len(), slices)
        self.path = first.path
        self.meta = first.meta()  # every source shares this tokenizer (open_data checks)
        self._doc_starts: list[np.ndarray | None] | None = None  # see document_starts

    @staticmethod
    def _check_vocab(d: TokenData, vocab_size: int) -> None:
        tok_vocab = tokenizer_vocab(d.meta())
        if tok_vocab is not None and tok_vocab > vocab_size:
            # Training would work on ids that happen to be small, but `generate` could not use the
            # tokenizer: refuse now rather than after the run.
            raise DataError(
                f"{d.path}: encoded with a tokenizer of {tok_vocab} ids ({d.tokenizer_dir or d.tokenizer_hash}) "
                f"but the model's vocab_size is {vocab_size}; set --vocab-size to at least {tok_vocab} "
                "(or leave it unset to use the tokenizer's)"
            )
        if d.vocab_size is not None and d.vocab_size <= vocab_size:
            return  # what the metadata vouches for; every batch is still checked (check_batch_ids)
        # Unknown (or larger) vocabulary: look at the ids themselves, in slices so a large file
        # is never loaded whole.
        top = max_token_id(d)
        if top >= vocab_size:
            raise DataError(
                f"{d.path}: holds token id {top} but the model's vocab_size is {vocab_size}; "
                f"set --vocab-size to at least {top + 1} (or encode with the matching tokenizer)"
            )

    def __len__(self) -> int:
        return self.data.num_tokens

    def plan(self, count: int, seed: int, step: int, aligned: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Which source and start each of ``count`` windows of one step reads; see ``mixture_plan``.

        ``aligned``: windows start at document starts, in each source that has a document index
        (see ``document_starts``).
        """
        docs = self.document_starts() if aligned else None
        return mixture_plan([len(d) for d in self.mixture.sources], self.mixture.weights, self.context_length, count, seed, step, docs)

    def document_starts(self, notice: Callable[[str], None] | None = None) -> list[np.ndarray | None]:
        """Per source, the document starts a whole window fits after (int64, ascending), or None
        where the source has no document index (data encoded before indexes, or a file of ids).

        Loaded once. ``notice`` hears of each source without an index (its windows stay random).
        """
        if self._doc_starts is None:
            out = []
            for d in self.mixture.sources:
                docs = d.documents()
                if docs is not None:
                    docs = docs.astype(np.int64)
                    docs = docs[docs <= len(d) - self.context_length - 1]  # a window of T + 1 fits after it
                if docs is None or docs.size == 0:
                    if notice is not None:
                        notice(f"{d.path}: no document index (.idx beside its .bin; `lmkit tokenize encode` writes one): "
                               "its training windows start anywhere, not at document starts")
                    docs = None
                out.append(docs)
            self._doc_starts = out
        return self._doc_starts

    def cut(self, sources: np.ndarray, starts: np.ndarray, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The windows ``(sources[i], starts[i])`` as a batch ``(x, y)`` on ``device``, ids checked."""
        T = self.context_length
        data = self.mixture.sources
        # (B, T+1): one contiguous read per window (two where it spans a shard boundary).
        windows = np.stack([np.asarray(data[k].window(int(s), T + 1)) for k, s in zip(sources, starts)]).astype(np.int64)
        return _to_device(windows, self.vocab_size, str(data[int(sources[0])].path) if len(data) == 1 else "the mixture's data", device)


def open_run_data(settings: Settings, notice: Callable[[str], None] = lambda m: None) -> tuple[TokenDataset, TokenDataset | None]:
    """A run's training and validation data (None without validation), checked against its model.

    A mixture is announced with its resolved (normalised) weights, so the shares a run uses are
    on record at its start.
    """
    s = settings
    train = TokenDataset(s.data.train_data_path, s.model.context_length, s.model.vocab_size, "train", notice)
    val = None
    if s.data.val_data_path is not None:
        val = TokenDataset(s.data.val_data_path, s.model.context_length, s.model.vocab_size, "validation", notice)
    for role, data in (("train", train), ("validation", val)):
        if data is not None and data.mixture.is_mixture:
            notice(f"{role} mixture: {data.mixture.describe()}")
        elif data is not None and len(data.data.shards) > 1:  # what a directory or glob was read as
            notice(f"{role} data: {data.data.path}: {len(data.data.shards)} shards, {len(data):,} tokens")
    return train, val


def mixture_plan(lengths: Sequence[int], weights: np.ndarray, context_length: int, count: int, seed: int, step: int,
                 documents: Sequence[np.ndarray | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Source index and start offset of each of ``count`` windows: a pure function of its arguments.

    One dataset: exactly ``window_starts(length, T, count, seed, step)``, so a run on the same ids
    (one file or any number of shards) draws the same windows as always and resumes bitwise. A
    mixture: the step's generator draws every window's source from ``weights``, then, source by
    source, the starts within it.

    Args:
        documents: per source, the document starts to draw from (each equally likely: a long
            document is not drawn more often than a short one, which would repeat its opening), or
            None for random offsets; None for random offsets everywhere.

    Returns:
        ``(sources, starts)``: int64 arrays of shape (count,).
    """
    documents = documents or [None] * len(lengths)

    def starts_in(k: int, size: int, rng: np.random.Generator) -> np.ndarray:
        docs = documents[k]
        if docs is None:
            return rng.integers(0, lengths[k] - context_length, size=size, dtype=np.int64)
        return docs[rng.integers(0, len(docs), size=size, dtype=np.int64)]

    if len(lengths) == 1:
        if documents[0] is None:
            return np.zeros(count, dtype=np.int64), window_starts(lengths[0], context_length, count, seed, step)
        return np.zeros(count, dtype=np.int64), starts_in(0, count, np.random.default_rng([seed, step]))
    rng = np.random.default_rng([seed, step])
    sources = rng.choice(len(lengths), size=count, p=weights).astype(np.int64)
    starts = np.empty(count, dtype=np.int64)
    for k in range(len(lengths)):
        picked = sources == k
        starts[picked] = starts_in(k, int(picked.sum()), rng)
    return sources, starts


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
        align_documents: bool = False,
        notice: Callable[[str], None] | None = None,
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
        self.tokens_by_source: dict[str, int] = {n: 0 for n in dataset.mixture.names}
        self.aligned = align_documents
        if align_documents:
            dataset.document_starts(notice)  # loaded (and sources without an index named) before the first step

    def _build(self, step: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], np.ndarray]:
        sources, starts = self.dataset.plan(self.batch_size, self.seed, step, self.aligned)
        # Windows per source in the whole global batch (every rank counts the same).
        counts = np.bincount(sources, minlength=len(self.dataset.mixture))
        sources = sources.reshape(self.accum, self.world_size, self.micro_batch)[:, self.rank]  # (A, b)
        starts = starts.reshape(self.accum, self.world_size, self.micro_batch)[:, self.rank]  # (A, b)
        return [self.dataset.cut(k, s, self.device) for k, s in zip(sources, starts)], counts

    def step_batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The ``grad_accum_steps`` micro-batches ``(x, y)`` of this rank for optimizer step ``step``.

        Taking a step's batches counts its tokens per source (``tokens_by_source``).
        """
        if self._pool is None:
            batches, counts = self._build(step)
        else:
            with self._lock:
                fut = self._pending.pop(step, None) or self._pool.submit(self._build, step)
                # Start on the next step while the caller computes on this one.
                self._pending = {step + 1: self._pending.get(step + 1) or self._pool.submit(self._build, step + 1)}
            batches, counts = fut.result()
        T = self.dataset.context_length
        for name, n in zip(self.dataset.mixture.names, counts):
            self.tokens_by_source[name] = self.tokens_by_source.get(name, 0) + int(n) * T
        return batches

    def state_dict(self) -> dict:
        """Everything needed to continue the same data stream (positions derive from the step),
        plus the tokens taken from each source so far."""
        return {"seed": self.seed, "batch_size": self.batch_size, "tokens_by_source": dict(self.tokens_by_source)}

    def load_state_dict(self, state: dict) -> None:
        """Continue the per-source token counts of a checkpoint (sources new to this run start at 0)."""
        saved = (state or {}).get("tokens_by_source") or {}
        self.tokens_by_source = {**{n: 0 for n in self.dataset.mixture.names},
                                 **{str(k): int(v) for k, v in saved.items() if type(v) is int}}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def eval_batches(dataset: TokenDataset, batch_size: int, eval_iters: int, device, seed: int, rank: int = 0, world_size: int = 1):
    """The same ``eval_iters`` batches every time, so validation losses are comparable over a run.

    ``batch_size`` is the global evaluation batch; each rank takes its own contiguous slice, so
    the mean over ranks covers exactly the windows a single process would evaluate. A mixture
    is sampled by its weights, as for training (with the validation stream's seed).
    """
    per_rank = batch_size // world_size
    for k in range(eval_iters):
        sources, starts = dataset.plan(batch_size, seed ^ _VAL_STREAM, k)
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        yield dataset.cut(sources[mine], starts[mine], device)
