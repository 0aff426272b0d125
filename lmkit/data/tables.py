"""Reading documents out of parquet and Arrow sources (pyarrow), one row each.

Parquet is read a batch of one row group at a time, only the text column (for a dotted
``--text-key``, only that struct field), so memory is bounded by a row group's column, never
the file. Arrow files (HuggingFace ``save_to_disk`` writes the IPC stream format; the file
format works too) are read record batch by record batch through a plain file handle rather
than a memory map, so what was read is freed as reading goes on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from lmkit.data.formats import Assembler, bad_record
from lmkit.data.source_types import Block, ReadOptions, SourceFile
from lmkit.errors import DataError
from lmkit.tokenizer.pretokenize import decode_utf8

BATCH_BYTES = 4 << 20  # about this much table data converted to Python strings at a time


def _pyarrow():
    import pyarrow as pa  # optional (lmkit[parquet] / lmkit[datasets]); resolve_inputs checked it

    return pa


def _text_column(schema, key: str, src: SourceFile) -> tuple[str, list[str]]:
    """(top-level column, struct fields under it) that ``--text-key`` names, checked against the schema.

    A column whose own name holds a dot wins over a struct path of the same spelling.
    """
    pa = _pyarrow()
    names = list(schema.names)
    parts = [key] if key in names else key.split(".")
    if parts[0] not in names:
        raise DataError(f"{src.path}: no column {key!r} (columns: {', '.join(names[:20]) or 'none'}); "
                        "pass --text-key COLUMN")
    typ = schema.field(parts[0]).type
    for i, part in enumerate(parts[1:], 1):
        if not pa.types.is_struct(typ) or typ.get_field_index(part) < 0:
            have = (f"fields: {', '.join(typ.field(j).name for j in range(typ.num_fields))}"
                    if pa.types.is_struct(typ) else f"it holds {typ}")
            raise DataError(f"{src.path}: column {'.'.join(parts[:i])!r} has no field {part!r} ({have}); "
                            "pass --text-key COLUMN.FIELD")
        typ = typ.field(part).type
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_binary(typ)
            or pa.types.is_large_binary(typ) or str(typ) == "string_view"):
        raise DataError(f"{src.path}: column {key!r} holds {typ}, not text; pass --text-key naming a text column")
    return parts[0], parts[1:]


def _texts(column, fields: list[str], src: SourceFile, opts: ReadOptions, first_row: int) -> list:
    """The text values (str or None for null) of one batch's column, struct fields followed."""
    pa = _pyarrow()
    for name in fields:
        # flatten() applies the struct's own nulls to its children; .field() would not.
        column = column.flatten()[column.type.get_field_index(name)]
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return [None if v is None else decode_utf8(v, opts.errors, f"{src.path}: row {first_row + i + 1}", 0)
                for i, v in enumerate(column.to_pylist())]
    try:
        return column.to_pylist()
    except UnicodeDecodeError:  # a string column holding invalid UTF-8: decode it ourselves
        return _texts(column.cast(pa.large_binary()), [], src, opts, first_row)


def _table_blocks(src: SourceFile, opts: ReadOptions, specials: list[bytes], start_doc: int,
                  skipped: Counter, batches: Iterable[tuple[object, int]], row: int,
                  fields: list[str]) -> Iterator[Block]:
    """Blocks of the rows of ``(column, disk position after it)`` batches, the first at ``row``."""
    pa = _pyarrow()
    out = Assembler()
    batches = iter(batches)
    while True:
        try:
            column, disk_pos = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{src.path}: cannot read rows after row {row} ({e}); the file may be "
                            "truncated or corrupt") from None
        if row + len(column) <= start_doc:
            row += len(column)
            continue
        for value in _texts(column, fields, src, opts, row):
            if row >= start_doc:
                if value is None:
                    bad_record(skipped, opts, f"null {opts.text_key!r}", f"{src.path}: row {row + 1}: "
                         f"{opts.text_key!r} is null", "fill or drop such rows")
                else:
                    yield from out.document(row, value, specials, disk_pos)
            row += 1


def parquet_blocks(src: SourceFile, opts: ReadOptions, specials: list[bytes], start_doc: int,
                   skipped: Counter) -> Iterator[Block]:
    """Blocks of a parquet source: one document per row, the text in column ``opts.text_key``."""
    pa = _pyarrow()
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(src.path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{src.path}: not a readable parquet file ({e}); it may be truncated") from None
    top, fields = _text_column(pf.schema_arrow, opts.text_key, src)
    meta = pf.metadata
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    # Whole row groups before start_doc are never read.
    first, row = 0, 0
    while first < len(groups) and row + groups[first].num_rows <= start_doc:
        row += groups[first].num_rows
        first += 1
    total_rows = max(1, meta.num_rows)
    row_bytes = sum(g.total_byte_size for g in groups) / total_rows
    batch_size = int(max(16, min(65536, BATCH_BYTES / max(1.0, row_bytes))))

    def batches() -> Iterator[tuple[object, int]]:
        done = row
        # A dotted path reads only that leaf of the struct column.
        column = opts.text_key if fields else top
        for batch in pf.iter_batches(batch_size=batch_size, row_groups=range(first, len(groups)),
                                     columns=[column]):
            done += batch.num_rows
            yield batch.column(0), src.size * done // total_rows

    try:
        yield from _table_blocks(src, opts, specials, start_doc, skipped, batches(), row, fields)
    finally:
        pf.close()


def arrow_blocks(src: SourceFile, opts: ReadOptions, specials: list[bytes], start_doc: int,
                 skipped: Counter) -> Iterator[Block]:
    """Blocks of an Arrow IPC file (stream or file format): one document per row."""
    pa = _pyarrow()
    f = pa.OSFile(str(src.path))
    try:
        try:
            is_file_format = f.read(6) == b"ARROW1"
            f.seek(0)
            reader = pa.ipc.open_file(f) if is_file_format else pa.ipc.open_stream(f)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{src.path}: not a readable Arrow file ({e}); it may be truncated") from None
        top, fields = _text_column(reader.schema, opts.text_key, src)
        index = reader.schema.get_field_index(top)

        def batches() -> Iterator[tuple[object, int]]:
            if is_file_format:  # random access: progress by batches read
                n = reader.num_record_batches
                for i in range(n):
                    yield reader.get_batch(i).column(index), src.size * (i + 1) // n
            else:
                for batch in reader:
                    yield batch.column(index), f.tell()

        yield from _table_blocks(src, opts, specials, start_doc, skipped, batches(), 0, fields)
    finally:
        f.close()
