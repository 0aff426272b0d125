"""What a file handed to a checkpoint loader is, when it is not a readable lmkit checkpoint.

``torch.load`` fed the wrong file fails with text about its own internals ("pop from empty
list", "failed finding central directory. This is an internal miniz error"), which tells a user
nothing. ``lmkit.training.checkpoint.load_checkpoint`` asks ``describe_non_checkpoint`` first,
and only hands torch a file that looks like a torch archive; the sniffing reads a few KB.

Example::

    >>> describe_non_checkpoint(Path("data/train.bin"))  # doctest: +SKIP
    'data/train.bin: a token file written by `lmkit tokenize encode` (its metadata data/train.json ...'
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

LATEST = "latest.pt"
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP = b"PK\x05\x06"
# torch.save's legacy (pre-1.6) format starts with a pickle protocol opcode.
_PICKLE_MAGIC = b"\x80"
_SNIFF = 4096
_WHAT_TO_PASS = "pass a checkpoint written by `lmkit train`, e.g. RUN_DIR/latest.pt or RUN_DIR/ckpt_0001000.pt"


def _directory(path: Path) -> str:
    steps = sorted(path.glob("ckpt_*.pt"))
    if steps:
        names = ", ".join(p.name for p in steps[-3:])
        return f"{path}: a directory without {LATEST}; it holds {len(steps)} step checkpoint(s) ({names}): pass one of them"
    if (path / "config.json").is_file() and (any(path.glob("*.safetensors")) or (path / "pytorch_model.bin").is_file()):
        return f"{path}: a HuggingFace model folder, not an lmkit run directory; lmkit loads only its own checkpoints: {_WHAT_TO_PASS}"
    return f"{path}: a directory with no {LATEST} or ckpt_*.pt, so not a run directory of `lmkit train`; {_WHAT_TO_PASS}"


def _is_safetensors(head: bytes, size: int) -> bool:
    # safetensors: an 8-byte little-endian header length, then that many bytes of JSON.
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 8 + n <= size and head[8:9] == b"{"


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start > len(head) - 4  # only a character cut at the end of the sniffed block
    return True


def _zip_problem(path: Path, size: int) -> str | None:
    """Why a zip-looking file is not a loadable torch archive, or None when it is one."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return (f"{path}: damaged checkpoint: the archive is incomplete ({size:,} bytes; its index at the end is missing, "
                "as in a truncated or interrupted copy); copy it again, or use an older ckpt_*.pt of the same run")
    if not any(n.endswith("data.pkl") for n in names):
        return f"{path}: a zip archive ({len(names)} entries) but not a PyTorch checkpoint; {_WHAT_TO_PASS}"
    return None


def describe_non_checkpoint(path: Path) -> str | None:
    """A one-line message saying what ``path`` is and what to pass, or None if it may be a checkpoint.

    Recognises: a missing path, a directory without ``latest.pt`` (listing its ``ckpt_*.pt``),
    a HuggingFace folder, an empty file, a token ``.bin`` with its ``.json`` beside it, a
    safetensors file, a text file, a truncated or foreign zip archive, and other binary data.
    None means the file looks like a torch archive (zip or legacy pickle) and should be loaded.
    """
    path = Path(path)
    if not path.exists():
        return f"{path}: checkpoint not found; {_WHAT_TO_PASS}"
    if path.is_dir():
        return _directory(path)
    size = path.stat().st_size
    if size == 0:
        return f"{path}: an empty file (0 bytes), not a checkpoint (an interrupted copy?); {_WHAT_TO_PASS}"
    with open(path, "rb") as f:
        head = f.read(_SNIFF)
    meta = path.with_suffix(".json")
    if path.suffix == ".bin" and meta.is_file() and not head.startswith(_ZIP_MAGIC):
        return (f"{path}: a token file written by `lmkit tokenize encode` (its metadata {meta.name} is beside it), not a "
                f"checkpoint; token files go to --train-data-path/--val-data-path; {_WHAT_TO_PASS}")
    if head.startswith((_ZIP_MAGIC, _EMPTY_ZIP)):
        return _zip_problem(path, size)
    if head.startswith(_PICKLE_MAGIC):
        return None
    if _is_safetensors(head, size):
        return (f"{path}: a safetensors weights file (from `lmkit ckpt export` or HuggingFace), not an lmkit checkpoint: it "
                f"lacks the model config, settings and tokenizer record a run needs; {_WHAT_TO_PASS}")
    if _is_text(head):
        kind = "a JSON file" if _looks_like_json(head) else "a text file"
        return f"{path}: {kind}, not a checkpoint; {_WHAT_TO_PASS}"
    return f"{path}: not a checkpoint (binary data that is neither a PyTorch archive nor a known format); {_WHAT_TO_PASS}"


def _looks_like_json(head: bytes) -> bool:
    text = head.decode("utf-8", errors="ignore").lstrip()
    if not text.startswith(("{", "[")):
        return False
    try:
        json.loads(text)
    except ValueError:
        return len(head) == _SNIFF  # a long JSON file cut by the sniff window
    return True
