"""Pretoken counts of a corpus in any input format, counted in worker processes.

BPE training needs only how often each distinct pretoken occurs. The documents come from
``lmkit.data.sources.read_blocks`` (plain text, JSON Lines, parquet, Arrow, compressed or not)
as blocks of one document each, cut where no pretoken spans the cut, so counting blocks one by
one gives the counts of whole documents, and no pretoken (hence no pair) crosses a document.

Work is shared two ways at once, so both many small files and one huge file keep every core
busy: a file small enough to be one task is read and counted whole by a worker (nothing but
its path travels); a bigger one is read here and its blocks go to the workers in batches of
about ``BATCH_CHARS``, with at most a few batches in flight, so memory stays bounded.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

from lmkit.tokenizer.pretokenize import PRETOKEN_RE, ProgressFn, special_splitter

if TYPE_CHECKING:
    from lmkit.data.sources import ReadOptions, SourceFile

BATCH_CHARS = 4 << 20  # text per batch task: amortises the pickling and the Counter sent back
PARALLEL_BYTES = 4 << 20  # below this, starting processes costs more than it saves


def count_texts(texts: Sequence[str], specials: list[str], counts: Counter | None = None) -> Counter:
    """Count the pretokens of each text separately (special tokens are left out).

    Args:
        texts: Pieces of documents, each cut at a pretoken boundary.
        specials: Special tokens, cut out first.
        counts: Add to this Counter (default: a new one). Counting straight into the total
            avoids merging Counters, a Python-level loop per distinct pretoken.

    Example: ``count_texts(["a b", "a"], [])`` -> ``Counter({"a": 2, " b": 1})``.
    """
    counts = Counter() if counts is None else counts
    findall, splitter = PRETOKEN_RE.findall, special_splitter(specials)
    for text in texts:
        if splitter is None:
            counts.update(findall(text))  # a list: Counter counts it in C
        else:
            for segment in splitter.split(text)[::2]:
                counts.update(findall(segment))
    return counts


def count_source(src: SourceFile, opts: ReadOptions, specials: list[str]) -> tuple[Counter, Counter]:
    """Count the pretokens of one source, read whole here.

    Returns:
        ``(pretoken counts, lines skipped by reason)``.
    """
    from lmkit.data.sources import read_blocks

    skipped: Counter = Counter()
    counts: Counter = Counter()
    batch: list[str] = []
    size = 0
    for block in read_blocks(src, opts, specials, skipped=skipped):
        batch.append(block.text)
        size += len(block.text)
        if size >= BATCH_CHARS:
            count_texts(batch, specials, counts)
            batch, size = [], 0
    count_texts(batch, specials, counts)
    return counts, skipped


def count_corpus(
    sources: list[SourceFile],
    opts: ReadOptions,
    specials: list[str],
    *,
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> tuple[Counter, dict[Path, Counter]]:
    """Count every distinct pretoken of the sources' documents.

    Args:
        sources: From ``resolve_inputs``.
        opts: How documents and their text are found (``text_key``, ``skip_bad_lines``, ...).
        specials: Cut out before pretokenizing (never part of a pretoken).
        workers: Processes; default: all cores when the sources hold over 4 MB, else 1. Counts
            do not depend on it.
        progress: Called as ``progress("pretokenize", bytes_done, bytes_total)`` (bytes on disk).

    Returns:
        ``(pretoken -> occurrences, path -> lines skipped by reason)``. Memory grows with the
        number of distinct pretokens, not with the corpus.

    Raises:
        DataError: as ``read_blocks`` (the first bad input met stops the count).
    """
    total = sum(s.size for s in sources)
    cores = os.cpu_count() or 1
    if workers is None:
        workers = cores if total > PARALLEL_BYTES else 1
    # More processes than cores only adds memory, and `--workers 1000000` must not start them.
    workers = max(1, min(workers, cores))
    report = progress or (lambda stage, done, total: None)
    report("pretokenize", 0, total)
    if workers == 1:
        return _count_here(sources, opts, specials, total, report)
    return _count_in_pool(sources, opts, specials, workers, total, report)


def _count_here(sources, opts, specials, total, report) -> tuple[Counter, dict[Path, Counter]]:
    from lmkit.data.sources import read_blocks

    counts: Counter = Counter()
    skipped: dict[Path, Counter] = {}
    done = 0
    for src in sources:
        skipped[src.path] = Counter()
        batch: list[str] = []
        size = 0
        for block in read_blocks(src, opts, specials, skipped=skipped[src.path]):
            batch.append(block.text)
            size += len(block.text)
            done += block.nbytes
            if size >= BATCH_CHARS:
                count_texts(batch, specials, counts)
                batch, size = [], 0
                report("pretokenize", done, total)
        count_texts(batch, specials, counts)
        report("pretokenize", done, total)
    return counts, skipped


def _count_in_pool(sources, opts, specials, workers, total, report) -> tuple[Counter, dict[Path, Counter]]:
    from lmkit.data.sources import read_blocks

    # A file of at most half a worker's share is one task; bigger ones are split here so the
    # last big file does not leave the other workers idle at the end.
    whole_limit = max(BATCH_CHARS, total // (2 * workers))
    whole = sorted((s for s in sources if s.size <= whole_limit), key=lambda s: -s.size)
    split = [s for s in sources if s.size > whole_limit]
    counts: Counter = Counter()
    skipped: dict[Path, Counter] = {s.path: Counter() for s in sources}
    done = 0
    pending: dict[Future, tuple[Path | None, int]] = {}  # future -> (whole file or None, bytes)

    def absorb(limit: int | None) -> None:
        # Wait until at most `limit` batches are in flight (None: until all tasks are done),
        # merging whatever finished.
        nonlocal done
        while pending and (limit is None or sum(path is None for path, _ in pending.values()) > limit):
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                path, nbytes = pending.pop(fut)
                result = fut.result()  # re-raises a worker's DataError here
                part = result[0] if path is not None else result
                if path is not None:
                    skipped[path].update(result[1])
                counts.update(part)  # the first into an empty Counter is one C-level dict update
                done += nbytes
                report("pretokenize", done, total)

    # spawn, not fork: the caller may hold threads (a progress bar) that fork would copy mid-lock.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            for src in whole:  # largest first, so the small ones fill the gaps at the end
                pending[pool.submit(count_source, src, opts, specials)] = (src.path, src.size)
            for src in split:
                batch: list[str] = []
                size = nbytes = 0
                for block in read_blocks(src, opts, specials, skipped=skipped[src.path]):
                    batch.append(block.text)
                    size += len(block.text)
                    nbytes += block.nbytes
                    if size >= BATCH_CHARS:
                        absorb(2 * workers)
                        pending[pool.submit(count_texts, batch, specials)] = (None, nbytes)
                        batch, size, nbytes = [], 0, 0
                if batch or nbytes:
                    pending[pool.submit(count_texts, batch, specials)] = (None, nbytes)
            absorb(None)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)  # a bad file: stop the rest now
            raise
    return counts, skipped
