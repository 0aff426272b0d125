"""Encoding on worker processes that read their own input: ``encode_corpus``'s path for big corpora.

The thread pipeline (``lmkit.data.encode``) encodes in parallel, but one thread reads, parses
JSON, splits special tokens and writes, and with many cores that thread is the bound. Here the
corpus is cut into tasks that each worker reads itself, so nothing but small tables crosses a
pipe (no text, no ids):

- an uncompressed JSON Lines file is cut into byte ranges, each ending after a newline;
- every other file is one task (a compressed stream cannot be entered midway; a plain-text
  file's documents are numbered by the separators before them), so those are parallel across
  files only.

A worker reads its task's documents, encodes them, sends each to train or val (the same
``SplitRouter``) and writes their ids, each document's followed by the end-of-text id, to one
part file per dataset; it returns per-document tables (index, ids, text bytes). The main
process takes the parts in corpus order and appends them with ``DatasetWriter.write_docs``, so
shards, ``.idx``, hashes and manifests are those of the thread path byte for byte.

Line numbers: before encoding, the workers count the newlines of every range (a read through
the page cache, in parallel), so each range knows the line it starts at: split keys, resume
cursors and ``file:line`` in error messages are those of reading the file from the start.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import multiprocessing
import pickle
import shutil
import signal
import sys
import tempfile
import types
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from lmkit.data.shard_files import Cursor
from lmkit.data.shards import DatasetWriter
from lmkit.data.sources import ReadOptions, SourceFile, read_blocks
from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.pretokenize import ProgressFn

log = logging.getLogger(__name__)

MIN_RANGE = 1 << 20  # bytes: smaller ranges cost more in task hand-offs than they save
MAX_RANGE = 32 << 20  # bytes: bounds the part files waiting on disk and the tail at the end
TASKS_PER_WORKER = 8  # ranges per worker: short enough a tail, few enough hand-offs
PART_FLUSH = 1 << 20  # ids a worker buffers before writing them to its part file
_SCAN = 1 << 16  # bytes read at a time to find the newline after a cut
_PARTS_PREFIX = ".lmkit-parts-"


@dataclass(frozen=True)
class Task:
    """One worker's share: a whole file, or bytes ``[lo, hi)`` of an uncompressed JSON Lines file."""

    k: int  # position in corpus order
    source: int
    lo: int | None = None
    hi: int | None = None
    lines_before: int = 0  # lines of the file before ``lo``
    disk_bytes: int = 0  # for progress


def plan_size(sources: list[SourceFile], workers: int) -> int:
    """At least as many tasks as ``plan_tasks`` makes of these sources, counted without reading them."""
    step = range_bytes(sum(s.size for s in sources), workers)
    return sum(-(-s.size // step) if s.kind == "jsonl" and s.compression is None and s.size > step else 1 for s in sources)


def range_bytes(total: int, workers: int) -> int:
    """How many bytes a range holds: about ``TASKS_PER_WORKER`` per worker, within bounds."""
    return max(MIN_RANGE, min(MAX_RANGE, total // max(1, workers * TASKS_PER_WORKER)))


def line_cuts(path: Path, size: int, step: int) -> list[int]:
    """Offsets ``0 = c0 < c1 < ... = size`` cutting a file into pieces of about ``step`` bytes,
    each cut just after a newline (a line longer than ``step`` makes its piece longer)."""
    cuts = [0]
    with open(path, "rb") as f:
        pos = step
        while pos < size:
            f.seek(pos - 1)  # a cut at pos is right when the byte before it is a newline
            found = -1
            while found < 0:
                chunk = f.read(_SCAN)
                if not chunk:
                    break
                found = chunk.find(b"\n")
                if found < 0:
                    pos += len(chunk)
            if found < 0:
                break
            pos += found  # f was at pos - 1: the newline is at pos - 1 + found
            if pos >= size:
                break
            cuts.append(pos)
            pos += step
    cuts.append(size)
    return cuts


def plan_tasks(sources: list[SourceFile], first_source: int, step: int) -> list[Task]:
    """The tasks for sources ``first_source`` on, in corpus order (line counts not yet known)."""
    tasks: list[Task] = []
    for i in range(first_source, len(sources)):
        src = sources[i]
        if src.kind == "jsonl" and src.compression is None and src.size > step:
            cuts = line_cuts(src.path, src.size, step)
            tasks += [Task(len(tasks) + n, i, lo, hi, 0, hi - lo) for n, (lo, hi) in enumerate(itertools.pairwise(cuts))]
        else:
            tasks.append(Task(len(tasks), i, disk_bytes=src.size))
    return tasks


def count_newlines(path: Path, lo: int, hi: int) -> int:
    """Newlines in bytes ``[lo, hi)`` of a file."""
    n = 0
    with open(path, "rb") as f:
        f.seek(lo)
        left = hi - lo
        while left > 0 and (chunk := f.read(min(left, 1 << 22))):
            n += chunk.count(b"\n")
            left -= len(chunk)
    return n


# --- the worker side -----------------------------------------------------------------------------


@dataclass
class _WorkerState:
    encoder: object  # a FastEncoder, or the Tokenizer where none is exact
    sources: list[SourceFile]
    opts: ReadOptions
    specials: list[str]
    router: Callable[[int, int], int]
    datasets: int
    dtype: str  # little-endian, as the files hold it
    eot_id: int | None
    part_dir: Path


_state: tuple[Path, _WorkerState] | None = None  # where it was read from, and the state


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group; the main process handles it and stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _receive_state(path: Path) -> _WorkerState:
    # Read at the first encode task, not at start-up: until then a worker can start and count
    # newlines while the main process still loads the tokenizer and builds the engine. A file
    # (in the parts folder), not a pipe: a pipe's writer blocks until every worker reads.
    global _state
    if _state is None or _state[0] != path:
        _state = path, pickle.loads(path.read_bytes())
    return _state[1]


class _Part:
    """The ids a worker writes for one dataset, and its per-document table."""

    def __init__(self, path: Path, dtype: str, eot_id: int | None):
        self.path, self.dtype, self.file = path, dtype, None
        self.eot = np.array([eot_id], dtype=dtype) if eot_id is not None else None
        self.pending: list[np.ndarray] = []
        self.pending_n = self.n = self.doc_n = self.doc_bytes = 0
        self.lengths, self.nbytes, self.docs = array("q"), array("q"), array("q")

    def add(self, ids: np.ndarray, nbytes: int) -> None:
        self.pending.append(ids.astype(self.dtype, copy=False))
        self.pending_n += ids.size
        self.doc_n += ids.size
        self.doc_bytes += nbytes
        if self.pending_n >= PART_FLUSH:
            self._flush()

    def end_doc(self, doc: int) -> None:
        if self.eot is not None:
            self.pending.append(self.eot)
            self.pending_n += 1
            self.doc_n += 1
        self.lengths.append(self.doc_n)
        self.nbytes.append(self.doc_bytes)
        self.docs.append(doc)
        self.n += self.doc_n
        self.doc_n = self.doc_bytes = 0

    def _flush(self) -> None:
        if self.file is None:
            self.file = open(self.path, "wb")  # noqa: SIM115 (closed in close())
        self.file.write(np.concatenate(self.pending).tobytes())
        self.pending, self.pending_n = [], 0

    def close(self) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        if self.pending:
            self._flush()
        if self.file is not None:
            self.file.close()
        return self.n, *(np.frombuffer(a, dtype=np.int64) for a in (self.lengths, self.nbytes, self.docs))


def _ready() -> None:
    """A task that only makes its process start (importing what encoding needs)."""
    import tiktoken  # noqa: F401  (unpickling the engine needs it: imported while nothing waits)


def _count_task(path: Path, lo: int, hi: int) -> int:
    return count_newlines(path, lo, hi)


def _encode_task(task: Task, start_doc: int, state: Path) -> tuple[list[tuple[int, np.ndarray, np.ndarray, np.ndarray]], Counter]:
    """Read, encode and route one task's documents; their ids go to part files."""
    st = _receive_state(state)
    src = st.sources[task.source]
    if isinstance(st.encoder, Tokenizer):  # no exact fast engine (the main process found none)
        tokenizer = st.encoder
        encode = lambda text: np.asarray(tokenizer.encode(text), dtype=np.uint32)
    else:
        encode = st.encoder.encode
    parts = [_Part(st.part_dir / f"{task.k:07d}-{d}.bin", st.dtype, st.eot_id) for d in range(st.datasets)]
    skipped: Counter = Counter()
    span = (task.lo, task.hi, task.lines_before) if task.lo is not None else None
    part = parts[0]
    try:
        for block in read_blocks(src, st.opts, st.specials, start_doc, skipped, span=span):
            if block.first:
                part = parts[st.router(task.source, block.doc)]
            part.add(encode(block.text), len(block.text.encode("utf-8", "surrogatepass")))
            if block.last:
                part.end_doc(block.doc)
    finally:
        tables = [p.close() for p in parts]
    return tables, skipped


# --- the main side -------------------------------------------------------------------------------


class WorkerPool:
    """Spawned worker processes, started before the state they will encode with exists.

    A worker's start (a fresh interpreter importing numpy and lmkit) is the slow part of it, so a
    caller that knows it will encode on processes starts them first and loads the tokenizer
    meanwhile (``lmkit tokenize encode`` does, through ``encode.start_workers``). A pool serves
    one ``run_processes`` call, which closes it; ``close`` ends it unused. Workers get their
    state (the engine's tables among it) from a file that call writes.

    Args:
        workers: How many processes.
    """

    def __init__(self, workers: int):
        self.workers = workers
        ctx = multiprocessing.get_context("spawn")  # not fork: the caller may hold threads (a progress bar)
        self.executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker)
        # One task per worker starts every process now: each submit starts one while none is
        # idle, and none is before it has started, which takes far longer than this loop.
        with _bare_main():
            for _ in range(workers):
                self.executor.submit(_ready)
        self.closed = False

    def close(self, finished: bool = False) -> None:
        """End the workers: after their work (``finished``), or at once (an error, an interruption,
        or a pool never used), without waiting for their tasks."""
        if self.closed:
            return
        self.closed = True
        if not finished:
            for p in list((self.executor._processes or {}).values()):
                p.terminate()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_processes(tokenizer: Tokenizer, sources: list[SourceFile], opts: ReadOptions, specials: list[str],
                  start: Cursor, router: Callable[[int, int], int], writers: list[DatasetWriter], workers: int,
                  stage: str, progress: ProgressFn | None, skipped: dict[Path, Counter] | None,
                  pool: WorkerPool | None = None) -> None:
    """Encode the corpus from ``start`` on ``workers`` processes into ``writers`` (see the module doc).

    ``pool``: processes already started (``WorkerPool``), used instead of starting ``workers``
    new ones, and closed at the end.

    Raises:
        DataError: what reading a source raises (the first one in corpus order), as the
            thread path does; the shards finished before it stay for a rerun.
    """
    total = sum(s.size for s in sources)
    tasks = plan_tasks(sources, start.source, range_bytes(total - sum(s.size for s in sources[:start.source]), workers))
    ranged = [t for t in tasks if t.lo is not None]
    part_dir = None
    finished = False
    try:
        # They import while the encoder is built (a pool given was started earlier still).
        pool = pool or WorkerPool(max(1, min(workers, len(tasks))))  # a process without a task would only cost its start
        workers, executor = pool.workers, pool.executor
        part_dir = Path(tempfile.mkdtemp(prefix=f"{_PARTS_PREFIX}{writers[0].name}-", dir=writers[0].dir))
        counts = [executor.submit(_count_task, sources[t.source].path, t.lo, t.hi) for t in ranged]
        encoder = tokenizer.fast_encoder() or tokenizer
        dtype = "<" + writers[0].dtype.str[1:]
        state = _WorkerState(encoder, sources, opts, specials, router, len(writers), dtype, writers[0].eot_id, part_dir)
        state_path = part_dir / "state.pickle"  # pickled once for every worker
        state_path.write_bytes(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL))
        lines: dict[tuple[int, int], int] = {}
        before = 0
        for t, fut in zip(ranged, counts):
            before = 0 if t.lo == 0 else before
            lines[(t.source, t.lo)] = before
            before += fut.result()
        tasks = [replace(t, lines_before=lines[(t.source, t.lo)]) if t.lo is not None else t for t in tasks]
        log.info("encoding on %d worker processes, %d tasks (%s)", workers, len(tasks),
                 "byte ranges of JSON Lines" if ranged else "whole files")
        done = sum(s.size for s in sources[:start.source])
        in_flight: collections.deque = collections.deque()
        todo = iter(tasks)
        for t in todo:
            in_flight.append((t, executor.submit(_encode_task, t, start.doc if t.source == start.source else 0, state_path)))
            if len(in_flight) >= 2 * workers:
                break
        while in_flight:
            t, fut = in_flight.popleft()
            tables, bad = fut.result()
            if (nxt := next(todo, None)) is not None:
                in_flight.append((nxt, executor.submit(_encode_task, nxt, start.doc if nxt.source == start.source else 0, state_path)))
            for d, (n, lengths, nbytes, docs) in enumerate(tables):
                path = part_dir / f"{t.k:07d}-{d}.bin"
                if n:
                    writers[d].write_docs(np.memmap(path, dtype=dtype, mode="r", shape=(n,)), lengths, nbytes, t.source, docs)
                try:
                    path.unlink(missing_ok=True)
                except OSError:  # still mapped (Windows): the folder goes at the end
                    pass
            if skipped is not None:
                skipped.setdefault(sources[t.source].path, Counter()).update(bad)
            done += t.disk_bytes
            if progress:
                progress(stage, min(done, total), total)
        finished = True
    finally:
        if pool is not None:  # not finished (an error, an interruption): ended without waiting for their tasks
            pool.close(finished)
        if part_dir is not None:
            shutil.rmtree(part_dir, ignore_errors=True)


@contextlib.contextmanager
def _bare_main() -> Iterator[None]:
    """Spawned workers do not run the caller's main module again while they start.

    They need only lmkit's modules. Running ``__main__`` again costs each worker the CLI's
    imports, and in a user's script without an ``if __name__ == "__main__":`` guard it would
    encode again, recursively (multiprocessing refuses that with an error).
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def remove_stale_parts(directory: Path, name: str) -> None:
    """Remove the part folders a killed encode of dataset ``name`` left (the caller holds its lock)."""
    for p in directory.glob(f"{_PARTS_PREFIX}{name}-*"):
        if p.is_dir() and p.name[len(_PARTS_PREFIX) + len(name) + 1:].count("-") == 0:
            shutil.rmtree(p, ignore_errors=True)


def processes_pay(threads: int, total: int, min_bytes: int) -> bool:
    """Whether worker processes beat threads: enough cores for the reading to be the bound, and
    enough input to pay for starting them."""
    return threads > 2 and total >= min_bytes
