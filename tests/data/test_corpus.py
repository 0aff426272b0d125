"""Corpus encoding and id import: token files equal in-memory encoding, metadata, failures."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lmkit.data.corpus as corpus
from lmkit.data.tokens import open_tokens
from lmkit.errors import DataError
from lmkit.tokenizer import Tokenizer, train_bpe

STORY = "Once upon a time, a cat sat.<|endoftext|>The dog ran\n\nfar  away. Ünïcödé 👋<|endoftext|>"


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    path = tmp_path_factory.mktemp("train") / "t.txt"
    path.write_text(STORY * 20, encoding="utf-8")
    return Tokenizer(*train_bpe(path, 300, ["<|endoftext|>"]))


def _leftovers(directory):
    # The per-output lock files (.NAME.bin.lock) stay by design (lmkit.locking); anything else counts.
    names = sorted(p.name for p in directory.iterdir()) if directory.exists() else []
    return [n for n in names if not (n.startswith(".") and n.endswith(".lock"))]


@pytest.mark.parametrize("workers", [1, 2])
def test_encoded_file_equals_encode(tok, tmp_path, monkeypatch, workers):
    # Small blocks force many cuts, including near special tokens and double spaces.
    monkeypatch.setattr(corpus, "BLOCK_BYTES", 64)
    src = tmp_path / "story.txt"
    src.write_text(STORY * 10, encoding="utf-8")
    [out] = corpus.encode_corpus(tok, src, tmp_path / "out", tokenizer_dir=tmp_path, workers=workers,
                                 create_stats=True)
    ids, meta = open_tokens(out)
    assert out.name == "story.bin" and ids.dtype == np.uint16
    assert ids.tolist() == tok.encode(STORY * 10)
    assert meta.tokenizer_hash == tok.hash and meta.vocab_size == tok.vocab_size
    assert meta.source_bytes == src.stat().st_size and meta.tokenizer_dir == str(tmp_path.resolve())
    assert meta.stats["num_tokens"] == len(ids) and meta.stats["top_tokens"][0]["count"] > 0
    assert "".join(corpus.decode_token_file(tok, out)) == STORY * 10
    assert _leftovers(tmp_path / "out") == ["story.bin", "story.json"]


def test_directory_input_and_uint32_vocab(tmp_path):
    vocab = {i: bytes([i]) for i in range(256)} | {70000: b"<|big|>"}
    big = Tokenizer(vocab, [])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("hi<|big|>")
    (tmp_path / "in" / "b.md").write_text("yo")
    (tmp_path / "in" / "ignored.bin").write_bytes(b"\0")
    outs = corpus.encode_corpus(big, tmp_path / "in", tmp_path / "out")
    assert [p.name for p in outs] == ["a.bin", "b.bin"]
    ids, meta = open_tokens(outs[0])
    assert meta.dtype == "uint32" and ids.tolist() == [ord("h"), ord("i"), 70000]


def test_invalid_utf8_strict_names_the_offset_and_leaves_nothing(tok, tmp_path):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"fine text " * 10 + b"\xff broken")
    with pytest.raises(DataError, match=r"byte offset 100 .*--errors replace"):
        corpus.encode_corpus(tok, src, tmp_path / "out")
    assert _leftovers(tmp_path / "out") == []
    [out] = corpus.encode_corpus(tok, src, tmp_path / "out", errors="replace")
    assert "".join(corpus.decode_token_file(tok, out)).endswith("\ufffd broken")


def test_import_ids_guide_format(tmp_path):
    src = tmp_path / "tokens.txt"
    src.write_text("1 2 3\n4\n\n5 6   7\n")
    [out] = corpus.import_ids(src, tmp_path / "out", vocab_size=100)
    ids, meta = open_tokens(out)
    assert ids.tolist() == [1, 2, 3, 4, 5, 6, 7] and meta.dtype == "uint16" and meta.vocab_size == 100


def test_import_ids_infers_uint32(tmp_path):
    src = tmp_path / "big.txt"
    src.write_text("70000 1")
    ids, meta = open_tokens(corpus.import_ids(src, tmp_path / "out")[0])
    assert meta.dtype == "uint32" and ids.tolist() == [70000, 1]


@pytest.mark.parametrize(
    ("content", "vocab_size", "match"),
    [
        ("1 2\n3 x4 5\n", None, r"tokens.txt:2: 'x4' is not a token id"),
        ("1 -2\n", None, r"tokens.txt:1: '-2'"),
        ("1 2\n\n99 100\n", 100, r"tokens.txt:3: token id 100 is outside the vocabulary"),
        ("\n\n", None, "holds no token ids"),
    ],
    ids=["non-integer", "negative", "outside-vocab", "empty"],
)
def test_import_ids_errors(tmp_path, content, vocab_size, match):
    src = tmp_path / "tokens.txt"
    src.write_text(content)
    with pytest.raises(DataError, match=match):
        corpus.import_ids(src, tmp_path / "out", vocab_size=vocab_size)
    assert _leftovers(tmp_path / "out") == []


def test_decode_refuses_another_tokenizers_ids(tok, tmp_path):
    src = tmp_path / "s.txt"
    src.write_text("hello there")
    [out] = corpus.encode_corpus(tok, src, tmp_path)
    meta = json.loads(out.with_suffix(".json").read_text())
    meta["tokenizer_hash"] = "sha256:0000000000000000"
    out.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="encoded with tokenizer sha256:0000"):
        list(corpus.decode_token_file(tok, out))
