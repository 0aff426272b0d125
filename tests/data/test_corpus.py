"""Corpus encoding and id import: token files equal in-memory encoding, metadata, failures."""

from __future__ import annotations

import json

import numpy as np
import pytest

import lmkit.data.corpus as corpus
import lmkit.data.formats as formats
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
    monkeypatch.setattr(formats, "BLOCK_BYTES", 64)
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
    assert _leftovers(tmp_path / "out") == ["story.bin", "story.idx", "story.json"]


def test_directory_input_and_uint32_vocab(tmp_path):
    # Ids are dense (0..N-1, checked on load): fillers up to the one id past uint16.
    fillers = {i: f"<filler{i}>".encode() for i in range(256, 70000)}
    vocab = {i: bytes([i]) for i in range(256)} | fillers | {70000: b"<|big|>"}
    big = Tokenizer(vocab, [])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("hi<|big|>")
    (tmp_path / "in" / "b.md").write_text("yo")
    (tmp_path / "in" / "ignored.bin").write_bytes(b"\0")
    # A directory is one dataset named after it (issue #21), its files documents in name order;
    # this tokenizer has no <|endoftext|>, so no end-of-text id is added.
    [out] = corpus.encode_corpus(big, tmp_path / "in", tmp_path / "out")
    assert out.name == "in.bin"
    ids, meta = open_tokens(out)
    assert meta.dtype == "uint32" and ids.tolist() == [ord("h"), ord("i"), 70000, ord("y"), ord("o")]
    assert meta.num_documents == 2 and meta.eot_id is None


def test_invalid_utf8_strict_names_the_offset_and_leaves_nothing(tok, tmp_path):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"fine text " * 10 + b"\xff broken")
    with pytest.raises(DataError, match=r"byte offset 100 .*--errors replace"):
        corpus.encode_corpus(tok, src, tmp_path / "out")
    assert _leftovers(tmp_path / "out") == []
    [out] = corpus.encode_corpus(tok, src, tmp_path / "out", errors="replace")
    assert "".join(corpus.decode_token_file(tok, out)).endswith("\ufffd broken<|endoftext|>")  # one document, then EOT


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


# --- import-ids: separators, huge ids, long lines ---------------------------------------------


@pytest.mark.parametrize(
    ("content", "vocab_size", "match"),
    [
        ("1 2\n3 4294967296\n", None, r"tokens.txt:2: token id 4294967296 is too large \(token files hold ids below 2\*\*32"),
        ("1 " + "9" * 5000 + "\n", None, r"tokens.txt:1: token id 9{40} is too large"),
        ("1 4294967295\n", 2**40, r"vocab_size \(--vocab-size\) 1099511627776 is outside 1..2\*\*32"),
        ("1\u00a02 3\n", None, r"tokens.txt:1: '1\\xa02' is not a token id: U\+00A0 is not a separator"),
        ("1 2\n3\u001c4\n", None, r"tokens.txt:2: '3\\x1c4' is not a token id: U\+001C is not a separator"),
        ("1 2\u20033\n", None, r"U\+2003 is not a separator"),
    ],
    ids=["2**32", "5000-digits", "vocab-above-2**32", "nbsp", "file-separator", "em-space"],
)
def test_import_ids_refuses_huge_ids_and_unicode_separators(tmp_path, content, vocab_size, match):
    src = tmp_path / "tokens.txt"
    src.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=match):
        corpus.import_ids(src, tmp_path / "out", vocab_size=vocab_size)
    assert _leftovers(tmp_path / "out") == []


def test_import_ids_largest_uint32_id_is_kept(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("4294967295 0\n")
    assert open_tokens(corpus.import_ids(src, tmp_path / "out")[0])[0].tolist() == [2**32 - 1, 0]


def test_import_ids_reads_blocks_not_lines(tmp_path, monkeypatch):
    # One long line cut into 7-character blocks: ids straddle blocks; line numbers still count.
    monkeypatch.setattr(corpus, "BLOCK_BYTES", 7)
    ids = list(range(0, 5000, 7))
    src = tmp_path / "t.txt"
    src.write_text(" ".join(map(str, ids)) + "\n\n12 x\n")
    with pytest.raises(DataError, match=r"t.txt:3: 'x' is not a token id"):
        corpus.import_ids(src, tmp_path / "out")
    src.write_text(" ".join(map(str, ids)))
    assert open_tokens(corpus.import_ids(src, tmp_path / "out")[0])[0].tolist() == ids


def test_parse_ids_accepts_lines_as_stdin_gives_them():
    assert [i for ids in corpus.parse_ids(["1 2\n", "3\n", "\n", "4 5"], "<stdin>") for i in ids] == [1, 2, 3, 4, 5]


# --- encode: memory, disk, permissions, one writer, temps, signals ------------------------------

_RUN = """
import resource, signal, sys
from pathlib import Path
import lmkit.data.corpus as corpus
import lmkit.data.formats as formats
from lmkit.tokenizer import Tokenizer
vocab = {{i: bytes([i]) for i in range(256)}} | {{{big_id}: b"<|big|>"}}
src = Path(sys.argv[1]) / "in.txt"
src.write_text("hello <|big|> world " * {repeat})
{setup}
try:
    tok = Tokenizer(vocab, [], ["<|big|>"])
    corpus.encode_corpus(tok, src, Path(sys.argv[1]) / "out", create_stats=True, progress={progress})
except Exception as e:
    print(f"{{type(e).__name__}}: {{e}}")
    sys.exit(getattr(e, "exit_code", 3))
print("ok", corpus.open_tokens(Path(sys.argv[1]) / "out" / "in.bin")[1].stats["top_tokens"][0])
"""


def _run(tmp_path, setup="", big_id=256, repeat=10, progress="None"):
    import subprocess
    import sys

    code = _RUN.format(setup=setup, big_id=big_id, repeat=repeat, progress=progress)
    return subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False, capture_output=True, text=True, timeout=120)


def test_a_sparse_vocabulary_is_refused_before_anything_is_sized_by_it(tmp_path):
    # One id of 10**9: stats counted per id would allocate 8 GB twice. Ids are dense (0..N-1,
    # checked when a tokenizer is built), so it never gets that far; 1 GB of address space is plenty.
    limit = "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))"
    r = _run(tmp_path, setup=limit, big_id=10**9)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "TokenizerError: vocabulary ids must be 0..256" in r.stdout and "Traceback" not in r.stderr


def test_stats_are_sized_by_the_real_vocabulary(tmp_path):
    r = _run(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    ids, meta = open_tokens(tmp_path / "out" / "in.bin")
    assert meta.stats["distinct_tokens"] == len(set(ids.tolist()))
    assert {"id": 256, "count": 10, "token": "<|big|>"} in meta.stats["top_tokens"]


def test_disk_full_names_the_file_and_leaves_no_temp(tmp_path):
    # RLIMIT_FSIZE makes the kernel refuse the write (EFBIG) as a full disk would (ENOSPC).
    limit = "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))"
    r = _run(tmp_path, setup=limit, repeat=2000)
    assert r.returncode == 2, r.stdout + r.stderr
    # The ids are written as shard in-00000.bin (renamed in.bin when it is the only one).
    assert "DataError" in r.stdout and "in-00000.bin: cannot write (File too large); free space in" in r.stdout
    assert _leftovers(tmp_path / "out") == []


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_signal_during_encode_removes_the_temp_file(tmp_path, sig):
    kill = f"lambda *a: os.kill(os.getpid(), signal.{sig})"
    r = _run(tmp_path, setup="import os", progress=kill)
    assert r.returncode == 128 + getattr(__import__("signal"), sig), r.stdout + r.stderr
    assert f"stopped by {sig}; the partial output was removed" in r.stdout
    assert _leftovers(tmp_path / "out") == []


def test_encoded_files_are_0644(tok, tmp_path):
    import os

    src = tmp_path / "s.txt"
    src.write_text(STORY)
    old = os.umask(0o022)
    try:
        [out] = corpus.encode_corpus(tok, src, tmp_path / "out")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644 and out.with_suffix(".json").stat().st_mode & 0o777 == 0o644


def test_two_writers_of_one_output_are_refused(tok, tmp_path):
    from lmkit.locking import LockHeldError, lock_output

    src = tmp_path / "s.txt"
    src.write_text(STORY)
    (tmp_path / "out").mkdir()
    (tmp_path / "ids").mkdir()
    (tmp_path / "ids" / "s.txt").write_text("1 2 3\n")
    with lock_output(tmp_path / "out" / "s.bin"):
        with pytest.raises(LockHeldError, match=r"out/s.bin is in use by another lmkit process \(pid \d+"):
            corpus.encode_corpus(tok, src, tmp_path / "out")
        with pytest.raises(LockHeldError, match="in use"):
            corpus.import_ids(tmp_path / "ids" / "s.txt", tmp_path / "out")
    assert _leftovers(tmp_path / "out") == []


def test_stale_temps_of_dead_writers_are_removed(tok, tmp_path):
    src = tmp_path / "s.txt"
    src.write_text(STORY)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for name in (".s.bin.abc123.tmp", ".s.json.def456.tmp", ".other.bin.x.tmp"):
        (out_dir / name).write_bytes(b"partial")
    corpus.encode_corpus(tok, src, out_dir)
    assert _leftovers(out_dir) == [".other.bin.x.tmp", "s.bin", "s.idx", "s.json"]


def test_a_long_run_without_spaces_is_cut_and_memory_stays_bounded(tok, tmp_path, monkeypatch):
    # The plain-text reader is lmkit.data.formats now (corpus.text_blocks was its first version).
    from lmkit.data.sources import ReadOptions, read_blocks, resolve_inputs

    monkeypatch.setattr(formats, "BLOCK_BYTES", 64)
    monkeypatch.setattr(formats, "MAX_UNCUT", 256)
    src = tmp_path / "blob.txt"
    src.write_text("é" * 400 + "<|endoftext|>" + "x" * 500 + " tail", encoding="utf-8")
    blocks = [(b.text, b.nbytes) for b in read_blocks(resolve_inputs([src])[0], ReadOptions(), ["<|endoftext|>"])]
    assert max(n for _, n in blocks) <= 256 + 64 and "".join(t for t, _ in blocks) == src.read_text(encoding="utf-8")
    assert any(t.endswith("<|endoftext|>") or t.startswith("<|endoftext|>") or "<|endoftext|>" in t for t, _ in blocks)
    [out] = corpus.encode_corpus(tok, src, tmp_path / "out")
    # Two documents (split at <|endoftext|>), each ending with it: the text, and one at the end.
    assert "".join(corpus.decode_token_file(tok, out)) == src.read_text(encoding="utf-8") + "<|endoftext|>"
