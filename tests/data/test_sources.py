"""Reading inputs: every format gives the same documents, safe bounded blocks, resume, bad input."""

from __future__ import annotations

import gzip
import itertools
import json
import lzma
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from lmkit.data import formats
from lmkit.data.sources import ReadOptions, SourceFile, read_blocks, resolve_inputs, skipped_summary
from lmkit.errors import DataError
from lmkit.tokenizer.pretokenize import PRETOKEN_RE, special_splitter, split_specials

pa = pytest.importorskip("pyarrow", reason="pyarrow (lmkit[parquet]) is not installed")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow (lmkit[parquet]) is not installed")
zstandard = pytest.importorskip("zstandard", reason="zstandard (lmkit[zstd]) is not installed")

EOT = "<|endoftext|>"
SPECIALS = [EOT, "<|pad|>"]
# A blank document (dropped, keeping its index), specials and runs of spaces inside documents.
DOCS = ["Once upon a time, a cat sat.", "Second doc\nwith  two  spaces\n\n", "   ",
        "Ünïcödé 👋 and <|pad|> inside", "x" * 300 + " tail", "last one"]
EXPECTED = [(i, d) for i, d in enumerate(DOCS) if d.strip()]
SEP = "\n\n=====\n\n"


def _lines(docs, make=lambda i, d: {"id": i, "text": d}) -> bytes:
    return "".join(json.dumps(make(i, d)) + "\n" for i, d in enumerate(docs)).encode()


def _compress(data: bytes, how: str | None) -> bytes:
    return {"gz": gzip.compress, "xz": lzma.compress, "zst": zstandard.ZstdCompressor().compress,
            None: lambda b: b}[how](data)


def _write_table(path: Path, docs, fmt: str, nested: bool = False) -> None:
    col = pa.array([{"body": d, "n": i} for i, d in enumerate(docs)]) if nested else pa.array(docs)
    table = pa.table({"id": list(range(len(docs))), "meta" if nested else "text": col})
    if fmt == "parquet":
        pq.write_table(table, path, row_group_size=2)  # several row groups
    else:
        writer = pa.ipc.new_file if fmt == "arrow-file" else pa.ipc.new_stream
        with pa.OSFile(str(path), "wb") as sink, writer(sink, table.schema) as w:
            for batch in table.to_batches(max_chunksize=2):
                w.write_batch(batch)


def _hf_dataset(tmp_path: Path, docs, dict_splits: bool = False) -> Path:
    datasets = pytest.importorskip("datasets", reason="datasets is not installed (dev dependency)")
    ds = datasets.Dataset.from_dict({"text": docs, "id": list(range(len(docs)))})
    out = tmp_path / "hf"
    if dict_splits:
        datasets.DatasetDict({"validation": ds.select([0]), "train": ds}).save_to_disk(str(out))
    else:
        ds.save_to_disk(str(out), max_shard_size=200)  # several .arrow files
    return out


# name -> (file name, bytes written or table writer, read options)
FORMATS = {
    "txt-eot": ("a.txt", (EOT.join(DOCS) + EOT).encode(), ReadOptions(eot=EOT)),
    "txt-separator": ("a.md", SEP.join(DOCS).encode(), ReadOptions(doc_separator=SEP)),
    "txt.gz": ("a.txt.gz", _compress(EOT.join(DOCS).encode(), "gz"), ReadOptions(eot=EOT)),
    "txt.zst": ("a.txt.zst", _compress(EOT.join(DOCS).encode(), "zst"), ReadOptions(eot=EOT)),
    "txt.xz": ("a.txt.xz", _compress(EOT.join(DOCS).encode(), "xz"), ReadOptions(eot=EOT)),
    "jsonl": ("a.jsonl", _lines(DOCS), ReadOptions()),
    "json": ("a.json", _lines(DOCS), ReadOptions()),
    "ndjson-crlf": ("a.ndjson", _lines(DOCS).replace(b"\n", b"\r\n"), ReadOptions()),
    "jsonl.gz": ("a.jsonl.gz", _compress(_lines(DOCS), "gz"), ReadOptions()),
    "jsonl.zst": ("a.jsonl.zst", _compress(_lines(DOCS), "zst"), ReadOptions()),
    "jsonl.xz": ("a.jsonl.xz", _compress(_lines(DOCS), "xz"), ReadOptions()),
    "jsonl-nested": ("a.jsonl", _lines(DOCS, lambda i, d: {"meta": {"body": d, "n": i}}),
                     ReadOptions(text_key="meta.body")),
    "parquet": ("a.parquet", "parquet", ReadOptions()),
    "parquet-nested": ("a.parquet", ("parquet", True), ReadOptions(text_key="meta.body")),
    "arrow-stream": ("a.arrow", "arrow-stream", ReadOptions()),
    "arrow-file": ("a.arrow", "arrow-file", ReadOptions()),
}


def _make(tmp_path: Path, name: str) -> tuple[SourceFile, ReadOptions]:
    if name == "hf":
        [src, *_] = resolve_inputs([_hf_dataset(tmp_path, DOCS)])
        return src, ReadOptions()  # one source per .arrow shard: see test_hf_folder
    fname, content, opts = FORMATS[name]
    path = tmp_path / fname
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        fmt, nested = content if isinstance(content, tuple) else (content, False)
        _write_table(path, DOCS, fmt, nested)
    [src] = resolve_inputs([path])
    return src, opts


def _documents(blocks) -> list[tuple[int, str]]:
    """(doc, text) of each document, checking the first/last flags on the way."""
    docs: list[tuple[int, str]] = []
    for b in blocks:
        if b.first:
            docs.append((b.doc, b.text))
        else:
            assert docs and docs[-1][0] == b.doc, "a continuation block without its document's first"
            docs[-1] = (b.doc, docs[-1][1] + b.text)
    flags = [(b.first, b.last) for b in blocks]
    assert sum(f for f, _ in flags) == sum(last for _, last in flags) == len(docs)
    return docs


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_gives_the_same_documents(tmp_path, name):
    src, opts = _make(tmp_path, name)
    blocks = list(read_blocks(src, opts, SPECIALS))
    assert _documents(blocks) == EXPECTED
    # Progress: over a whole read the blocks account for the file's bytes on disk exactly.
    assert sum(b.nbytes for b in blocks) == src.size


def test_hf_folder(tmp_path):
    folder = _hf_dataset(tmp_path, DOCS)
    sources = resolve_inputs([folder])
    names = json.loads((folder / "state.json").read_text())["_data_files"]
    assert [s.path.name for s in sources] == [f["filename"] for f in names] and len(sources) > 1
    assert all(s.kind == "arrow" for s in sources)
    docs = [t for s in sources for _, t in _documents(list(read_blocks(s, ReadOptions(), SPECIALS)))]
    assert docs == [d for _, d in EXPECTED]


def test_hf_dataset_dict_reads_train(tmp_path):
    folder = _hf_dataset(tmp_path, DOCS, dict_splits=True)
    sources = resolve_inputs([folder])
    assert {s.path.parent.name for s in sources} == {"train"}
    assert [t for _, t in _documents(list(read_blocks(sources[0], ReadOptions(), SPECIALS)))] == [d for _, d in EXPECTED]
    # Another split is read by naming its folder.
    [val] = resolve_inputs([folder / "validation"])
    assert [t for _, t in _documents(list(read_blocks(val, ReadOptions(), SPECIALS)))] == [DOCS[0]]
    (folder / "dataset_dict.json").write_text('{"splits": ["a", "b"]}')
    with pytest.raises(DataError, match=r"splits a, b and no 'train'; pass one split's folder"):
        resolve_inputs([folder])


def _pretokens(text: str) -> list[str]:
    out = []
    for i, seg in enumerate(split_specials(text, special_splitter(SPECIALS))):
        out += [seg] if i % 2 else PRETOKEN_RE.findall(seg)
    return out


@pytest.mark.parametrize("name", ["txt-eot", "txt-separator", "txt.gz", "jsonl", "parquet"])
def test_blocks_cut_safely_and_stay_small(tmp_path, monkeypatch, name):
    # Tiny blocks force cuts everywhere: next to specials, in runs of spaces, inside separators
    # that straddle two reads, and forced ones in the 300-byte word.
    monkeypatch.setattr(formats, "BLOCK_BYTES", 16)
    monkeypatch.setattr(formats, "MAX_UNCUT", 64)
    src, opts = _make(tmp_path, name)
    blocks = list(read_blocks(src, opts, SPECIALS))
    assert _documents(blocks) == EXPECTED
    assert max(len(b.text.encode()) for b in blocks) <= 64 + 16
    for i, doc in EXPECTED:
        pieces = [b.text for b in blocks if b.doc == i]
        assert len(pieces) > 1 or len(doc.encode()) <= 16
        if "x" * 64 not in doc:  # safe cuts change no pretoken (forced ones in a long word may)
            assert [p for piece in pieces for p in _pretokens(piece)] == _pretokens(doc)
        cuts = list(itertools.accumulate(len(p) for p in pieces))[:-1]
        for special in SPECIALS:  # no cut, forced or not, falls inside a special token
            for m in re.finditer(re.escape(special), doc):
                assert not any(m.start() < c < m.end() for c in cuts)


def test_long_unbroken_document_stays_bounded(tmp_path):
    word = "ab" * (10 << 20)  # 20 MB without a space: no safe cut anywhere
    for path in (tmp_path / "w.txt", tmp_path / "w.jsonl"):
        path.write_text(word if path.suffix == ".txt" else json.dumps({"text": word}) + "\n")
        blocks = list(read_blocks(resolve_inputs([path])[0], ReadOptions(), SPECIALS))
        assert "".join(b.text for b in blocks) == word
        assert len(blocks) > 1 and max(len(b.text) for b in blocks) <= formats.MAX_UNCUT


@pytest.mark.parametrize("name", ["txt-eot", "txt.zst", "jsonl.gz", "parquet", "arrow-stream", "arrow-file"])
def test_start_doc_drops_the_first_documents(tmp_path, monkeypatch, name):
    monkeypatch.setattr(formats, "BLOCK_BYTES", 16)
    src, opts = _make(tmp_path, name)
    full = list(read_blocks(src, opts, SPECIALS))
    for k in range(len(DOCS) + 2):
        part = list(read_blocks(src, opts, SPECIALS, start_doc=k))
        assert [(b.doc, b.text, b.first, b.last) for b in part] == \
            [(b.doc, b.text, b.first, b.last) for b in full if b.doc >= k]
        if part:  # the skipped documents' bytes count for the first block: resumed progress adds up
            assert sum(b.nbytes for b in part) == src.size


def test_parquet_start_doc_skips_row_groups_unread(tmp_path, monkeypatch):
    src, opts = _make(tmp_path, "parquet")
    seen = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        seen.append(list(kwargs["row_groups"]))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert _documents(list(read_blocks(src, opts, SPECIALS, start_doc=4))) == [(4, DOCS[4]), (5, DOCS[5])]
    assert seen == [[2]]  # rows 0-3 are row groups 0 and 1


# --- resolve_inputs -------------------------------------------------------------------------

def test_resolve_order_globs_and_duplicates(tmp_path):
    d = tmp_path / "data"
    for rel in ["b/2.jsonl", "b/10.jsonl.gz", "a.jsonl", "a/z.jsonl.zst", "c/.hidden.jsonl", ".cache/x.jsonl",
                "notes.csv", "out.bin", "out.json", "nested/deep/x.parquet"]:
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(b"")
    names = lambda srcs: [str(s.path.relative_to(d)) for s in srcs]
    # Directory: recursive, sorted component by component; hidden files, unsupported suffixes
    # and lmkit's own outputs (out.json beside out.bin) are left out.
    assert names(resolve_inputs([d])) == ["a/z.jsonl.zst", "a.jsonl", "b/10.jsonl.gz", "b/2.jsonl",
                                          "nested/deep/x.parquet"]
    # Several inputs in the order given; a file named twice is kept the first time.
    srcs = resolve_inputs([d / "b" / "2.jsonl", str(d / "**" / "*.jsonl*"), d / "a.jsonl"])
    assert names(srcs) == ["b/2.jsonl", "a/z.jsonl.zst", "a.jsonl", "b/10.jsonl.gz"]
    assert [(s.kind, s.compression) for s in srcs] == [("jsonl", None), ("jsonl", "zst"), ("jsonl", None), ("jsonl", "gz")]
    assert all(s.path.is_absolute() for s in srcs)
    # An explicitly named file of an unknown suffix is plain text.
    [csv] = resolve_inputs([d / "notes.csv"])
    assert (csv.kind, csv.compression) == ("text", None)


def test_directory_mixing_text_and_data_files_is_refused(tmp_path):
    (tmp_path / "README.md").write_text("# card")
    (tmp_path / "train.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"plain-text files \(README.md\) beside 1 data files; pass a glob"):
        resolve_inputs([tmp_path])
    assert [s.path.name for s in resolve_inputs([str(tmp_path / "*.parquet")])] == ["train.parquet"]


@pytest.mark.parametrize("inputs, message", [
    (["missing.txt"], r"missing.txt: input not found"),
    (["*.nothing"], r"glob matched no files"),
    (["*.bin"], r"glob matched 1 paths but no files lmkit reads \(.txt"),
    (["ids.bin"], r"ids.bin: lmkit cannot read .bin files; it reads .txt .text .md, .jsonl"),
    (["a.txt.bz2"], r"a.txt.bz2: lmkit cannot read .bz2 files"),
    (["t.parquet.gz"], r"cannot read .parquet.gz files"),
    (["empty"], r"empty: directory has no files lmkit reads"),
])
def test_resolve_errors(tmp_path, monkeypatch, inputs, message):
    monkeypatch.chdir(tmp_path)
    for name in ["ids.bin", "a.txt.bz2", "t.parquet.gz"]:
        Path(name).write_bytes(b"x")
    Path("empty").mkdir()
    with pytest.raises(DataError, match=message):
        resolve_inputs(inputs)


def test_missing_extras_name_the_pip_line(tmp_path, monkeypatch):
    import importlib.util

    from lmkit.data import compression, sources

    (tmp_path / "a.parquet").write_bytes(b"")
    (tmp_path / "a.jsonl.zst").write_bytes(b"")
    real = importlib.util.find_spec
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda n, *a: None if n in ("pyarrow", "zstandard") else real(n, *a))
    with pytest.raises(DataError, match=r"reading .*a.parquet needs pyarrow: pip install 'lmkit\[parquet\]'"):
        resolve_inputs([tmp_path / "a.parquet"])
    if sys.version_info < (3, 14):
        monkeypatch.setattr(compression, "zstd_available", lambda: False)
        monkeypatch.setattr(sources, "zstd_available", lambda: False)
        with pytest.raises(DataError, match=r"needs zstandard: pip install 'lmkit\[zstd\]'"):
            resolve_inputs([tmp_path / "a.jsonl.zst"])


# --- bad input while reading ----------------------------------------------------------------

def _read(path: Path, opts: ReadOptions | None = None, skipped: Counter | None = None) -> list[tuple[int, str]]:
    src = resolve_inputs([path])[0]
    return _documents(list(read_blocks(src, opts or ReadOptions(), SPECIALS, skipped=skipped)))


BAD_LINES = [
    (b'{"text": "ok"}\n{"text": "broken\n', (r"a.jsonl:2: not valid JSON \(Unterminated string.*column 10\); "
     r"fix the line, or pass --skip-bad-lines to skip such lines"), "malformed JSON"),
    (b'{"text": "ok"}\n{"body": "x", "id": 3}\n', (r"a.jsonl:2: no key 'text' \(keys present: 'body', 'id'\); "
     r"pass --text-key naming the text field, or pass --skip-bad-lines"), "missing key 'text'"),
    (b'{"text": "ok"}\n{"text": 42}\n', r"a.jsonl:2: 'text' is a JSON number, not a string", "non-string 'text'"),
    (b'{"text": "ok"}\n["text"]\n', r"a.jsonl:2: the line is a JSON array, not an object holding 'text'",
     "not a JSON object"),
]


@pytest.mark.parametrize("content, message, reason", BAD_LINES)
def test_bad_json_lines(tmp_path, content, message, reason):
    path = tmp_path / "a.jsonl"
    path.write_bytes(content + b'{"text": "after"}\n')
    with pytest.raises(DataError, match=message):
        _read(path)
    skipped: Counter = Counter()
    assert _read(path, ReadOptions(skip_bad_lines=True), skipped) == [(0, "ok"), (2, "after")]
    assert skipped == Counter({reason: 1})


def test_skipped_summary(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"text": 1}\nnot json\n{"x": 1}\n{"text": "ok"}\n{oops\n')
    skipped: Counter = Counter()
    assert _read(path, ReadOptions(skip_bad_lines=True), skipped) == [(3, "ok")]
    assert skipped_summary(resolve_inputs([path])[0], skipped) == \
        "skipped 4 bad lines in a.jsonl: 2 malformed JSON, 1 non-string 'text', 1 missing key 'text'"
    assert skipped_summary(path, Counter()) is None


def test_nested_key_errors(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"meta": {"title": "t"}}\n')
    with pytest.raises(DataError, match=r"a.jsonl:1: no key 'body' under 'meta' \(keys present under 'meta': 'title'\)"):
        _read(path, ReadOptions(text_key="meta.body"))
    path.write_bytes(b'{"meta": "flat"}\n{"meta.body": "dotted key"}\n')
    with pytest.raises(DataError, match=r"a.jsonl:1: 'meta' is a JSON string, not an object holding 'body'"):
        _read(path, ReadOptions(text_key="meta.body"))
    assert _read(path, ReadOptions(text_key="meta.body", skip_bad_lines=True)) == [(1, "dotted key")]


def test_table_column_errors(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [1], "content": ["x"], "meta": [{"n": 1}]}), path)
    with pytest.raises(DataError, match=r"t.parquet: no column 'text' \(columns: id, content, meta\); pass --text-key"):
        _read(path)
    with pytest.raises(DataError, match=r"column 'id' holds int64, not text"):
        _read(path, ReadOptions(text_key="id"))
    with pytest.raises(DataError, match=r"column 'meta' has no field 'body' \(fields: n\)"):
        _read(path, ReadOptions(text_key="meta.body"))
    assert _read(path, ReadOptions(text_key="content")) == [(0, "x")]
    pq.write_table(pa.table({"text": ["a", None, "c"]}), path)
    with pytest.raises(DataError, match=r"t.parquet: row 2: 'text' is null; fill or drop such rows, or pass --skip-bad-lines"):
        _read(path)
    assert _read(path, ReadOptions(skip_bad_lines=True)) == [(0, "a"), (2, "c")]


@pytest.mark.parametrize("suffix", ["txt.gz", "jsonl.gz", "jsonl.zst", "txt.xz"])
def test_truncated_compressed_files(tmp_path, suffix):
    data = _lines(["word " * 50 + str(i) for i in range(2000)])
    whole = _compress(data, suffix.split(".")[1])
    path = tmp_path / f"a.{suffix}"
    path.write_bytes(whole[: len(whole) // 2])
    kind = {"gz": "gzip", "zst": "zstd", "xz": "xz"}[suffix.split(".")[1]]
    with pytest.raises(DataError, match=rf"a.{suffix}: truncated or corrupt {kind} data .*compress the file again"):
        _read(path)
    path.write_bytes(b"garbage, not compressed" * 10)
    with pytest.raises(DataError, match=rf"a.{suffix}: truncated or corrupt {kind} data"):
        _read(path)


def test_zst_of_several_frames(tmp_path):
    c = zstandard.ZstdCompressor()
    path = tmp_path / "a.jsonl.zst"
    path.write_bytes(c.compress(_lines(DOCS[:3])) + c.compress(_lines(DOCS[3:])))
    assert [t for _, t in _read(path)] == [d for _, d in EXPECTED]


@pytest.mark.parametrize("name", ["parquet", "arrow-stream"])
def test_truncated_tables(tmp_path, name):
    src, opts = _make(tmp_path, name)
    src.path.write_bytes(src.path.read_bytes()[:-20])
    with pytest.raises(DataError, match=rf"{src.path.name}: (not a readable|cannot read rows).*truncated"):
        _documents(list(read_blocks(resolve_inputs([src.path])[0], opts, SPECIALS)))


def test_invalid_utf8(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"fine text \xff\xfe more")
    with pytest.raises(DataError, match=r"a.txt: not valid UTF-8 at byte offset 10 .*pass --errors replace"):
        _read(path)
    assert _read(path, ReadOptions(errors="replace")) == [(0, "fine text \ufffd\ufffd more")]
    gz = tmp_path / "a.txt.gz"
    gz.write_bytes(gzip.compress(b"x" * 5 + b"\xff"))
    with pytest.raises(DataError, match=r"a.txt.gz \(decompressed\): not valid UTF-8 at byte offset 5"):
        _read(gz)
    jl = tmp_path / "a.jsonl"
    jl.write_bytes(b'{"text": "ok"}\n{"text": "bad \xff"}\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: not valid UTF-8 at byte offset 29 \(invalid start byte\)"):
        _read(jl)
    assert _read(jl, ReadOptions(errors="replace")) == [(0, "ok"), (1, "bad \ufffd")]
    jl.write_bytes(b'{"text": "half an emoji \\ud83d"}\n')
    with pytest.raises(DataError, match=r"a.jsonl:1: 'text' holds an unpaired UTF-16 surrogate \(\\ud83d\)"):
        _read(jl)
    assert _read(jl, ReadOptions(errors="replace")) == [(0, "half an emoji \ufffd")]


@pytest.mark.parametrize("kwargs, message", [
    ({"errors": "ignore"}, r"--errors must be 'strict' or 'replace'"),
    ({"text_key": "meta..body"}, r"--text-key 'meta..body' is not a key or dotted path"),
    ({"doc_separator": ""}, r"--doc-separator must not be empty"),
])
def test_read_options_are_checked(kwargs, message):
    with pytest.raises(DataError, match=message):
        ReadOptions(**kwargs)


def test_importing_sources_loads_no_optional_readers():
    # pyarrow costs a second to import: only a parquet/Arrow input may pay it.
    code = "import sys, lmkit.data.sources; print(sorted(m for m in ('pyarrow', 'zstandard', 'torch') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures peak RSS through Linux /proc")
@pytest.mark.parametrize("name", ["big.jsonl.gz", "big.txt.zst"])
def test_reading_a_large_compressed_file_keeps_memory_flat(tmp_path, name):
    # 200 MB of JSON Lines (4 KB documents) or of text (one document), compressed on the fly;
    # reading it must hold a few blocks, not the file: peak RSS grows by far less than its size.
    path = tmp_path / name
    text = ("lorem ipsum dolor sit amet " * 150)[:4000]
    line = (json.dumps({"text": text}) + "\n").encode() if "jsonl" in name else text.encode()
    with open(path, "wb") as raw, (
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) if name.endswith(".gz")
            else zstandard.ZstdCompressor(level=1).stream_writer(raw, closefd=False)) as f:
        chunk = line * 256
        for _ in range((200 << 20) // len(chunk)):
            f.write(chunk)
    # ru_maxrss would carry the forking parent's peak over exec; VmHWM can be reset.
    script = textwrap.dedent(f"""
        from lmkit.data.sources import ReadOptions, read_blocks, resolve_inputs
        def peak_kb():
            return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
        [src] = resolve_inputs([{str(path)!r}])
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current RSS
        before = peak_kb()
        n = sum(len(b.text) for b in read_blocks(src, ReadOptions(), ["<|endoftext|>"]))
        print(n, (peak_kb() - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    chars, growth_mb = int(out[0]), int(out[1])
    assert chars > 190 << 20
    # A few 1 MB blocks, read buffers and the allocator's slack (about 8-20 MB measured); a
    # reader that held the file, or let a buffer grow with it, would take 200 MB and more.
    assert growth_mb < 48, f"peak RSS grew by {growth_mb} MB reading a 200 MB file"
