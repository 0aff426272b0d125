"""Pretokenization: special-token splitting, GPT-2's pattern, safe chunk cuts, parallel counting.

BPE never merges across a pretoken, so training only needs how often each distinct pretoken
occurs, and encoding can cache each pretoken's ids. Big inputs are cut into chunks that are
pretokenized independently; ``safe_cut`` finds cut points where that gives exactly the same
pretokens as the whole text would.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import regex

from lmkit.errors import DataError

# GPT-2's pretokenizer: contractions, letters, numbers and other symbols each with at most one
# leading space, then whitespace runs. ``\s+(?!\S)`` leaves the last space of a run to start
# the next word, so " the" in "a  the" stays one pretoken.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PRETOKEN_RE = regex.compile(GPT2_PATTERN)

# Files a directory input contributes (others, like .bin/.json outputs, are ignored).
TEXT_SUFFIXES = (".txt", ".text", ".md")

ProgressFn = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: how library code reports progress without printing."""


def list_text_files(path: Path) -> list[Path]:
    """The text files an input path names: the file itself, or a directory's text files.

    Args:
        path: A file (any name), or a directory whose ``*.txt``/``*.text``/``*.md`` files
            (top level, sorted by name) are used.

    Returns:
        The files, in a stable order.

    Raises:
        DataError: the path does not exist, or the directory holds no text files.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise DataError(f"{path}: directory has no text files ({', '.join('*' + s for s in TEXT_SUFFIXES)})")
        return files
    if path.exists():  # a device, FIFO or socket: its size says nothing, and reading may never end
        raise DataError(f"{path}: not a regular file or directory; pass a text file or a directory of them")
    raise DataError(f"{path}: input not found")


def special_splitter(special_tokens: list[str]) -> re.Pattern | None:
    """A pattern that finds special tokens in text, longest first.

    Sorting by length makes ``<|endoftext|><|endoftext|>`` (when registered) win over two
    ``<|endoftext|>``: alternation takes the first alternative that matches.

    Returns:
        A compiled pattern with one capturing group, or ``None`` when there are no specials.
    """
    if not special_tokens:
        return None
    ordered = sorted(set(special_tokens), key=lambda s: (-len(s), s))
    return re.compile("(" + "|".join(re.escape(s) for s in ordered) + ")")


def split_specials(text: str, splitter: re.Pattern | None) -> list[str]:
    """Split text around special tokens: even positions are plain text, odd ones specials.

    Example: ``split_specials("a<|e|>b", special_splitter(["<|e|>"]))`` -> ``["a", "<|e|>", "b"]``.
    """
    return [text] if splitter is None else splitter.split(text)


# A cut between a printable, non-space ASCII character and an ASCII space or newline is a
# pretoken boundary of the whole text: no pretoken ends in whitespace after a non-space, and
# the pattern has no lookbehind, so both sides pretokenize as they would together. ASCII bytes
# never occur inside a multi-byte UTF-8 character, so the same test works on bytes.
_CUT_BYTES = (b" ", b"\n")
_NON_SPACE = frozenset(range(0x21, 0x7F))


def safe_cut(data: bytes, specials: list[bytes], end: int | None = None) -> int:
    """The last position in ``data[:end]`` where it can be cut without changing pretokens.

    The cut also never falls inside a special token.

    Args:
        data: UTF-8 text as bytes.
        specials: The special tokens, UTF-8 encoded.
        end: Search before this position (default: the end of ``data``).

    Returns:
        The cut position, or 0 when there is none.
    """
    end = len(data) if end is None else end
    while end > 1:
        pos = max(data.rfind(c, 1, end) for c in _CUT_BYTES)
        if pos <= 0:
            return 0
        if data[pos - 1] in _NON_SPACE:
            straddle = _straddling_special(data, specials, pos)
            if straddle < 0:
                return pos
            end = straddle
        else:
            end = pos
    return 0


def _straddling_special(data: bytes, specials: list[bytes], pos: int) -> int:
    # Start of a special token occurrence that covers both data[pos-1] and data[pos], or -1.
    for s in specials:
        start = data.find(s, max(0, pos - len(s) + 1), pos + len(s) - 1)
        if 0 <= start < pos:
            return start
    return -1


def plan_chunks(files: list[Path], num_chunks: int, specials: list[str]) -> list[tuple[Path, int, int]]:
    """Cut files into about ``num_chunks`` byte ranges at safe points, for parallel work.

    Args:
        files: Text files.
        num_chunks: How many pieces to aim for over all files together.
        specials: Special tokens (cuts never fall inside one).

    Returns:
        ``(path, start, end)`` byte ranges covering every file exactly once.
    """
    sizes = [f.stat().st_size for f in files]
    base = max(1, sum(sizes) // max(1, num_chunks))
    encoded = [s.encode("utf-8") for s in specials]
    window = 1 << 16
    back = max((len(s) for s in encoded), default=0)
    chunks = []
    for path, size in zip(files, sizes):
        start, step = 0, max(base, back + 1)
        with open(path, "rb") as f:
            while start + step < size:
                # Look for a cut in the window after the target position; if the window has
                # none (a long run without spaces), the chunk grows by a window and we retry.
                # The block starts `back` bytes early so a special token that began just
                # before the target is seen whole.
                f.seek(start + step - back)
                cut = safe_cut(f.read(window + back), encoded)
                if cut <= back:
                    step += window
                    continue
                end = start + step - back + cut
                chunks.append((path, start, end))
                start, step = end, max(base, back + 1)
        chunks.append((path, start, size))
    return chunks


def decode_utf8(data: bytes, errors: str, path: Path, offset: int) -> str:
    """Decode UTF-8, turning a failure into a ``DataError`` that gives the byte offset.

    Args:
        data: The bytes.
        errors: ``"strict"`` or ``"replace"`` (invalid bytes become U+FFFD).
        path: The file they came from, for the message.
        offset: Where ``data`` starts in that file.
    """
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not valid UTF-8 at byte offset {offset + e.start} ({e.reason}); "
            "fix the file or pass --errors replace"
        ) from None


def count_chunk(path: Path, start: int, end: int, specials: list[str], errors: str) -> Counter:
    """Count the pretokens in one byte range of a file (special tokens are left out).

    Returns:
        pretoken string -> occurrences.
    """
    with open(path, "rb") as f:
        f.seek(start)
        text = decode_utf8(f.read(end - start), errors, path, start)
    counts: Counter = Counter()
    findall = PRETOKEN_RE.findall
    for segment in split_specials(text, special_splitter(specials))[::2]:
        counts.update(findall(segment))
    return counts


def _count_chunk_args(args: tuple) -> tuple[Counter, int]:
    path, start, end, specials, errors = args
    return count_chunk(path, start, end, specials, errors), end - start


def count_pretokens(
    files: list[Path],
    special_tokens: list[str],
    *,
    workers: int | None = None,
    errors: str = "strict",
    progress: ProgressFn | None = None,
) -> Counter:
    """Count every distinct pretoken in the files, using several processes for big inputs.

    Args:
        files: Text files.
        special_tokens: Removed from the text before pretokenizing (never part of a pretoken).
        workers: Processes to use; default: all cores when the input is over 4 MB, else 1.
        errors: How to treat invalid UTF-8: ``"strict"`` (error with the byte offset) or
            ``"replace"``.
        progress: Called as ``progress("pretokenize", bytes_done, bytes_total)``.

    Returns:
        pretoken string -> occurrences, over all files. Memory grows with the number of
        distinct pretokens, not with the input size.
    """
    total = sum(f.stat().st_size for f in files)
    cores = os.cpu_count() or 1
    if workers is None:
        workers = cores if total > (4 << 20) else 1
    # More processes than cores only adds memory (each spawned worker imports Python anew), and
    # a typed `--workers 1000000` must not start a million of them; counts do not depend on it.
    workers = max(1, min(workers, cores))
    # Several chunks per worker so a slow chunk does not leave the others idle.
    chunks = plan_chunks(files, workers * 4 if workers > 1 else len(files), special_tokens)
    jobs = [(path, start, end, special_tokens, errors) for path, start, end in chunks]
    counts: Counter = Counter()
    done = 0
    if progress:
        progress("pretokenize", 0, total)
    results: Iterator[tuple[Counter, int]]
    if workers > 1 and len(jobs) > 1:
        # spawn, not fork: the caller may hold threads (a progress bar) that fork would copy mid-lock.
        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for part, nbytes in pool.imap_unordered(_count_chunk_args, jobs):
                counts.update(part)
                done += nbytes
                if progress:
                    progress("pretokenize", done, total)
    else:
        for job in jobs:
            part, nbytes = _count_chunk_args(job)
            counts.update(part)
            done += nbytes
            if progress:
                progress("pretokenize", done, total)
    return counts


@functools.cache
def explicit_pattern() -> str:
    """GPT-2's pattern with its character classes spelled out as Python ``regex``'s code points.

    Returns:
        A pattern for tiktoken's Rust regex that splits text exactly as ``PRETOKEN_RE`` does.
    """
    # Every code point except surrogates (which str.encode refuses), as one string.
    points = np.concatenate([np.arange(0xD800, dtype=np.uint32), np.arange(0xE000, 0x110000, dtype=np.uint32)])
    everything = points.tobytes().decode("utf-32-le")

    def ranges(cls: str) -> str:
        found = np.frombuffer("".join(regex.findall(cls + "+", everything)).encode("utf-32-le"), dtype=np.uint32)
        breaks = np.flatnonzero(np.diff(found) != 1)
        starts = np.concatenate([found[:1], found[breaks + 1]])
        ends = np.concatenate([found[breaks], found[-1:]])
        # \UXXXXXXXX: the one code point escape both Rust's regex and Python's regex read.
        return "".join(f"\\U{a:08X}" if a == b else f"\\U{a:08X}-\\U{b:08X}" for a, b in zip(starts, ends))

    letters, numbers, space = ranges(r"\p{L}"), ranges(r"\p{N}"), ranges(r"\s")
    pattern = (
        GPT2_PATTERN.replace(r"[^\s\p{L}\p{N}]", f"[^{space}{letters}{numbers}]")
        .replace(r"\p{L}", f"[{letters}]")
        .replace(r"\p{N}", f"[{numbers}]")
        .replace(r"\S", f"[^{space}]")
        .replace(r"\s", f"[{space}]")
    )
    # The substitutions above assume GPT-2's pattern as written; a changed pattern must fail loudly.
    if "\\p{" in pattern or "\\s" in pattern or "\\S" in pattern:
        raise RuntimeError("explicit_pattern: GPT2_PATTERN has a class this function does not spell out")
    return pattern
