"""Writing one dataset as shards that an interrupted encode can resume.

Documents arrive in corpus order, each as pieces of ids; ``DatasetWriter`` appends them (and the
end-of-text id after each document) to ``NAME-00000.bin``, ``NAME-00001.bin``, ... of at most
``shard_tokens`` ids each. A document longer than the room left continues in the next shard.
A shard is written as a temp file renamed into place when full, then its ``.idx`` (the start
offset of every document that starts in it), then its ``.json`` last: the ``.json`` is what
makes a shard count, and it records

- ``encoding.fingerprint``: what produced it (tokenizer, inputs, every option that changes ids),
- ``encoding.cursor``: ``[source, doc, tokens_done]``, where the corpus stands at the shard's
  end: every document before ``(source, doc)`` is written in full, and ``tokens_done`` ids of
  that document are already in this shard (a document split across shards),
- ``sha256`` of the ``.bin``.

Run again with the same fingerprint, ``resume`` keeps the longest run of shards that verify
(size, hash, fingerprint, index) and says where to restart; the document at the cursor is
encoded again and its first ``tokens_done`` ids dropped. At the end a dataset of one shard
becomes today's ``NAME.bin`` + ``NAME.json`` (+ ``NAME.idx``); several get a manifest
(``lmkit.data.manifest``).
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmkit.data.manifest import Manifest, ShardEntry, SourceEntry, write_manifest
from lmkit.data.shard_files import (
    Cursor,
    ShardRecord,
    finished_output,
    is_manifest_file,
    shard_files,
    shard_stem,
    verify_shard,
)
from lmkit.data.tokens import TokenFileMeta, atomic_write_bytes, meta_path
from lmkit.data.writing import PartialFile, write_error, write_meta_checked
from lmkit.locking import fsync_dir

DEFAULT_SHARD_TOKENS = 100_000_000
MAX_LISTED_SOURCES = 10_000  # input files named one by one in a one-shard dataset's NAME.json
FLUSH_IDS = 1 << 20  # ids buffered before a write: one syscall and one hash update per few MB


@dataclass
class _OpenShard:
    """The shard being written; ids are buffered so a document of a few ids costs no syscall."""

    k: int
    partial: PartialFile
    sha: Any = field(default_factory=hashlib.sha256)
    n: int = 0
    starts: array = field(default_factory=lambda: array("Q"))
    credits: dict[int, list[int]] = field(default_factory=dict)
    source_bytes: int = 0
    pending: list[np.ndarray] = field(default_factory=list)
    pending_n: int = 0

    def add(self, ids: np.ndarray, count_ids: Callable[[np.ndarray], None] | None) -> None:
        if ids.size >= FLUSH_IDS:  # a long run (a worker's part, memory-mapped): written in slices, never copied whole
            self.flush(count_ids)
            self.n += ids.size
            for i in range(0, ids.size, FLUSH_IDS):
                self.pending.append(ids[i:i + FLUSH_IDS])
                self.flush(count_ids)
            return
        self.pending.append(ids)
        self.pending_n += ids.size
        self.n += ids.size
        if self.pending_n >= FLUSH_IDS:
            self.flush(count_ids)

    def flush(self, count_ids: Callable[[np.ndarray], None] | None) -> None:
        if not self.pending:
            return
        ids = np.concatenate(self.pending)
        self.pending, self.pending_n = [], 0
        data = ids.tobytes()
        self.partial.write(data)
        self.sha.update(data)
        if count_ids is not None:
            count_ids(ids)


class DatasetWriter:
    """Writes one dataset (``directory/NAME*``) from documents given in corpus order.

    Args:
        directory: The output directory (the caller holds the lock of ``NAME.bin`` in it).
        name: The dataset name.
        dtype: ``"uint16"`` or ``"uint32"``.
        shard_tokens: The most ids per shard.
        eot_id: Appended after every document; None for none.
        fingerprint: Identifies the encode; shards with another one are never reused.
        meta: ``vocab_size``, ``tokenizer_hash``, ``tokenizer_dir`` for every ``.json``.
        num_sources: How many input files the corpus has (the end cursor is past them).
        count_ids: Called with every id array written (and the ids of reused shards), for stats.
        eot_bytes: UTF-8 size of the end-of-text token, counted in ``source_bytes`` per document.
    """

    def __init__(self, directory: Path, name: str, *, dtype: str, shard_tokens: int, eot_id: int | None,
                 fingerprint: str, meta: dict[str, Any], num_sources: int,
                 count_ids: Callable[[np.ndarray], None] | None = None, eot_bytes: int = 0):
        self.dir, self.name, self.dtype = Path(directory), name, np.dtype(dtype)
        self.shard_tokens, self.eot_id, self.fingerprint = shard_tokens, eot_id, fingerprint
        self.meta, self.count_ids = meta, count_ids
        self.end = Cursor(num_sources, 0, 0)
        self._eot_bytes = eot_bytes if eot_id is not None else 0
        self._eot = np.array([eot_id or 0], dtype=self.dtype.newbyteorder("<"))
        self.shards: list[ShardRecord] = []
        self.cursor = Cursor(0, 0, 0)  # where this dataset's unwritten part starts
        self.complete: Path | None = None  # the finished output, when resume found it intact
        self.written = 0  # shards written by this run (tests check that resumes reuse shards)
        self._shard: _OpenShard | None = None
        self._doc: tuple[int, int] | None = None  # the document being written
        self._last_doc: tuple[int, int] | None = None
        self._doc_done = self._doc_bytes = self._drop = 0
        self._resume_at: tuple[int, int] | None = None

    # --- resume ---------------------------------------------------------------------------------

    @property
    def num_tokens(self) -> int:
        """Ids written so far (reused shards included)."""
        return sum(s.num_tokens for s in self.shards) + (self._shard.n if self._shard else 0)

    @property
    def source_bytes(self) -> int:
        """Text bytes of the documents finished so far (reused shards included)."""
        return sum(s.source_bytes for s in self.shards) + (self._shard.source_bytes if self._shard else 0)

    def resume(self, need_stats: bool, hashed: Callable[[int], None] | None = None) -> Cursor:
        """Find what an earlier run with this fingerprint left: a finished output, or shards.

        Keeps the longest prefix of shards that verify, removes every other shard file of this
        dataset, and returns the cursor to continue from (``self.end`` when it is all there).
        ``hashed(n)`` is told of the bytes hashed while verifying (for progress).
        """
        self.complete = finished_output(self.dir, self.name, self.fingerprint, need_stats, hashed)
        if self.complete is not None:
            self.cursor = self.end
            return self.end
        found = shard_files(self.dir, self.name)
        while (shard := verify_shard(self.dir, self.name, len(self.shards), found, self.fingerprint, self.dtype, hashed)) is not None:
            self.shards.append(shard)
        for k, paths in found.items():
            if k >= len(self.shards):
                for p in paths:
                    p.unlink(missing_ok=True)
        if not self.shards:
            final = self.dir / f"{self.name}.json"
            # A manifest whose shards were just removed would only mislead a reader.
            if final.is_file() and is_manifest_file(final):
                final.unlink()
        if self.shards and self.count_ids is not None:
            for s in self.shards:
                self._count_file(self.dir / s.file)
        self.cursor = self.shards[-1].cursor if self.shards else Cursor(0, 0, 0)
        # The document an interruption split, whose first ids a kept shard already holds.
        self._resume_at = (self.cursor.source, self.cursor.doc) if self.cursor.tokens_done else None
        return self.cursor

    def _count_file(self, bin_path: Path) -> None:
        ids = np.memmap(bin_path, dtype=self.dtype.newbyteorder("<"), mode="r")
        for i in range(0, ids.size, 1 << 24):
            self.count_ids(np.asarray(ids[i:i + (1 << 24)]))
        del ids

    def wants(self, source: int, doc: int) -> bool:
        """Whether document ``doc`` of ``source`` still has ids to write (not in reused shards)."""
        return (source, doc) >= (self.cursor.source, self.cursor.doc) and self.complete is None

    # --- writing --------------------------------------------------------------------------------

    def write(self, ids: np.ndarray, source: int, doc: int, first: bool, last: bool, nbytes: int) -> None:
        """Append a piece of a document (``first``/``last``: its first/last piece).

        Args:
            ids: The piece's ids (any unsigned dtype; stored as this dataset's dtype).
            source, doc: The document's position in the corpus.
            first, last: Whether this is the document's first / last piece.
            nbytes: The UTF-8 bytes of the piece's text (credited when the document ends, with
                those of the end-of-text token: ``source_bytes`` is the size of the text the
                ids decode to, the same whatever format the corpus came in).
        """
        shard = self._shard
        if first and last and shard is not None and shard.n + ids.size < self.shard_tokens and (source, doc) != self._resume_at:
            # The common case, kept short (one call per JSON line): a whole document that fits.
            if ids.dtype != self._eot.dtype:
                ids = ids.astype(self._eot.dtype)
            shard.starts.append(shard.n)
            shard.add(ids, self.count_ids)
            if self.eot_id is not None:
                shard.add(self._eot, self.count_ids)
            credit = shard.credits.get(source)
            if credit is None:
                credit = shard.credits[source] = [0, 0]
            credit[0] += nbytes + self._eot_bytes
            credit[1] += 1
            shard.source_bytes += nbytes + self._eot_bytes
            self._last_doc = (source, doc)
            return
        if first:
            self._doc, self._doc_done, self._doc_bytes = (source, doc), 0, 0
            resumed_mid_doc = (source, doc) == (self.cursor.source, self.cursor.doc)
            # The document split by the interruption: its first ids are already in a kept shard.
            self._drop = self.cursor.tokens_done if resumed_mid_doc else 0
        self._doc_bytes += nbytes + (self._eot_bytes if last else 0)
        if ids.dtype != self._eot.dtype:
            ids = ids.astype(self._eot.dtype)
        # The EOT is its own piece (a shared one-id array): appending it would copy the document.
        for part in (ids, self._eot) if last and self.eot_id is not None else (ids,):
            self._append(part)
        if last:
            if self._shard is None:
                self._next_shard()
            credit = self._shard.credits.setdefault(source, [0, 0])
            credit[0] += self._doc_bytes
            credit[1] += 1
            self._shard.source_bytes += self._doc_bytes
            self._doc, self._last_doc = None, (source, doc)

    def write_docs(self, ids: np.ndarray, lengths: np.ndarray, nbytes: np.ndarray, source: int, docs: np.ndarray) -> None:
        """Append whole documents of one source at once, as ``write`` would one by one.

        Args:
            ids: The documents' ids one after another, each followed by the end-of-text id
                when this dataset has one (a worker's part file, memory-mapped).
            lengths: Ids of each document, its end-of-text id included (int64).
            nbytes: UTF-8 bytes of each document's text (int64; the end-of-text's are added).
            source: The documents' input file.
            docs: Each document's index in it, rising (int64).
        """
        if not docs.size or self.complete is not None:
            return
        cur = self.cursor
        resumed = self._resume_at is not None and self._resume_at[0] == source and self._resume_at[1] in docs
        if (source, int(docs[0])) < (cur.source, cur.doc) or resumed or self._doc is not None:
            # A resume's first documents: some are in kept shards, one may be half there.
            eot, starts = int(self.eot_id is not None), np.cumsum(lengths) - lengths
            for s, n, b, d in zip(starts.tolist(), lengths.tolist(), nbytes.tolist(), docs.tolist()):
                if self.wants(source, d):
                    self.write(ids[s:s + n - eot], source, d, True, True, b)
            return
        ends = np.cumsum(lengths)  # document k is ids[ends[k] - lengths[k]:ends[k]]
        starts = ends - lengths
        pos, total = 0, ids.size
        while pos < total:
            shard = self._shard
            if shard is None or shard.n == self.shard_tokens:
                j = int(np.searchsorted(ends, pos, "right"))  # the document the next id belongs to
                self._doc, self._doc_done = (source, int(docs[j])), pos - int(starts[j])
                self._next_shard()  # the full shard's cursor is that document, as write() leaves it
                shard = self._shard
            take = min(self.shard_tokens - shard.n, total - pos)
            a, b = np.searchsorted(starts, [pos, pos + take])  # documents starting in this stretch
            shard.starts.extend((starts[a:b] - pos + shard.n).tolist())
            c, d = np.searchsorted(ends, [pos, pos + take], "right").tolist()  # documents ending in it: credited here
            if d > c:
                done = int(nbytes[c:d].sum()) + (d - c) * self._eot_bytes
                credit = shard.credits.setdefault(source, [0, 0])
                credit[0] += done
                credit[1] += d - c
                shard.source_bytes += done
            shard.add(ids[pos:pos + take], self.count_ids)
            pos += take
        self._doc, self._doc_done, self._last_doc = None, 0, (source, int(docs[-1]))

    def _append(self, ids: np.ndarray) -> None:
        if self._drop:
            k = min(self._drop, ids.size)
            ids, self._drop, self._doc_done = ids[k:], self._drop - k, self._doc_done + k
        while ids.size:
            shard = self._shard
            if shard is None or shard.n == self.shard_tokens:
                self._next_shard()
                shard = self._shard
            if self._doc_done == 0:
                shard.starts.append(shard.n)
            part = ids[:self.shard_tokens - shard.n] if shard.n + ids.size > self.shard_tokens else ids
            shard.add(part, self.count_ids)
            self._doc_done += part.size
            ids = ids[part.size:]

    def _next_shard(self) -> None:
        if self._shard is not None:
            self._close_shard(final=False)
        k = len(self.shards)
        self._shard = _OpenShard(k, PartialFile(self.dir / f"{shard_stem(self.name, k)}.bin"))

    def _close_shard(self, final: bool) -> None:
        s = self._shard
        s.flush(self.count_ids)
        s.partial.commit()  # before letting go of it: on a write error, discard() removes the temp
        self._shard = None
        if final:
            cursor = self.end
        elif self._doc is not None:
            cursor = Cursor(*self._doc, self._doc_done)
        else:
            cursor = Cursor(self._last_doc[0], self._last_doc[1] + 1, 0)
        stem = shard_stem(self.name, s.k)
        bin_path, idx_path = self.dir / f"{stem}.bin", self.dir / f"{stem}.idx"
        try:
            atomic_write_bytes(idx_path, np.asarray(s.starts, dtype="<u8").tobytes())
        except OSError as e:
            raise write_error(idx_path, e) from None
        sha = s.sha.hexdigest()
        credits = sorted(s.credits.items())
        meta = TokenFileMeta(
            dtype=self.dtype.name, num_tokens=s.n, source_bytes=s.source_bytes, num_documents=len(s.starts),
            eot_id=self.eot_id, index=idx_path.name, sha256=sha, **self.meta,
            encoding={"fingerprint": self.fingerprint, "shard": s.k, "cursor": [cursor.source, cursor.doc, cursor.tokens_done],
                      "sources": [[i, b, d] for i, (b, d) in credits]},
        )
        write_meta_checked(bin_path, meta)  # last: a shard without its .json is never reused
        self.shards.append(ShardRecord(bin_path.name, s.n, len(s.starts), sha, s.source_bytes, cursor, dict(credits)))
        self.written += 1

    def discard(self) -> None:
        """Drop the shard being written (on an error); finished shards stay for a resume."""
        if self._shard is not None:
            self._shard.partial.discard()
            self._shard = None

    # --- finishing ------------------------------------------------------------------------------

    def finish(self, sources: list[tuple[str, int]], extra: dict[str, Any],
               stats: Callable[[int, int], dict] | None = None) -> Path:
        """Close the last shard and publish the dataset; returns ``NAME.bin`` or the manifest.

        Args:
            sources: ``(path, bytes on disk)`` of every input file, in corpus order.
            extra: ``split`` information recorded with the dataset (or None-valued).
            stats: Makes the ``--create-stats`` summary from (tokens, source bytes), once every
                id is counted; None for none.
        """
        if self.complete is not None:
            return self.complete
        if self._shard is not None:
            self._close_shard(final=True)
        stats = stats(self.num_tokens, self.source_bytes) if stats is not None else None
        credits: dict[int, list[int]] = {}
        for s in self.shards:
            for i, (b, d) in s.credits.items():
                c = credits.setdefault(i, [0, 0])
                c[0], c[1] = c[0] + b, c[1] + d
        entries = [SourceEntry(path=p, bytes=size, text_bytes=credits.get(i, [0, 0])[0], documents=credits.get(i, [0, 0])[1])
                   for i, (p, size) in enumerate(sources)]
        encoding = {"fingerprint": self.fingerprint, "complete": True}
        final_json = self.dir / f"{self.name}.json"
        if len(self.shards) == 1:
            out = self._publish_single(entries, encoding, extra, stats)
        else:
            m = Manifest(
                name=self.name, dtype=self.dtype.name, vocab_size=self.meta["vocab_size"], tokenizer_hash=self.meta["tokenizer_hash"],
                tokenizer_dir=self.meta["tokenizer_dir"], eot_id=self.eot_id, num_tokens=self.num_tokens,
                num_documents=sum(s.num_documents for s in self.shards), source_bytes=sum(s.source_bytes for s in self.shards),
                shards=[ShardEntry(s.file, s.num_tokens, s.num_documents, s.num_tokens * self.dtype.itemsize, s.sha256) for s in self.shards],
                sources=entries, split=extra.get("split"), encoding=encoding, stats=stats,
            )
            try:
                write_manifest(final_json, m)
            except OSError as e:
                raise write_error(final_json, e) from None
            for suffix in (".bin", ".idx"):  # a one-shard output of an earlier run must not linger beside it
                (self.dir / f"{self.name}{suffix}").unlink(missing_ok=True)
            out = final_json
        fsync_dir(self.dir)
        return out

    def _publish_single(self, entries: list[SourceEntry], encoding: dict, extra: dict, stats: dict | None) -> Path:
        """Rename the one shard to ``NAME.bin``/``.idx`` and write ``NAME.json`` (today's token file)."""
        s = self.shards[0]
        stem = shard_stem(self.name, 0)
        bin_path = self.dir / f"{self.name}.bin"
        meta_path(bin_path).unlink(missing_ok=True)  # never an old .json over the new .bin, even for a moment
        os.replace(self.dir / f"{stem}.idx", self.dir / f"{self.name}.idx")
        os.replace(self.dir / f"{stem}.bin", bin_path)
        # Token metadata stays small (readers cap it at 16 MB): a long source list is summarised.
        listed = [vars(e) for e in entries] if len(entries) <= MAX_LISTED_SOURCES else {"count": len(entries)}
        encoding = {**encoding, "sources": listed, **{k: v for k, v in extra.items() if v is not None}}
        meta = TokenFileMeta(
            dtype=self.dtype.name, num_tokens=s.num_tokens, source=entries[0].path if len(entries) == 1 else None,
            source_bytes=s.source_bytes, stats=stats, num_documents=s.num_documents, eot_id=self.eot_id,
            index=f"{self.name}.idx", sha256=s.sha256, encoding=encoding, **self.meta,
        )
        write_meta_checked(bin_path, meta)
        (self.dir / f"{stem}.json").unlink(missing_ok=True)
        for paths in shard_files(self.dir, self.name).values():
            for p in paths:
                p.unlink(missing_ok=True)
        return bin_path
