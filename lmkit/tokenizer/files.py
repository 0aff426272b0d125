"""Tokenizer file formats: GPT-2's ``vocab.json`` + ``merges.txt`` and lmkit's ``tokenizer.json``.

GPT-2 stores byte strings as printable unicode strings: each of the 256 bytes maps to one
character (printable bytes map to themselves, the rest to code points from U+0100 up), so a
token like b" the" is written ``"Ġthe"``. lmkit writes the same two files so other tools
(tiktoken, HuggingFace) can read its tokenizers, plus ``tokenizer.json``, which records what
the GPT-2 files cannot: which tokens are special, and a content hash that token files cite.

Every reader validates what it reads and raises ``TokenizerError`` naming the file and the line
(or key) at fault and what to do; no file content reaches the ``Tokenizer`` unchecked. Readers take
the file's bytes (``parse_*``) so a directory can be read as one unit (``directory.read_dir``);
``read_*`` are the same for a single path.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path

from lmkit.errors import TokenizerError

VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
META_FILE = "tokenizer.json"
META_FORMAT = "lmkit-tokenizer"
META_VERSION = 1
# The header GPT-2's original merges file carried; readers accept files with or without it.
MERGES_HEADER = "#version: 0.2"
# The files a tokenizer directory holds; a directory holding anything else is not replaced.
TOKENIZER_FILES = (VOCAB_FILE, MERGES_FILE, META_FILE)
# Larger files (128 MiB) are refused before they are read: GPT-2's vocab.json is 1 MB, and parsing turns
# each byte into far more than a byte of Python objects.
MAX_FILE_BYTES = 1 << 27
HASH_RE = re.compile(r"sha256:[0-9a-f]{16}")


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


@functools.cache
def _to_latin1() -> dict[int, str]:
    # str.translate table: each mapped character -> the one with its byte's code point, so that
    # latin-1 encoding gives the bytes (one C call per token, not a Python step per character).
    # Code points below 256 that are not in the map (a space, a newline) go to one above 255,
    # which latin-1 refuses, as does any other unmapped character: both read as "outside".
    table = {b: "\U0010ffff" for b in range(256)}
    table.update({ord(c): chr(b) for c, b in unicode_to_byte().items()})
    return table


def str_to_token(text: str) -> bytes | None:
    """Read a GPT-2-mapped string back into bytes; ``None`` if a character is outside the map."""
    try:
        return text.translate(_to_latin1()).encode("latin-1")
    except UnicodeEncodeError:
        return None


def file_digest(data: bytes) -> str:
    """``sha256:`` + the first 16 hex digits of the bytes' sha256, as ``tokenizer.json`` records files."""
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


def _read_bytes(path: Path, what: str) -> bytes:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise TokenizerError(f"{path}: {path.stat().st_size:,} bytes is too large for a {what} (limit {MAX_FILE_BYTES:,})")
        if not path.is_file():
            raise TokenizerError(f"{path}: not a regular file; expected a {what}")
        return path.read_bytes()
    except FileNotFoundError:
        raise TokenizerError(f"{path}: {what} not found") from None
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read the {what} ({e.strerror or e})") from None


def _decode(data: bytes, path: Path, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 (byte offset {e.start}); is this a {what}?") from None


class _Pairs(list):
    """A JSON object kept as its ``(key, value)`` pairs, in order, duplicates included."""


def _load_json(text: str, path: Path, hint: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}:{e.lineno}: malformed JSON at column {e.colno} ({e.msg}); {hint}") from None
    except (ValueError, RecursionError) as e:  # an integer of 5,000 digits; nesting 100,000 deep
        raise TokenizerError(f"{path}: unreadable JSON ({str(e)[:80] or type(e).__name__}); {hint}") from None


def read_vocab(path: Path) -> dict[int, bytes]:
    """Read a GPT-2 style ``vocab.json`` (mapped token string -> id); see ``parse_vocab``."""
    return parse_vocab(_read_bytes(path, "vocabulary file"), Path(path))


def parse_vocab(data: bytes, path: Path) -> dict[int, bytes]:
    """Parse a GPT-2 style ``vocab.json``: one JSON object, mapped token string -> id.

    Ids must be dense, ``0..N-1`` for ``N`` entries: the vocabulary size is what models embed
    and what token-file statistics are sized by, so one stray id of 10**9 would cost gigabytes.

    Args:
        data: The file's bytes.
        path: Where they came from, for messages.

    Returns:
        id -> token bytes.

    Raises:
        TokenizerError: not UTF-8, malformed JSON (with its line and column), not an object, an
            id that is not an integer in ``0..N-1``, an id or token used twice, an empty token,
            or a token with characters outside GPT-2's byte map.
    """
    hint = "restore the file, or train a new tokenizer with `lmkit tokenize train`"
    text = _decode(data, path, "vocab.json")
    pairs = _load_json(text, path, hint)
    if not isinstance(pairs, _Pairs) or not pairs:
        got = "an empty object" if isinstance(pairs, _Pairs) else f"a JSON {_json_type(pairs)}"
        raise TokenizerError(f"{path}: expected a JSON object mapping tokens to ids, got {got}; {hint}")
    n = len(pairs)
    # The common case at C speed: every id an int, dense and distinct, every token mapped and
    # distinct. Anything else falls through to the loop below, which names the first bad entry.
    ids = [idx for _, idx in pairs]
    if all(type(idx) is int for idx in ids) and len(set(ids)) == n and min(ids) >= 0 and max(ids) < n:
        table = _to_latin1()
        try:
            tokens = [key.translate(table).encode("latin-1") for key, _ in pairs]
        except UnicodeEncodeError:
            tokens = []
        if len(tokens) == n and len(set(tokens)) == n and b"" not in tokens:
            return dict(zip(ids, tokens))
    vocab: dict[int, bytes] = {}
    seen: dict[bytes, int] = {}
    for entry, (key, idx) in enumerate(pairs, 1):
        token = str_to_token(key)
        if not isinstance(idx, int) or isinstance(idx, bool):
            problem = f"has id {_short(idx)}, not an integer"
        elif not 0 <= idx < n:
            problem = f"has id {_short(idx)}, outside 0..{n - 1}: ids must number the {n:,} entries densely"
        elif not key:
            problem = "is an empty token"
        elif token is None:
            problem = "has characters outside GPT-2's byte-to-unicode map"
        elif idx in vocab:
            problem = f"reuses id {idx} (already {token_to_str(vocab[idx])!r})"
        elif token in seen:
            problem = f"appears twice (ids {seen[token]} and {idx})"
        else:
            vocab[idx] = token
            seen[token] = idx
            continue
        raise TokenizerError(f"{path}:{_line_of(text, key)}: entry {entry} ({_short(key)}) {problem}; {hint}")
    return vocab  # n distinct ids, each in 0..n-1: dense


def _json_type(value: object) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "null")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _line_of(text: str, key: str) -> int:
    # json does not report where a valid entry sits; find it for the error message only.
    pos = text.find(json.dumps(key, ensure_ascii=False)[:-1])
    return text.count("\n", 0, pos) + 1 if pos >= 0 else 0


def read_merges(path: Path) -> tuple[list[tuple[bytes, bytes]], list[int]]:
    """Read a GPT-2 style ``merges.txt``; see ``parse_merges``."""
    return parse_merges(_read_bytes(path, "merges file"), Path(path))


def parse_merges(data: bytes, path: Path) -> tuple[list[tuple[bytes, bytes]], list[int]]:
    """Parse a GPT-2 style ``merges.txt``: one ``left right`` pair per line in rank order.

    An optional ``#version`` header and blank lines are skipped.

    Args:
        data: The file's bytes.
        path: Where they came from, for messages.

    Returns:
        The merges, and the line number each came from (for later error messages).

    Raises:
        TokenizerError: not UTF-8, a line that is not two space-separated tokens, or a token
            with characters outside GPT-2's byte map.
    """
    lines = _decode(data, path, "merges.txt").split("\n")
    merges: list[tuple[bytes, bytes]] = []
    line_numbers: list[int] = []
    table = _to_latin1()  # str_to_token, inlined: this loop runs once per merge at every load
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise TokenizerError(f"{path}:{lineno}: expected two tokens separated by one space, got {_short(line)}")
        try:
            merges.append((parts[0].translate(table).encode("latin-1"), parts[1].translate(table).encode("latin-1")))
        except UnicodeEncodeError:
            raise TokenizerError(f"{path}:{lineno}: {_short(line)} has characters outside GPT-2's byte-to-unicode map") from None
        line_numbers.append(lineno)
    return merges, line_numbers


def read_meta(path: Path) -> dict:
    """Read lmkit's ``tokenizer.json``; see ``parse_meta``."""
    return parse_meta(_read_bytes(path, "tokenizer metadata file"), Path(path))


def parse_meta(data: bytes, path: Path) -> dict:
    """Parse lmkit's ``tokenizer.json``, checking the type of every field it uses.

    Returns:
        The metadata dict: ``format``, ``version``, ``special_tokens`` (a list, ``[]`` when
        absent), and where present ``vocab_size``, ``hash`` and ``files`` (file name -> digest).

    Raises:
        TokenizerError: malformed JSON, a foreign file, a field of the wrong type, or a file
            written by a newer lmkit (a version number above this lmkit's, and only then).
    """
    hint = "restore it, or train a new tokenizer with `lmkit tokenize train`"
    raw = _load_json(_decode(data, path, "tokenizer.json"), path, hint)
    if not isinstance(raw, _Pairs):
        raise TokenizerError(f"{path}: expected a JSON object, got a JSON {_json_type(raw)}; {hint}")
    meta = _plain(raw)
    if meta.get("format") != META_FORMAT:
        raise TokenizerError(f"{path}: not an lmkit tokenizer metadata file (expected format {META_FORMAT!r})")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise TokenizerError(f"{path}: version must be a positive integer, got {_short(version)}; {hint}")
    if version > META_VERSION:
        raise TokenizerError(f"{path}: written by a newer lmkit (version {version}; this one reads {META_VERSION}); upgrade lmkit")
    meta.setdefault("special_tokens", [])
    specials = meta["special_tokens"]
    if not isinstance(specials, list) or not all(isinstance(s, str) and s for s in specials):
        raise TokenizerError(f"{path}: special_tokens must be a list of non-empty strings, got {_short(specials)}; {hint}")
    size = meta.get("vocab_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 256):
        raise TokenizerError(f"{path}: vocab_size must be an integer of at least 256, got {_short(size)}; {hint}")
    digest = meta.get("hash")
    if digest is not None and not (isinstance(digest, str) and HASH_RE.fullmatch(digest)):
        raise TokenizerError(f"{path}: hash must look like 'sha256:' + 16 hex digits, got {_short(digest)}; {hint}")
    recorded = meta.get("files")
    if recorded is not None and not (
        isinstance(recorded, dict) and all(isinstance(v, str) and HASH_RE.fullmatch(v) for v in recorded.values())
    ):
        raise TokenizerError(f"{path}: files must map file names to 'sha256:' digests, got {_short(recorded)}; {hint}")
    return meta


def _plain(value: object) -> object:
    # Back from _Pairs to dicts (the last of duplicate keys wins, as in plain json.loads).
    if isinstance(value, _Pairs):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def serialize(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], meta: dict) -> dict[str, bytes]:
    """The bytes of ``vocab.json``, ``merges.txt`` and ``tokenizer.json`` for one tokenizer.

    ``tokenizer.json`` records a digest of each of the other two files, so a reader can say
    which one changed when the content hash no longer matches.

    Args:
        vocab: id -> token bytes.
        merges: In rank order.
        meta: The rest of ``tokenizer.json`` (format, version and files are filled in).

    Returns:
        file name -> content, in the order ``TOKENIZER_FILES``.
    """
    vocab_json = json.dumps({token_to_str(vocab[i]): i for i in sorted(vocab)}, ensure_ascii=False) + "\n"
    merges_txt = "\n".join([MERGES_HEADER, *(f"{token_to_str(a)} {token_to_str(b)}" for a, b in merges)]) + "\n"
    out = {VOCAB_FILE: vocab_json.encode("utf-8"), MERGES_FILE: merges_txt.encode("utf-8")}
    digests = {name: file_digest(data) for name, data in out.items()}
    full = {"format": META_FORMAT, "version": META_VERSION, **meta, "files": digests}
    out[META_FILE] = (json.dumps(full, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return out
