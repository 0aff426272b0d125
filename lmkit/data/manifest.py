"""Dataset manifests: ``NAME.json`` listing the shards of a dataset encoded in several pieces.

A dataset of one shard is a plain token file (``NAME.bin`` + ``NAME.json``, see ``tokens.py``);
a larger one is ``NAME-00000.bin``, ``NAME-00001.bin``, ... (each a token file with its own
``.json`` and ``.idx``) plus this manifest, which says in what order they concatenate and what
they came from. ``read_manifest`` is the one reader: it checks the manifest and that every shard
it lists is present, of the listed size, and agrees with it, so training never starts on a
dataset with a hole in it.

Example:
    >>> m = read_manifest(Path("data/web-train.json"))        # doctest: +SKIP
    >>> m.num_tokens, [s.file for s in m.shards][:2]          # doctest: +SKIP
    (250000000, ['web-train-00000.bin', 'web-train-00001.bin'])
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from lmkit.data.tokens import MAX_VOCAB, atomic_write_bytes, read_meta
from lmkit.errors import DataError

FORMAT = "lmkit-dataset"
FORMAT_VERSION = 1
REPAIR = "re-run the same `lmkit tokenize encode` command to repair it"
# A manifest lists every input file (a corpus of a million small files gives ~100 MB); anything
# far larger is not one, and reading it whole could exhaust memory.
MAX_MANIFEST_BYTES = 1 << 30


@dataclass(frozen=True)
class ShardEntry:
    """One shard as the manifest lists it; ``file`` is relative to the manifest's directory."""

    file: str
    num_tokens: int
    num_documents: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class SourceEntry:
    """One input file: its size on disk, the UTF-8 text bytes read from it, its documents here."""

    path: str
    bytes: int
    text_bytes: int
    documents: int


@dataclass
class Manifest:
    """What ``NAME.json`` of a sharded dataset records (format ``lmkit-dataset``)."""

    name: str
    dtype: str  # "uint16" or "uint32", the same for every shard
    vocab_size: int
    tokenizer_hash: str
    num_tokens: int
    num_documents: int
    source_bytes: int  # UTF-8 text bytes the ids encode: bits/byte = nats/token * tokens / bytes / ln 2
    shards: list[ShardEntry]
    sources: list[SourceEntry] = field(default_factory=list)
    tokenizer_dir: str | None = None
    eot_id: int | None = None
    split: dict[str, Any] | None = None  # {"role": "train"|"val", "val_fraction": .., "val_docs": ..}
    encoding: dict[str, Any] | None = None  # {"fingerprint": ..., "complete": true}
    stats: dict[str, Any] | None = None  # --create-stats, over the whole dataset
    format: str = FORMAT
    version: int = FORMAT_VERSION

    def shard_paths(self, manifest_path: Path) -> list[Path]:
        """The shards' ``.bin`` paths, in order, for a manifest read from ``manifest_path``."""
        return [Path(manifest_path).parent / s.file for s in self.shards]


def is_manifest(raw: Any) -> bool:
    """Whether decoded JSON is a dataset manifest (rather than token-file metadata)."""
    return isinstance(raw, dict) and raw.get("format") == FORMAT


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write ``manifest`` to ``path`` atomically (temp file + rename): readers see old or new."""
    atomic_write_bytes(Path(path), (json.dumps(asdict(manifest), indent=1) + "\n").encode())


def _bad(path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what}; {REPAIR}")


def _int(path: Path, raw: dict, name: str, low: int = 0, high: int | None = None, optional: bool = False) -> int | None:
    value = raw.get(name)
    if value is None and optional:
        return None
    # bool is an int subclass and 12.0 is not a count: both are refused.
    if type(value) is not int or value < low or (high is not None and value > high):
        raise _bad(path, f"field '{name}' must be an integer >= {low}{' (or absent)' if optional else ''}, got {value!r:.60}")
    return value


def _str(path: Path, raw: dict, name: str, optional: bool = False) -> str | None:
    value = raw.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise _bad(path, f"field '{name}' must be a non-empty string{' (or absent)' if optional else ''}, got {value!r:.60}")
    return value


def _obj(path: Path, raw: dict, name: str) -> dict | None:
    value = raw.get(name)
    if value is not None and not isinstance(value, dict):
        raise _bad(path, f"field '{name}' must be an object (or absent), got {type(value).__name__}")
    return value


def _shard_file(path: Path, value: Any, k: int) -> str:
    # Shards live beside the manifest (or below it): an absolute path or '..' would let a moved
    # or copied dataset silently read someone else's files.
    p = PurePosixPath(value) if isinstance(value, str) else None
    if p is None or not value or p.is_absolute() or ".." in p.parts or "\\" in value or not value.endswith(".bin"):
        raise _bad(path, f"shards[{k}].file must be a relative path to a .bin beside the manifest, got {value!r:.60}")
    return value


def parse_manifest(raw: Any, path: Path) -> Manifest:
    """Validate decoded manifest JSON (types, ranges, format, version, totals); no file access.

    Raises:
        DataError: naming ``path`` and the field at fault.
    """
    if not isinstance(raw, dict):
        raise _bad(path, f"a dataset manifest must be a JSON object, got {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        raise DataError(f"{path}: not an lmkit dataset manifest (field 'format' is {raw.get('format')!r}, expected {FORMAT!r})")
    version = raw.get("version")
    if type(version) is not int or version < 1:
        raise _bad(path, f"field 'version' must be a positive integer (this lmkit writes {FORMAT_VERSION}), got {version!r:.60}")
    if version > FORMAT_VERSION:
        raise DataError(f"{path}: written by a newer lmkit (dataset format version {version}, this one reads {FORMAT_VERSION}); upgrade lmkit")
    dtype = raw.get("dtype")
    if dtype not in ("uint16", "uint32"):
        raise _bad(path, f"field 'dtype' must be 'uint16' or 'uint32', got {dtype!r:.60}")
    vocab_size = _int(path, raw, "vocab_size", 1, MAX_VOCAB)
    if dtype == "uint16" and vocab_size > 2**16:
        raise _bad(path, f"field 'vocab_size' is {vocab_size}, but dtype uint16 holds ids below 65536 only")
    eot_id = _int(path, raw, "eot_id", 0, vocab_size - 1, optional=True)
    itemsize = np.dtype(dtype).itemsize
    shards_raw = raw.get("shards")
    if not isinstance(shards_raw, list) or not shards_raw:
        raise _bad(path, "field 'shards' must be a non-empty list")
    shards = []
    for k, s in enumerate(shards_raw):
        if not isinstance(s, dict):
            raise _bad(path, f"shards[{k}] must be an object, got {type(s).__name__}")
        where = path.with_name(f"{path.name} shards[{k}]")
        entry = ShardEntry(file=_shard_file(path, s.get("file"), k), num_tokens=_int(where, s, "num_tokens"),
                           num_documents=_int(where, s, "num_documents"), bytes=_int(where, s, "bytes"),
                           sha256=_str(where, s, "sha256"))
        if entry.bytes != entry.num_tokens * itemsize:
            raise _bad(path, f"shard {entry.file} lists {entry.bytes} bytes for {entry.num_tokens} {dtype} tokens")
        shards.append(entry)
    sources = []
    for k, s in enumerate(raw.get("sources") or []):
        if not isinstance(s, dict):
            raise _bad(path, f"sources[{k}] must be an object, got {type(s).__name__}")
        where = path.with_name(f"{path.name} sources[{k}]")
        sources.append(SourceEntry(path=_str(where, s, "path"), bytes=_int(where, s, "bytes"),
                                   text_bytes=_int(where, s, "text_bytes"), documents=_int(where, s, "documents")))
    m = Manifest(
        name=_str(path, raw, "name"), dtype=dtype, vocab_size=vocab_size, tokenizer_hash=_str(path, raw, "tokenizer_hash"),
        num_tokens=_int(path, raw, "num_tokens"), num_documents=_int(path, raw, "num_documents"),
        source_bytes=_int(path, raw, "source_bytes"), shards=shards, sources=sources,
        tokenizer_dir=_str(path, raw, "tokenizer_dir", optional=True), eot_id=eot_id,
        split=_obj(path, raw, "split"), encoding=_obj(path, raw, "encoding"), stats=_obj(path, raw, "stats"),
        version=version,
    )
    if m.num_tokens != sum(s.num_tokens for s in shards):
        raise _bad(path, f"field 'num_tokens' is {m.num_tokens} but its shards hold {sum(s.num_tokens for s in shards)}")
    if m.num_documents != sum(s.num_documents for s in shards):
        raise _bad(path, f"field 'num_documents' is {m.num_documents} but its shards hold {sum(s.num_documents for s in shards)}")
    return m


def load_manifest_json(path: Path) -> Any:
    """The decoded JSON of ``path`` (bounded in size), or a DataError naming it."""
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise DataError(f"{path}: {size:,} bytes is far too large for a dataset manifest; it is not one")
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: dataset manifest not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise _bad(path, f"malformed dataset manifest ({str(e)[:80]})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read dataset manifest ({e.strerror or e})") from None


def read_manifest(path: Path) -> Manifest:
    """Read a manifest and check every shard it lists (cheaply: sizes and metadata, no hashing).

    Args:
        path: The manifest ``NAME.json``.

    Returns:
        The validated ``Manifest``.

    Raises:
        DataError: a malformed manifest, or a shard that is missing, of another size than
            listed, or whose own ``.json`` is missing, damaged, or disagrees with the manifest
            (token count, dtype, tokenizer hash); the message names the shard and says to re-run
            the encode that wrote it (which keeps the shards that verify and redoes the rest).
    """
    path = Path(path)
    m = parse_manifest(load_manifest_json(path), path)
    for entry, bin_path in zip(m.shards, m.shard_paths(path)):
        shard = f"{path}: shard {entry.file}"
        if not bin_path.is_file():
            raise DataError(f"{shard} is missing; {REPAIR}")
        size = bin_path.stat().st_size
        if size != entry.bytes:
            raise DataError(f"{shard} is {size} bytes, the manifest lists {entry.bytes} (altered or truncated); {REPAIR}")
        try:
            meta = read_meta(bin_path)
        except DataError as e:
            raise DataError(f"{shard} has unusable metadata ({str(e)[:160]}); {REPAIR}") from None
        for name, want in (("num_tokens", entry.num_tokens), ("dtype", m.dtype), ("tokenizer_hash", m.tokenizer_hash)):
            if getattr(meta, name) != want:
                raise DataError(f"{shard}: its .json has {name} {getattr(meta, name)!r}, the manifest {want!r} "
                                f"(altered, or from another encode); {REPAIR}")
        if meta.index is not None:
            idx = bin_path.parent / meta.index
            if not idx.is_file() or idx.stat().st_size != 8 * entry.num_documents:
                raise DataError(f"{shard}: document index {meta.index} is missing or not {entry.num_documents} entries; {REPAIR}")
    return m
