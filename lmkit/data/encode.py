"""Corpus encoding: input files -> documents -> ids -> one or two sharded datasets.

The pipeline, all streaming (memory is bounded by a few blocks in flight and one shard's index)::

    resolve_inputs -> read_blocks per source -> split router -> encoder threads (in order)
                   -> DatasetWriter per dataset (shards, .idx, .json; lmkit.data.shards)

With ``parallel="processes"`` (``auto``: 4 MB of input or more on 3 threads or more) the middle
steps run in worker processes that each read their own byte range or file, and only their
per-document tables come back (``lmkit.data.parallel``); the writers and outputs are the same.

Documents: a plain-text file is one document, or the pieces between its end-of-text markers
(``--eot``, default ``<|endoftext|>`` when the tokenizer has it) or ``--doc-separator``; a JSON
line or a parquet/arrow row is one. Each document's ids are followed by the end-of-text id.

Split (``--val-fraction`` / ``--val-docs``): by whole documents, by a hash of each document's
file and position (``lmkit.data.splits``), so train and val never share a document and the split
is the same on every run.

Resume: the fingerprint (tokenizer hash, each input's path/size/mtime, every option that changes
the ids) is recorded in every shard; a rerun with the same one keeps the verified shards and
restarts reading at the earliest cursor of the datasets (``read_blocks(start_doc=...)``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from lmkit.data.batch_encode import encoded_batches
from lmkit.data.parallel import (
    WorkerPool,
    plan_size,
    processes_pay,
    remove_stale_parts,
    run_processes,
)
from lmkit.data.shard_files import Cursor, candidate_bytes, remove_shard_temps
from lmkit.data.shards import DEFAULT_SHARD_TOKENS, DatasetWriter
from lmkit.data.sources import ReadOptions, SourceFile, read_blocks, resolve_inputs
from lmkit.data.splits import SplitRouter, choose_val_docs, relative_names
from lmkit.data.stats import IdCounter
from lmkit.data.tokens import MAX_VOCAB, dtype_for_vocab
from lmkit.data.writing import locked_outputs, prepare_output, stop_on_signals
from lmkit.errors import DataError
from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.pretokenize import ProgressFn

log = logging.getLogger(__name__)

DEFAULT_EOT = "<|endoftext|>"
BATCH_BYTES = 1 << 20  # text per encode task: small JSON lines are grouped so a task is worth a thread
BATCH_BLOCKS = 4096
PARALLEL_MIN_BYTES = 4 << 20  # below this, starting worker processes costs more than it saves
PARALLEL_MODES = ("auto", "processes", "threads")
_COMPRESSED_STAGE = "encode (compressed)"


def default_name(inputs: Sequence[str | Path]) -> str:
    """``train.txt`` -> ``train``, ``web.jsonl.zst`` -> ``web``, a directory -> its name, else ``corpus``."""
    if len(inputs) == 1:
        p = Path(inputs[0])
        if p.is_dir():
            return p.resolve().name or "corpus"
        if p.is_file():
            stem = p.name
            for suffix in (".gz", ".zst", ".xz"):
                stem = stem.removesuffix(suffix)
            return Path(stem).stem or "corpus"
    return "corpus"


def _usable_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _check_name(name: str) -> str:
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or name != name.strip():
        raise DataError(f"--name {name!r} must be a plain file name (no '/', not starting with '.'); e.g. --name web")
    return name


MAX_COUNT = 1 << 48  # far above any real shard or split, far below what would overflow an index


def check_layout_options(shard_tokens: int, val_fraction: float | None, val_docs: int | None) -> None:
    """Check ``--shard-tokens``, ``--val-fraction``, ``--val-docs`` (the CLI calls it first, too).

    Raises:
        DataError: naming the flag, its allowed range and an example.
    """
    if type(shard_tokens) is not int or not 1 <= shard_tokens <= MAX_COUNT:
        raise DataError(f"--shard-tokens {shard_tokens!r} must be an integer from 1 to 2**48; e.g. --shard-tokens 100000000")
    if val_fraction is not None and val_docs is not None:
        raise DataError("give --val-fraction or --val-docs, not both")
    # Written so that NaN fails too (every comparison with it is false).
    if val_fraction is not None and not (isinstance(val_fraction, (int, float)) and 0 < val_fraction < 1):
        raise DataError(f"--val-fraction {val_fraction!r} must be between 0 and 1 (exclusive); e.g. --val-fraction 0.01")
    if val_docs is not None and (type(val_docs) is not int or not 1 <= val_docs <= MAX_COUNT):
        raise DataError(f"--val-docs {val_docs!r} must be an integer from 1 to 2**48; e.g. --val-docs 1000")


def resolve_eot(tokenizer: Tokenizer, eot: str | bool) -> tuple[str | None, int | None]:
    """The end-of-text string and id: ``True`` -> ``<|endoftext|>`` if the tokenizer has it.

    Raises:
        DataError: an ``eot`` string that is not one of the tokenizer's special tokens.
    """
    if eot is False or eot is None:
        return None, None
    if eot is True:
        return (DEFAULT_EOT, tokenizer.token_id(DEFAULT_EOT)) if DEFAULT_EOT in tokenizer.special_tokens else (None, None)
    if eot not in tokenizer.special_tokens:
        known = ", ".join(repr(s) for s in tokenizer.special_tokens) or "none"
        raise DataError(f"--eot {eot!r} is not a special token of this tokenizer (it has: {known}); "
                        "pick one of those, or pass --no-eot")
    return eot, tokenizer.token_id(eot)


def fingerprint(tokenizer_hash: str, specials: list[str], sources: list[SourceFile], opts: ReadOptions, **options) -> str:
    """A hash of everything that decides the ids and their layout: what a resume must match."""
    inputs = [[str(s.path), s.kind, s.compression, s.size, s.path.stat().st_mtime_ns] for s in sources]
    payload = {"version": 1, "tokenizer": tokenizer_hash, "specials": specials, "inputs": inputs,
               "read": [opts.text_key, opts.doc_separator, opts.eot, opts.errors, opts.skip_bad_lines], **options}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _batched(pieces: Iterator[tuple]) -> Iterator[tuple[list, list[str]]]:
    """Group ``(tag, text)`` pieces so each encode task holds about ``BATCH_BYTES`` of text."""
    tags, texts, size = [], [], 0
    for tag, text in pieces:
        tags.append(tag)
        texts.append(text)
        size += len(text)
        if size >= BATCH_BYTES or len(texts) >= BATCH_BLOCKS:
            yield tags, texts
            tags, texts, size = [], [], 0
    if texts:
        yield tags, texts


def encode_corpus(
    tokenizer: Tokenizer,
    inputs: str | Path | Sequence[str | Path],
    output_dir: Path,
    *,
    name: str | None = None,
    tokenizer_dir: Path | None = None,
    text_key: str = "text",
    eot: str | bool = True,
    doc_separator: str | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    val_fraction: float | None = None,
    val_docs: int | None = None,
    skip_bad_lines: bool = False,
    create_stats: bool = False,
    errors: str = "strict",
    threads: int | None = None,
    workers: int | None = None,
    progress: ProgressFn | None = None,
    skipped: dict[Path, Counter] | None = None,
    parallel: str = "auto",
    pool: WorkerPool | None = None,
) -> list[Path]:
    """Encode text files, JSON Lines, parquet or saved datasets into one dataset (or train + val).

    Args:
        tokenizer: The tokenizer; its special tokens are recognised in the text.
        inputs: Files, directories (every supported file, recursively) or globs, in order.
        output_dir: Where the dataset goes (created if missing).
        name: The dataset's name; default: the stem of a single input file (``train.txt`` ->
            ``train``), the name of a single input directory, else ``corpus``. With a split,
            ``NAME-train`` and ``NAME-val`` are written.
        tokenizer_dir: Recorded (absolute) in the metadata so later commands can decode.
        text_key: JSON Lines: the (dotted) key of the text; parquet/arrow: the column.
        eot: The special token ending every document: ``True`` for ``<|endoftext|>`` when the
            tokenizer has it, a special token's text, or ``False`` for none. Plain text is also
            split into documents where it occurs.
        doc_separator: Plain text: also split documents at this string (removed).
        shard_tokens: The most ids per shard; a dataset that fits in one is ``NAME.bin`` +
            ``NAME.json`` + ``NAME.idx``, else shards ``NAME-00000.bin``... and a manifest.
        val_fraction: Put about this fraction of the documents (0 < F < 1) in ``NAME-val``.
        val_docs: Put exactly this many documents in ``NAME-val`` (instead of a fraction).
        skip_bad_lines: JSON Lines: count and skip malformed lines instead of stopping.
        create_stats: Also record token counts, bytes per token and the most frequent tokens.
        errors: Invalid UTF-8: ``"strict"`` (error with byte offset) or ``"replace"`` (U+FFFD).
        threads: Encoding threads; default: all cores. ``workers`` is the old name for it.
        progress: Called as ``progress(stage, bytes_done, bytes_total)`` over the inputs' bytes
            on disk (stage ``"encode (compressed)"`` when some are compressed).
        skipped: Filled with a ``Counter`` of skipped lines by reason per source path
            (``skip_bad_lines``; see ``lmkit.data.sources.skipped_summary``).
        parallel: ``"processes"``: ``threads`` worker processes each read, parse and encode
            their own part of the input (``lmkit.data.parallel``); ``"threads"``: one thread
            reads and parses, ``threads`` threads encode; ``"auto"`` (default): processes for
            4 MB of input or more on 3 threads or more, else threads. The output is the same.
        pool: Worker processes started ahead (``start_workers``), used where processes encode,
            and closed once the outputs are locked, used or not (a caller holds it in a ``with``
            for the errors raised before that: bad options or inputs).

    Returns:
        One path per dataset written (``NAME.bin`` for one shard, else the manifest
        ``NAME.json``): ``[NAME]`` or ``[NAME-train, NAME-val]``.

    Raises:
        DataError: bad inputs or options, invalid UTF-8, malformed JSON, a truncated archive,
            nothing to encode, an unwritable output; LockHeldError: another encode writes it.
    """
    if errors not in ("strict", "replace"):
        raise DataError(f"errors must be 'strict' or 'replace', not {errors!r}")
    if parallel not in PARALLEL_MODES:
        raise DataError(f"--parallel {parallel!r} must be one of {', '.join(PARALLEL_MODES)}; e.g. --parallel auto")
    if tokenizer.vocab_size > MAX_VOCAB:
        raise DataError(f"tokenizer has ids up to {tokenizer.vocab_size - 1}, but token files hold ids below 2**32 only")
    check_layout_options(shard_tokens, val_fraction, val_docs)
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    sources = resolve_inputs(inputs)
    name = _check_name(name if name is not None else default_name(inputs))
    split = val_fraction is not None or val_docs is not None
    names = [f"{name}-train", f"{name}-val"] if split else [name]
    eot_text, eot_id = resolve_eot(tokenizer, eot)
    opts = ReadOptions(text_key=text_key, doc_separator=doc_separator, eot=eot_text, errors=errors,
                       skip_bad_lines=skip_bad_lines)
    output_dir = prepare_output(output_dir)
    dtype = dtype_for_vocab(tokenizer.vocab_size).name
    threads = threads or workers or _usable_cores()
    total = sum(s.size for s in sources)
    stage = _COMPRESSED_STAGE if any(s.compression for s in sources) else "encode"
    tok_dir = str(Path(tokenizer_dir).resolve()) if tokenizer_dir else None
    tok_hash = tokenizer.hash  # computed from the whole vocabulary: once, not per use
    specials = list(tokenizer.special_tokens)
    fp = fingerprint(tok_hash, specials, sources, opts, dtype=dtype, eot_id=eot_id, shard_tokens=shard_tokens, names=names,
                     val_fraction=val_fraction, val_docs=val_docs, tokenizer_dir=tok_dir)
    counters = [IdCounter(tokenizer) if create_stats else None for _ in names]
    writers = [DatasetWriter(output_dir, n, dtype=dtype, shard_tokens=shard_tokens, eot_id=eot_id, fingerprint=fp,
                             meta={"vocab_size": tokenizer.vocab_size, "tokenizer_hash": tok_hash, "tokenizer_dir": tok_dir},
                             num_sources=len(sources), count_ids=c.add if c else None,
                             eot_bytes=len(eot_text.encode("utf-8")) if eot_text else 0)
               for n, c in zip(names, counters)]
    with locked_outputs([output_dir / f"{n}.bin" for n in names]), stop_on_signals(), pool or contextlib.nullcontext():
        if progress:
            progress(stage, 0, total)  # at once: the first line must not wait for the encoder to build
        for n in names:
            remove_shard_temps(output_dir, n)
        remove_stale_parts(output_dir, names[0])  # worker processes' parts a killed run left
        hashed = _verify_progress(output_dir, names, progress)
        start = min(w.resume(create_stats, hashed) for w in writers)
        rel = relative_names(sources)
        extra = [{"split": {"role": role, "val_fraction": val_fraction, "val_docs": val_docs}} if split else {}
                 for role in ("train", "val")[:len(names)]]
        try:
            if start < writers[0].end:
                chosen = choose_val_docs(sources, rel, opts, specials, val_docs, progress) if val_docs else None
                router = SplitRouter(rel, val_fraction, chosen)
                if _use_processes(parallel, threads, total):
                    run_processes(tokenizer, sources, opts, specials, start, router, writers, threads, stage, progress,
                                  skipped, pool)
                else:
                    log.info("encoding on %d threads, the input read and parsed by one", threads)
                    _run(tokenizer, sources, opts, specials, start, router, writers, threads, stage, progress, skipped)
            _check_not_empty(writers, sources, val_fraction)
            src_list = [(str(s.path), s.size) for s in sources]
            return [w.finish(src_list, x, c.summary if c else None) for w, x, c in zip(writers, extra, counters)]
        except BaseException:
            for w in writers:  # the shard being written goes; finished shards stay for a rerun
                w.discard()
            raise


def _use_processes(parallel: str, threads: int, total: int) -> bool:
    return parallel == "processes" or (parallel == "auto" and processes_pay(threads, total, PARALLEL_MIN_BYTES))


def start_workers(inputs: str | Path | Sequence[str | Path], *, threads: int | None = None, workers: int | None = None,
                  parallel: str = "auto") -> WorkerPool | None:
    """Start the worker processes ``encode_corpus(inputs, threads=..., parallel=...)`` will use.

    For a caller with the tokenizer still to load: the workers start (import, their slow part)
    meanwhile. Pass it to ``encode_corpus(..., pool=pool)``, in a ``with pool:`` for earlier errors.

    Returns:
        The pool; ``None`` where threads will encode or the inputs do not resolve (that error
        stays ``encode_corpus``'s to raise, after the tokenizer's own).
    """
    try:
        sources = resolve_inputs([inputs] if isinstance(inputs, (str, Path)) else list(inputs))
    except (DataError, OSError):
        return None
    threads = threads or workers or _usable_cores()
    total = sum(s.size for s in sources)
    if parallel not in PARALLEL_MODES or not _use_processes(parallel, threads, total):
        return None
    return WorkerPool(max(1, min(threads, plan_size(sources, threads))))


def _verify_progress(directory: Path, names: list[str], progress: ProgressFn | None) -> Callable[[int], None] | None:
    """A ``hashed(n)`` callback reporting stage ``verify`` over what a resume may hash, or None."""
    total = sum(candidate_bytes(directory, n) for n in names) if progress else 0
    if not total:
        return None
    done = 0

    def hashed(n: int) -> None:
        nonlocal done
        done += n
        progress("verify", min(done, total), total)

    return hashed


def _check_not_empty(writers: list[DatasetWriter], sources: list[SourceFile], val_fraction: float | None) -> None:
    if all(w.complete is not None or w.num_tokens for w in writers):
        return
    if all(w.num_tokens == 0 and w.complete is None for w in writers):
        where = str(sources[0].path) if len(sources) == 1 else f"{len(sources)} input files"
        raise DataError(f"{where}: input is empty (no document has any text); nothing to encode")
    role = "validation" if writers[0].num_tokens or writers[0].complete else "training"
    raise DataError(f"--val-fraction {val_fraction} put no document in the {role} split; "
                    f"{'raise' if role == 'validation' else 'lower'} it, or use --val-docs N")


def _run(tokenizer: Tokenizer, sources: list[SourceFile], opts: ReadOptions, specials: list[str], start: Cursor,
         router: Callable[[int, int], int], writers: list[DatasetWriter], threads: int, stage: str,
         progress: ProgressFn | None, skipped: dict[Path, Counter] | None) -> None:
    """Read from ``start``, encode, and hand every document piece to its dataset's writer."""
    total = sum(s.size for s in sources)
    big = total >= PARALLEL_MIN_BYTES

    shown = -1

    def report(done: int) -> None:
        nonlocal shown
        # Throttled: a JSON line is a block, and a progress bar redraw costs more than one.
        if progress and (done - shown >= max(total >> 10, 1 << 16) or done == total):
            progress(stage, done, total)
            shown = done

    def pieces() -> Iterator[tuple[tuple, str]]:
        done = sum(s.size for s in sources[:start.source])
        for i in range(start.source, len(sources)):
            src, read = sources[i], 0
            counter = skipped.setdefault(src.path, Counter()) if skipped is not None else None
            for block in read_blocks(src, opts, specials, start.doc if i == start.source else 0, counter):
                read += block.nbytes
                ds = router(i, block.doc)
                if writers[ds].wants(i, block.doc):  # not already in a shard a resume kept
                    yield (ds, i, block.doc, block.first, block.last), block.text
                report(done + min(read, src.size))  # block sizes are bytes on disk (compressed ones if so)
            done += src.size
            report(done)

    dtype = "<" + writers[0].dtype.str[1:]  # little-endian, as the files hold it
    for tags, arrays in encoded_batches(tokenizer, _batched(pieces()), threads, big, dtype):
        for (ds, i, doc, first, last), (ids, text_bytes) in zip(tags, arrays):
            writers[ds].write(ids, i, doc, first, last, text_bytes)
