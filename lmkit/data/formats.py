"""Reading documents out of plain-text and JSON Lines sources, as blocks (see ``sources.py``).

Both formats stream through ``SourceStream`` (which decompresses and reports damaged files).
Plain text is read ``BLOCK_BYTES`` at a time and split at document separators as they pass;
a JSON Lines file one line at a time. Every document is then cut into blocks at safe points,
and ``Assembler`` marks each block's place in its document (first/last), drops blank
documents and counts the bytes each block accounts for.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Generator, Iterator

from lmkit.data.compression import SourceStream

# sources.py imports this module only when it reads, so its types are defined by then.
from lmkit.data.source_types import Block, ReadOptions, SourceFile
from lmkit.errors import DataError
from lmkit.tokenizer.pretokenize import decode_utf8, safe_cut

BLOCK_BYTES = 1 << 20  # text per block: big enough to amortise an encode call, small enough to stream
MAX_UNCUT = 16 << 20  # the most text held while looking for a safe cut; past it, a forced cut
MAX_LINE = 1 << 28  # a JSON Lines line longer than this is taken for a file that is not JSON Lines
# A lone UTF-16 surrogate from a JSON escape ("\ud83d" without its pair): a str that holds
# one cannot be written as UTF-8, so it is an error, or U+FFFD with --errors replace.
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
               bool: "boolean", type(None): "null"}


class Assembler:
    """Turns a reader's document pieces into Blocks, holding one back to know which is last."""

    def __init__(self) -> None:
        self.held: Block | None = None  # the newest block, not yet yielded
        self.count = 0  # blocks yielded of the current document
        self.accounted = 0  # disk bytes given to blocks so far
        self.carry = 0  # bytes of dropped documents, for the next block

    def piece(self, doc: int, text: str, disk_pos: int) -> Iterator[Block]:
        nbytes = max(0, disk_pos - self.accounted) + self.carry
        self.accounted, self.carry = max(self.accounted, disk_pos), 0
        if self.held is not None:
            yield self.held
            self.count += 1
        self.held = Block(text, nbytes, doc, first=self.held is None, last=False)

    def end(self) -> Iterator[Block]:
        """The current document is complete: yield its last block, or drop a blank document."""
        held, count = self.held, self.count
        self.held, self.count = None, 0
        if held is None:
            return
        if count == 0 and (not held.text or held.text.isspace()):
            self.carry += held.nbytes
            return
        held.last = True
        yield held

    def document(self, doc: int, text: str, specials: list[bytes], disk_pos: int) -> Iterator[Block]:
        """A whole document held as a str (a JSON line, a table row): cut, then yield."""
        if len(text) <= BLOCK_BYTES:  # at most 4 bytes a character: no need to cut
            yield from self.piece(doc, text, disk_pos)
        else:
            data = text.encode("utf-8")
            back = max((len(s) for s in specials), default=0)
            start = 0
            while start < len(data):
                cut = _next_cut(data, start, len(data), specials, back, final=True)
                yield from self.piece(doc, data[start:start + cut].decode("utf-8"), disk_pos)
                start += cut
        yield from self.end()


def _next_cut(data: bytes, start: int, end: int, specials: list[bytes], back: int, final: bool) -> int:
    """The length of the next block of ``data[start:end]``; 0 when it must wait for more data.

    ``data`` may be read up to ``back`` bytes past ``end``, to see a special token whole.
    With ``final`` (``end`` is the document's end) a short rest is a block of its own.
    A run of ``MAX_UNCUT`` bytes without a safe cut (a base64 blob) is cut at a character
    boundary instead: memory stays bounded, and only the tokens inside such a run can
    differ from encoding the document at once.
    """
    size = end - start
    if size <= BLOCK_BYTES:
        return size if final else 0
    cut = safe_cut(data[start:start + BLOCK_BYTES + back], specials, BLOCK_BYTES)
    if cut == 0:
        span = min(size, MAX_UNCUT)
        cut = safe_cut(data[start:start + span + back], specials, span)
        if cut == 0:
            if size <= MAX_UNCUT:
                return size if final else 0
            cut = _forced_cut(data[start:start + MAX_UNCUT + back], specials, MAX_UNCUT) or MAX_UNCUT
    return cut


def _forced_cut(buf: bytes, specials: list[bytes], end: int) -> int:
    """A cut at or before ``end`` on a UTF-8 character boundary, outside every special token."""
    cut = end
    while cut > 0:
        if buf[cut] & 0xC0 == 0x80:  # a continuation byte: inside a character
            cut -= 1
            continue
        inside = [buf.find(sp, max(0, cut - len(sp) + 1), cut + len(sp) - 1) for sp in specials]
        starts = [i for i in inside if 0 <= i < cut]
        if not starts:
            return cut
        cut = min(starts)
    return 0


def _first_separator(buf: bytes, seps: list[bytes], start: int) -> tuple[int, int] | None:
    """(position, length) of the earliest separator in ``buf[start:]``; the longest wins a tie."""
    best = None
    for sep in seps:  # longest first
        pos = buf.find(sep, start, len(buf) if best is None else best[0] + len(sep))
        if pos >= 0 and (best is None or pos < best[0]):
            best = (pos, len(sep))
    return best


def text_blocks(src: SourceFile, opts: ReadOptions, specials: list[bytes], start_doc: int,
                skipped: Counter) -> Iterator[Block]:
    """Blocks of a plain-text source: one document, or those between separators (removed)."""
    seps = sorted({s.encode("utf-8") for s in (opts.eot, opts.doc_separator) if s}, key=len, reverse=True)
    back = max((len(s) for s in specials), default=0)
    # Bytes at the buffer's end that could begin a separator or a special token: a block
    # never takes them until more data shows what they are.
    hold = max([len(s) for s in seps] + [back, 1]) - 1
    label = f"{src.path} (decompressed)" if src.compression else src.path
    out = Assembler()
    # buf[start:] is not yet consumed; base is buf[0]'s offset in the decompressed text. The
    # buffer is trimmed once per read, not per document: a read may hold a thousand documents.
    buf, base, start, doc = b"", 0, 0, 0

    def pieces(end: int, final: bool) -> Generator[Block, None, int]:
        pos = start
        while cut := _next_cut(buf, pos, end, specials, back, final):
            text = decode_utf8(buf[pos:pos + cut], opts.errors, label, base + pos)
            yield from out.piece(doc, text, stream.disk_pos(base + pos + cut))
            pos += cut
        return pos

    with SourceStream(src.path, src.compression) as stream:
        while True:
            data = stream.read(BLOCK_BYTES)
            buf, base, start = (buf[start:] + data if start < len(buf) else data), base + start, 0
            while seps and (hit := _first_separator(buf, seps, start)) is not None:
                pos, n = hit
                if doc >= start_doc:
                    yield from pieces(pos, True)
                    yield from out.end()
                doc, start = doc + 1, pos + n
            if not data:
                if doc >= start_doc:
                    yield from pieces(len(buf), True)
                    yield from out.end()
                return
            if doc < start_doc:  # skipping: keep only what may begin a separator
                start = max(start, len(buf) - hold)
            else:
                start = yield from pieces(len(buf) - hold, False)


def jsonl_blocks(src: SourceFile, opts: ReadOptions, specials: list[bytes], start_doc: int,
                 skipped: Counter, span: tuple[int, int, int] | None = None) -> Iterator[Block]:
    """Blocks of a JSON Lines source: one document per line, its text at ``opts.text_key``.

    ``span`` ``(lo, hi, lines_before)``: read only the lines in bytes ``[lo, hi)`` of an
    uncompressed file, ``lo`` a line start with ``lines_before`` lines before it, so documents
    and error messages keep the line numbers of the whole file.
    """
    keys = opts.text_key.split(".")
    out = Assembler()
    offset, end, line_no = span if span is not None else (0, None, 0)
    out.accounted = offset
    with SourceStream(src.path, src.compression) as stream:
        if offset:
            stream.seek(offset)
        while (end is None or offset < end) and (line := stream.readline(MAX_LINE)):
            line_no += 1
            start, offset = offset, offset + len(line)
            if len(line) == MAX_LINE and not line.endswith(b"\n"):
                raise DataError(f"{src.path}:{line_no}: line longer than {MAX_LINE >> 20} MB; JSON Lines "
                                "holds one JSON object per line (is this one JSON document?)")
            if line_no <= start_doc or not line.strip():  # blank lines are dropped documents
                continue
            text = _line_text(line, line_no, start, src, opts, keys, skipped)
            if text is not None:
                yield from out.document(line_no - 1, text, specials, stream.disk_pos(offset))


def _line_text(line: bytes, line_no: int, start: int, src: SourceFile, opts: ReadOptions,
               keys: list[str], skipped: Counter) -> str | None:
    """The text of one JSON line, or None when the line is skipped (``--skip-bad-lines``)."""
    where = f"{src.path}:{line_no}"
    label = f"{where} (decompressed)" if src.compression else where
    decoded = decode_utf8(line, opts.errors, label, start)
    try:
        value = json.loads(decoded)
    except ValueError:
        return bad_record(skipped, opts, "malformed JSON", f"{where}: {_json_problem(decoded)}", "fix the line")
    key = opts.text_key
    if len(keys) > 1 and isinstance(value, dict) and key in value:
        value = value[key]  # a key that itself holds a dot
    else:
        for i, k in enumerate(keys):
            if not isinstance(value, dict):
                what = "the line" if i == 0 else repr(".".join(keys[:i]))
                reason = "not a JSON object" if i == 0 else f"missing key {key!r}"
                return bad_record(skipped, opts, reason, f"{where}: {what} is a JSON {_json_type(value)}, "
                            f"not an object holding {k!r}", "pass --text-key naming the text field")
            if k not in value:
                there = f" under {'.'.join(keys[:i])!r}" if i else ""
                present = ", ".join(repr(p) for p in list(value)[:12]) or "none"
                return bad_record(skipped, opts, f"missing key {key!r}",
                            f"{where}: no key {k!r}{there} (keys present{there}: {present})",
                            "pass --text-key naming the text field")
            value = value[k]
    if not isinstance(value, str):
        return bad_record(skipped, opts, f"non-string {key!r}", f"{where}: {key!r} is a JSON "
                    f"{_json_type(value)}, not a string", "pass --text-key naming a text field")
    if "\\u" in decoded and (m := _SURROGATE.search(value)):
        if opts.errors == "strict":
            raise DataError(f"{where}: {key!r} holds an unpaired UTF-16 surrogate (\\u{ord(m.group()):04x}), "
                            "which is not text; fix the line or pass --errors replace")
        value = _SURROGATE.sub("\ufffd", value)
    return value


def bad_record(skipped: Counter, opts: ReadOptions, reason: str, message: str, fix: str) -> None:
    """Count a bad line or row under ``--skip-bad-lines``, else raise its error (with both fixes)."""
    if opts.skip_bad_lines:
        skipped[reason] += 1
        return
    raise DataError(f"{message}; {fix}, or pass --skip-bad-lines to skip such lines")


def _json_problem(line: str) -> str:
    """What is wrong with a line that is not JSON, parsed again without its line break (an
    unterminated string would otherwise be reported as a control character: the newline)."""
    try:
        json.loads(line.rstrip("\r\n"))
    except json.JSONDecodeError as e:
        return f"not valid JSON ({e.msg.removesuffix(' at')} at column {e.colno})"
    except ValueError as e:  # e.g. a number too long to convert
        return f"not valid JSON ({e})"
    return "not valid JSON"


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)
