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
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_meta(bin_path: Path, meta: TokenFileMeta) -> None:
    """Write the ``.json`` metadata beside ``bin_path`` atomically."""
    atomic_write_bytes(meta_path(bin_path), (json.dumps(asdict(meta), indent=2) + "\n").encode())


def read_meta(bin_path: Path) -> TokenFileMeta:
    """Read the metadata of a ``.bin``.

    Raises:
        DataError: the ``.json`` is missing or malformed, or the ``.bin`` size disagrees with it.
    """
    bin_path = Path(bin_path)
    mp = meta_path(bin_path)
    if not bin_path.is_file():
        raise DataError(f"{bin_path}: token file not found" + (" (it is a directory)" if bin_path.is_dir() else ""))
    if not mp.is_file():
        raise DataError(f"{mp}: metadata file missing beside {bin_path.name} (re-run `lmkit tokenize encode`)")
    try:
        raw = json.loads(mp.read_text(encoding="utf-8"))
        known = {k: raw[k] for k in TokenFileMeta.__dataclass_fields__ if k in raw}
        meta = TokenFileMeta(**known)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        raise DataError(f"{mp}: malformed token metadata ({e}); re-run `lmkit tokenize encode`") from None
    if meta.format != FORMAT:
        raise DataError(f"{mp}: not an lmkit token metadata file (format {meta.format!r})")
    if meta.version > FORMAT_VERSION:
        raise DataError(f"{mp}: written by a newer lmkit (format version {meta.version}); upgrade lmkit")
    if meta.dtype not in ("uint16", "uint32"):
        raise DataError(f"{mp}: unsupported dtype {meta.dtype!r} (expected uint16 or uint32)")
    expected = meta.num_tokens * np.dtype(meta.dtype).itemsize
    actual = bin_path.stat().st_size
    if actual != expected:
        raise DataError(
            f"{bin_path}: {actual} bytes but its metadata promises {meta.num_tokens} {meta.dtype} tokens "
            f"({expected} bytes): the file is truncated or was overwritten; re-encode it"
        )
    return meta


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
