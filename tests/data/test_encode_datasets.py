"""Encoding into datasets: shards, document index, EOT, formats, splits, resume, failures."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

import lmkit.data.shards as shards
from lmkit.data.encode import encode_corpus
from lmkit.data.manifest import read_manifest
from lmkit.data.shard_files import file_sha256
from lmkit.data.tokens import open_tokens, read_meta
from lmkit.errors import DataError
from lmkit.tokenizer import Tokenizer, train_bpe

EOT = "<|endoftext|>"
DOCS = [f"Document {i}: once upon a time, cat number {i} sat{' far' * (i % 7)}. Ünïcödé 👋 {i * i}" for i in range(40)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("train") / "t.txt"
    path.write_text(EOT.join(DOCS) * 3, encoding="utf-8")
    return Tokenizer(*train_bpe(path, 320, [EOT]))


def _expected(tok: Tokenizer, docs: list[str]) -> list[int]:
    eot = tok.token_id(EOT)
    return [i for d in docs for i in tok.encode(d) + [eot]]


def _ids(out) -> np.ndarray:
    """All ids of a dataset (one .bin, or a manifest's shards concatenated)."""
    if out.suffix == ".bin":
        return np.asarray(open_tokens(out)[0])
    m = read_manifest(out)
    return np.concatenate([np.asarray(open_tokens(p)[0]) for p in m.shard_paths(out)])


def _doc_starts(out) -> list[int]:
    """Global start offsets of the documents, from the .idx files."""
    paths = [out] if out.suffix == ".bin" else read_manifest(out).shard_paths(out)
    starts, base = [], 0
    for p in paths:
        meta = read_meta(p)
        starts += (np.fromfile(p.parent / meta.index, dtype="<u8") + base).tolist()
        base += meta.num_tokens
    return starts


def _write_txt(path, docs):
    path.write_text(EOT.join(docs) + EOT, encoding="utf-8")
    return path


def test_shards_concatenated_equal_unsharded_and_one_go(tok, tmp_path):
    src = _write_txt(tmp_path / "corpus.txt", DOCS)
    [single] = encode_corpus(tok, src, tmp_path / "one")
    [manifest] = encode_corpus(tok, src, tmp_path / "many", shard_tokens=97)
    assert single.name == "corpus.bin" and manifest.name == "corpus.json"
    expected = _expected(tok, DOCS)
    assert _ids(single).tolist() == expected == _ids(manifest).tolist()
    m = read_manifest(manifest)
    assert len(m.shards) == -(-len(expected) // 97) and all(s.num_tokens == 97 for s in m.shards[:-1])
    assert m.num_documents == len(DOCS) and m.eot_id == tok.token_id(EOT) and m.num_tokens == len(expected)
    assert m.sources[0].documents == len(DOCS) and m.source_bytes == src.stat().st_size
    assert sorted(p.name for p in (tmp_path / "one").iterdir() if not p.name.endswith(".lock")) == ["corpus.bin", "corpus.idx", "corpus.json"]
    meta = read_meta(single)
    assert meta.num_documents == len(DOCS) and meta.source_bytes == src.stat().st_size and meta.eot_id == tok.token_id(EOT)
    before = single.stat().st_mtime_ns
    assert encode_corpus(tok, src, tmp_path / "one") == [single] and single.stat().st_mtime_ns == before  # verified, kept


@pytest.mark.parametrize("shard_tokens", [10**8, 53])
def test_index_points_at_document_starts(tok, tmp_path, shard_tokens):
    src = _write_txt(tmp_path / "c.txt", DOCS)
    [out] = encode_corpus(tok, src, tmp_path / "o", shard_tokens=shard_tokens)
    ids, starts = _ids(out).tolist(), _doc_starts(out)
    assert len(starts) == len(DOCS) and starts[0] == 0
    for doc, a, b in zip(DOCS, starts, starts[1:] + [len(ids)]):
        assert tok.decode(ids[a:b]) == doc + EOT  # each document, then its EOT


def test_no_eot_and_a_custom_eot(tok, tmp_path):
    src = tmp_path / "c.txt"
    src.write_text("one two" + EOT + "three", encoding="utf-8")
    [out] = encode_corpus(tok, src, tmp_path / "a", eot=False)
    assert _ids(out).tolist() == tok.encode("one two" + EOT + "three")  # the text's own special stays
    with pytest.raises(DataError, match=r"--eot '<\|nope\|>' is not a special token of this tokenizer .*--no-eot"):
        encode_corpus(tok, src, tmp_path / "b", eot="<|nope|>")


def _formats(tmp_path, docs):
    """The same documents as txt (EOT-separated), jsonl, jsonl.gz, and parquet/zst when installed."""
    made = {"txt": _write_txt(tmp_path / "d.txt", docs)}
    lines = "".join(json.dumps({"meta": {"text": d}, "id": i}) + "\n" for i, d in enumerate(docs))
    (tmp_path / "d.jsonl").write_text(lines, encoding="utf-8")
    made["jsonl"] = tmp_path / "d.jsonl"
    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(lines)
    made["jsonl.gz"] = tmp_path / "d.jsonl.gz"
    return made


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "jsonl.gz", "jsonl.zst", "parquet", "hf-dataset"])
def test_same_text_same_ids_in_every_format(tok, tmp_path, fmt):
    made = _formats(tmp_path, DOCS)
    if fmt == "jsonl.zst":
        zstd = pytest.importorskip("zstandard", reason="the zstd extra (zstandard) is not installed")
        (tmp_path / "d.jsonl.zst").write_bytes(zstd.ZstdCompressor().compress((tmp_path / "d.jsonl").read_bytes()))
        made[fmt] = tmp_path / "d.jsonl.zst"
    if fmt == "parquet":
        pa = pytest.importorskip("pyarrow", reason="the parquet extra (pyarrow) is not installed")
        import pyarrow.parquet as pq

        table = pa.table({"meta": [{"text": d} for d in DOCS]})
        pq.write_table(table, tmp_path / "d.parquet", row_group_size=7)
        made[fmt] = tmp_path / "d.parquet"
    if fmt == "hf-dataset":
        datasets = pytest.importorskip("datasets", reason="the datasets package (to write the fixture) is not installed")
        datasets.Dataset.from_dict({"meta": [{"text": d} for d in DOCS]}).save_to_disk(str(tmp_path / "hf"))
        made[fmt] = tmp_path / "hf"
    [out] = encode_corpus(tok, made[fmt], tmp_path / "out", text_key="meta.text", shard_tokens=101)
    assert _ids(out).tolist() == _expected(tok, DOCS)
    assert len(_doc_starts(out)) == len(DOCS)
    # bits per byte compare across formats: the bytes are those of the text the ids decode to
    assert read_manifest(out).source_bytes == sum(len((d + EOT).encode()) for d in DOCS) == made["txt"].stat().st_size


def _docs_of(tok, out) -> list[str]:
    ids, starts = _ids(out).tolist(), _doc_starts(out)
    return [tok.decode(ids[a:b - 1]) for a, b in zip(starts, starts[1:] + [len(ids)])]


def test_val_fraction_splits_whole_documents_deterministically(tok, tmp_path):
    src = _write_txt(tmp_path / "web.txt", DOCS)
    train, val = encode_corpus(tok, src, tmp_path / "a", val_fraction=0.3, shard_tokens=200)
    assert {train.stem, val.stem} == {"web-train", "web-val"}
    t, v = _docs_of(tok, train), _docs_of(tok, val)
    assert not set(t) & set(v) and sorted(t + v) == sorted(DOCS) and 3 <= len(v) <= 25
    assert t == [d for d in DOCS if d in t]  # corpus order kept within a split
    again = encode_corpus(tok, src, tmp_path / "b", val_fraction=0.3, shard_tokens=200)
    assert [_ids(p).tolist() for p in again] == [_ids(p).tolist() for p in (train, val)]
    m = read_manifest(train) if train.suffix == ".json" else None
    assert m is None or m.split == {"role": "train", "val_fraction": 0.3, "val_docs": None}


def test_val_docs_is_exact(tok, tmp_path):
    src = _write_txt(tmp_path / "web.txt", DOCS)
    train, val = encode_corpus(tok, src, tmp_path / "a", val_docs=5)
    t, v = _docs_of(tok, train), _docs_of(tok, val)
    assert len(v) == 5 and len(t) == len(DOCS) - 5 and not set(t) & set(v)
    with pytest.raises(DataError, match=r"--val-docs 40 but the corpus has 40 documents"):
        encode_corpus(tok, src, tmp_path / "b", val_docs=40)


def _interrupt_after(monkeypatch, n: int):
    """Make the n+1-th shard close raise, as a crash after n complete shards would stop it."""
    real = shards.DatasetWriter._close_shard
    calls = {"n": 0}

    def close(self, final):
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated interruption")
        calls["n"] += 1
        real(self, final)

    monkeypatch.setattr(shards.DatasetWriter, "_close_shard", close)


def _shard_mtimes(directory):
    return {p.name: p.stat().st_mtime_ns for p in directory.glob("*-0000*.bin")}


def test_interrupted_encode_resumes_from_verified_shards(tok, tmp_path, monkeypatch):
    src = _write_txt(tmp_path / "c.txt", DOCS)
    [reference] = encode_corpus(tok, src, tmp_path / "ref", shard_tokens=61)
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            encode_corpus(tok, src, tmp_path / "out", shard_tokens=61)
    before = _shard_mtimes(tmp_path / "out")
    assert sorted(before) == ["c-00000.bin", "c-00001.bin"] and not (tmp_path / "out" / "c.json").exists()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    counted = []
    real_finish = shards.DatasetWriter.finish

    def finish(self, *a):
        out = real_finish(self, *a)
        counted.append(self.written)
        return out

    monkeypatch.setattr(shards.DatasetWriter, "finish", finish)
    [out] = encode_corpus(tok, src, tmp_path / "out", shard_tokens=61)
    assert counted == [len(read_manifest(reference).shards) - 2]  # the two kept shards were not rewritten
    assert {k: v for k, v in _shard_mtimes(tmp_path / "out").items() if k in before} == before
    assert _ids(out).tolist() == _ids(reference).tolist() and _doc_starts(out) == _doc_starts(reference)
    assert read_manifest(out).sources == read_manifest(reference).sources
    counted.clear()
    encode_corpus(tok, src, tmp_path / "out", shard_tokens=61)  # all there: nothing is written
    assert counted == [0]


def test_split_encode_resumes_both_datasets(tok, tmp_path, monkeypatch):
    src = _write_txt(tmp_path / "c.txt", DOCS)
    ref = encode_corpus(tok, src, tmp_path / "ref", shard_tokens=40, val_fraction=0.4)
    with monkeypatch.context() as m:
        _interrupt_after(m, 5)
        with pytest.raises(KeyboardInterrupt):
            encode_corpus(tok, src, tmp_path / "out", shard_tokens=40, val_fraction=0.4)
    out = encode_corpus(tok, src, tmp_path / "out", shard_tokens=40, val_fraction=0.4)
    assert [_ids(p).tolist() for p in out] == [_ids(p).tolist() for p in ref]
    assert [_doc_starts(p) for p in out] == [_doc_starts(p) for p in ref]


def test_an_altered_shard_is_encoded_again(tok, tmp_path):
    src = _write_txt(tmp_path / "c.txt", DOCS)
    [out] = encode_corpus(tok, src, tmp_path / "o", shard_tokens=61)
    good = _ids(out).tolist()
    shard = tmp_path / "o" / "c-00001.bin"
    data = bytearray(shard.read_bytes())
    data[3] ^= 1  # same size: only the hash can tell
    shard.write_bytes(bytes(data))
    [out] = encode_corpus(tok, src, tmp_path / "o", shard_tokens=61)
    assert _ids(out).tolist() == good
    shard.unlink()
    with pytest.raises(DataError, match=r"shard c-00001.bin is missing; re-run the same `lmkit tokenize encode` command to repair it"):
        read_manifest(out)
    shard.write_bytes(b"\0\0")
    with pytest.raises(DataError, match=r"c-00001.bin is 2 bytes, the manifest lists \d+ .*re-run the same"):
        read_manifest(out)


def test_other_options_start_over(tok, tmp_path):
    src = _write_txt(tmp_path / "c.txt", DOCS)
    encode_corpus(tok, src, tmp_path / "o", shard_tokens=61)
    [out] = encode_corpus(tok, src, tmp_path / "o", shard_tokens=61, eot=False)
    # No EOT: the file is one document, and the text's own <|endoftext|> stays as its id.
    assert _ids(out).tolist() == tok.encode(src.read_text(encoding="utf-8"))
    assert read_manifest(out).num_documents == 1 and read_manifest(out).eot_id is None
    [out] = encode_corpus(tok, src, tmp_path / "o")  # now one shard: the shards of before go
    assert out.name == "c.bin" and not list((tmp_path / "o").glob("c-*")) and read_meta(out).num_documents == len(DOCS)


def test_truncated_gzip_names_the_file_and_completed_shards_stay_valid(tok, tmp_path, monkeypatch):
    import lmkit.data.encode as encode

    monkeypatch.setattr(encode, "BATCH_BYTES", 64)  # a.txt's ids reach the writer before b is read
    a = _write_txt(tmp_path / "a.txt", DOCS)
    lines = "".join(json.dumps({"text": d}) + "\n" for d in DOCS * 50).encode()
    whole = gzip.compress(lines)
    (tmp_path / "b.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"b\.jsonl\.gz"):
        encode_corpus(tok, [a, tmp_path / "b.jsonl.gz"], tmp_path / "o", shard_tokens=61)
    kept = sorted((tmp_path / "o").glob("corpus-*.bin"))
    assert len(kept) >= 2
    for p in kept:
        meta = read_meta(p)
        assert meta.sha256 == file_sha256(p)
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.endswith(".tmp")]


def test_a_second_encode_of_one_output_is_refused(tok, tmp_path):
    from lmkit.locking import LockHeldError, lock_output

    src = _write_txt(tmp_path / "c.txt", DOCS)
    (tmp_path / "o").mkdir()
    with lock_output(tmp_path / "o" / "web-val.bin"):
        with pytest.raises(LockHeldError, match=r"web-val.bin is in use by another lmkit process"):
            encode_corpus(tok, src, tmp_path / "o", name="web", val_docs=3)
    assert [p.name for p in (tmp_path / "o").iterdir() if not p.name.endswith(".lock")] == []


def test_inputs_directory_glob_and_name(tok, tmp_path):
    d = tmp_path / "web"
    (d / "sub").mkdir(parents=True)
    _write_txt(d / "b.txt", DOCS[:5])
    _write_txt(d / "sub" / "a.txt", DOCS[5:9])
    [out] = encode_corpus(tok, d, tmp_path / "o")
    assert out.name == "web.bin" and _ids(out).tolist() == _expected(tok, DOCS[:9])  # b.txt < sub/a.txt
    [out] = encode_corpus(tok, [str(d / "**" / "*.txt")], tmp_path / "o", name="globbed")
    assert out.name == "globbed.bin" and _ids(out).tolist() == _expected(tok, DOCS[:9])
    with pytest.raises(DataError, match="--name"):
        encode_corpus(tok, d, tmp_path / "o", name="../x")


def test_empty_input_and_bad_split_options(tok, tmp_path):
    (tmp_path / "e.txt").write_text("")
    with pytest.raises(DataError, match="input is empty"):
        encode_corpus(tok, tmp_path / "e.txt", tmp_path / "o")
    src = _write_txt(tmp_path / "c.txt", DOCS[:3])
    with pytest.raises(DataError, match="between 0 and 1"):
        encode_corpus(tok, src, tmp_path / "o", val_fraction=1.0)
    with pytest.raises(DataError, match="not both"):
        encode_corpus(tok, src, tmp_path / "o", val_fraction=0.1, val_docs=1)


def test_stats_of_a_resumed_sharded_dataset_count_every_id(tok, tmp_path, monkeypatch):
    src = _write_txt(tmp_path / "c.txt", DOCS)
    [ref] = encode_corpus(tok, src, tmp_path / "ref", shard_tokens=61, create_stats=True)
    with monkeypatch.context() as m:
        _interrupt_after(m, 3)
        with pytest.raises(KeyboardInterrupt):
            encode_corpus(tok, src, tmp_path / "out", shard_tokens=61, create_stats=True)
    [out] = encode_corpus(tok, src, tmp_path / "out", shard_tokens=61, create_stats=True)
    stats = read_manifest(out).stats
    assert stats == read_manifest(ref).stats and stats["num_tokens"] == len(_ids(ref))
    counts = np.bincount(_ids(ref))
    assert stats["top_tokens"][0]["count"] == counts.max() and stats["distinct_tokens"] == np.count_nonzero(counts)


def test_progress_starts_at_once_and_ends_at_the_total(tok, tmp_path):
    src = _write_txt(tmp_path / "c.txt", DOCS)
    calls = []
    encode_corpus(tok, src, tmp_path / "o", progress=lambda *a: calls.append(a))
    size = src.stat().st_size
    assert calls[0] == ("encode", 0, size) and calls[-1] == ("encode", size, size)
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)


@pytest.mark.parametrize("engine", ["fast-threads", "reference-processes"])
def test_both_encoders_give_the_reference_ids(tok, tmp_path, monkeypatch, engine):
    import lmkit.data.encode as encode

    monkeypatch.setattr(encode, "BATCH_BYTES", 200)  # many tasks in flight, returned in order
    if engine == "reference-processes":
        # A tokenizer tiktoken cannot express exactly: worker processes run Tokenizer.encode.
        monkeypatch.setattr(encode, "PARALLEL_MIN_BYTES", 0)
        monkeypatch.setattr(Tokenizer, "fast_encoder", lambda self: None)
    else:
        assert tok.fast_encoder() is not None
    src = _write_txt(tmp_path / "c.txt", DOCS)
    [out] = encode_corpus(tok, src, tmp_path / "o", threads=2, shard_tokens=150)
    assert _ids(out).tolist() == _expected(tok, DOCS)


_SIGTERM_RUN = """
import os, signal, sys
from pathlib import Path
import lmkit.data.shards as shards
from lmkit.data.encode import encode_corpus
from lmkit.tokenizer import Tokenizer
tok = Tokenizer({{i: bytes([i]) for i in range(256)}} | {{256: b"<|endoftext|>"}}, [], ["<|endoftext|>"])
real = shards.DatasetWriter._close_shard
def close(self, final):
    real(self, final)
    if self.written == {after}:
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill` from outside would, mid-encode
shards.DatasetWriter._close_shard = close
try:
    encode_corpus(tok, Path(sys.argv[1]), Path(sys.argv[2]), shard_tokens=500)
except Exception as e:
    print(f"{{type(e).__name__}}: {{e}}")
    sys.exit(getattr(e, "exit_code", 3))
"""


def test_sigterm_mid_encode_keeps_complete_shards_for_the_rerun(tmp_path):
    import signal
    import subprocess
    import sys

    src = _write_txt(tmp_path / "c.txt", DOCS * 3)
    r = subprocess.run([sys.executable, "-c", _SIGTERM_RUN.format(after=2), str(src), str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in r.stdout, r.stdout + r.stderr
    kept = sorted(p.name for p in (tmp_path / "o").iterdir() if not p.name.startswith("."))
    assert kept == ["c-00000.bin", "c-00000.idx", "c-00000.json", "c-00001.bin", "c-00001.idx", "c-00001.json"]
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.endswith(".tmp")]
    tok = Tokenizer({i: bytes([i]) for i in range(256)} | {256: EOT.encode()}, [], [EOT])
    [out] = encode_corpus(tok, src, tmp_path / "o", shard_tokens=500)
    assert _ids(out).tolist() == _expected(tok, DOCS * 3) and _doc_starts(out) == _doc_starts(encode_corpus(tok, src, tmp_path / "ref", shard_tokens=500)[0])


def test_a_rerun_reports_its_verification(tok, tmp_path):
    src = _write_txt(tmp_path / "c.txt", DOCS)
    [out] = encode_corpus(tok, src, tmp_path / "o", shard_tokens=61)
    calls = []
    encode_corpus(tok, src, tmp_path / "o", shard_tokens=61, progress=lambda *a: calls.append(a))
    verify = [c for c in calls if c[0] == "verify"]
    size = sum(s.bytes for s in read_manifest(out).shards)
    assert verify and verify[-1] == ("verify", size, size)


def test_decode_a_sharded_dataset(tok, tmp_path):
    from lmkit.data.corpus import decode_token_file

    src = _write_txt(tmp_path / "c.txt", DOCS)
    [out] = encode_corpus(tok, src, tmp_path / "o", shard_tokens=7)  # shards cut through characters too
    assert out.suffix == ".json" and "".join(decode_token_file(tok, out)) == src.read_text(encoding="utf-8")
