"""A cache of which merges the fast engine keeps, so ``FastEncoder.build`` skips its slowest step.

Finding the live merges (``lmkit.tokenizer.fast``'s module doc) walks every merge in Python and is
most of what building the engine costs, before any worker can encode. The answer depends on the
vocabulary and merges alone and is one bit per merge, so it is kept in the user's cache
directory, keyed by the tokenizer's content hash and the version of the algorithm:

    $LMKIT_CACHE_DIR (else $XDG_CACHE_HOME/lmkit, else ~/.cache/lmkit) / fast-encoder /
        live-<hash>-<merges>-v<version>.bin

A file is one JSON header line (format, version, tokenizer hash, number of merges, the
payload's sha256) and the payload: ``numpy.packbits`` of the
live flags. It is written to a temp file and renamed into place, and trusted only when every
header field matches and the payload's digest is right. A cache is only ever an optimisation:
any failure to read, parse or write it is logged at debug level and the table is recomputed;
nothing is written beside the tokenizer's own files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "lmkit-live-merges"
_HEADER_MAX = 4096  # bytes: a header is ~200; anything longer is not one of ours


def cache_root() -> Path | None:
    """lmkit's cache directory: ``$LMKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/lmkit``, else
    ``~/.cache/lmkit``; ``None`` where no home directory is known."""
    if root := os.environ.get("LMKIT_CACHE_DIR"):
        return Path(root)
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg) / "lmkit"
    try:
        return Path.home() / ".cache" / "lmkit"
    except RuntimeError:  # no HOME and no passwd entry
        return None


def cache_path(tokenizer_hash: str, merges: int, version: int) -> Path | None:
    """Where the live flags of this tokenizer are cached (``None``: no cache directory)."""
    root = cache_root()
    if root is None:
        return None
    digest = tokenizer_hash.removeprefix("sha256:")
    return root / "fast-encoder" / f"live-{digest}-{merges}-v{version}.bin"


def _header(tokenizer_hash: str, merges: int, version: int, payload: bytes) -> dict:
    return {"format": FORMAT, "version": version, "tokenizer": tokenizer_hash, "merges": merges,
            "sha256": hashlib.sha256(payload).hexdigest()}


def load(tokenizer_hash: str, merges: int, version: int) -> np.ndarray | None:
    """The cached live flags, a ``bool`` array of ``merges`` entries; ``None`` on a miss (no
    file, or one that cannot be read or does not match this tokenizer and version)."""
    path = cache_path(tokenizer_hash, merges, version)
    if path is None:
        return None
    expected_payload = (merges + 7) // 8
    try:
        with open(path, "rb") as f:
            data = f.read(_HEADER_MAX + expected_payload + 1)
        line, sep, payload = data.partition(b"\n")
        if not sep:
            raise ValueError("no header line")
        if json.loads(line) != _header(tokenizer_hash, merges, version, payload):
            raise ValueError("header does not match this tokenizer, or the payload its digest")
        if len(payload) != expected_payload:
            raise ValueError(f"payload of {len(payload)} bytes, expected {expected_payload}")
        return np.unpackbits(np.frombuffer(payload, dtype=np.uint8), count=merges).astype(bool)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        log.debug("fast encoder cache %s ignored (%s); rebuilding it", path, e)
        return None


def store(tokenizer_hash: str, merges: int, version: int, live: np.ndarray) -> None:
    """Cache the live flags (a ``bool`` per merge).

    Written to a temp file in the cache directory and renamed into place, so a reader sees a
    whole file or none; any failure (read-only home, full disk) is logged and ignored.
    """
    path = cache_path(tokenizer_hash, merges, version)
    if path is None:
        return
    payload = np.packbits(np.asarray(live, dtype=bool)).tobytes()
    header = _header(tokenizer_hash, merges, version, payload)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n" + payload)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        log.debug("fast encoder cache %s not written (%s)", path, e)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
