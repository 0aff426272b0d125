"""Tokenizer files: every reader validates (naming the file and key), ids are dense, hashes checked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lmkit.errors import TokenizerError
from lmkit.tokenizer import Tokenizer, train_bpe
from lmkit.tokenizer.files import parse_vocab, token_to_str

TEXT = "the cat sat on the mat; the hat, the bat and the rat sat flat. " * 40


@pytest.fixture
def tok_dir(tmp_path) -> Path:
    """A small trained tokenizer saved to tmp_path/tok."""
    src = tmp_path / "t.txt"
    src.write_text(TEXT)
    tok = Tokenizer(*train_bpe(src, 280, ["<|endoftext|>"]), ["<|endoftext|>"])
    tok.save(tmp_path / "tok")
    return tmp_path / "tok"


def _vocab_json(entries: dict[str, object]) -> bytes:
    return json.dumps(entries).encode()


def _bytes_vocab(extra: dict[str, object] | None = None) -> dict[str, object]:
    vocab: dict[str, object] = {token_to_str(bytes([b])): b for b in range(256)}
    vocab.update(extra or {})
    return vocab


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"[1, 2, 3]", "expected a JSON object mapping tokens to ids, got a JSON list"),
        (b'"vocab"', "got a JSON string"),
        (b"{}", "got an empty object"),
        (_vocab_json(_bytes_vocab({"ab": 2**40})), r"vocab.json:1: entry 257 \('ab'\) has id 1099511627776, outside 0..256"),
        (_vocab_json(_bytes_vocab({"ab": 10**9})), "outside 0..256: ids must number the 257 entries densely"),
        (_vocab_json(_bytes_vocab({"ab": "7"})), "has id '7', not an integer"),
        (_vocab_json(_bytes_vocab({"ab": True})), "has id True, not an integer"),
        (_vocab_json(_bytes_vocab({"ab": 1.0})), "has id 1.0, not an integer"),
        (_vocab_json(_bytes_vocab({"": 256})), "is an empty token"),
        (_vocab_json(_bytes_vocab({"ab": 255})), "reuses id 255"),
        (_vocab_json(_bytes_vocab({"a b": 256})), "outside GPT-2's byte-to-unicode map"),
        (b'{"a": 0, "a": 1}', "appears twice"),
        (b'{"a": ' + b"1" * 5000 + b"}", "unreadable JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "unreadable JSON"),
        (b'{"a": 0,\n "b": }', "vocab.json:2: malformed JSON"),
        (b'{"\xff": 0}', "not UTF-8"),
    ],
    ids=["list", "string", "empty", "id-2**40", "id-10**9", "id-string", "id-bool", "id-float", "empty-token",
         "id-twice", "unmapped-char", "token-twice", "5000-digit-id", "deep-nesting", "malformed", "not-utf8"],
)
def test_malformed_vocab_is_one_tokenizer_error_naming_the_file(tmp_path, content, match):
    path = tmp_path / "vocab.json"
    path.write_bytes(content)
    with pytest.raises(TokenizerError, match=match) as e:
        parse_vocab(content, path)
    assert str(path) in str(e.value)


def test_vocab_with_a_huge_id_is_refused_through_every_loader(tok_dir):
    vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
    top = max(vocab, key=vocab.get)
    vocab[top] = 10**9
    (tok_dir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    for load in (lambda: Tokenizer.from_dir(tok_dir), lambda: Tokenizer.from_files(tok_dir / "vocab.json", tok_dir / "merges.txt")):
        with pytest.raises(TokenizerError, match="densely"):
            load()


def test_constructor_requires_dense_ids():
    vocab = {b: bytes([b]) for b in range(256)}
    with pytest.raises(TokenizerError, match=r"ids must be 0\.\.256 .* holds id 1000000000"):
        Tokenizer({**vocab, 10**9: b"<|x|>"}, [])
    with pytest.raises(TokenizerError, match="not an integer"):
        Tokenizer({**vocab, "256": b"<|x|>"}, [])  # type: ignore[dict-item]
    assert Tokenizer({**vocab, 256: b"<|x|>"}, []).vocab_size == 257


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"version": "1"}, "version must be a positive integer, got '1'"),
        ({"version": 1.5}, "version must be a positive integer"),
        ({"version": 0}, "version must be a positive integer"),
        ({"version": True}, "version must be a positive integer"),
        ({"version": 2}, "written by a newer lmkit"),
        ({"format": "other"}, "not an lmkit tokenizer metadata file"),
        ({"special_tokens": "<|endoftext|>"}, "special_tokens must be a list of non-empty strings"),
        ({"special_tokens": [1]}, "special_tokens must be a list"),
        ({"vocab_size": "big"}, "vocab_size must be an integer"),
        ({"vocab_size": 999}, "records vocab_size 999, but"),
        ({"hash": 5}, "hash must look like"),
        ({"files": ["vocab.json"]}, "files must map file names"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_malformed_tokenizer_json_is_a_malformed_field(tok_dir, change, match):
    meta = json.loads((tok_dir / "tokenizer.json").read_text())
    meta.update(change)
    (tok_dir / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(TokenizerError, match=match) as e:
        Tokenizer.from_dir(tok_dir)
    assert "tokenizer.json" in str(e.value)
    if change.get("version") != 2:
        assert "newer" not in str(e.value)


@pytest.mark.parametrize("content", [b"[]", b"null", b"{", b'{"format": "lmkit-tokenizer", "version": 1, "x": ' + b"[" * 50_000])
def test_tokenizer_json_that_is_not_an_object(tok_dir, content):
    (tok_dir / "tokenizer.json").write_bytes(content)
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        Tokenizer.from_dir(tok_dir)


def _drop_last_merge(tok_dir: Path) -> None:
    # Still a consistent tokenizer (the vocabulary may hold more than merges make), but another one.
    lines = (tok_dir / "merges.txt").read_text(encoding="utf-8").splitlines()
    (tok_dir / "merges.txt").write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")


def _swap_two_ids(tok_dir: Path) -> None:
    vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
    a, b = token_to_str(b"a"), token_to_str(b"b")
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (tok_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")


@pytest.mark.parametrize(("edit", "changed"), [(_drop_last_merge, "merges.txt"), (_swap_two_ids, "vocab.json")])
def test_files_that_no_longer_match_the_recorded_hash_are_refused_naming_the_file(tok_dir, edit, changed):
    recorded = json.loads((tok_dir / "tokenizer.json").read_text())["hash"]
    edit(tok_dir)
    for specials in (None, ["<|endoftext|>"], []):  # choosing specials must not skip the check
        with pytest.raises(TokenizerError, match="changed after") as e:
            Tokenizer.from_dir(tok_dir, specials)
        message = str(e.value)
        assert str(tok_dir / changed) in message and recorded in message
        other = "vocab.json" if changed == "merges.txt" else "merges.txt"
        assert str(tok_dir / other) not in message


def test_hash_check_without_file_digests_names_both_candidates(tok_dir):
    # tokenizer.json written before file digests were recorded: the content hash still holds.
    meta = json.loads((tok_dir / "tokenizer.json").read_text())
    del meta["files"]
    (tok_dir / "tokenizer.json").write_text(json.dumps(meta))
    Tokenizer.from_dir(tok_dir)
    _drop_last_merge(tok_dir)
    with pytest.raises(TokenizerError, match="vocab.json or .*merges.txt was changed after"):
        Tokenizer.from_dir(tok_dir)


def test_reformatted_files_with_the_same_content_are_accepted(tok_dir):
    before = Tokenizer.from_dir(tok_dir)
    vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
    (tok_dir / "vocab.json").write_text(json.dumps(vocab, indent=2, ensure_ascii=False), encoding="utf-8")
    assert Tokenizer.from_dir(tok_dir).hash == before.hash


@pytest.mark.parametrize("name", ["vocab.json", "merges.txt", "tokenizer.json"])
def test_a_tokenizer_file_that_is_not_a_regular_file(tok_dir, name):
    (tok_dir / name).unlink()
    (tok_dir / name).mkdir()
    with pytest.raises(TokenizerError, match=f"{name}: not a regular file"):
        Tokenizer.from_dir(tok_dir)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_not_read(tok_dir):
    (tok_dir / "merges.txt").unlink()
    os.mkfifo(tok_dir / "merges.txt")  # reading it would block forever
    with pytest.raises(TokenizerError, match="merges.txt: not a regular file"):
        Tokenizer.from_dir(tok_dir)
    with pytest.raises(TokenizerError, match="merges.txt: not a regular file"):
        Tokenizer.from_files(tok_dir / "vocab.json", tok_dir / "merges.txt")


def test_missing_files(tok_dir, tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer directory not found"):
        Tokenizer.from_dir(tmp_path / "nope")
    with pytest.raises(TokenizerError, match="not a directory"):
        Tokenizer.from_dir(tok_dir / "vocab.json")
    (tok_dir / "merges.txt").unlink()
    with pytest.raises(TokenizerError, match="merges.txt: not found"):
        Tokenizer.from_dir(tok_dir)


def test_oversized_file_is_refused_before_it_is_read(tok_dir):
    from lmkit.tokenizer.files import MAX_FILE_BYTES

    with open(tok_dir / "vocab.json", "r+b") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk, and reading it would cost 128 MiB+
    for load in (lambda: Tokenizer.from_dir(tok_dir), lambda: Tokenizer.from_files(tok_dir / "vocab.json", tok_dir / "merges.txt")):
        with pytest.raises(TokenizerError, match="vocab.json: 134,217,729 bytes is too large"):
            load()
