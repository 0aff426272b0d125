"""What a single data path is: a token file, a text file of token ids (converted once), or neither.

Decided in one place for ``train`` and ``eval`` alike; ``lmkit.data.dataset.open_dataset`` builds
directories, globs and manifests on top of it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from lmkit.data.tokens import meta_path, read_meta
from lmkit.errors import DataError
from lmkit.locking import LockHeldError, lock_output

# Enough of a file's start to tell token ids, raw text and binary data apart.
_SNIFF_BYTES = 1 << 16
_ID_TEXT = re.compile(rb"[0-9 \t\n\r\f\v]*")


def _sniff(path: Path) -> str:
    """``"ids"`` (text of token ids), ``"text"`` (other text), ``"binary"`` or ``"empty"``, from the file's start."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head.strip():
        return "empty"
    if b"\0" in head:
        return "binary"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut by the sniff window
            return "binary"
    return "ids" if _ID_TEXT.fullmatch(head) else "text"


def _made_from(cached: Path, source: Path) -> bool | None:
    """Whether ``cached`` (and its ``.json``) is a current conversion of ``source``.

    None: nothing is there, or an older conversion of it, so converting is safe. False:
    something else is there, which converting would overwrite.
    """
    if not cached.exists() and not meta_path(cached).exists():
        return None
    try:
        meta = read_meta(cached)
    except DataError:
        return False
    if meta.source != str(source.resolve()):
        return False
    return cached.stat().st_mtime >= source.stat().st_mtime or None


def resolve_token_file(path: Path, notice: Callable[[str], None] = lambda m: None) -> Path:
    """What a data path is, decided in one place for ``train`` and ``eval`` alike.

    A ``.bin`` is a token file (its ``.json`` must be beside it). Any other file is looked at: a
    text file of token ids (the training guide's format) is converted once to a ``.bin`` beside
    it, reused while the text is unchanged; raw text, binary data, metadata passed instead of
    its ``.bin``, directories and missing paths are refused, each saying what the file is.

    Returns:
        The ``.bin`` to memory-map.

    Raises:
        DataError: the path is not token data (the message says what it is and what to do).
    """
    path = Path(path)
    expected = ("a dataset from `lmkit tokenize encode` (its manifest .json, or a .bin with its .json; "
                "a directory or glob of them) or a text file of token ids")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected {expected}")
    if not path.is_file():
        raise DataError(f"{path}: token file not found (expected {expected})")
    if path.suffix == ".bin":
        if not meta_path(path).is_file() and _sniff(path) in ("ids", "text"):
            raise DataError(f"{path}: has no {meta_path(path).name} beside it and holds text, not binary token ids; "
                            "rename a text file of token ids to .txt, or encode raw text with `lmkit tokenize encode` first")
        return path  # read_meta says what is wrong with it, if anything
    if path.suffix == ".json" and path.with_suffix(".bin").is_file():
        raise DataError(f"{path}: is the metadata of a token file; pass the token file {path.with_suffix('.bin')} itself")
    kind = _sniff(path)
    if kind == "empty":
        raise DataError(f"{path}: is empty; expected {expected}")
    if kind == "binary":
        raise DataError(f"{path}: is binary data but not a token file; expected {expected}")
    if kind == "text":
        raise DataError(f"{path}: is raw text, not token ids; encode it with `lmkit tokenize encode --tokenizer DIR "
                        f"--input {path} --output DIR` first and pass the .bin it writes")
    return _converted(path, notice)


def _converted(path: Path, notice: Callable[[str], None]) -> Path:
    """The ``.bin`` beside a text file of ids, converting it unless a current conversion exists."""
    from lmkit.data.corpus import import_file

    cached = path.with_suffix(".bin")
    lock = lock_output(cached, hint="")
    told = False
    # Several ranks of one torchrun job convert the same file: one converts, the others wait for it.
    while True:
        try:
            lock.acquire()
            break
        except LockHeldError:
            if not told:
                notice(f"{cached}: another lmkit process is converting {path}; waiting for it")
                told = True
            time.sleep(0.2)
    try:
        made = _made_from(cached, path)
        if made:
            return cached
        if made is False:
            raise DataError(f"{cached} (or {meta_path(cached).name}): exists but is not a conversion of {path} (or is damaged), "
                            "and converting would overwrite it; move it away or pass the .bin directly")
        notice(f"{path}: text file of token ids; converting once to {cached} (memory-mapped from now on)")
        import_file(path, cached)
    finally:
        lock.release()
    return cached
