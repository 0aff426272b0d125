"""Opening a source file as a stream of its (decompressed) bytes: none, ``.gz``, ``.zst``, ``.xz``.

Every decompressor reports a damaged file its own way (``EOFError``, ``BadGzipFile``,
``zlib.error``, ``LZMAError``, ``ZstdError``), and ``zstandard``'s streaming reader does not
report a truncated file at all: it just ends early. ``SourceStream`` turns all of them into one
``DataError`` naming the file, and walks the ``.zst`` frame headers as they pass so a file that
ends inside a frame is caught too (an encode of half a download must not look complete).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import lzma
import sys
import zlib
from pathlib import Path

from lmkit.errors import DataError

READ_BYTES = 1 << 20  # how much compressed input each decompressor pulls at a time

_DAMAGED: tuple[type[BaseException], ...] = (EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError)


def zstd_available() -> bool:
    """Whether ``.zst`` files can be read: the ``zstandard`` package, or Python >= 3.14's stdlib."""
    return importlib.util.find_spec("zstandard") is not None or sys.version_info >= (3, 14)


class _Truncated(Exception):
    """A ``.zst`` file that ends inside a frame."""


class _ZstdFrames:
    """Follows zstd frame and block headers through the compressed bytes, without decompressing.

    Only header sizes are read (RFC 8878, sections 3.1.1 and 3.1.2), so this costs next to
    nothing; at the end of the file it says whether the last frame was complete.
    """

    def __init__(self) -> None:
        self.state, self.want, self.head, self.skip, self.checksum = "magic", 4, b"", 0, False

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self.skip:  # payload bytes (block contents, checksums, skippable frames)
                take = min(self.skip, n - i)
                self.skip -= take
                i += take
                continue
            take = min(self.want - len(self.head), n - i)
            self.head += data[i:i + take]
            i += take
            if len(self.head) == self.want:
                self._header(self.head)
                self.head = b""

    def _header(self, h: bytes) -> None:
        value = int.from_bytes(h, "little")
        if self.state == "magic":
            if value == 0xFD2FB528:
                self.state, self.want = "descriptor", 1
            elif value & 0xFFFFFFF0 == 0x184D2A50:  # a skippable frame: its size follows
                self.state, self.want = "skippable", 4
            else:
                raise zlib.error("not zstd data (unknown frame magic)")
        elif self.state == "skippable":
            self.skip, self.state, self.want = value, "magic", 4
        elif self.state == "descriptor":
            single = value >> 5 & 1
            self.checksum = bool(value >> 2 & 1)
            # Window descriptor, dictionary id and content size fields follow the descriptor.
            self.skip = (1 - single) + (0, 1, 2, 4)[value & 3] + (single, 2, 4, 8)[value >> 6]
            self.state, self.want = "block", 3
        else:  # a block header: last-block bit, type (1 = one repeated byte), size
            self.skip = 1 if (value >> 1) & 3 == 1 else value >> 3
            if value & 1:
                self.skip += 4 if self.checksum else 0
                self.state, self.want = "magic", 4

    def complete(self) -> bool:
        return self.state == "magic" and not self.head and not self.skip


class _CheckedRaw:
    """The compressed file as the zstd reader sees it, with the frames followed on the way."""

    def __init__(self, raw: io.BufferedReader) -> None:
        self.raw, self.frames = raw, _ZstdFrames()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if data:
            self.frames.feed(data)
        elif not self.frames.complete():
            raise _Truncated("the file ends inside a zstd frame")
        return data


def _zstd_reader(raw: io.BufferedReader, path: Path) -> io.BufferedIOBase:
    if importlib.util.find_spec("zstandard") is not None:
        import zstandard

        reader = zstandard.ZstdDecompressor().stream_reader(
            _CheckedRaw(raw), read_size=READ_BYTES, read_across_frames=True)
        return io.BufferedReader(reader, buffer_size=READ_BYTES)
    if sys.version_info >= (3, 14):  # the stdlib reader raises EOFError on a truncated file itself
        from compression import zstd  # type: ignore[import-not-found]

        return zstd.ZstdFile(raw)
    raise DataError(f"reading {path} needs zstandard: `uv sync --extra zstd` in lmkit's clone, or `pip install zstandard`")


class SourceStream:
    """A source file's bytes, decompressed, with damage reported as a ``DataError``.

    Args:
        path: The file.
        compression: ``"gz"``, ``"zst"``, ``"xz"`` or ``None``.

    Use as a context manager; ``read``/``readline`` behave as on a binary file.
    """

    def __init__(self, path: Path, compression: str | None):
        self.path, self.compression = Path(path), compression
        try:
            self._raw = open(self.path, "rb", buffering=READ_BYTES)  # noqa: SIM115 (closed by close())
        except OSError as e:
            raise DataError(f"{self.path}: cannot be read ({e.strerror or e})") from None
        try:
            if compression == "gz":
                self._f: io.BufferedIOBase = gzip.GzipFile(fileobj=self._raw, mode="rb")
            elif compression == "xz":
                self._f = lzma.LZMAFile(self._raw)  # noqa: SIM115 (a stream, closed by close())
            elif compression == "zst":
                self._f = _zstd_reader(self._raw, self.path)
            else:
                self._f = self._raw
        except BaseException:
            self._raw.close()
            raise

    def __enter__(self) -> SourceStream:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._f is not self._raw:
            self._f.close()
        self._raw.close()

    def read(self, n: int) -> bytes:
        """Up to ``n`` decompressed bytes (``b""`` at the end)."""
        try:
            return self._f.read(n)
        except (*_DAMAGED, _Truncated, *_zstd_errors()) as e:
            raise self._damaged(e) from None

    def readline(self, limit: int) -> bytes:
        """The next line with its ``\\n`` (``b""`` at the end), at most ``limit`` bytes of it."""
        try:
            return self._f.readline(limit)
        except (*_DAMAGED, _Truncated, *_zstd_errors()) as e:
            raise self._damaged(e) from None

    def seek(self, offset: int) -> None:
        """Move to byte ``offset`` of an uncompressed file (a compressed stream has no such place)."""
        if self.compression is not None:
            raise ValueError(f"{self.path}: cannot seek in a {self.compression} stream")
        self._raw.seek(offset)

    def disk_pos(self, consumed: int) -> int:
        """How far into the file on disk the first ``consumed`` decompressed bytes reach.

        Exact for an uncompressed file; for a compressed one, how much the decompressor has
        read so far (it reads ahead), which is what progress needs.
        """
        return consumed if self.compression is None else self._raw.tell()

    def _damaged(self, e: BaseException) -> DataError:
        kind = {"gz": "gzip", "xz": "xz", "zst": "zstd"}.get(self.compression or "", "compressed")
        return DataError(f"{self.path}: truncated or corrupt {kind} data ({e}); "
                         "download or compress the file again")


def _zstd_errors() -> tuple[type[BaseException], ...]:
    # zstandard is optional: its error type exists only where it is installed (and imported).
    module = sys.modules.get("zstandard")
    return (module.ZstdError,) if module is not None else ()
