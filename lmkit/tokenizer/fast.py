"""Fast encoding: tiktoken's Rust BPE core, built from an lmkit ``Tokenizer``, giving the same ids.

``Tokenizer.encode`` is the pure-Python reference. ``FastEncoder`` hands the same work to
tiktoken's ``CoreBPE`` (which releases the GIL, so threads encode blocks in parallel), and is
built only where its ids are provably those of the reference; otherwise ``build`` returns
``None`` and callers use the reference.

Why the two agree. tiktoken is given one rank per single byte and one per merge result, rising
with the merge order: the lmkit ids themselves where they rise so (lmkit-trained and GPT-2's
ids), else ``256 + merge index`` mapped back to ids through a lookup table. The two
algorithms then differ in one respect: lmkit merges an adjacent pair ``(A, B)`` only when
``(A, B)`` *is* a merge, at that merge's rank; tiktoken merges it whenever the bytes ``A + B``
are a token, at that token's rank, whichever two parts the token was learned from; and it
returns a whole pretoken as one id outright when its bytes are a token.

Call a merge result ``t`` *live* when the reference encodes ``bytes(t)`` alone as ``[t]``.
Key fact: if at some step of the reference on a pretoken a run of tokens covers exactly the
substring ``u``, then ``u`` alone reaches that same run. (Tokens only grow, so no token ever
straddled the run's ends; a pair straddling them was never the lowest candidate, else it would
have been merged; so the merges inside ``u`` were chosen as ``u`` alone chooses them.) Hence a
token that is not live never appears in any output: where it is made, ``[L, R]`` covered
``bytes(t)``, so ``bytes(t)`` alone reaches ``[L, R]`` and merges it. tiktoken gets only the
live tokens. Now run both on a pretoken in lockstep; suppose they agree so far and tiktoken's
lowest candidate is a pair ``(A, B)`` that is not a merge but whose bytes are a live token
``t``. By the key fact ``bytes(t)`` alone reaches ``[A, B]``, where the reference stops (the
only merge giving ``t`` is not ``(A, B)``): ``t`` is not live, a contradiction. So both see
the same candidates with the same ranks, take the same (lowest, then leftmost) one, and end
alike; the whole-pretoken shortcut agrees because every token it can return is live. Two
*different* merges with one result cannot be given one rank: ``build`` refuses them. A merge
listed twice is dead the second time in the reference too, and is skipped.

Finding the live tokens costs one dictionary walk over the merges when they are well ordered
(each after the merges making its parts, as training gives them; see ``_crosses_border``), and
a run of the reference per token otherwise.

Pretokens. tiktoken's Rust regex and Python's ``regex`` module may ship different Unicode
versions (letters assigned recently are ``\\p{L}`` in one and not the other). The pattern given
to tiktoken is GPT-2's with ``\\p{L}``, ``\\p{N}`` and ``\\s`` spelled out as the code point
ranges Python's ``regex`` gives them, so both split text at the same places
(``pretokenize.explicit_pattern``).

Special tokens are split out in Python with the reference's own splitter (longest first),
then each plain segment is one call into the engine, whose output comes back as a numpy buffer
(no Python int per id).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np

from lmkit.tokenizer import live_cache
from lmkit.tokenizer.pretokenize import explicit_pattern, special_splitter

if TYPE_CHECKING:
    import tiktoken


class Tokenizer(Protocol):
    """What the fast engine reads from an ``lmkit.tokenizer.Tokenizer``.

    A protocol rather than an import: ``Tokenizer`` builds its engine from this module, so this
    module names only the tables it reads (the merge ranks and the id of each byte string).
    """

    merges: list[tuple[bytes, bytes]]
    special_tokens: list[str]
    hash: str
    _id_of: dict[bytes, int]
    _rank_of: dict[tuple[int, int], int]

    def token_id(self, token: str) -> int: ...
    def encode(self, text: str) -> list[int]: ...
    def fast_encoder(self) -> FastEncoder | None: ...
    def _merge_bytes(self, token: bytes) -> list[int]: ...

log = logging.getLogger(__name__)

T = TypeVar("T")

# tiktoken turns an empty special-token table into a pattern that matches everywhere, then
# steps through the text one character at a time rejecting those matches. One special that is
# never allowed is searched for at full speed and never emitted: text holding it stays text.
_UNUSED_SPECIAL = "<|lmkit: never allowed|>"
# The version of _live_ranks's answer that the cache (lmkit.tokenizer.live_cache) holds: raise
# it whenever a change could make _live_ranks keep other merges, so older caches are not read.
LIVE_VERSION = 1


class FastEncoder:
    """An lmkit tokenizer's encoder, run by tiktoken's BPE core; ids equal ``Tokenizer.encode``.

    Build with ``FastEncoder.build(tokenizer)``; ``encode`` is safe to call from many threads
    at once and releases the GIL while the engine works.
    """

    def __init__(self, core: tiktoken.Encoding, lut: np.ndarray | None, specials: list[str],
                 special_ids: dict[str, int]):
        self._core = core
        self._lut = lut  # tiktoken rank -> lmkit id, or None where they are equal
        self._splitter = special_splitter(specials)
        self._special_ids = special_ids

    @classmethod
    def build(cls, tokenizer: Tokenizer, *, cache: bool = True) -> FastEncoder | None:
        """The engine for ``tokenizer``, or ``None`` where it cannot give exactly its ids.

        ``None`` when tiktoken is not installed or two different merges give one token (the
        reason is logged at debug level). Tokens the reference can never produce are left out
        (see the module docstring), so any merges list is otherwise supported.

        Args:
            tokenizer: Any lmkit ``Tokenizer`` (lmkit-trained ids, GPT-2's ids, ...).
            cache: Read (and after computing, write) which merges are live in the user's cache
                directory (``lmkit.tokenizer.live_cache``), keyed by the tokenizer's hash; a
                missing, stale or damaged cache file is recomputed and replaced.

        Returns:
            The encoder, or ``None``.
        """
        try:
            import tiktoken
        except ImportError:
            log.debug("fast encoder unavailable: tiktoken is not installed (pip install tiktoken)")
            return None
        ranks = _cached_live_ranks(tokenizer) if cache else _live_ranks(tokenizer)
        if ranks is None:
            return None
        id_of = tokenizer._id_of
        ids = np.fromiter((id_of[token] for token in ranks), dtype=np.int64, count=len(ranks))
        merge_ids = ids[256:]  # dicts keep insertion order: the bytes, then merges in rank order
        lut = None
        if np.all(merge_ids[1:] > merge_ids[:-1]):
            # Only the order of merge ranks matters to tiktoken (a byte's rank is never compared:
            # pairs are two bytes or more), so ids that rise with the merges can be the ranks,
            # and the engine's output needs no translation (lmkit-trained and GPT-2's ids).
            ranks = dict(zip(ranks, ids.tolist()))
        else:
            rank_list = np.fromiter(ranks.values(), dtype=np.int64, count=len(ranks))
            lut = np.zeros(int(rank_list.max()) + 1, dtype=np.uint32)
            lut[rank_list] = ids
        core = tiktoken.Encoding(
            "lmkit", pat_str=explicit_pattern(), mergeable_ranks=ranks,
            special_tokens={_UNUSED_SPECIAL: max(ranks.values()) + 1},
        )
        specials = tokenizer.special_tokens
        return cls(core, lut, specials, {s: tokenizer.token_id(s) for s in specials})

    def _plain(self, text: str) -> np.ndarray:
        # Text without special tokens: one engine call, its ids straight into a numpy buffer.
        ranks = self._core.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
        return ranks.copy() if self._lut is None else self._lut[ranks]

    def encode(self, text: str) -> np.ndarray:
        """Encode text as ``Tokenizer.encode`` does, specials included.

        Returns:
            The ids, ``uint32``.
        """
        parts = [text] if self._splitter is None else self._splitter.split(text)
        if len(parts) == 1:
            return self._plain(text)
        pieces = []
        for n, part in enumerate(parts):
            if n % 2:
                pieces.append(np.array([self._special_ids[part]], dtype=np.uint32))
            elif part:
                pieces.append(self._plain(part))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint32)


def encode_array(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """``tokenizer.encode(text)`` as a ``uint32`` array, by the fast engine when it can be exact.

    The engine is built once per tokenizer (``Tokenizer.fast_encoder``).
    """
    fast = tokenizer.fast_encoder()
    if fast is not None:
        return fast.encode(text)
    return np.array(tokenizer.encode(text), dtype=np.uint32)


def encode_blocks(
    encoder: FastEncoder | Tokenizer,
    blocks: Iterable[T],
    threads: int,
    key: Callable[[T], str] = lambda block: block,  # type: ignore[assignment,return-value]
    batch_chars: int = 1 << 18,
) -> Iterator[tuple[T, np.ndarray]]:
    """Encode blocks on ``threads`` threads, yielding ``(block, ids)`` in the blocks' order.

    Consecutive small blocks (short documents) go to a thread together, up to ``batch_chars``
    characters, so handing work to a thread costs little next to encoding it. At most
    ``2 * threads`` such batches are read ahead: memory stays bounded however long the stream,
    and every thread has work waiting when it finishes. Threads (not processes) work because
    the engine releases the GIL; the pure-Python ``Tokenizer`` holds it, so with one the blocks
    are encoded in the calling thread.

    Args:
        encoder: A ``FastEncoder``, or a ``Tokenizer`` (reference speed, one thread).
        blocks: Any iterable, consumed lazily (e.g. ``sources.read_blocks(...)``).
        threads: Worker threads; 1 or less encodes in the calling thread.
        key: The text of a block (default: the block is the text).
        batch_chars: Characters of text a thread is given at once (0: one block each).

    Yields:
        ``(block, ids)`` with ``ids`` a ``uint32`` array; an error in a block is raised when
        its turn comes.
    """
    if isinstance(encoder, FastEncoder):
        encode = encoder.encode
    else:
        tokenizer = encoder
        encode = lambda text: np.array(tokenizer.encode(text), dtype=np.uint32)
        threads = 1
    if threads <= 1:
        for block in blocks:
            yield block, encode(key(block))
        return

    def work(texts: list[str]) -> list[np.ndarray | Exception]:
        # An error stays with its block, so the blocks before it in the batch still come out.
        out: list[np.ndarray | Exception] = []
        for text in texts:
            try:
                out.append(encode(text))
            except Exception as e:  # noqa: BLE001 - re-raised in the caller's thread, in order
                out.append(e)
                break
        return out

    pending: deque[tuple[list[T], Future]] = deque()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="lmkit-encode")
    batch: list[T] = []
    texts: list[str] = []
    size = 0
    try:
        for block in blocks:
            text = key(block)
            batch.append(block)
            texts.append(text)
            size += len(text)
            if size < batch_chars:
                continue
            pending.append((batch, pool.submit(work, texts)))
            batch, texts, size = [], [], 0
            if len(pending) >= 2 * threads:
                yield from _finished(pending.popleft())
        if batch:
            pending.append((batch, pool.submit(work, texts)))
        while pending:
            yield from _finished(pending.popleft())
    finally:
        # Reached early when the consumer stops or a block fails: drop the queued work.
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def _finished(item: tuple[list[T], Future]) -> Iterator[tuple[T, np.ndarray]]:
    batch, future = item
    for block, ids in zip(batch, future.result()):
        if isinstance(ids, Exception):
            raise ids
        yield block, ids


def _cached_live_ranks(tokenizer: Tokenizer) -> dict[bytes, int] | None:
    # _live_ranks through the cache (lmkit.tokenizer.live_cache), which holds one flag per merge.
    n, key = len(tokenizer.merges), tokenizer.hash
    flags = live_cache.load(key, n, LIVE_VERSION)
    if flags is not None:
        ranks = {bytes([b]): b for b in range(256)}
        merges = tokenizer.merges
        for i in np.flatnonzero(flags).tolist():
            left, right = merges[i]
            ranks[left + right] = 256 + i
        if len(ranks) == 256 + int(flags.sum()):  # else two live merges make one token: not ours
            return ranks
        log.debug("fast encoder cache for %s is inconsistent; rebuilding it", key)
    ranks = _live_ranks(tokenizer)
    if ranks is not None:  # a tokenizer without an exact engine is not cached: it encodes slowly anyway
        flags = np.zeros(n, dtype=bool)
        flags[np.fromiter(ranks.values(), dtype=np.int64, count=len(ranks))[256:] - 256] = True
        live_cache.store(key, n, LIVE_VERSION, flags)
    return ranks


def _live_ranks(tokenizer: Tokenizer) -> dict[bytes, int] | None:
    # tiktoken's mergeable ranks: bytes 0..255, then each live merge result at 256 + its index.
    id_of, merges = tokenizer._id_of, tokenizer.merges
    ranks = {bytes([b]): b for b in range(256)}
    first_merge: dict[bytes, tuple[int, bytes, bytes]] = {}
    born = {id_of[bytes([b])]: -1 for b in range(256)}  # token id -> rank of the merge making it
    for i, (left, right) in enumerate(merges):
        born.setdefault(id_of[left + right], i)
    # Well ordered: every merge comes after those that make its parts (true of trained merges).
    # Then the reference applies merges in rank order and the cheap border test below is exact.
    ordered = all(born[id_of[left]] < i > born[id_of[right]] for i, (left, right) in enumerate(merges))
    partners: dict[int, dict[int, int]] = {}  # left id -> {right id: rank of their merge}
    for (x, y), k in tokenizer._rank_of.items():
        partners.setdefault(x, {})[y] = k
    dead: set[bytes] = set()
    # For each live token: (rank when it appeared, token id) of the last (suffix) or first
    # (prefix) token of bytes(token) alone, over the merges, ending with the token itself.
    suffix = {i: ((-1, i),) for i in born if born[i] < 0}
    prefix = dict(suffix)
    for i, (left, right) in enumerate(merges):
        token = left + right
        if token in first_merge:
            first, *pair = first_merge[token]
            if tuple(pair) == (left, right):
                continue  # listed again: the reference keeps the first rank, so does tiktoken
            log.debug(
                "fast encoder unavailable: merges %d and %d both give %r (tiktoken has one rank per token)",
                first + 1, i + 1, token,
            )
            return None
        first_merge[token] = (i, left, right)
        # A token built from a part the reference never produces is never produced itself.
        if left in dead or right in dead:
            dead.add(token)
            continue
        tid, lid, rid = id_of[token], id_of[left], id_of[right]
        if ordered:
            live = not _crosses_border(suffix[lid], prefix[rid], i, partners)
            if live:
                suffix[tid] = suffix[rid] + ((i, tid),)
                prefix[tid] = prefix[lid] + ((i, tid),)
        else:
            live = tokenizer._merge_bytes(token) == [tid]
        if live:
            ranks[token] = 256 + i
        else:
            dead.add(token)
    if dead:
        log.debug("fast encoder: %d tokens the reference never produces are left out", len(dead))
    return ranks


def _crosses_border(
    left: tuple[tuple[int, int], ...], right: tuple[tuple[int, int], ...], rank: int,
    partners: dict[int, dict[int, int]],
) -> bool:
    """Whether merging bytes(L) + bytes(R) in rank order joins the halves before merge ``rank``.

    Until such a merge, each half evolves as it does alone, so the tokens that meet at the
    border are ``left``'s suffix chain against ``right``'s prefix chain: ``(appeared, id)``
    pairs, each token current until the next one appears (the last until ``rank``). A merge
    ``k`` of the two current tokens joins them unless the left one was taken by its left
    neighbour at ``k`` itself (merges apply left to right, and that pair comes first).
    """
    last = len(left) - 1
    for n, (x_from, x) in enumerate(left):
        mates = partners.get(x)
        if mates is None:
            continue
        x_until = left[n + 1][0] if n < last else rank
        for m, (y_from, y) in enumerate(right):
            k = mates.get(y)
            if k is None or not (x_from <= k < x_until and y_from <= k < rank):
                continue
            if m + 1 == len(right) or k <= right[m + 1][0]:
                return True
    return False
