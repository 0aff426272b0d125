"""``--create-stats``: token counts of an encoded dataset, counted as the ids are written."""

from __future__ import annotations

import numpy as np

from lmkit.tokenizer import Tokenizer

TOP_TOKENS = 10


class IdCounter:
    """Counts ids per vocabulary entry; ``summary`` gives what the metadata's ``stats`` holds.

    Counting per id with an array as long as the largest id would let one id of 10**9 cost 8 GB;
    when the tokenizer's ids are sparse (the largest far above their count) they are counted per
    position in the sorted id list instead, which costs what the vocabulary really holds.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        ids = np.fromiter(sorted(tokenizer.vocab), dtype=np.int64, count=len(tokenizer.vocab))
        self.index = None if tokenizer.vocab_size <= len(ids) else ids
        self.counts = np.zeros(tokenizer.vocab_size if self.index is None else len(self.index), dtype=np.int64)

    def add(self, ids: np.ndarray) -> None:
        """Count the ids of one array."""
        pos = ids if self.index is None else np.searchsorted(self.index, ids)
        self.counts += np.bincount(pos, minlength=self.counts.size)

    def summary(self, num_tokens: int, source_bytes: int) -> dict:
        """Token count, distinct ids, bytes per token and the most frequent ids (decoded)."""
        top = np.argsort(-self.counts, kind="stable")[:TOP_TOKENS]
        ids = top if self.index is None else self.index[top]
        return {
            "num_tokens": num_tokens,
            "distinct_tokens": int(np.count_nonzero(self.counts)),
            "bytes_per_token": round(source_bytes / num_tokens, 4) if num_tokens else None,
            "top_tokens": [{"id": int(i), "count": int(self.counts[k]), "token": self.tokenizer.decode([int(i)])}
                           for k, i in zip(top, ids) if self.counts[k] > 0],
        }
