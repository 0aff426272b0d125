"""Corpus encoding: text files -> ``NAME.bin`` + ``NAME.json`` token files (see ``tokens.py``).

Files are read in blocks and cut at points where no pretoken or special token spans the cut
(``safe_cut``), so each block encodes independently and the result equals encoding the whole
file at once. Blocks go to worker processes for big inputs, with at most a few in flight, and
the ids are appended to a temporary file that is renamed when complete: memory stays flat in
the corpus size and an interrupted run leaves no half-written ``.bin`` behind.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from lmkit.data.tokens import TokenFileMeta, dtype_for_vocab, open_tokens, write_meta
from lmkit.errors import DataError, TokenizerError
from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.pretokenize import ProgressFn, decode_utf8, list_text_files, safe_cut

BLOCK_BYTES = 1 << 20  # text per encode task: big enough to amortise IPC, small enough to stream
PARALLEL_MIN_BYTES = 4 << 20  # below this, starting worker processes costs more than it saves
TOP_TOKENS = 10
_IDS_LINE = re.compile(r"[0-9\s]*", re.ASCII)


def _prepare_output(output_dir: Path) -> Path:
    """Create ``output_dir`` and check it is writable, so a bad path fails before any work."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=output_dir).close()
    except OSError as e:
        raise DataError(f"{output_dir}: output directory cannot be written ({e.strerror or e})") from None
    return output_dir


def _output_paths(inputs: list[Path], output_dir: Path) -> list[Path]:
    # NAME.txt -> output_dir/NAME.bin; two inputs with one stem would overwrite each other.
    outs = [output_dir / (p.stem + ".bin") for p in inputs]
    seen: dict[Path, Path] = {}
    for src, out in zip(inputs, outs):
        if out in seen:
            raise DataError(f"{src} and {seen[out]} would both be written to {out}; rename one")
        seen[out] = src
    return outs


class _PartialFile:
    """A temporary file beside ``target`` that becomes ``target`` only on ``commit``."""

    def __init__(self, target: Path):
        self.target = target
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.path, self.target)

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def text_blocks(path: Path, specials: list[bytes], errors: str) -> Iterator[tuple[str, int]]:
    """Read a text file in blocks that can be encoded independently.

    Args:
        path: The file.
        specials: Special tokens as UTF-8 (a cut never splits one).
        errors: ``"strict"`` (invalid UTF-8 is an error giving the byte offset) or ``"replace"``.

    Yields:
        ``(text, number of bytes it came from)``.
    """
    pending, offset = b"", 0
    with open(path, "rb") as f:
        while data := f.read(BLOCK_BYTES):
            buf = pending + data
            cut = safe_cut(buf, specials)
            if cut == 0:
                pending = buf  # no safe point yet (a long run without spaces): read on
                continue
            yield decode_utf8(buf[:cut], errors, path, offset), cut
            offset, pending = offset + cut, buf[cut:]
    if pending:
        yield decode_utf8(pending, errors, path, offset), len(pending)


# Each worker process encodes with its own copy of the tokenizer, sent once at start-up
# rather than with every block (a GPT-2 vocabulary pickles to megabytes).
_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_block(text: str, dtype: str) -> np.ndarray:
    return np.asarray(_worker_tokenizer.encode(text), dtype=dtype)


def _encoded_blocks(
    tokenizer: Tokenizer, blocks: Iterable[tuple[str, int]], dtype: str, workers: int
) -> Iterator[tuple[np.ndarray, int]]:
    """Encode blocks in order, in worker processes when ``workers > 1``, a few in flight at most."""
    if workers <= 1:
        for text, nbytes in blocks:
            yield np.asarray(tokenizer.encode(text), dtype=dtype), nbytes
        return
    # spawn, not fork: the caller may hold threads (a progress bar) that fork would copy mid-lock.
    with multiprocessing.get_context("spawn").Pool(workers, _init_worker, (tokenizer,)) as pool:
        in_flight: collections.deque = collections.deque()
        for text, nbytes in blocks:
            in_flight.append((pool.apply_async(_encode_block, (text, dtype)), nbytes))
            if len(in_flight) >= 2 * workers:
                result, n = in_flight.popleft()
                yield result.get(), n
        while in_flight:
            result, n = in_flight.popleft()
            yield result.get(), n


def _stats(counts: np.ndarray, num_tokens: int, source_bytes: int, tokenizer: Tokenizer | None) -> dict:
    top = np.argsort(-counts, kind="stable")[:TOP_TOKENS]
    return {
        "num_tokens": num_tokens,
        "distinct_tokens": int(np.count_nonzero(counts)),
        "bytes_per_token": round(source_bytes / num_tokens, 4) if num_tokens else None,
        "top_tokens": [
            {"id": int(i), "count": int(counts[i]),
             **({"token": tokenizer.decode([int(i)])} if tokenizer is not None else {})}
            for i in top if counts[i] > 0
        ],
    }


def encode_corpus(
    tokenizer: Tokenizer,
    input_path: Path,
    output_dir: Path,
    *,
    tokenizer_dir: Path | None = None,
    create_stats: bool = False,
    errors: str = "strict",
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> list[Path]:
    """Encode a text file, or each text file in a directory, into ``.bin`` + ``.json`` pairs.

    Args:
        tokenizer: The tokenizer; its special tokens are recognised in the text.
        input_path: A text file or a directory of ``*.txt``/``*.text``/``*.md`` files.
        output_dir: Where ``NAME.bin``/``NAME.json`` go (created if missing).
        tokenizer_dir: Recorded (absolute) in the metadata so later commands can decode.
        create_stats: Also record token counts, bytes per token and the most frequent tokens.
        errors: Invalid UTF-8: ``"strict"`` (error with byte offset) or ``"replace"`` (U+FFFD).
        workers: Encoding processes; default: all cores for inputs over 4 MB, else 1.
        progress: Called as ``progress("encode", bytes_done, bytes_total)``.

    Returns:
        The ``.bin`` paths written, in input order.

    Raises:
        DataError: missing/empty input, invalid UTF-8, an unwritable output directory.
    """
    if errors not in ("strict", "replace"):
        raise DataError(f"errors must be 'strict' or 'replace', not {errors!r}")
    inputs = list_text_files(Path(input_path))
    sizes = [p.stat().st_size for p in inputs]
    for p, size in zip(inputs, sizes):
        if size == 0:
            raise DataError(f"{p}: input is empty; nothing to encode")
    output_dir = _prepare_output(output_dir)
    outputs = _output_paths(inputs, output_dir)
    total = sum(sizes)
    if workers is None:
        workers = (os.cpu_count() or 1) if total >= PARALLEL_MIN_BYTES else 1
    dtype = dtype_for_vocab(tokenizer.vocab_size).name
    specials = [s.encode("utf-8") for s in tokenizer.special_tokens]
    done = 0
    for src, size, out in zip(inputs, sizes, outputs):
        partial = _PartialFile(out)
        counts = np.zeros(tokenizer.vocab_size, dtype=np.int64) if create_stats else None
        num_tokens = 0
        try:
            for ids, nbytes in _encoded_blocks(tokenizer, text_blocks(src, specials, errors), dtype, workers):
                partial.file.write(ids.astype(ids.dtype.newbyteorder("<"), copy=False).tobytes())
                num_tokens += ids.size
                if counts is not None:
                    counts += np.bincount(ids, minlength=tokenizer.vocab_size)
                done += nbytes
                if progress:
                    progress("encode", done, total)
            partial.commit()
        except BaseException:
            partial.discard()
            raise
        meta = TokenFileMeta(
            dtype=dtype, num_tokens=num_tokens, vocab_size=tokenizer.vocab_size,
            tokenizer_hash=tokenizer.hash,
            tokenizer_dir=str(Path(tokenizer_dir).resolve()) if tokenizer_dir else None,
            source=str(src.resolve()), source_bytes=size,
            stats=_stats(counts, num_tokens, size, tokenizer) if counts is not None else None,
        )
        write_meta(out, meta)
    return outputs


def parse_ids(lines: Iterable[str], source: str, vocab_size: int | None = None) -> Iterator[list[int]]:
    """Parse token ids written as text: whitespace-separated, any number per line.

    Args:
        lines: The text, line by line (an open file, or stdin).
        source: Its name, for error messages (``source:line``).
        vocab_size: If given, every id must be below it.

    Yields:
        The ids of each line.

    Raises:
        DataError: a token that is not a non-negative integer, or an id outside the vocabulary.
    """
    for lineno, line in enumerate(lines, 1):
        if not _IDS_LINE.fullmatch(line):
            bad = next(t for t in line.split() if not (t.isascii() and t.isdigit()))
            raise DataError(f"{source}:{lineno}: {bad[:40]!r} is not a token id (expected a non-negative integer)")
        ids = [int(t) for t in line.split()]
        if vocab_size is not None and ids and max(ids) >= vocab_size:
            raise DataError(f"{source}:{lineno}: token id {max(ids)} is outside the vocabulary (size {vocab_size})")
        yield ids


def import_ids(
    input_path: Path, output_dir: Path, *, vocab_size: int | None = None, progress: ProgressFn | None = None
) -> list[Path]:
    """Convert text files of token ids (the training guide's format) into ``.bin`` + ``.json``.

    Args:
        input_path: A file of whitespace-separated ids, or a directory of such ``*.txt`` files.
        output_dir: Where ``NAME.bin``/``NAME.json`` go (created if missing).
        vocab_size: The vocabulary the ids come from: ids must be below it, and it picks the
            dtype. Default: one more than the largest id seen.
        progress: Called as ``progress("import", bytes_done, bytes_total)``.

    Returns:
        The ``.bin`` paths written.

    Raises:
        DataError: a non-integer or out-of-vocabulary id (with ``file:line``), an empty file.
    """
    inputs = list_text_files(Path(input_path))
    output_dir = _prepare_output(output_dir)
    outputs = _output_paths(inputs, output_dir)
    total = sum(p.stat().st_size for p in inputs)
    done = 0
    for src, out in zip(inputs, outputs):
        # Ids go to disk as uint32 while the largest is unknown, then shrink to uint16 if it fits.
        wide = _PartialFile(out)
        narrow = None
        try:
            num_tokens, largest = 0, -1
            with open(src, encoding="utf-8", errors="replace") as f:
                for ids in parse_ids(f, str(src), vocab_size):
                    if ids:
                        wide.file.write(np.asarray(ids, dtype="<u4").tobytes())
                        num_tokens += len(ids)
                        largest = max(largest, max(ids))
            if num_tokens == 0:
                raise DataError(f"{src}: holds no token ids")
            dtype = dtype_for_vocab(vocab_size if vocab_size is not None else largest + 1).name
            if dtype == "uint16":
                wide.file.flush()
                narrow = _PartialFile(out)
                ids32 = np.memmap(wide.path, dtype="<u4", mode="r")
                for start in range(0, num_tokens, BLOCK_BYTES):
                    narrow.file.write(ids32[start:start + BLOCK_BYTES].astype("<u2").tobytes())
                del ids32
                narrow.commit()
                wide.discard()
            else:
                wide.commit()
        except BaseException:
            wide.discard()
            if narrow is not None:
                narrow.discard()
            raise
        write_meta(out, TokenFileMeta(dtype=dtype, num_tokens=num_tokens, vocab_size=vocab_size,
                                      source=str(src.resolve()), source_bytes=None))
        done += src.stat().st_size
        if progress:
            progress("import", done, total)
    return outputs


def decode_token_file(tokenizer: Tokenizer, bin_path: Path, chunk: int = 1 << 20) -> Iterator[str]:
    """Decode a ``.bin`` token file to text pieces, streaming.

    Raises:
        TokenizerError: the file's metadata names a different tokenizer (by content hash).
        DataError: a missing or damaged token file.
    """
    ids, meta = open_tokens(Path(bin_path))
    if meta.tokenizer_hash and meta.tokenizer_hash != tokenizer.hash:
        raise TokenizerError(
            f"{bin_path}: encoded with tokenizer {meta.tokenizer_hash}"
            f"{f' ({meta.tokenizer_dir})' if meta.tokenizer_dir else ''}, not this one ({tokenizer.hash})"
        )
    yield from tokenizer.decode_chunks(ids[i:i + chunk].tolist() for i in range(0, len(ids), chunk))
