"""What a tokenizer's tables must satisfy, and the content hash that names them.

``Tokenizer`` checks its vocabulary and merges here once, at construction: ids dense from 0 (the
vocabulary size sizes embeddings and statistics), no token twice, every merge's parts and result
in the vocabulary. The fast common case is checked by comprehensions in ``Tokenizer``; these
functions run to name the first bad entry. ``content_hash`` is what datasets, manifests and
checkpoints record to say which tokenizer produced their ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable

from lmkit.errors import TokenizerError
from lmkit.tokenizer.files import token_to_str


def content_hash(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], specials: Iterable[str]) -> str:
    """The hash ``Tokenizer.hash`` gives for this vocab, merges and set of special tokens."""
    # The compact JSON of {"vocab": [[id, hex], ...], "merges": [[hex, hex], ...],
    # "special_tokens": [...]}, written out directly: hex digits and integer ids need no escaping,
    # and joining f-strings is several times quicker than json.dumps over 100,000 small lists.
    # The bytes are json.dumps's (test_tokenizer pins them), so recorded hashes stay valid.
    if not all(type(i) is int for i in vocab):  # not from a Tokenizer (its ids are checked ints)
        content = {"vocab": [[i, vocab[i].hex()] for i in sorted(vocab)], "merges": [[a.hex(), b.hex()] for a, b in merges],
                   "special_tokens": sorted(set(specials))}
        return "sha256:" + hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()[:16]
    vocab_part = ",".join([f'[{i},"{vocab[i].hex()}"]' for i in sorted(vocab)])
    merges_part = ",".join([f'["{a.hex()}","{b.hex()}"]' for a, b in merges])
    specials_part = json.dumps(sorted(set(specials)), separators=(",", ":"))
    text = f'{{"vocab":[{vocab_part}],"merges":[{merges_part}],"special_tokens":{specials_part}}}'
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"sha256:{digest[:16]}"


def raise_duplicate(vocab: dict[int, bytes]) -> None:
    # Only called when two ids share token bytes: name the first such pair, in id order seen.
    seen: dict[bytes, int] = {}
    for idx, token in vocab.items():
        if token in seen:
            raise TokenizerError(f"vocabulary holds {token!r} twice (ids {seen[token]} and {idx})")
        seen[token] = idx


def check_merges(merges: list[tuple[bytes, bytes]], id_of: dict[bytes, int], where: Callable[[int], str]) -> None:
    # Only called when some merge names bytes outside the vocabulary: raise for the first one.
    for rank, (left, right) in enumerate(merges):
        for part in (left, right):
            if part not in id_of:
                raise TokenizerError(f"{where(rank)}: {token_to_str(part)!r} is not in the vocabulary")
        if left + right not in id_of:
            raise TokenizerError(f"{where(rank)}: the result {token_to_str(left + right)!r} is not in the vocabulary")


def check_dense(vocab: dict[int, bytes]) -> None:
    # The vocabulary size is max id + 1: models embed that many rows and statistics are sized by
    # it, so an id of 10**9 among 300 tokens would cost gigabytes. Dense ids rule that out.
    if not vocab:
        raise TokenizerError("vocabulary is empty")
    bad = next((i for i in vocab if not isinstance(i, int) or isinstance(i, bool)), None)
    if bad is not None:
        raise TokenizerError(f"vocabulary id {bad!r} is not an integer")
    if min(vocab) != 0 or max(vocab) != len(vocab) - 1:
        outside = next(i for i in sorted(vocab) if not 0 <= i < len(vocab))
        raise TokenizerError(
            f"vocabulary ids must be 0..{len(vocab) - 1} for its {len(vocab):,} tokens, but it holds id {outside}"
        )
