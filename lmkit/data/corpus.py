"""Token files from text: ids written as text (``import_ids``), decoding (``decode_token_file``).

Encoding text into datasets is ``lmkit.data.encode.encode_corpus`` (re-exported here, where
callers have always imported it from); reading the inputs is ``lmkit.data.sources``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from lmkit.data.encode import encode_corpus  # noqa: F401  (its historical import path)
from lmkit.data.tokens import MAX_VOCAB, TokenFileMeta, dtype_for_vocab, open_tokens
from lmkit.data.writing import (
    PartialFile,
    locked_outputs,
    prepare_output,
    stop_on_signals,
    write_meta_checked,
)
from lmkit.errors import DataError, TokenizerError
from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.pretokenize import ProgressFn, list_text_files

BLOCK_BYTES = 1 << 20  # text read at a time: small enough to stream
# Ids are separated by ASCII whitespace only: str.split() would also split on U+00A0, U+001C
# and the like, which a file of ids holds only by mistake (and which the error should name).
_IDS_TEXT = re.compile(r"[0-9 \t\n\r\f\v]*")
_ID_TOKEN = re.compile(r"[^ \t\n\r\f\v]+")
_MAX_ID_DIGITS = len(str(MAX_VOCAB - 1))


def _output_paths(inputs: list[Path], output_dir: Path) -> list[Path]:
    # NAME.txt -> output_dir/NAME.bin; two inputs with one stem would overwrite each other.
    outs = [output_dir / (p.stem + ".bin") for p in inputs]
    seen: dict[Path, Path] = {}
    for src, out in zip(inputs, outs):
        if out in seen:
            raise DataError(f"{src} and {seen[out]} would both be written to {out}; rename one")
        seen[out] = src
    return outs


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
    output_dir = prepare_output(output_dir)
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
    """Decode a ``.bin`` token file, or a sharded dataset's manifest ``.json``, to text pieces, streaming.

    Raises:
        TokenizerError: the file's metadata names a different tokenizer (by content hash).
        DataError: a missing or damaged token file, manifest or shard.
    """
    path = Path(bin_path)
    if path.suffix == ".json":
        from lmkit.data.manifest import read_manifest

        bins = read_manifest(path).shard_paths(path)
    else:
        bins = [path]

    def id_chunks() -> Iterator[list[int]]:
        for b in bins:
            ids, meta = open_tokens(b)
            if meta.tokenizer_hash and meta.tokenizer_hash != tokenizer.hash:
                raise TokenizerError(
                    f"{b}: encoded with tokenizer {meta.tokenizer_hash}"
                    f"{f' ({meta.tokenizer_dir})' if meta.tokenizer_dir else ''}, not this one ({tokenizer.hash})"
                )
            for i in range(0, len(ids), chunk):
                yield ids[i:i + chunk].tolist()

    # One decoder across shards: a character whose bytes two shards share is decoded whole.
    yield from tokenizer.decode_chunks(id_chunks())
