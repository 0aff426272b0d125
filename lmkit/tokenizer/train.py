"""Byte-level BPE training with incremental pair counts.

Ids: the 256 single bytes are 0..255 (id = byte value), merge ``k`` creates id ``256 + k``,
and special tokens come last in the order given (like GPT-2, where ``<|endoftext|>`` = 50256).
``vocab_size`` counts all three, so a vocabulary of 10,000 with one special learns 9,743 merges.

Each step merges the most frequent adjacent pair, counted over all pretokens weighted by how
often they occur; ties go to the lexicographically greater pair of byte strings, so training is
deterministic whatever the order pretokens were counted in. Pairs never cross a pretoken or a
special token (specials are cut out before pretokenizing). Overlapping pairs count each time:
"aaa" holds ("a", "a") twice, and merging it gives "aa a".

Instead of recounting after every merge, only the pairs next to a merged spot change count;
``lmkit.tokenizer.merging`` does that over flat numpy arrays of all distinct pretokens, and a
heap with lazy invalidation yields the best pair. Pretokens are counted by
``lmkit.tokenizer.counting`` from any input format, in worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lmkit.errors import DataError, TokenizerError
from lmkit.tokenizer.directory import claim_output
from lmkit.tokenizer.counting import count_corpus
from lmkit.tokenizer.merging import BYTE_TOKENS, learn_merges_flat
from lmkit.tokenizer.pretokenize import ProgressFn
from lmkit.tokenizer.tokenizer import Tokenizer

if TYPE_CHECKING:
    from lmkit.data.sources import ReadOptions, SourceFile

# Token files store ids as uint32 at most. (Memory does not grow with vocab_size itself:
# training stops when the text has no pairs left to merge.)
MAX_VOCAB_SIZE = 2**32


def merge_word(word: tuple[int, ...], left: int, right: int, new: int) -> tuple[int, ...]:
    """Replace every ``(left, right)`` in ``word``, scanning left to right (the rule merges follow).

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
        The merges, in the order learned: each step the most frequent pair, ties to the
        lexicographically greater pair of byte strings.
    """
    return learn_merges_flat(word_counts, num_merges, progress)


def train_bpe(
    input_path: str | Path | Sequence[str | Path],
    vocab_size: int,
    special_tokens: Sequence[str] = (),
    *,
    workers: int | None = None,
    errors: str = "strict",
    text_key: str = "text",
    skip_bad_lines: bool = False,
    progress: ProgressFn | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer.

    Args:
        input_path: A file, a directory (recursive) or a glob, or a list of them, in any format
            ``lmkit.data.sources.resolve_inputs`` reads: plain text, JSON Lines, parquet,
            Arrow, a HuggingFace ``save_to_disk`` folder; ``.gz``/``.zst``/``.xz`` too.
        vocab_size: Total vocabulary: 256 bytes + merges + special tokens.
        special_tokens: Strings that get their own id and are never merged or merged across,
            e.g. ``["<|endoftext|>"]``.
        workers: Processes for pretokenization (default: all cores for inputs over 4 MB).
        errors: Invalid UTF-8 in the input: ``"strict"`` (error with byte offset) or ``"replace"``.
        text_key: JSON Lines: the (dotted) key of the text; parquet/Arrow: its column.
        skip_bad_lines: JSON Lines/tables: skip (and count) malformed lines, a missing key or a
            non-string value instead of stopping.
        progress: Called as ``progress(stage, done, total)`` for "pretokenize" (bytes) and "merge".
        warn: Called with one line per source that had lines skipped.

    Returns:
        ``(vocab, merges)``: id -> token bytes, and the merges in the order learned. The vocab
        is smaller than ``vocab_size`` only if the text ran out of pairs to merge.

    Raises:
        TokenizerError: ``vocab_size`` below 256 + the number of special tokens or above
            ``MAX_VOCAB_SIZE``, or a special token that is empty or a single byte.
        DataError: missing, empty or non-UTF-8 input.
    """
    specials, sources, opts = _check_arguments(input_path, vocab_size, special_tokens, errors, text_key, skip_bad_lines)
    word_counts = _count_words(sources, opts, specials, workers, progress, warn)
    return _learn_vocab(word_counts, vocab_size, specials, progress)


def _count_words(sources: list[SourceFile], opts: ReadOptions, specials: list[str], workers: int | None,
                 progress: ProgressFn | None, warn: Callable[[str], None] | None) -> dict[bytes, int]:
    from lmkit.data.sources import skipped_summary

    counts, skipped = count_corpus(sources, opts, specials, workers=workers, progress=progress)
    for path, reasons in skipped.items():
        if warn and (line := skipped_summary(path, reasons)):
            warn(line)
    if not counts:
        # Files with nothing but whitespace, specials or skipped lines would "train" a
        # byte-only tokenizer silently; say so instead.
        names = ", ".join(str(s.path) for s in sources[:3]) + (" ..." if len(sources) > 3 else "")
        raise DataError(f"{names}: no text to train on (every document is empty or was skipped)")
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
    input_path: str | Path | Sequence[str | Path], vocab_size: int, special_tokens: Sequence[str], errors: str,
    text_key: str, skip_bad_lines: bool,
) -> tuple[list[str], list[SourceFile], ReadOptions]:
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
    # The data layer reads the inputs; imported here because lmkit.data imports the tokenizer.
    from lmkit.data.sources import ReadOptions, resolve_inputs

    opts = ReadOptions(text_key=text_key, errors=errors, skip_bad_lines=skip_bad_lines)
    paths = [input_path] if isinstance(input_path, (str, Path)) else list(input_path)
    if not paths:
        raise DataError("no input given; pass a file, a directory or a glob")
    sources = resolve_inputs(paths)
    _require_text(sources)
    return specials, sources, opts


def train_and_save(
    input_path: str | Path | Sequence[str | Path],
    vocab_size: int,
    output: str | Path,
    special_tokens: Sequence[str] = (),
    *,
    force: bool = False,
    workers: int | None = None,
    errors: str = "strict",
    text_key: str = "text",
    skip_bad_lines: bool = False,
    progress: ProgressFn | None = None,
    warn: Callable[[str], None] | None = None,
) -> Tokenizer:
    """Train a tokenizer (``train_bpe``) and write it to ``output`` as one unit.

    An output that already holds a tokenizer (and not ``force``) is refused before any time is
    spent. The output is then locked after the input has been read and pretokenized (where bad
    input fails, so a failure leaves nothing behind, not even a lock file) and before merges are
    learned; the lock is held until the files are in place, so two trainings never write one
    directory: the second is refused.

    Args:
        input_path, vocab_size, special_tokens, workers, errors, text_key, skip_bad_lines,
            progress, warn: As for ``train_bpe``.
        output: The tokenizer directory (created if missing).
        force: Replace a tokenizer already in ``output``.

    Returns:
        The trained tokenizer, as saved.

    Raises:
        TokenizerError, DataError: as ``train_bpe``, and as ``Tokenizer.save``.
        LockHeldError: another lmkit process is writing ``output``.
    """
    specials, sources, opts = _check_arguments(input_path, vocab_size, special_tokens, errors, text_key, skip_bad_lines)
    claim = claim_output(Path(output), force=force)
    claim.check()
    word_counts = _count_words(sources, opts, specials, workers, progress, warn)
    with claim as out:  # checks again, now under the lock
        vocab, merges = _learn_vocab(word_counts, vocab_size, specials, progress)
        tok = Tokenizer(vocab, merges, specials)
        out.write(tok.serialize())
    return tok


def _require_text(sources: list[SourceFile]) -> None:
    # An empty corpus would "train" a byte-only tokenizer silently; say so before any work.
    if all(s.size == 0 for s in sources):
        names = ", ".join(str(s.path) for s in sources[:3]) + (" ..." if len(sources) > 3 else "")
        raise DataError(f"{names}: input is empty; nothing to train on")
