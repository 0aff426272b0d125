"""What the corpus readers pass around: an input file, how to read it, and a piece of a document.

Apart from ``sources.py`` (which finds the files) and the readers (``formats.py``, ``tables.py``)
so that both import these and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmkit.errors import DataError


@dataclass(frozen=True)
class SourceFile:
    """One input file and how to read it."""

    path: Path  # absolute
    kind: str  # "text" | "jsonl" | "parquet" | "arrow"
    compression: str | None  # "gz" | "zst" | "xz" | None (text and jsonl only)
    size: int  # bytes on disk


@dataclass(frozen=True)
class ReadOptions:
    """How documents are found in the sources (the ``tokenize`` flags of the same names)."""

    text_key: str = "text"  # jsonl: dotted path into the object; parquet/arrow: column (dotted = struct field)
    doc_separator: str | None = None  # plain text: split documents at this string (removed)
    eot: str | None = None  # plain text: also split at this string (removed), e.g. "<|endoftext|>"
    errors: str = "strict"  # invalid UTF-8: "strict" (error with file + byte offset) | "replace"
    skip_bad_lines: bool = False  # jsonl/tables: malformed lines, missing key, non-string are counted and skipped

    def __post_init__(self) -> None:
        if self.errors not in ("strict", "replace"):
            raise DataError(f"--errors must be 'strict' or 'replace', not {self.errors!r}")
        if not self.text_key or any(not part for part in self.text_key.split(".")):
            raise DataError(f"--text-key {self.text_key!r} is not a key or dotted path (e.g. text, meta.body)")
        for flag, value in (("--doc-separator", self.doc_separator), ("--eot", self.eot)):
            if value is not None and not value:
                raise DataError(f"{flag} must not be empty; leave it out to keep whole files as documents")


@dataclass
class Block:
    """A piece of one document, cut at a safe point, ready to encode."""

    text: str
    nbytes: int  # bytes of the file on disk this block accounts for (see read_blocks)
    doc: int  # index of the document within its source file (0, 1, ...)
    first: bool  # first block of that document
    last: bool  # last block of that document
