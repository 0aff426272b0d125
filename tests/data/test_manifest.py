"""Dataset manifests: the one validating reader, and every shard it lists checked."""

from __future__ import annotations

import json

import pytest

from lmkit.data.encode import encode_corpus
from lmkit.data.manifest import read_manifest
from lmkit.errors import DataError
from lmkit.tokenizer import Tokenizer

EOT = "<|endoftext|>"


@pytest.fixture
def dataset(tmp_path):
    """A byte-level tokenizer's dataset of several shards: (manifest path, tokenizer)."""
    tok = Tokenizer({i: bytes([i]) for i in range(256)} | {256: EOT.encode()}, [], [EOT])
    src = tmp_path / "web.txt"
    src.write_text(EOT.join(f"document {i} " * 3 for i in range(10)), encoding="utf-8")
    [out] = encode_corpus(tok, src, tmp_path / "d", shard_tokens=100)
    return out, tok


def _edit(path, fn):
    raw = json.loads(path.read_text())
    fn(raw)
    path.write_text(json.dumps(raw))


def test_manifest_lists_shards_in_order(dataset):
    out, tok = dataset
    m = read_manifest(out)
    assert m.name == "web" and m.format == "lmkit-dataset" and m.version == 1
    assert [s.file for s in m.shards] == [f"web-{k:05d}.bin" for k in range(len(m.shards))]
    assert m.tokenizer_hash == tok.hash and m.dtype == "uint16" and m.encoding["complete"] is True
    assert sum(s.num_tokens for s in m.shards) == m.num_tokens and m.num_documents == 10


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda r: r.update(format="other"), r"not an lmkit dataset manifest"),
        (lambda r: r.update(version=2), r"newer lmkit \(dataset format version 2"),
        (lambda r: r.update(version="1"), r"field 'version' must be a positive integer"),
        (lambda r: r.update(dtype="int8"), r"field 'dtype'"),
        (lambda r: r.update(num_tokens=r["num_tokens"] + 1), r"field 'num_tokens' is \d+ but its shards hold"),
        (lambda r: r.update(shards=[]), r"field 'shards' must be a non-empty list"),
        (lambda r: r["shards"][0].update(file="../elsewhere.bin"), r"shards\[0\].file must be a relative path"),
        (lambda r: r["shards"][0].update(file="/abs.bin"), r"shards\[0\].file must be a relative path"),
        (lambda r: r["shards"][1].update(bytes=3), r"shard web-00001.bin lists 3 bytes"),
        (lambda r: r["shards"][1].update(num_tokens=True), r"field 'num_tokens' must be an integer"),
        (lambda r: r.update(tokenizer_hash=5), r"field 'tokenizer_hash' must be a non-empty string"),
    ],
)
def test_malformed_manifest_names_the_field(dataset, edit, match):
    out, _ = dataset
    _edit(out, edit)
    with pytest.raises(DataError, match=match) as e:
        read_manifest(out)
    assert str(out) in str(e.value)


def test_a_shard_that_disagrees_with_the_manifest_is_named(dataset):
    out, _ = dataset
    shard_json = out.parent / "web-00001.json"
    _edit(shard_json, lambda r: r.update(tokenizer_hash="sha256:other"))
    with pytest.raises(DataError, match=r"shard web-00001.bin: its .json has tokenizer_hash 'sha256:other'.*re-run the same `lmkit tokenize encode`"):
        read_manifest(out)
    shard_json.unlink()
    with pytest.raises(DataError, match=r"shard web-00001.bin has unusable metadata .*re-run the same"):
        read_manifest(out)


def test_a_missing_index_is_named(dataset):
    out, _ = dataset
    (out.parent / "web-00002.idx").unlink()
    with pytest.raises(DataError, match=r"shard web-00002.bin: document index web-00002.idx is missing"):
        read_manifest(out)


def test_not_json_and_missing(tmp_path):
    (tmp_path / "m.json").write_text("{nope")
    with pytest.raises(DataError, match=r"m.json: malformed dataset manifest"):
        read_manifest(tmp_path / "m.json")
    with pytest.raises(DataError, match=r"nope.json: dataset manifest not found"):
        read_manifest(tmp_path / "nope.json")
