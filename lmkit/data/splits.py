"""The validation split: which documents of a corpus go to ``NAME-val``, decided per document.

A document's key is 64 bits of a hash of (its file's path relative to the inputs' common
directory, its index in that file): the same on every run and machine, and independent of the
order files are read in. ``--val-fraction F`` sends a document to validation when its key is
below F * 2**64, decided as the corpus streams; ``--val-docs N`` takes the N smallest keys
exactly, at the cost of one pass that reads the corpus without encoding it.
"""

from __future__ import annotations

import hashlib
import heapq
import os
from pathlib import Path

from lmkit.data.source_types import ReadOptions, SourceFile
from lmkit.data.sources import read_blocks
from lmkit.errors import DataError
from lmkit.tokenizer.pretokenize import ProgressFn


def doc_key(rel: str, doc: int) -> int:
    """The split key of a document: 64 bits of a hash of (relative path, index)."""
    return int.from_bytes(hashlib.blake2b(f"{rel}\n{doc}".encode(), digest_size=8).digest(), "big")


def relative_names(sources: list[SourceFile]) -> list[str]:
    root = os.path.commonpath([str(s.path.parent) for s in sources])
    return [Path(os.path.relpath(s.path, root)).as_posix() for s in sources]


class SplitRouter:
    """Which dataset a document goes to: 0 (train, or the only one) or 1 (val)."""

    def __init__(self, rel: list[str], val_fraction: float | None, chosen: set[tuple[int, int]] | None):
        self.rel, self.threshold, self.chosen = rel, None, chosen
        if val_fraction is not None:
            self.threshold = int(val_fraction * 2**64)

    def __call__(self, source: int, doc: int) -> int:
        if self.chosen is not None:
            return int((source, doc) in self.chosen)
        if self.threshold is not None:
            return int(doc_key(self.rel[source], doc) < self.threshold)
        return 0


def choose_val_docs(sources: list[SourceFile], rel: list[str], opts: ReadOptions, specials: list[str],
                     n: int, progress: ProgressFn | None) -> set[tuple[int, int]]:
    """The ``n`` documents of smallest key (a pass that reads but does not encode the corpus)."""
    heap: list[tuple[int, int, int]] = []  # (-key, -source, -doc): the largest kept key on top
    total, done, count = sum(s.size for s in sources), 0, 0
    for i, src in enumerate(sources):
        for block in read_blocks(src, opts, specials):
            if block.first:
                count += 1
                item = (-doc_key(rel[i], block.doc), -i, -block.doc)
                if len(heap) < n:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)
        done += src.size
        if progress:
            progress("split", done, total)
    if count <= n:
        raise DataError(f"--val-docs {n} but the corpus has {count} documents; leave some for training "
                        "(a smaller --val-docs, or --val-fraction)")
    return {(-i, -d) for _, i, d in heap}
