"""Corpus inputs: which files an ``--input`` names, and their documents as encodable blocks.

``resolve_inputs`` turns files, directories and globs into an ordered list of ``SourceFile``;
``read_blocks`` streams one of them as ``Block``s: pieces of one document each, cut where no
pretoken or special token spans the cut (``safe_cut``), so blocks encode independently and
the ids equal encoding each document whole. Memory stays bounded by a block (plain text), one
line (JSON Lines) or one row-group batch (parquet, Arrow), never a whole file.

Formats, by suffix (``.gz``/``.zst``/``.xz`` may follow those of text and JSON Lines):
  plain text  ``.txt .text .md`` (and any other name given as a file): one document per file,
              or the pieces between ``eot``/``doc_separator`` occurrences
  JSON Lines  ``.jsonl .ndjson .json``: one document per line, text at ``text_key``
  parquet     ``.parquet`` (pyarrow): one document per row, text in column ``text_key``
  Arrow       ``.arrow`` and HuggingFace ``save_to_disk`` folders (pyarrow): one per row
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from lmkit.data.compression import zstd_available
from lmkit.data.source_types import Block, ReadOptions, SourceFile
from lmkit.errors import DataError

__all__ = ["Block", "ReadOptions", "SourceFile", "read_blocks", "resolve_inputs", "skipped_summary"]

log = logging.getLogger(__name__)

KINDS = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".ndjson": "jsonl",
         ".json": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}
COMPRESSIONS = {".gz": "gz", ".zst": "zst", ".zstd": "zst", ".xz": "xz"}
# Named explicitly, an unknown suffix is read as plain text; these never are: archives and
# compressions lmkit cannot open, and binary files (lmkit's own token files among them).
_REFUSED = {".bz2", ".zip", ".tar", ".tgz", ".7z", ".lz4", ".br", ".rar", ".bin", ".idx", ".npy",
            ".npz", ".pt", ".pth", ".safetensors", ".lock", ".feather", ".orc", ".avro", ".pkl"}
_SUPPORTED = (".txt .text .md, .jsonl .ndjson .json (each optionally .gz .zst .xz), .parquet, "
              ".arrow, or a HuggingFace save_to_disk folder")
# HuggingFace save_to_disk metadata, which a directory walk must not take for JSON Lines.
_HF_METADATA = {"state.json", "dataset_info.json", "dataset_dict.json", "dataset_infos.json"}
_GLOB_CHARS = "*?["


def resolve_inputs(inputs: Sequence[str | Path]) -> list[SourceFile]:
    """The files that ``--input`` arguments name, in a deterministic order.

    Args:
        inputs: Each a file (any name: unknown suffixes are read as plain text), a directory
            (recursively: every file of a supported suffix, hidden ones skipped, sorted by
            relative path component by component), or a glob (``'data/**/*.jsonl.zst'``,
            ``**`` recursive; matches sorted the same way). A HuggingFace ``save_to_disk`` folder gives its
            Arrow files in the dataset's own order; a ``DatasetDict`` folder gives its
            ``train`` split (or its only split); name a split's folder to read another.

    Returns:
        The sources, inputs in the order given; a file named twice is kept the first time.

    Raises:
        DataError: a missing path, a glob or directory with no supported files, a file of a
            suffix lmkit cannot read, a directory mixing plain text with data files, a format
            whose extra is not installed (with the pip line).
    """
    found: list[SourceFile] = []
    seen: set[str] = set()
    for item in inputs:
        for src in _resolve_one(str(item)):
            key = os.path.realpath(src.path)
            if key not in seen:
                seen.add(key)
                found.append(src)
    for src in found:
        _require_reader(src)
    return found


def _resolve_one(item: str) -> list[SourceFile]:
    path = Path(item)
    if path.is_file():
        return [_explicit_file(path)]
    if path.is_dir():
        return _directory(path, item)
    if path.exists():  # a device, FIFO or socket: its size says nothing, and reading may never end
        raise DataError(f"{item}: not a regular file or directory; pass a file, a directory or a glob")
    if not any(c in item for c in _GLOB_CHARS):
        raise DataError(f"{item}: input not found")
    # Sorted as a directory is, component by component (a/z.txt before a.txt's neighbour b).
    matches = sorted(glob.glob(item, recursive=True), key=lambda m: Path(m).parts)
    if not matches:
        raise DataError(f"{item}: glob matched no files")
    out: list[SourceFile] = []
    for m in matches:
        p = Path(m)
        if p.is_dir():
            out += _directory(p, m, allow_empty=True)
        elif p.is_file() and (src := _classify(p)) is not None:
            out.append(src)
    if not out:
        raise DataError(f"{item}: glob matched {len(matches)} paths but no files lmkit reads ({_SUPPORTED})")
    return out


def _suffixes(path: Path) -> tuple[str, str | None]:
    """(format suffix, compression) of a file name: ``a.jsonl.gz`` -> ``(".jsonl", "gz")``."""
    name = path.name.lower()
    stem, ext = os.path.splitext(name)
    if ext in COMPRESSIONS:
        return os.path.splitext(stem)[1], COMPRESSIONS[ext]
    return ext, None


def _classify(path: Path) -> SourceFile | None:
    """A file found by a directory walk or glob: its source, or None when lmkit does not read it."""
    ext, compression = _suffixes(path)
    kind = KINDS.get(ext)
    if kind is None or (compression and kind not in ("text", "jsonl")) or path.name.startswith("."):
        return None
    if kind == "jsonl" and ext == ".json" and _is_metadata(path):
        return None
    return _source(path, kind, compression)


def _explicit_file(path: Path) -> SourceFile:
    ext, compression = _suffixes(path)
    kind = KINDS.get(ext, "text")
    if ext in _REFUSED or (compression and kind not in ("text", "jsonl")):
        what = f"{ext}{'.' + compression if compression else ''}" if ext else path.suffix
        raise DataError(f"{path}: lmkit cannot read {what} files; it reads {_SUPPORTED} "
                        "(other names are read as plain text)")
    return _source(path, kind, compression)


def _source(path: Path, kind: str, compression: str | None) -> SourceFile:
    return SourceFile(Path(os.path.abspath(path)), kind, compression, path.stat().st_size)


def _is_metadata(path: Path) -> bool:
    # lmkit's own outputs (NAME.json beside NAME.bin, a manifest beside NAME-00000.bin) and
    # HuggingFace's metadata are JSON documents, not JSON Lines of text.
    stem = path.name[:-len(".json")]
    return (path.name.lower() in _HF_METADATA or (path.parent / f"{stem}.bin").exists()
            or (path.parent / f"{stem}-00000.bin").exists())


def _directory(root: Path, label: str, allow_empty: bool = False) -> list[SourceFile]:
    """Every readable file under ``root``, sorted by relative path (component by component)."""
    if (hf := _hf_folder(root)) is not None:
        return hf
    entries: list[tuple[tuple[str, ...], list[SourceFile]]] = []
    visited = {os.path.realpath(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        rel = here.relative_to(root).parts
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(here / d)
            if d.startswith(".") or real in visited:  # hidden folders (.git, caches) and link loops
                continue
            visited.add(real)
            if (hf := _hf_folder(here / d)) is not None:
                entries.append((rel + (d,), hf))
            else:
                keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            p = here / name
            if p.is_file() and (src := _classify(p)) is not None:
                entries.append((rel + (name,), [src]))
    entries.sort(key=lambda e: e[0])
    sources = [s for _, group in entries for s in group]
    if not sources and not allow_empty:
        raise DataError(f"{label}: directory has no files lmkit reads ({_SUPPORTED})")
    texts = [s for s in sources if s.kind == "text"]
    if texts and len(texts) < len(sources):
        # A dataset folder's README.md or LICENSE.txt is not part of its corpus.
        raise DataError(
            f"{label}: holds plain-text files ({', '.join(sorted({s.path.name for s in texts})[:3])}) "
            f"beside {len(sources) - len(texts)} data files; pass a glob to choose, e.g. "
            f"'{os.path.join(label, '**', '*' + _suffixes(next(s for s in sources if s.kind != 'text').path)[0])}'")
    return sources


def _hf_folder(folder: Path) -> list[SourceFile] | None:
    """The Arrow files of a HuggingFace ``save_to_disk`` folder, or None if it is not one."""
    import json  # only folders need it

    if (folder / "dataset_dict.json").is_file():
        try:
            splits = json.loads((folder / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{folder / 'dataset_dict.json'}: not a readable DatasetDict index ({e})") from None
        if "train" in splits or len(splits) == 1:
            split = "train" if "train" in splits else splits[0]
            log.info("%s is a DatasetDict; reading its %r split (name %s/SPLIT for another)", folder, split, folder)
            return _hf_folder(folder / split) or []
        raise DataError(f"{folder}: a DatasetDict with splits {', '.join(map(str, splits))} and no 'train'; "
                        f"pass one split's folder, e.g. {folder / str(splits[0])}")
    state = folder / "state.json"
    if not state.is_file() or not (folder / "dataset_info.json").is_file():
        return None
    try:
        names = [f["filename"] for f in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{state}: not a readable save_to_disk state file ({e})") from None
    files = []
    for name in names:
        p = folder / name
        if not p.is_file():
            raise DataError(f"{state}: lists {name}, which is missing; save the dataset again")
        files.append(_source(p, "arrow", None))
    return files


def _require_reader(src: SourceFile) -> None:
    """Fail before any work when a source needs an extra that is not installed."""
    if src.kind in ("parquet", "arrow") and importlib.util.find_spec("pyarrow") is None:
        extra = "parquet" if src.kind == "parquet" else "datasets"
        raise DataError(f"reading {src.path} needs pyarrow: `uv sync --extra {extra}` in lmkit's clone, or `pip install pyarrow`")
    if src.compression == "zst" and not zstd_available():
        raise DataError(f"reading {src.path} needs zstandard: `uv sync --extra zstd` in lmkit's clone, or `pip install zstandard`")


def read_blocks(src: SourceFile, opts: ReadOptions, specials: list[str],
                start_doc: int = 0, skipped: Counter | None = None,
                span: tuple[int, int, int] | None = None) -> Iterator[Block]:
    """Stream one source as blocks of its documents.

    Args:
        src: The source (from ``resolve_inputs``).
        opts: How to find documents and their text.
        specials: The tokenizer's special tokens: no cut falls inside one.
        start_doc: Skip the documents before this index without decoding them (to resume).
        skipped: With ``opts.skip_bad_lines``, counts skipped lines/rows by reason (pass a
            fresh Counter per source to report it with ``skipped_summary``).
        span: Uncompressed JSON Lines only: ``(lo, hi, lines_before)``, read just the lines
            in bytes ``[lo, hi)`` (``lo`` a line start after ``lines_before`` lines); their
            documents keep their index in the whole file. ``nbytes`` then covers the span.

    Yields:
        Blocks, in order. Empty (or whitespace-only) documents are dropped but keep their
        index, so a document's index is stable: its line (0-based) in JSON Lines, its row in
        a table, its position between separators in plain text. ``nbytes`` is exact for an
        uncompressed file (a block's UTF-8 bytes plus the separators and dropped lines before
        it) and follows the compressed bytes read otherwise; over a whole read they add up
        to ``src.size``.

    Raises:
        DataError: malformed JSON (file:line), a missing key (naming the keys present), a
            non-string value, a table without the column, a truncated or corrupt compressed
            file, invalid UTF-8 (with the byte offset), a missing extra.
    """
    # The readers import this module's types, so they are imported when first needed.
    from lmkit.data import formats, tables

    _require_reader(src)
    if start_doc < 0:
        raise DataError(f"start_doc must be >= 0, not {start_doc}")
    reader = {"text": formats.text_blocks, "jsonl": formats.jsonl_blocks,
              "parquet": tables.parquet_blocks, "arrow": tables.arrow_blocks}[src.kind]
    args = (src, opts, [s.encode("utf-8") for s in specials], start_doc, skipped if skipped is not None else Counter())
    size = src.size
    if span is not None:
        if src.kind != "jsonl" or src.compression is not None:
            raise ValueError(f"{src.path}: only uncompressed JSON Lines are read by byte range")
        size = span[1] - span[0]
        blocks = formats.jsonl_blocks(*args, span=span)
    else:
        blocks = reader(*args)
    # One block is held back so the last can also carry what follows it (a trailing
    # separator, blank lines, the decompressor's last read) and the sizes add up.
    held, total = None, 0
    for block in blocks:
        if held is not None:
            yield held
        total += block.nbytes
        held = block
    if held is not None:
        held.nbytes += max(0, size - total)
        yield held


def skipped_summary(src: SourceFile | Path, skipped: Counter) -> str | None:
    """One line for the lines/rows ``read_blocks`` skipped, or None when there were none.

    Example: ``"skipped 3 bad lines in a.jsonl: 2 malformed JSON, 1 missing key 'text'"``.
    """
    total = sum(skipped.values())
    if not total:
        return None
    path = src.path if isinstance(src, SourceFile) else Path(src)
    unit = "rows" if path.suffix.lower() in (".parquet", ".arrow") else "lines"
    unit = unit[:-1] if total == 1 else unit
    reasons = ", ".join(f"{n} {reason}" for reason, n in skipped.most_common())
    return f"skipped {total} bad {unit} in {path.name}: {reasons}"
