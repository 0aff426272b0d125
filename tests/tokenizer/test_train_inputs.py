"""BPE training from every input format: same documents, same merges; documents as boundaries."""

from __future__ import annotations

import gzip
import json
import lzma
from collections import Counter

import pytest

from lmkit.errors import DataError
from lmkit.tokenizer import train_bpe
from lmkit.tokenizer.counting import count_corpus, count_texts
from lmkit.tokenizer.pretokenize import PRETOKEN_RE
from lmkit.tokenizer.train import learn_merges

DOCS = ["the cat sat on the mat", "a dog, a log; the fog", "  indented = code(1, 2)\n    return x\n",
        "naïve café — ünïcödé 北京 42", "the the the cat cat"]


def _jsonl(docs, key="text") -> str:
    return "".join(json.dumps({key: d} if "." not in key else {"meta": {"body": d}}) + "\n" for d in docs)


def _expected(docs, num):
    """The merges of each document pretokenized on its own."""
    counts = Counter(p.encode() for d in docs for p in PRETOKEN_RE.findall(d))
    return learn_merges(dict(counts), num)


@pytest.mark.parametrize("fmt", ["txt-dir", "jsonl", "jsonl.gz", "jsonl.xz", "jsonl.zst", "parquet", "nested-key"])
def test_every_format_trains_the_same_merges(tmp_path, fmt):
    if fmt == "txt-dir":
        for i, d in enumerate(DOCS):  # one document per file
            (tmp_path / "docs" / f"{i}.txt").parent.mkdir(exist_ok=True)
            (tmp_path / "docs" / f"{i}.txt").write_text(d, encoding="utf-8")
        path, key = tmp_path / "docs", "text"
    elif fmt == "parquet":
        pa = pytest.importorskip("pyarrow", reason="pyarrow (lmkit[parquet]) is not installed")
        import pyarrow.parquet as pq

        path, key = tmp_path / "c.parquet", "text"
        pq.write_table(pa.table({"text": DOCS, "n": list(range(len(DOCS)))}), path, row_group_size=2)
    else:
        key = "meta.body" if fmt == "nested-key" else "text"
        data = _jsonl(DOCS, key).encode("utf-8")
        suffix = "jsonl" if fmt == "nested-key" else fmt
        if suffix.endswith(".gz"):
            data = gzip.compress(data)
        elif suffix.endswith(".xz"):
            data = lzma.compress(data)
        elif suffix.endswith(".zst"):
            zstandard = pytest.importorskip("zstandard", reason="zstandard (lmkit[zstd]) is not installed")
            data = zstandard.ZstdCompressor().compress(data)
        path = tmp_path / f"c.{suffix}"
        path.write_bytes(data)
    vocab, merges = train_bpe(path, 256 + 30, text_key=key)
    assert merges == _expected(DOCS, 30)


def test_documents_are_boundaries(tmp_path):
    # Two JSONL documents "ab" and "cd": as one text "abcd" is a single pretoken holding (b, c);
    # as documents it never occurs, so it is never merged.
    path = tmp_path / "c.jsonl"
    path.write_text(_jsonl(["ab"] * 3 + ["cd"] * 2), encoding="utf-8")
    vocab, merges = train_bpe(path, 1000)
    assert merges == [(b"a", b"b"), (b"c", b"d")]


def test_several_inputs_and_globs(tmp_path):
    (tmp_path / "a.jsonl").write_text(_jsonl(DOCS[:2]), encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text(_jsonl(DOCS[2:]), encoding="utf-8")
    one = train_bpe([tmp_path / "a.jsonl", str(tmp_path / "sub" / "*.jsonl")], 256 + 25)
    assert one[1] == _expected(DOCS, 25)


def test_bad_lines_stop_or_are_skipped_and_reported(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(_jsonl(DOCS[:2]) + "{not json\n" + json.dumps({"body": "x"}) + "\n" + _jsonl(DOCS[2:]),
                    encoding="utf-8")
    with pytest.raises(DataError, match=r"c.jsonl:3"):
        train_bpe(path, 300)
    warned: list[str] = []
    vocab, merges = train_bpe(path, 256 + 25, skip_bad_lines=True, warn=warned.append)
    assert merges == _expected(DOCS, 25)
    assert len(warned) == 1 and "skipped 2 bad lines in c.jsonl" in warned[0]


def test_only_empty_documents_is_refused(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(_jsonl(["", "   "]), encoding="utf-8")
    with pytest.raises(DataError, match="no text to train on"):
        train_bpe(path, 300)


def test_pool_counts_equal_counting_here(tmp_path):
    # A big file split into batches for the workers plus small files counted whole by them:
    # the counts equal one process reading everything.
    from lmkit.data.sources import ReadOptions, resolve_inputs
    from lmkit.tokenizer import counting

    big = tmp_path / "big.txt"
    big.write_text(("the cat<|endoftext|>sat on the mat. " * 4000 + "\n") * 8, encoding="utf-8")
    for i in range(3):
        (tmp_path / f"s{i}.txt").write_text(DOCS[i] * 50, encoding="utf-8")
    sources = resolve_inputs([tmp_path / "big.txt", *(tmp_path / f"s{i}.txt" for i in range(3))])
    specials = ["<|endoftext|>"]
    counting_batch = counting.BATCH_CHARS
    try:
        counting.BATCH_CHARS = 50_000  # several batches from the big file
        pooled, _ = count_corpus(sources, ReadOptions(), specials, workers=2)
    finally:
        counting.BATCH_CHARS = counting_batch
    here, _ = count_corpus(sources, ReadOptions(), specials, workers=1)
    assert pooled == here
    assert "<|endoftext|>" not in "".join(here) and here == count_texts(
        [p.read_text(encoding="utf-8") for p in [big, *(tmp_path / f"s{i}.txt" for i in range(3))]], specials)


def test_a_bad_file_in_a_worker_is_the_same_one_line_error(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.jsonl").write_text(_jsonl(DOCS), encoding="utf-8")
    (tmp_path / "3.jsonl").write_text(_jsonl(DOCS) + '{"text": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"3.jsonl:6: .*--skip-bad-lines"):
        train_bpe(tmp_path, 300, workers=2)


def test_counting_workers_are_capped_at_the_cores(tmp_path, monkeypatch):
    from concurrent.futures import Future

    from lmkit.data.sources import ReadOptions, resolve_inputs
    from lmkit.tokenizer import counting

    for i in range(4):
        (tmp_path / f"{i}.txt").write_text(DOCS[i % len(DOCS)] * 100, encoding="utf-8")
    started: list[int] = []

    class InProcessPool:  # the process boundary: record how many were asked for, run here
        def __init__(self, max_workers, mp_context=None):
            started.append(max_workers)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def submit(self, fn, *args):
            fut: Future = Future()
            fut.set_result(fn(*args))
            return fut

    monkeypatch.setattr(counting, "ProcessPoolExecutor", InProcessPool)
    monkeypatch.setattr(counting.os, "cpu_count", lambda: 3)
    sources = resolve_inputs([tmp_path])
    pooled, _ = count_corpus(sources, ReadOptions(), [], workers=10**6)
    assert started == [3]
    assert pooled == count_corpus(sources, ReadOptions(), [], workers=1)[0]
