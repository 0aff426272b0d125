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

from lmkit.data.tokens import MAX_VOCAB, TokenFileMeta, dtype_for_vocab, open_tokens
from lmkit.data.writing import PartialFile, locked_outputs, stop_on_signals, write_meta_checked
from lmkit.errors import DataError, TokenizerError
from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.pretokenize import ProgressFn, decode_utf8, list_text_files, safe_cut

BLOCK_BYTES = 1 << 20  # text per encode task: big enough to amortise IPC, small enough to stream
MAX_UNCUT = 16 << 20  # the most text held while looking for a safe cut (see text_blocks)
PARALLEL_MIN_BYTES = 4 << 20  # below this, starting worker processes costs more than it saves
TOP_TOKENS = 10
# Ids are separated by ASCII whitespace only: str.split() would also split on U+00A0, U+001C
# and the like, which a file of ids holds only by mistake (and which the error should name).
_IDS_TEXT = re.compile(r"[0-9 \t\n\r\f\v]*")
_ID_TOKEN = re.compile(r"[^ \t\n\r\f\v]+")
_MAX_ID_DIGITS = len(str(MAX_VOCAB - 1))


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


def text_blocks(path: Path, specials: list[bytes], errors: str) -> Iterator[tuple[str, int]]:
    """Read a text file in blocks that can be encoded independently.

    Args:
        path: The file.
        specials: Special tokens as UTF-8 (a cut never splits one).
        errors: ``"strict"`` (invalid UTF-8 is an error giving the byte offset) or ``"replace"``.

    Yields:
        ``(text, number of bytes it came from)``.

    A run of ``MAX_UNCUT`` bytes with no safe cut (no whitespace: a base64 blob, a file of one
    "word") is cut at a character boundary instead of being held whole: memory stays bounded,
    and only the tokens inside such a run can differ from encoding the file at once.
    """
    pending, offset = b"", 0
    with open(path, "rb") as f:
        while data := f.read(BLOCK_BYTES):
            buf = pending + data
            cut = safe_cut(buf, specials)
            if cut == 0 and len(buf) >= MAX_UNCUT:
                cut = _forced_cut(buf, specials)
            if cut == 0:
                pending = buf  # no safe point yet (a long run without spaces): read on
                continue
            yield decode_utf8(buf[:cut], errors, path, offset), cut
            offset, pending = offset + cut, buf[cut:]
    if pending:
        yield decode_utf8(pending, errors, path, offset), len(pending)


def _forced_cut(buf: bytes, specials: list[bytes]) -> int:
    """A cut near the end of ``buf`` on a UTF-8 character boundary, outside every special token."""
    cut = len(buf) - 1
    while cut > 0:
        if buf[cut] & 0xC0 == 0x80:  # a continuation byte: inside a character
            cut -= 1
            continue
        inside = [buf.find(sp, max(0, cut - len(sp) + 1), cut + len(sp) - 1) for sp in specials]
        starts = [i for i in inside if 0 <= i < cut]
        if not starts:
            return cut
        cut = min(starts)
    return 0


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


def _id_index(tokenizer: Tokenizer) -> np.ndarray | None:
    """The tokenizer's ids, sorted, when they are sparse (the largest far above their count).

    Counting per id with an array as long as the largest id would let one id of 10**9 cost 8 GB;
    counting per position in this index costs what the vocabulary really holds.
    """
    ids = np.fromiter(sorted(tokenizer.vocab), dtype=np.int64, count=len(tokenizer.vocab))
    return None if tokenizer.vocab_size <= len(ids) else ids


def _stats(counts: np.ndarray, index: np.ndarray | None, num_tokens: int, source_bytes: int, tokenizer: Tokenizer | None) -> dict:
    top = np.argsort(-counts, kind="stable")[:TOP_TOKENS]
    ids = top if index is None else index[top]
    return {
        "num_tokens": num_tokens,
        "distinct_tokens": int(np.count_nonzero(counts)),
        "bytes_per_token": round(source_bytes / num_tokens, 4) if num_tokens else None,
        "top_tokens": [
            {"id": int(i), "count": int(counts[k]),
             **({"token": tokenizer.decode([int(i)])} if tokenizer is not None else {})}
            for k, i in zip(top, ids) if counts[k] > 0
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
    if tokenizer.vocab_size > MAX_VOCAB:
        raise DataError(f"tokenizer has ids up to {tokenizer.vocab_size - 1}, but token files hold ids below 2**32 only")
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
    index = _id_index(tokenizer) if create_stats else None
    done = 0
    with locked_outputs(outputs), stop_on_signals():
        for src, size, out in zip(inputs, sizes, outputs):
            counts = np.zeros(tokenizer.vocab_size if index is None else len(index), dtype=np.int64) if create_stats else None
            num_tokens = 0
            partial = PartialFile(out)
            try:
                for ids, nbytes in _encoded_blocks(tokenizer, text_blocks(src, specials, errors), dtype, workers):
                    partial.write(ids.astype(ids.dtype.newbyteorder("<"), copy=False).tobytes())
                    num_tokens += ids.size
                    if counts is not None:
                        pos = ids if index is None else np.searchsorted(index, ids)
                        counts += np.bincount(pos, minlength=counts.size)
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
                stats=_stats(counts, index, num_tokens, size, tokenizer) if counts is not None else None,
            )
            write_meta_checked(out, meta)
    return outputs


def parse_ids(pieces: Iterable[str], source: str, vocab_size: int | None = None) -> Iterator[list[int]]:
    """Parse token ids written as text, separated by ASCII whitespace (spaces, tabs, newlines).

    Args:
        pieces: The text in pieces of any size: the lines of a file or stdin, or blocks read
            from it (an id may straddle two pieces; it is carried over).
        source: Its name, for error messages (``source:line``).
        vocab_size: If given, every id must be below it. Ids are always below 2**32.

    Yields:
        The ids completed by each piece (possibly none), in order.

    Raises:
        DataError: a token that is not a non-negative integer (naming a stray separator such as
            U+00A0), an id of 2**32 or more, or one outside the vocabulary; with ``source:line``.
    """
    limit = MAX_VOCAB if vocab_size is None else min(vocab_size, MAX_VOCAB)
    line, carry = 1, ""
    for piece in pieces:
        text = carry + piece
        # What follows the last separator may continue in the next piece.
        cut = max(text.rfind(c) for c in " \t\n\r\f\v") + 1
        body, carry = text[:cut], text[cut:]
        if len(carry) > _MAX_ID_DIGITS:  # no id is this long: fail now rather than buffer on
            _parse_body(carry, source, line + body.count("\n"), limit, vocab_size)
        yield _parse_body(body, source, line, limit, vocab_size)
        line += body.count("\n")
    if carry:
        yield _parse_body(carry, source, line, limit, vocab_size)


def _parse_body(text: str, source: str, line: int, limit: int, vocab_size: int | None) -> list[int]:
    """The ids in ``text`` (which starts at ``line`` of ``source``), or the first problem as a DataError."""
    if _IDS_TEXT.fullmatch(text):
        tokens = text.split()  # only ASCII whitespace is present, so this is the separator split
        if all(len(t) <= _MAX_ID_DIGITS for t in tokens):
            ids = [int(t) for t in tokens]
            if not ids or max(ids) < limit:
                return ids
    # Something is wrong: find the first token at fault and its line (only on this slow path).
    for m in _ID_TOKEN.finditer(text):
        t = m.group()
        where = f"{source}:{line + text.count(chr(10), 0, m.start())}"
        if not (t.isascii() and t.isdigit()):
            odd = next((c for c in t if c.isspace() or not c.isprintable()), None)
            if odd is not None and any(c.isdigit() for c in t):
                raise DataError(f"{where}: {t[:40]!r} is not a token id: U+{ord(odd):04X} is not a separator "
                                "(separate ids with spaces, tabs or newlines)")
            raise DataError(f"{where}: {t[:40]!r} is not a token id (expected a non-negative integer)")
        if len(t) > _MAX_ID_DIGITS or int(t) >= MAX_VOCAB:
            raise DataError(f"{where}: token id {t[:40]} is too large (token files hold ids below 2**32 = {MAX_VOCAB})")
        if vocab_size is not None and int(t) >= vocab_size:
            raise DataError(f"{where}: token id {int(t)} is outside the vocabulary (size {vocab_size})")
    raise AssertionError("unreachable: _parse_body found no fault")  # pragma: no cover


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
        DataError: a non-integer, too large or out-of-vocabulary id (with ``file:line``), an
            empty file, a full disk; LockHeldError: another process writes one of the outputs.
    """
    if vocab_size is not None and not 1 <= vocab_size <= MAX_VOCAB:
        raise DataError(f"vocab_size (--vocab-size) {vocab_size} is outside 1..2**32 (token files hold ids below 2**32)")
    inputs = list_text_files(Path(input_path))
    output_dir = _prepare_output(output_dir)
    outputs = _output_paths(inputs, output_dir)
    total = sum(p.stat().st_size for p in inputs)
    done = 0
    with locked_outputs(outputs), stop_on_signals():
        for src, out in zip(inputs, outputs):
            import_file(src, out, vocab_size)
            done += src.stat().st_size
            if progress:
                progress("import", done, total)
    return outputs


def import_file(src: Path, out: Path, vocab_size: int | None = None) -> None:
    """Convert one text file of ids into ``out`` (``.bin``) + its ``.json``; the caller holds out's lock.

    The text is read in blocks, never whole lines, so memory stays flat however the ids are laid out.
    """
    # Ids go to disk as uint32 while the largest is unknown, then shrink to uint16 if it fits.
    wide = PartialFile(out)
    narrow = None
    try:
        num_tokens, largest = 0, -1
        with open(src, encoding="utf-8", errors="replace", newline="") as f:
            for ids in parse_ids(iter(lambda: f.read(BLOCK_BYTES), ""), str(src), vocab_size):
                if ids:
                    wide.write(np.asarray(ids, dtype="<u4").tobytes())
                    num_tokens += len(ids)
                    largest = max(largest, max(ids))
        if num_tokens == 0:
            raise DataError(f"{src}: holds no token ids")
        dtype = dtype_for_vocab(vocab_size if vocab_size is not None else largest + 1).name
        if dtype == "uint16":
            wide.commit_to_self()
            narrow = PartialFile(out)
            ids32 = np.memmap(wide.path, dtype="<u4", mode="r")
            for start in range(0, num_tokens, BLOCK_BYTES):
                narrow.write(ids32[start:start + BLOCK_BYTES].astype("<u2").tobytes())
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
    write_meta_checked(out, TokenFileMeta(dtype=dtype, num_tokens=num_tokens, vocab_size=vocab_size,
                                   source=str(src.resolve()), source_bytes=None))


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
