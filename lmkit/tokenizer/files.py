"""Tokenizer file formats: GPT-2's ``vocab.json`` + ``merges.txt`` and lmkit's ``tokenizer.json``.

GPT-2 stores byte strings as printable unicode strings: each of the 256 bytes maps to one
character (printable bytes map to themselves, the rest to code points from U+0100 up), so a
token like b" the" is written ``"Ġthe"``. lmkit writes the same two files so other tools
(tiktoken, HuggingFace) can read its tokenizers, plus ``tokenizer.json``, which records what
the GPT-2 files cannot: which tokens are special, and a content hash that token files cite.

Every reader error names the file and the line (or entry) at fault.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from lmkit.data.tokens import atomic_write_bytes
from lmkit.errors import TokenizerError

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
META_FILE = "tokenizer.json"
META_FORMAT = "lmkit-tokenizer"
META_VERSION = 1
# The header GPT-2's original merges file carried; readers accept files with or without it.
MERGES_HEADER = "#version: 0.2"


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Bytes that are already printable and not whitespace (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``)
    stand for themselves; the other 68 take the code points 256, 257, ... in byte order, which
    is why a space (0x20, the 33rd such byte) is written ``Ġ`` (U+0120).

    Returns:
        A dict from every byte value 0..255 to a one-character string.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@functools.cache
def unicode_to_byte() -> dict[str, int]:
    """The inverse of ``byte_to_unicode``."""
    return {c: b for b, c in byte_to_unicode().items()}


def token_to_str(token: bytes) -> str:
    """Write a token's bytes the GPT-2 way, e.g. ``b" the"`` -> ``"Ġthe"``."""
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def str_to_token(text: str) -> bytes | None:
    """Read a GPT-2-mapped string back into bytes; ``None`` if a character is outside the map."""
    table = unicode_to_byte()
    try:
        return bytes(table[c] for c in text)
    except KeyError:
        return None


def read_vocab(path: Path) -> dict[int, bytes]:
    """Read a GPT-2 style ``vocab.json`` (mapped token string -> id).

    Args:
        path: The file.

    Returns:
        id -> token bytes.

    Raises:
        TokenizerError: unreadable or malformed JSON (with its line and column), a non-integer
            or negative id, an id used twice, or a token with characters outside GPT-2's byte map.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerError(f"{path}: vocabulary file not found") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 (byte offset {e.start}); is this a vocab.json?") from None
    try:
        pairs = json.loads(text, object_pairs_hook=list)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}:{e.lineno}: malformed JSON at column {e.colno} ({e.msg})") from None
    if not isinstance(pairs, list) or not pairs:
        raise TokenizerError(f"{path}: expected a JSON object mapping tokens to ids, got {type(pairs).__name__}")
    vocab: dict[int, bytes] = {}
    for n, (key, idx) in enumerate(pairs, 1):
        token = str_to_token(key)
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            problem = f"id {idx!r} is not a non-negative integer"
        elif token is None:
            problem = "has characters outside GPT-2's byte-to-unicode map"
        elif idx in vocab:
            problem = f"id {idx} is used twice"
        else:
            vocab[idx] = token
            continue
        raise TokenizerError(f"{path}:{_line_of(text, key)}: entry {n} ({key!r}) {problem}")
    return vocab


def _line_of(text: str, key: str) -> int:
    # json does not report where a valid entry sits; find it for the error message only.
    pos = text.find(json.dumps(key)[:-1])
    return text.count("\n", 0, pos) + 1 if pos >= 0 else 0


def read_merges(path: Path) -> tuple[list[tuple[bytes, bytes]], list[int]]:
    """Read a GPT-2 style ``merges.txt``: one ``left right`` pair per line in rank order.

    An optional ``#version`` header and blank lines are skipped.

    Args:
        path: The file.

    Returns:
        The merges, and the line number each came from (for later error messages).

    Raises:
        TokenizerError: a line that is not two space-separated tokens, or a token with
            characters outside GPT-2's byte map.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise TokenizerError(f"{path}: merges file not found") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 (byte offset {e.start}); is this a merges.txt?") from None
    merges: list[tuple[bytes, bytes]] = []
    line_numbers: list[int] = []
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise TokenizerError(f"{path}:{lineno}: expected two tokens separated by one space, got {line!r}")
        left, right = str_to_token(parts[0]), str_to_token(parts[1])
        if left is None or right is None:
            raise TokenizerError(f"{path}:{lineno}: {line!r} has characters outside GPT-2's byte-to-unicode map")
        merges.append((left, right))
        line_numbers.append(lineno)
    return merges, line_numbers


def read_meta(path: Path) -> dict:
    """Read lmkit's ``tokenizer.json``.

    Returns:
        The metadata dict (``format``, ``version``, ``special_tokens``, ``hash``, ...).

    Raises:
        TokenizerError: malformed JSON, a foreign file, or one written by a newer lmkit.
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}:{e.lineno}: malformed JSON at column {e.colno} ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 (byte offset {e.start})") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise TokenizerError(f"{path}: not an lmkit tokenizer metadata file (expected format {META_FORMAT!r})")
    if not isinstance(meta.get("version"), int) or meta["version"] > META_VERSION:
        raise TokenizerError(f"{path}: written by a newer lmkit (version {meta.get('version')!r}); upgrade lmkit")
    specials = meta.get("special_tokens", [])
    if not isinstance(specials, list) or not all(isinstance(s, str) and s for s in specials):
        raise TokenizerError(f"{path}: special_tokens must be a list of non-empty strings")
    return meta


def write_files(
    directory: Path, vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], meta: dict
) -> None:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer.json`` into ``directory``.

    Each file goes to a temporary name and is renamed when complete, and ``tokenizer.json``
    is written last, so a reader never sees a directory that claims to be complete but is not.

    Args:
        directory: Created if missing.
        vocab: id -> token bytes.
        merges: In rank order.
        meta: The ``tokenizer.json`` content (format and version are filled in).

    Raises:
        TokenizerError: the directory cannot be created or written.
    """
    directory = Path(directory)
    vocab_json = json.dumps({token_to_str(vocab[i]): i for i in sorted(vocab)}, ensure_ascii=False)
    merges_txt = "\n".join([MERGES_HEADER, *(f"{token_to_str(a)} {token_to_str(b)}" for a, b in merges)]) + "\n"
    meta_json = json.dumps({"format": META_FORMAT, "version": META_VERSION, **meta}, indent=2, ensure_ascii=False)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(directory / VOCAB_FILE, (vocab_json + "\n").encode("utf-8"))
        atomic_write_bytes(directory / MERGES_FILE, merges_txt.encode("utf-8"))
        atomic_write_bytes(directory / META_FILE, (meta_json + "\n").encode("utf-8"))
    except OSError as e:
        raise TokenizerError(f"cannot write tokenizer files to {directory}: {e.strerror or e}") from None
