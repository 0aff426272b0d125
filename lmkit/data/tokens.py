"""Token files: ``NAME.bin`` (raw little-endian token ids) beside ``NAME.json`` (their metadata).

The ``.bin`` holds nothing but ids so ``np.memmap`` can map it directly; the ``.json`` says how to
read it (dtype) and where it came from (tokenizer hash, source byte count for bits-per-byte).
uint16 is used whenever the vocabulary fits in 65,536 ids, halving disk and page-cache use.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmkit.errors import DataError

FORMAT = "lmkit-tokens"
FORMAT_VERSION = 1


@dataclass
class TokenFileMeta:
    """What the ``.json`` beside a ``.bin`` records."""

    dtype: str  # "uint16" or "uint32"
    num_tokens: int
    vocab_size: int | None = None  # of the tokenizer that produced the ids (None if unknown)
    tokenizer_hash: str | None = None
    tokenizer_dir: str | None = None
    source: str | None = None  # the text file the ids came from
    source_bytes: int | None = None  # UTF-8 bytes of that text: bits/byte = nats/token * tokens / bytes / ln 2
    stats: dict[str, Any] | None = field(default=None)
    # Written by dataset encoding (``lmkit.data.encode``); absent in older files, ignored by old readers.
    num_documents: int | None = None  # documents that start in this file (entries of its .idx)
    eot_id: int | None = None  # the id ending every document (None: --no-eot, or not recorded)
    index: str | None = None  # file name of the document index (.idx) beside the .bin
    sha256: str | None = None  # hex digest of the .bin, checked when a resumed encode reuses it
    encoding: dict[str, Any] | None = None  # encode fingerprint and resume cursor (see lmkit.data.shards)
    format: str = FORMAT
    version: int = FORMAT_VERSION


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id below ``vocab_size``."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def meta_path(bin_path: Path) -> Path:
    """``data/train.bin`` -> ``data/train.json``."""
    return Path(bin_path).with_suffix(".json")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory, fsync, rename.

    A crash at any point leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename:
            raise
        # A failed write on a descriptor carries no file name; the user needs to know which file.
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_meta(bin_path: Path, meta: TokenFileMeta) -> None:
    """Write the ``.json`` metadata beside ``bin_path`` atomically."""
    atomic_write_bytes(meta_path(bin_path), (json.dumps(asdict(meta), indent=2) + "\n").encode())


# A metadata file is a few hundred bytes (a few KB with stats); anything far larger is not one,
# and reading it whole could exhaust memory.
MAX_META_BYTES = 1 << 24
# Token files store ids as at most 32-bit unsigned integers.
MAX_VOCAB = 2**32
_OPTIONAL_STR = ("tokenizer_hash", "tokenizer_dir", "source", "index", "sha256")


def _field_error(mp: Path, name: str, value: Any, want: str) -> DataError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return DataError(f"{mp}: field '{name}' must be {want}, got {shown} ({type(value).__name__}); re-run `lmkit tokenize encode`")


def _int_field(mp: Path, raw: dict, name: str, low: int, high: int | None = None, optional: bool = False) -> int | None:
    value = raw.get(name)
    if value is None and optional:
        return None
    # bool is an int subclass and a float like 59457.0 is not an id count: both are refused.
    if type(value) is not int or value < low or (high is not None and value > high):
        bounds = f">= {low}" + (f" and <= {high}" if high is not None else "")
        raise _field_error(mp, name, value, f"an integer {bounds}" + (" (or absent)" if optional else ""))
    return value


def parse_meta(raw: Any, mp: Path) -> TokenFileMeta:
    """Validate decoded ``.json`` content into ``TokenFileMeta``: types, ranges, format, version.

    Raises:
        DataError: naming ``mp`` and the field at fault.
    """
    if not isinstance(raw, dict):
        raise DataError(f"{mp}: token metadata must be a JSON object, got {type(raw).__name__}; re-run `lmkit tokenize encode`")
    fmt = raw.get("format", FORMAT)
    if fmt != FORMAT:
        raise DataError(f"{mp}: not an lmkit token metadata file (field 'format' is {fmt!r}, expected {FORMAT!r})")
    version = raw.get("version", FORMAT_VERSION)
    if type(version) is not int or version < 1:
        raise _field_error(mp, "version", version, f"a positive integer (this lmkit writes {FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        raise DataError(f"{mp}: written by a newer lmkit (format version {version}, this one reads {FORMAT_VERSION}); upgrade lmkit")
    dtype = raw.get("dtype")
    if dtype not in ("uint16", "uint32"):
        raise _field_error(mp, "dtype", dtype, "'uint16' or 'uint32'")
    num_tokens = _int_field(mp, raw, "num_tokens", 0)
    vocab_size = _int_field(mp, raw, "vocab_size", 1, MAX_VOCAB, optional=True)
    if dtype == "uint16" and vocab_size is not None and vocab_size > 2**16:
        raise DataError(f"{mp}: field 'vocab_size' is {vocab_size}, but dtype uint16 holds ids below 65536 only; re-run `lmkit tokenize encode`")
    source_bytes = _int_field(mp, raw, "source_bytes", 0, optional=True)
    num_documents = _int_field(mp, raw, "num_documents", 0, optional=True)
    eot_id = _int_field(mp, raw, "eot_id", 0, MAX_VOCAB - 1, optional=True)
    if eot_id is not None and vocab_size is not None and eot_id >= vocab_size:
        raise DataError(f"{mp}: field 'eot_id' is {eot_id}, outside the vocabulary (size {vocab_size}); re-run `lmkit tokenize encode`")
    strings = {}
    for name in _OPTIONAL_STR:
        value = raw.get(name)
        if value is not None and not isinstance(value, str):
            raise _field_error(mp, name, value, "a string (or absent)")
        strings[name] = value
    index = strings["index"]
    # The index is a sibling file: a path elsewhere would let a token file point anywhere.
    if index is not None and (not index or "/" in index or "\\" in index or index in (".", "..")):
        raise _field_error(mp, "index", index, "a file name beside the .bin (no directory)")
    sha = strings["sha256"]
    if sha is not None and not (len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise _field_error(mp, "sha256", sha, "64 lowercase hex digits (or absent)")
    objects = {}
    for name in ("stats", "encoding"):
        value = raw.get(name)
        if value is not None and not isinstance(value, dict):
            raise _field_error(mp, name, value, "an object (or absent)")
        objects[name] = value
    return TokenFileMeta(dtype=dtype, num_tokens=num_tokens, vocab_size=vocab_size, source_bytes=source_bytes,
                         num_documents=num_documents, eot_id=eot_id, format=FORMAT, version=version,
                         **objects, **strings)


def read_meta(bin_path: Path) -> TokenFileMeta:
    """Read and validate the metadata of a ``.bin``: the one reader every command goes through.

    Raises:
        DataError: the ``.json`` is missing, not JSON, has a field of the wrong type or range, a
            format/version this lmkit cannot read, or a ``num_tokens`` that disagrees with the
            ``.bin``'s size for its dtype.
    """
    bin_path = Path(bin_path)
    mp = meta_path(bin_path)
    if not bin_path.is_file():
        raise DataError(f"{bin_path}: token file not found" + (" (it is a directory)" if bin_path.is_dir() else ""))
    if not mp.is_file():
        raise DataError(f"{mp}: metadata file missing beside {bin_path.name} (re-run `lmkit tokenize encode`)")
    try:
        size = mp.stat().st_size
        if size > MAX_META_BYTES:
            raise DataError(f"{mp}: {size:,} bytes is far too large for token metadata; it is not one (re-run `lmkit tokenize encode`)")
        raw = json.loads(mp.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"{mp}: malformed token metadata ({str(e)[:80]}); re-run `lmkit tokenize encode`") from None
    except OSError as e:
        raise DataError(f"{mp}: cannot read token metadata ({e.strerror or e})") from None
    meta = parse_meta(raw, mp)
    expected = meta.num_tokens * np.dtype(meta.dtype).itemsize
    actual = bin_path.stat().st_size
    if actual != expected:
        raise DataError(
            f"{bin_path}: {actual} bytes but its metadata promises {meta.num_tokens} {meta.dtype} tokens "
            f"({expected} bytes): the file is truncated or was overwritten; re-encode it"
        )
    return meta


def tokenizer_vocab(meta: TokenFileMeta) -> int | None:
    """The vocabulary size of the tokenizer the metadata names, or None when it names none.

    Ids imported from text record at most the vocabulary they were checked against, which says
    nothing about a tokenizer; only files encoded by a tokenizer (hash or directory) name one.
    """
    if meta.tokenizer_hash or meta.tokenizer_dir:
        return meta.vocab_size
    return None


def open_tokens(bin_path: Path) -> tuple[np.memmap, TokenFileMeta]:
    """Memory-map a ``.bin`` read-only with the dtype its metadata records."""
    meta = read_meta(bin_path)
    if meta.num_tokens == 0:
        raise DataError(f"{bin_path}: holds no tokens")
    return np.memmap(bin_path, dtype=np.dtype(meta.dtype), mode="r", shape=(meta.num_tokens,)), meta


def write_tokens(bin_path: Path, ids: np.ndarray, meta: TokenFileMeta) -> None:
    """Write a whole id array and its metadata (temp file + rename for both)."""
    bin_path = Path(bin_path)
    arr = np.ascontiguousarray(ids, dtype=np.dtype(meta.dtype))
    meta.num_tokens = int(arr.size)
    atomic_write_bytes(bin_path, arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    write_meta(bin_path, meta)
