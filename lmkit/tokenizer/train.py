"""Byte-level BPE training with incremental pair counts.

Ids: the 256 single bytes are 0..255 (id = byte value), merge ``k`` creates id ``256 + k``,
and special tokens come last in the order given (like GPT-2, where ``<|endoftext|>`` = 50256).
``vocab_size`` counts all three, so a vocabulary of 10,000 with one special learns 9,743 merges.

Each step merges the most frequent adjacent pair, counted over all pretokens weighted by how
often they occur; ties go to the lexicographically greater pair of byte strings, so training is
deterministic whatever the order pretokens were counted in. Pairs never cross a pretoken or a
special token (specials are cut out before pretokenizing). Overlapping pairs count each time:
"aaa" holds ("a", "a") twice, and merging it gives "aa a".

Instead of recounting after every merge, an index (pair -> words holding it) finds the few
words a merge touches; only their pairs' counts change. A heap with lazy invalidation yields
the best pair: stale entries (whose count no longer matches) are skipped when popped.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from lmkit.errors import DataError, TokenizerError
from lmkit.tokenizer.directory import claim_output
from lmkit.tokenizer.pretokenize import ProgressFn, count_pretokens, list_text_files
from lmkit.tokenizer.tokenizer import Tokenizer

BYTE_TOKENS = 256
# Token files store ids as uint32 at most. (Memory does not grow with vocab_size itself:
# training stops when the text has no pairs left to merge.)
MAX_VOCAB_SIZE = 2**32


def _descending(token: bytes) -> tuple[int, ...]:
    """A key that sorts byte strings in *reverse* lexicographic order (for a min-heap).

    Each byte is complemented and a terminator above every complemented byte is appended, so
    a prefix sorts after its extensions: ``b"ab" > b"a"`` becomes ``key(b"ab") < key(b"a")``.
    """
    return (*(255 - b for b in token), 256)


def merge_word(word: tuple[int, ...], left: int, right: int, new: int) -> tuple[int, ...]:
    """Replace every ``(left, right)`` in ``word``, scanning left to right.

    Example: ``merge_word((1, 1, 1, 2), 1, 1, 9)`` -> ``(9, 1, 2)``.
    """
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == left and word[i + 1] == right:
            out.append(new)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def learn_merges(
    word_counts: dict[bytes, int], num_merges: int, progress: ProgressFn | None = None
) -> list[tuple[bytes, bytes]]:
    """Learn up to ``num_merges`` merges from pretoken counts.

    Args:
        word_counts: pretoken bytes -> occurrences.
        num_merges: Stop after this many (or earlier, when no pair occurs any more).
        progress: Called as ``progress("merge", done, num_merges)``.

    Returns:
        The merges, in the order learned.
    """
    # Sorted so the word indices, and with them every tie-free step, do not depend on counting order.
    items = sorted(word_counts.items())
    words: list[tuple[int, ...]] = [tuple(w) for w, _ in items]
    counts = [c for _, c in items]
    token_bytes = [bytes([b]) for b in range(BYTE_TOKENS)]
    keys = [_descending(t) for t in token_bytes]

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, (word, count) in enumerate(zip(words, counts)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += count
            where[pair].add(wi)
    # Heap entries: (-count, reversed bytes of left, of right, left, right): the smallest entry
    # is the most frequent pair, ties broken towards the greater byte strings.
    heap = [(-c, keys[a], keys[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    while len(merges) < num_merges and heap:
        neg, _, _, a, b = heapq.heappop(heap)
        if pair_counts.get((a, b), 0) != -neg:
            continue  # stale: the count changed after this entry was pushed
        new = len(token_bytes)
        token_bytes.append(token_bytes[a] + token_bytes[b])
        keys.append(_descending(token_bytes[new]))
        merges.append((token_bytes[a], token_bytes[b]))

        delta: dict[tuple[int, int], int] = defaultdict(int)
        for wi in where.pop((a, b)):
            word, count = words[wi], counts[wi]
            merged = merge_word(word, a, b, new)
            if len(merged) == len(word):
                continue  # the index is not pruned, so it can name words that lost the pair
            for pair in zip(word, word[1:]):
                delta[pair] -= count
            for pair in zip(merged, merged[1:]):
                delta[pair] += count
                where[pair].add(wi)
            words[wi] = merged
        for pair, change in delta.items():
            if change == 0:
                continue
            total = pair_counts[pair] + change
            if total > 0:
                pair_counts[pair] = total
                heapq.heappush(heap, (-total, keys[pair[0]], keys[pair[1]], *pair))
            else:
                del pair_counts[pair]
                where.pop(pair, None)
        if progress:
            progress("merge", len(merges), num_merges)
    return merges


def train_bpe(
    input_path: str | Path | Sequence[str | Path],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    *,
    workers: int | None = None,
    errors: str = "strict",
    progress: ProgressFn | None = None,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer.

    Args:
        input_path: A text file, a directory of text files, or a list of either.
        vocab_size: Total vocabulary: 256 bytes + merges + special tokens.
        special_tokens: Strings that get their own id and are never merged or merged across,
            e.g. ``["<|endoftext|>"]``.
        workers: Processes for pretokenization (default: all cores for inputs over 4 MB).
        errors: Invalid UTF-8 in the input: ``"strict"`` (error with byte offset) or ``"replace"``.
        progress: Called as ``progress(stage, done, total)`` for "pretokenize" (bytes) and "merge".

    Returns:
        ``(vocab, merges)``: id -> token bytes, and the merges in the order learned. The vocab
        is smaller than ``vocab_size`` only if the text ran out of pairs to merge.

    Raises:
        TokenizerError: ``vocab_size`` below 256 + the number of special tokens or above
            ``MAX_VOCAB_SIZE``, or a special token that is empty or a single byte.
        DataError: missing, empty or non-UTF-8 input.
    """
    specials, files = _check_arguments(input_path, vocab_size, special_tokens, errors)
    word_counts = _count_words(files, specials, workers, errors, progress)
    return _learn_vocab(word_counts, vocab_size, specials, progress)


def _count_words(files: list[Path], specials: list[str], workers: int | None, errors: str,
                 progress: ProgressFn | None) -> dict[bytes, int]:
    counts = count_pretokens(files, specials, workers=workers, errors=errors, progress=progress)
    return {w.encode("utf-8"): c for w, c in counts.items()}


def _learn_vocab(word_counts: dict[bytes, int], vocab_size: int, specials: list[str],
                 progress: ProgressFn | None) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    merges = learn_merges(word_counts, vocab_size - BYTE_TOKENS - len(specials), progress)
    vocab = {b: bytes([b]) for b in range(BYTE_TOKENS)}
    for left, right in merges:
        vocab[len(vocab)] = left + right
    for s in specials:
        vocab[len(vocab)] = s.encode("utf-8")
    return vocab, merges


def _check_arguments(
    input_path: str | Path | Sequence[str | Path], vocab_size: int, special_tokens: Sequence[str], errors: str
) -> tuple[list[str], list[Path]]:
    # Everything train_bpe can refuse without reading the text, so callers can refuse early.
    specials = list(dict.fromkeys(special_tokens))
    if any(not isinstance(s, str) or not s for s in specials):
        raise TokenizerError("special tokens must be non-empty strings")
    single = next((s for s in specials if len(s.encode("utf-8")) == 1), None)
    if single is not None:
        raise TokenizerError(
            f"special token {single!r} is a single byte, which already has its own id ({ord(single)}); "
            "a special token needs at least two bytes, e.g. '<|endoftext|>'"
        )
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise TokenizerError(f"vocab size must be an integer, not {vocab_size!r}")
    if vocab_size < BYTE_TOKENS + len(specials):
        raise TokenizerError(
            f"vocab size {vocab_size} is too small: it must be at least {BYTE_TOKENS + len(specials)} "
            f"(256 bytes + {len(specials)} special token{'s' * (len(specials) != 1)})"
        )
    if vocab_size > MAX_VOCAB_SIZE:
        raise TokenizerError(
            f"vocab size {vocab_size:,} is too large: token files hold ids as uint32, so at most {MAX_VOCAB_SIZE:,}"
        )
    if errors not in ("strict", "replace"):
        raise TokenizerError(f"errors must be 'strict' or 'replace', not {errors!r}")
    paths = [input_path] if isinstance(input_path, (str, Path)) else list(input_path)
    files = [f for p in paths for f in list_text_files(Path(p))]
    _require_text(files)
    return specials, files


def train_and_save(
    input_path: str | Path | Sequence[str | Path],
    vocab_size: int,
    output: str | Path,
    special_tokens: Sequence[str] = (),
    *,
    force: bool = False,
    workers: int | None = None,
    errors: str = "strict",
    progress: ProgressFn | None = None,
) -> Tokenizer:
    """Train a tokenizer (``train_bpe``) and write it to ``output`` as one unit.

    An output that already holds a tokenizer (and not ``force``) is refused before any time is
    spent. The output is then locked after the input has been read and pretokenized (where bad
    input fails, so a failure leaves nothing behind, not even a lock file) and before merges are
    learned; the lock is held until the files are in place, so two trainings never write one
    directory: the second is refused.

    Args:
        input_path, vocab_size, special_tokens, workers, errors, progress: As for ``train_bpe``.
        output: The tokenizer directory (created if missing).
        force: Replace a tokenizer already in ``output``.

    Returns:
        The trained tokenizer, as saved.

    Raises:
        TokenizerError, DataError: as ``train_bpe``, and as ``Tokenizer.save``.
        LockHeldError: another lmkit process is writing ``output``.
    """
    specials, files = _check_arguments(input_path, vocab_size, special_tokens, errors)
    claim = claim_output(Path(output), force=force)
    claim.check()
    word_counts = _count_words(files, specials, workers, errors, progress)
    with claim as out:  # checks again, now under the lock
        vocab, merges = _learn_vocab(word_counts, vocab_size, specials, progress)
        tok = Tokenizer(vocab, merges, specials)
        out.write(tok.serialize())
    return tok


def _require_text(files: list[Path]) -> None:
    # An empty corpus would "train" a byte-only tokenizer silently; say so instead.
    if all(f.stat().st_size == 0 for f in files):
        names = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
        raise DataError(f"{names}: input is empty; nothing to train on")
