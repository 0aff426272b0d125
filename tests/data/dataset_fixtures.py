"""Test fixtures in the dataset format of issue #21 (design §3), written without lmkit's encoder.

``write_dataset`` lays ids out as part DS's encoder does: one shard gives today's ``NAME.bin`` +
``NAME.json`` (+ ``NAME.idx``); more give ``NAME-00000.bin`` ... with their ``.json``/``.idx``
and a manifest ``NAME.json``. A document that does not fit in a shard continues in the next.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lmkit.data.tokens import TokenFileMeta


def write_dataset(out: Path, name: str, ids, shard_tokens: int, *, doc_starts=None, vocab_size: int = 64,
                  tokenizer_hash: str | None = "sha256:aaaa", dtype: str = "uint16", source_bytes: int | None = None) -> Path:
    """Write ``ids`` as dataset ``NAME`` in ``out``; returns the path to pass as a data path (``NAME.json``).

    Args:
        doc_starts: global start offsets of the documents (default: one document every 100 ids).
        source_bytes: total UTF-8 bytes the ids stand for (default: 3 per id).
    """
    out.mkdir(parents=True, exist_ok=True)
    ids = np.asarray(ids).astype(dtype)
    n = len(ids)
    docs = np.arange(0, n, 100, dtype=np.uint64) if doc_starts is None else np.asarray(doc_starts, dtype=np.uint64)
    source_bytes = 3 * n if source_bytes is None else source_bytes
    bounds = list(range(0, n, shard_tokens)) or [0]
    single = len(bounds) == 1
    shards = []
    for k, lo in enumerate(bounds):
        hi = min(lo + shard_tokens, n)
        stem = name if single else f"{name}-{k:05d}"
        data = ids[lo:hi].astype(np.dtype(dtype).newbyteorder("<")).tobytes()
        (out / f"{stem}.bin").write_bytes(data)
        local = docs[(docs >= lo) & (docs < hi)] - np.uint64(lo)
        (out / f"{stem}.idx").write_bytes(local.astype("<u8").tobytes())
        meta = TokenFileMeta(dtype=dtype, num_tokens=hi - lo, vocab_size=vocab_size, tokenizer_hash=tokenizer_hash,
                             tokenizer_dir="/tok" if tokenizer_hash else None,
                             source_bytes=round(source_bytes * (hi - lo) / max(n, 1)))
        (out / f"{stem}.json").write_text(json.dumps({**asdict(meta), "num_documents": int(local.size), "index": f"{stem}.idx"}))
        shards.append({"file": f"{stem}.bin", "num_tokens": hi - lo, "num_documents": int(local.size),
                       "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    if single:
        return out / f"{name}.json"
    manifest = {"format": "lmkit-dataset", "version": 1, "name": name, "dtype": dtype, "vocab_size": vocab_size,
                "tokenizer_hash": tokenizer_hash, "tokenizer_dir": "/tok" if tokenizer_hash else None, "eot_id": None,
                "num_tokens": n, "num_documents": int(docs.size), "source_bytes": source_bytes, "shards": shards,
                "sources": [], "split": None, "encoding": {"fingerprint": "test"}}
    (out / f"{name}.json").write_text(json.dumps(manifest))
    return out / f"{name}.json"
