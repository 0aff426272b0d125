"""The files of a sharded dataset on disk: names, hashes, and which shards a resume may keep.

``NAME-00000.bin`` + ``.idx`` + ``.json`` per shard (``lmkit.data.shards`` writes them); these
functions only look at what is there, and never take a file they cannot verify for a shard.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmkit.data.manifest import is_manifest, load_manifest_json, parse_manifest
from lmkit.data.tokens import parse_meta, read_meta
from lmkit.errors import DataError

_HASH_CHUNK = 8 << 20


@dataclass(frozen=True, order=True)
class Cursor:
    """A position in the corpus: document ``doc`` of source ``source``, ``tokens_done`` ids in."""

    source: int
    doc: int
    tokens_done: int = 0


def shard_stem(name: str, k: int) -> str:
    """``shard_stem("web", 3)`` -> ``"web-00003"``."""
    return f"{name}-{k:05d}"


def shard_files(directory: Path, name: str) -> dict[int, list[Path]]:
    """The ``NAME-NNNNN.{bin,json,idx}`` files in ``directory``, by shard number."""
    pattern = re.compile(rf"{re.escape(name)}-(\d{{5}})\.(bin|json|idx)")
    found: dict[int, list[Path]] = {}
    for p in directory.iterdir():
        if m := pattern.fullmatch(p.name):
            found.setdefault(int(m.group(1)), []).append(p)
    return found


def remove_shard_temps(directory: Path, name: str) -> None:
    """Remove the temp files dead writers of dataset ``name`` left (caller holds its lock).

    Matched exactly (``.NAME-NNNNN.bin.*.tmp``, ``.NAME.idx.*.tmp``), so the temps of a dataset
    called ``NAME-train`` written by another process beside it are left alone.
    """
    pattern = re.compile(rf"\.{re.escape(name)}(-\d{{5}})?\.(bin|json|idx)\..+\.tmp")
    for p in list(directory.iterdir()):
        if pattern.fullmatch(p.name) and p.is_file():
            try:
                p.unlink()
            except OSError:
                pass  # someone else's file we may not delete: leave it


def file_sha256(path: Path, hashed: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of a file, read in chunks; ``hashed(n)`` is told of each chunk (for progress)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            if hashed is not None:
                hashed(len(chunk))
    return h.hexdigest()


def candidate_bytes(directory: Path, name: str) -> int:
    """Bytes a resume of dataset ``name`` may hash: its ``NAME.bin`` and shard ``.bin`` files."""
    paths = [p for ps in shard_files(directory, name).values() for p in ps if p.suffix == ".bin"]
    paths += [directory / f"{name}.bin"] if (directory / f"{name}.bin").is_file() else []
    return sum(p.stat().st_size for p in paths)


@dataclass
class ShardRecord:
    """A shard as written or verified: what the manifest and the resume need of it."""

    file: str
    num_tokens: int
    num_documents: int
    sha256: str
    source_bytes: int
    cursor: Cursor
    credits: dict[int, list[int]]  # source index -> [text bytes, documents] of documents ending here


def verify_shard(directory: Path, name: str, k: int, found: dict[int, list[Path]], fingerprint: str,
                 dtype: np.dtype, hashed: Callable[[int], None] | None = None) -> ShardRecord | None:
    """Shard ``k`` of dataset ``name`` if it is complete, from ``fingerprint``, and intact; else None.

    Complete and intact: its ``.bin``, ``.idx`` and ``.json`` are all there, the ``.json`` is
    valid and names this fingerprint and position, the index has one entry per document, and
    the ``.bin`` has the size and sha256 the ``.json`` records.
    """
    if len(found.get(k, [])) != 3:
        return None
    bin_path = directory / f"{shard_stem(name, k)}.bin"
    try:
        meta = read_meta(bin_path)  # also checks the .bin's size against num_tokens
        enc = meta.encoding or {}
        cursor = Cursor(*enc["cursor"])
        credits = {int(i): [int(b), int(d)] for i, b, d in enc["sources"]}
        if enc.get("fingerprint") != fingerprint or enc.get("shard") != k or meta.dtype != dtype.name:
            return None
        if meta.index != f"{shard_stem(name, k)}.idx" or (directory / meta.index).stat().st_size != 8 * (meta.num_documents or 0):
            return None
        if meta.sha256 is None or file_sha256(bin_path, hashed) != meta.sha256:
            return None
    except (DataError, OSError, KeyError, TypeError, ValueError):
        return None  # anything unexpected: not a shard to build on; it is encoded again
    return ShardRecord(bin_path.name, meta.num_tokens, meta.num_documents or 0, meta.sha256,
                  meta.source_bytes or 0, cursor, credits)

def finished_output(directory: Path, name: str, fingerprint: str, need_stats: bool,
                    hashed: Callable[[int], None] | None = None) -> Path | None:
    """The finished output (``NAME.bin`` or the manifest) if ``NAME.json`` is this fingerprint's
    and everything it names verifies (sizes and sha256), else None."""
    final = directory / f"{name}.json"
    try:
        raw = load_manifest_json(final)
        if is_manifest(raw):
            m = parse_manifest(raw, final)
            ok = (m.encoding or {}).get("fingerprint") == fingerprint and (m.stats is not None or not need_stats)
            ok = ok and all(read_meta(p).sha256 == s.sha256 == file_sha256(p, hashed) for s, p in zip(m.shards, m.shard_paths(final)))
        else:
            meta = parse_meta(raw, final)
            bin_path = directory / f"{name}.bin"
            ok = (meta.encoding or {}).get("fingerprint") == fingerprint and (meta.stats is not None or not need_stats)
            ok = ok and read_meta(bin_path).sha256 == file_sha256(bin_path, hashed) and (directory / f"{name}.idx").is_file()
    except (DataError, OSError, TypeError, ValueError):
        return None
    if not ok:
        return None
    return final if is_manifest(raw) else directory / f"{name}.bin"


def is_manifest_file(path: Path) -> bool:
    try:
        return is_manifest(load_manifest_json(path))
    except DataError:
        return False
