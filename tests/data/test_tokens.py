"""Token file metadata: one validating reader, errors naming the file and the field."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lmkit.data.tokens import TokenFileMeta, meta_path, open_tokens, read_meta, write_tokens
from lmkit.errors import DataError


def _pair(tmp_path, ids=range(100), **meta):
    path = tmp_path / "d.bin"
    write_tokens(path, np.asarray(ids, dtype=np.uint16), TokenFileMeta(dtype="uint16", num_tokens=0, **meta))
    return path


def _edit(path, **fields):
    raw = json.loads(meta_path(path).read_text())
    raw.update(fields)
    meta_path(path).write_text(json.dumps(raw))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"version": "2"}, r"field 'version' must be a positive integer.*got '2' \(str\)"),
        ({"version": 2}, r"newer lmkit \(format version 2"),
        ({"num_tokens": 100.0}, r"field 'num_tokens' must be an integer >= 0, got 100.0 \(float\)"),
        ({"num_tokens": -1}, r"field 'num_tokens' must be an integer >= 0"),
        ({"num_tokens": None}, r"field 'num_tokens'"),
        ({"vocab_size": "big"}, r"field 'vocab_size' must be an integer >= 1.*got 'big' \(str\)"),
        ({"vocab_size": True}, r"field 'vocab_size'.*\(bool\)"),
        ({"vocab_size": 0}, r"field 'vocab_size'"),
        ({"vocab_size": 70000}, r"'vocab_size' is 70000, but dtype uint16"),
        ({"dtype": "int8"}, r"field 'dtype' must be 'uint16' or 'uint32'"),
        ({"dtype": ["uint16"]}, r"field 'dtype'"),
        ({"format": "other"}, r"not an lmkit token metadata file \(field 'format'"),
        ({"tokenizer_hash": 5}, r"field 'tokenizer_hash' must be a string"),
        ({"source_bytes": "10"}, r"field 'source_bytes'"),
        ({"stats": [1]}, r"field 'stats' must be an object"),
        ({"num_documents": -3}, r"field 'num_documents' must be an integer >= 0"),
        ({"num_documents": 2.0}, r"field 'num_documents'.*\(float\)"),
        ({"eot_id": "50256"}, r"field 'eot_id' must be an integer"),
        ({"vocab_size": 300, "eot_id": 300}, r"field 'eot_id' is 300, outside the vocabulary \(size 300\)"),
        ({"index": "../x.idx"}, r"field 'index' must be a file name beside the .bin"),
        ({"index": 3}, r"field 'index' must be a string"),
        ({"sha256": "abc"}, r"field 'sha256' must be 64 lowercase hex digits"),
        ({"encoding": "fp"}, r"field 'encoding' must be an object"),
    ],
)
def test_wrong_types_and_ranges_name_the_file_and_field(tmp_path, fields, match):
    path = _pair(tmp_path)
    _edit(path, **fields)
    with pytest.raises(DataError, match=match) as e:
        read_meta(path)
    assert str(meta_path(path)) in str(e.value) or "newer" in str(e.value)


@pytest.mark.parametrize("text", ["[1, 2]", "\"x\"", "{not json", "[" * 100000])
def test_not_an_object_or_not_json(tmp_path, text):
    path = _pair(tmp_path)
    meta_path(path).write_text(text)
    with pytest.raises(DataError, match=str(meta_path(path))):
        read_meta(path)


def test_num_tokens_must_match_the_file_size(tmp_path):
    path = _pair(tmp_path)
    _edit(path, num_tokens=59457)
    with pytest.raises(DataError, match=r"200 bytes but its metadata promises 59457 uint16 tokens"):
        open_tokens(path)


def test_a_huge_metadata_file_is_refused_without_reading_it(tmp_path):
    path = _pair(tmp_path)
    with open(meta_path(path), "r+b") as f:
        f.truncate(1 << 26)  # 64 MiB, sparse: costs no disk
    with pytest.raises(DataError, match="far too large"):
        read_meta(path)


def test_valid_metadata_round_trips(tmp_path):
    path = _pair(tmp_path, vocab_size=300, tokenizer_hash="sha256:00", source_bytes=300)
    ids, meta = open_tokens(path)
    assert ids.tolist() == list(range(100)) and meta.vocab_size == 300 and meta.source_bytes == 300


def test_token_and_metadata_files_are_0644(tmp_path):
    old = os.umask(0o022)
    try:
        path = _pair(tmp_path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644 and meta_path(path).stat().st_mode & 0o777 == 0o644


def test_dataset_fields_round_trip_and_old_files_read(tmp_path):
    path = _pair(tmp_path, vocab_size=300, num_documents=4, eot_id=299, index="d.idx", sha256="a" * 64,
                 encoding={"fingerprint": "f"})
    meta = read_meta(path)
    assert (meta.num_documents, meta.eot_id, meta.index, meta.sha256, meta.encoding) == (4, 299, "d.idx", "a" * 64, {"fingerprint": "f"})
    raw = json.loads(meta_path(path).read_text())
    for name in ("num_documents", "eot_id", "index", "sha256", "encoding"):
        del raw[name]  # a file written before these fields existed
    meta_path(path).write_text(json.dumps(raw))
    assert read_meta(path).num_documents is None and read_meta(path).index is None
