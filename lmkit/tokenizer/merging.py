"""The BPE merge loop over flat numpy arrays: every merge's word updates in a few vector operations.

All distinct pretokens are laid end to end in one array of symbols, ``sym``, with a doubly
linked list (``nxt``/``prv``) through each word's live symbols and the word's count at every
position (``cnt``). A pair "at position i" is ``(sym[i], sym[nxt[i]])``. Merging ``(a, b)``
into ``N`` at an occurrence ``i`` (right half at ``j = nxt[i]``) writes ``N`` to ``sym[i]``,
unlinks ``j``, and changes the counts of only the neighbouring pairs:

    x a b y  ->  x N y:   (x, a), (a, b), (b, y) lose cnt[i]; (x, N), (N, y) gain it
    a b a b  ->  N N:     the shared (b, a) is lost once, (N, N) gained once

``where[pair]`` lists (as arrays) the positions where the pair was created; entries go stale
when a neighbour merges and are filtered when the pair is merged (its symbols no longer match).
The best pair comes from a heap with lazy invalidation, as in ``train.learn_merges``. Positions
never move, so a merge touching k occurrences costs O(k) numpy work plus a Python loop over the
distinct pairs whose count changed (few), not a Python loop over words: at 32k merges over
hundreds of thousands of distinct pretokens that is what makes training fast.

Memory: 20 bytes per symbol of the distinct pretokens (int32 sym/nxt/prv, int64 cnt) plus about
4 bytes per ``where`` entry (at most three per symbol).
"""

from __future__ import annotations

import heapq

import numpy as np

from lmkit.tokenizer.pretokenize import ProgressFn

BYTE_TOKENS = 256


def descending_key(token: bytes) -> str:
    """A key that sorts byte strings in *reverse* lexicographic order (for a min-heap).

    Each byte ``b`` becomes the character ``255 - b`` and a terminator above all of them
    (U+0100) is appended, so a prefix sorts after its extensions: ``b"ab" > b"a"`` becomes
    ``key(b"ab") < key(b"a")``. Strings compare in C, and the unique terminator keeps
    (key(left), key(right)) unambiguous.
    """
    return "".join([chr(255 - b) for b in token]) + "\u0100"


def learn_merges_flat(
    word_counts: dict[bytes, int], num_merges: int, progress: ProgressFn | None = None
) -> list[tuple[bytes, bytes]]:
    """Learn up to ``num_merges`` merges from pretoken counts (see ``train.learn_merges``).

    Returns:
        The merges, in the order learned: the most frequent pair each step, ties to the
        greater pair of byte strings.
    """
    # No sorting needed: counts are sums and ties are broken by bytes, so every step is the
    # same whatever order the pretokens come in.
    words = list(word_counts)
    if not words or num_merges <= 0:
        return []
    lens = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    sym = np.frombuffer(b"".join(words), dtype=np.uint8).astype(np.int32)
    size = len(sym)
    if size == 0:
        return []  # only empty pretokens (a caller's dict; the pretokenizer never yields one)
    counts = np.fromiter(word_counts.values(), dtype=np.int64, count=len(words))
    # One extra position at the end is a sentinel: "no neighbour" is -1, and index -1 reads
    # the sentinel, whose symbol -1 matches no token and makes every pair code holding it
    # negative. So neighbours need no masks; negative codes are dropped once, at the end.
    sym = np.append(sym, np.int32(-1))
    cnt = np.append(np.repeat(counts, lens), np.int64(0))
    ends = np.cumsum(lens) - 1
    nxt = np.arange(1, size + 2, dtype=np.int32)
    nxt[ends] = -1
    nxt[size] = -1
    prv = np.arange(-1, size, dtype=np.int32)
    prv[ends[:-1] + 1] = -1
    # Every merge removes a symbol, so ids stay below 256 + min(num_merges, size - words).
    shift = (BYTE_TOKENS + max(0, min(num_merges, size - len(words)))).bit_length()
    removed = np.zeros(size + 1, dtype=bool)  # scratch: right halves of the current merge
    # Where each token was written (ascending); entries go stale as tokens merge further and
    # are dropped whenever the array is scanned. A pair's occurrences are found from the
    # rarer of its two tokens, so no per-pair index has to be kept.
    order = np.argsort(sym, kind="stable").astype(np.int32)
    bounds = np.searchsorted(sym[order], np.arange(BYTE_TOKENS + 1)).tolist()
    where: list[np.ndarray] = [order[bounds[t]:bounds[t + 1]] for t in range(BYTE_TOKENS)]

    first = np.flatnonzero(nxt >= 0).astype(np.int32)
    codes = (sym[first].astype(np.int64) << shift) | sym[first + 1]
    pair_counts = dict(_add_up(codes, cnt[first]))
    del order, first, codes

    token_bytes = [bytes([b]) for b in range(BYTE_TOKENS)]
    keys = [descending_key(t) for t in token_bytes]
    mask = (1 << shift) - 1
    # Heap entries: (-count, key of left, key of right, pair): the smallest entry is the most
    # frequent pair, ties broken towards the greater byte strings. An entry's count is never
    # below the pair's current count: a count that falls pushes nothing (the old entry, when
    # it comes up, is pushed again with the count of then), one that rises pushes an entry.
    heap = [(-c, keys[q >> shift], keys[q & mask], q) for q, c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    while len(merges) < num_merges and heap:
        neg, _, _, pair = heapq.heappop(heap)
        current = pair_counts.get(pair)
        if current != -neg:
            if current:  # fell since pushed: back in at its count now
                heapq.heappush(heap, (-current, keys[pair >> shift], keys[pair & mask], pair))
            continue
        a, b = pair >> shift, pair & mask
        new = len(token_bytes)
        token_bytes.append(token_bytes[a] + token_bytes[b])
        keys.append(keys[a][:-1] + keys[b])
        merges.append((token_bytes[a], token_bytes[b]))
        at = _occurrences(sym, nxt, prv, where, a, b)
        at, changes = _merge_at(sym, nxt, prv, cnt, removed, at, a, b, new, shift)
        where.append(at)
        # Left to right, a merge leaves no (a, b) behind: the pair is gone (and its own
        # losses, from overlaps like "a a a", with it).
        del pair_counts[pair]
        for q, change in changes:
            if change > 0:  # a pair holding `new`: new, so this is its count
                pair_counts[q] = change
                heapq.heappush(heap, (-change, keys[q >> shift], keys[q & mask], q))
            elif q != pair:
                total = pair_counts[q] + change
                if total > 0:
                    pair_counts[q] = total
                else:
                    del pair_counts[q]
        if len(heap) > 2 * len(pair_counts) + 65536:  # drop stale entries: memory stays bounded
            heap = [(-c, keys[q >> shift], keys[q & mask], q) for q, c in pair_counts.items()]
            heapq.heapify(heap)
        # Not every merge: a progress bar's redraw would cost more than the merge.
        if progress and (len(merges) % 64 == 1 or len(merges) == num_merges):
            progress("merge", len(merges), num_merges)
    if progress and merges and len(merges) < num_merges and len(merges) % 64 != 1:
        progress("merge", len(merges), num_merges)  # stopped early, out of pairs: the last count
    return merges


def _occurrences(sym, nxt, prv, where, a, b) -> np.ndarray:
    """The positions holding the pair ``(a, b)`` now, ascending (overlaps in "a a a" included)."""
    if len(where[a]) <= len(where[b]):
        at = where[a] = where[a][sym[where[a]] == a]  # compacted: merged/dead entries dropped
        return at[sym[nxt[at]] == b]  # no right neighbour reads the sentinel: no match
    bs = where[b] = where[b][sym[where[b]] == b]
    left = prv[bs]
    return left[sym[left] == a]


def _merge_at(sym, nxt, prv, cnt, removed, at, a, b, new, shift):
    """Merge ``(a, b)`` at the listed positions that still hold it.

    Args:
        at: Positions holding the pair, ascending (from ``_occurrences``); with ``a == b``,
            overlapping ones are thinned here.

    Returns:
        ``(written, changes)``: the positions where ``new`` was written, and (pair, count
        change) for every pair whose count changed: negative for the old pairs next to a
        merge, positive (the whole count) for the new pairs, which all hold ``new``.
    """
    right = nxt[at]
    if a == b:
        # In a run "a a a a" the occurrences overlap; left to right takes every other one,
        # counted from the start of each run (an occurrence continues a run when it begins
        # at the previous one's right half).
        idx = np.arange(len(at))
        cont = np.zeros(len(at), dtype=bool)
        cont[1:] = right[:-1] == at[1:]
        run_start = np.maximum.accumulate(np.where(cont, 0, idx))
        keep = (idx - run_start) % 2 == 0
        at, right = at[keep], right[keep]
    c = cnt[at]
    left, after = prv[at], nxt[right]
    removed[right] = True
    # Lost: (x, a) unless x is the right half of the merge just before (then (b, a) is
    # counted once, as that merge's right pair), and (b, y) for every y.
    lost_left = np.where(removed[left], -1, (sym[left].astype(np.int64) << shift) | a)
    lost_right = (np.int64(b) << shift) | sym[after]
    removed[right] = False
    # Apply: N at `at`, right halves unlinked (a missing `after` writes the sentinel's prv).
    sym[at] = new
    sym[right] = -1
    nxt[at] = after
    prv[after] = at
    # Gained: (x', N) with x' the new left neighbour (N itself after an adjacent merge), and
    # (N, y) unless y is merged too (its (N, N) is that merge's left pair).
    gained_left = (sym[prv[at]].astype(np.int64) << shift) | new
    y = sym[after]
    gained_right = np.where(y == new, -1, (np.int64(new) << shift) | y)
    codes = np.concatenate([lost_left, lost_right, gained_left, gained_right])
    weights = np.concatenate([-c, -c, c, c])
    real = codes >= 0
    # Lost pairs never hold `new` and gained ones always do, so no code is in both: a
    # negative sum is a loss, a positive one a new pair's count.
    return at, _add_up(codes[real], weights[real])


def _add_up(codes: np.ndarray, weights: np.ndarray) -> list[tuple[int, int]]:
    """(code, sum of its weights) for each distinct code, exactly in int64."""
    if len(codes) == 0:
        return []
    order = np.argsort(codes, kind="stable")
    codes, weights = codes[order], weights[order]
    starts = _starts(codes)
    return list(zip(codes[starts].tolist(), np.add.reduceat(weights, starts).tolist()))


def _starts(codes: np.ndarray) -> np.ndarray:
    # Where each run of equal values begins in a sorted array (np.r_ would cost more than the work).
    starts = np.empty(len(codes), dtype=bool)
    starts[0] = True
    np.not_equal(codes[1:], codes[:-1], out=starts[1:])
    return np.flatnonzero(starts)
