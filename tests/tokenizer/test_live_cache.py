"""The fast encoder's live-merge cache: a hit gives the same engine, a bad file is rebuilt, and a
cache that cannot be written costs nothing but time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmkit.tokenizer import Tokenizer, live_cache, train_bpe
from lmkit.tokenizer import fast as fast_module
from lmkit.tokenizer.fast import LIVE_VERSION, FastEncoder

pytest.importorskip("tiktoken")

TEXT = "the cat sat on the mat; don't 123 4567 café 日本語 👋🏽 <|endoftext|> the end\n" * 3


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    words = " ".join(f"w{i % 97}x{i % 13} the cat {i}" for i in range(4000))
    corpus.write_text(words + " don't café 日本語", encoding="utf-8")
    vocab, merges = train_bpe(corpus, 600, ["<|endoftext|>"], workers=1)
    return Tokenizer(vocab, merges, ["<|endoftext|>"])


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LMKIT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def cache_file(tok: Tokenizer) -> Path:
    return live_cache.cache_path(tok.hash, len(tok.merges), LIVE_VERSION)


def no_walk(monkeypatch) -> None:
    # A hit must not walk the merges: make the walk fail loudly.
    def walk(_):
        raise AssertionError("_live_ranks ran although the cache held the answer")

    monkeypatch.setattr(fast_module, "_live_ranks", walk)


def test_a_hit_gives_the_engine_a_miss_built(tok, cache, monkeypatch):
    cold = FastEncoder.build(tok)
    path = cache_file(tok)
    assert path.is_file() and path.parent == cache / "fast-encoder"
    assert path.name == f"live-{tok.hash.removeprefix('sha256:')}-{len(tok.merges)}-v{LIVE_VERSION}.bin"
    reference = fast_module._live_ranks(tok)
    no_walk(monkeypatch)
    assert fast_module._cached_live_ranks(tok) == reference  # same tokens, same ranks, same order
    warm = FastEncoder.build(tok)
    assert warm.encode(TEXT).tolist() == cold.encode(TEXT).tolist() == tok.encode(TEXT)


def test_without_cache_nothing_is_written(tok, cache):
    assert FastEncoder.build(tok, cache=False).encode(TEXT).tolist() == tok.encode(TEXT)
    assert not cache.exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped bit", "other tokenizer", "empty", "no header line"])
def test_a_damaged_cache_file_is_ignored_and_rewritten(tok, cache, damage):
    FastEncoder.build(tok)
    path = cache_file(tok)
    data = path.read_bytes()
    header, _, payload = data.partition(b"\n")
    if damage == "garbage":
        data = b"\x00\xff not a cache file"
    elif damage == "truncated":
        data = data[:-3]
    elif damage == "flipped bit":  # the digest catches it (all merges live: flags all 1s)
        data = header + b"\n" + bytes([payload[0] ^ 1]) + payload[1:]
    elif damage == "other tokenizer":
        data = json.dumps({**json.loads(header), "tokenizer": "sha256:0000000000000000"}).encode() + b"\n" + payload
    elif damage == "empty":
        data = b""
    else:
        data = payload
    path.write_bytes(data)
    assert live_cache.load(tok.hash, len(tok.merges), LIVE_VERSION) is None
    assert FastEncoder.build(tok).encode(TEXT).tolist() == tok.encode(TEXT)
    assert path.read_bytes() != data  # rewritten, and readable again
    assert live_cache.load(tok.hash, len(tok.merges), LIVE_VERSION) is not None


def test_well_formed_but_impossible_flags_are_not_trusted(cache):
    # A merge listed twice is live the first time only. A file (well formed, right digest: not
    # one lmkit writes) flagging both would give one token two ranks: it is recomputed instead.
    tokens = [bytes([i]) for i in range(256)] + [b"ab", b"abc"]
    tok = Tokenizer(dict(enumerate(tokens)), [(b"a", b"b"), (b"a", b"b"), (b"ab", b"c")], [])
    live_cache.store(tok.hash, 3, LIVE_VERSION, np.ones(3, dtype=bool))
    assert fast_module._cached_live_ranks(tok) == fast_module._live_ranks(tok)
    assert live_cache.load(tok.hash, 3, LIVE_VERSION).tolist() == [True, False, True]  # rewritten


def test_another_algorithm_version_is_not_read(tok, cache, monkeypatch):
    FastEncoder.build(tok)
    old = cache_file(tok)
    monkeypatch.setattr(fast_module, "LIVE_VERSION", LIVE_VERSION + 1)
    calls = []
    real = fast_module._live_ranks
    monkeypatch.setattr(fast_module, "_live_ranks", lambda t: calls.append(1) or real(t))
    assert FastEncoder.build(tok).encode(TEXT).tolist() == tok.encode(TEXT)
    assert calls == [1] and old.is_file()
    assert live_cache.cache_path(tok.hash, len(tok.merges), LIVE_VERSION + 1).is_file()


def test_an_unwritable_cache_dir_still_builds(tok, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("LMKIT_CACHE_DIR", str(blocker / "cache"))  # mkdir fails under a file
    for _ in range(2):
        assert FastEncoder.build(tok).encode(TEXT).tolist() == tok.encode(TEXT)
    assert blocker.read_text() == "not a directory"


def test_dead_tokens_stay_out_through_the_cache(cache, monkeypatch):
    # "abc" is learned as a + bc, which the reference never produces (test_fast has the story).
    tokens = [bytes([i]) for i in range(256)] + [b"ab", b"bc", b"abc"]
    merges = [(b"a", b"b"), (b"b", b"c"), (b"a", b"bc")]
    tok = Tokenizer(dict(enumerate(tokens)), merges, [])
    cold = FastEncoder.build(tok)
    flags = live_cache.load(tok.hash, 3, LIVE_VERSION)
    assert flags.tolist() == [True, True, False]
    no_walk(monkeypatch)
    warm = FastEncoder.build(tok)
    for text in ["abc", "abcabc", "xabc", "bc"]:
        assert warm.encode(text).tolist() == cold.encode(text).tolist() == tok.encode(text)


def test_the_tokenizer_folder_is_left_alone(tok, cache, tmp_path):
    tok.save(tmp_path / "tok")
    before = {p.name: p.read_bytes() for p in (tmp_path / "tok").iterdir()}
    loaded = Tokenizer.from_dir(tmp_path / "tok")
    assert loaded.fast_encoder() is not None and cache_file(loaded).is_file()
    assert {p.name: p.read_bytes() for p in (tmp_path / "tok").iterdir()} == before


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("LMKIT_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert live_cache.cache_root() == tmp_path / "a"
    monkeypatch.delenv("LMKIT_CACHE_DIR")
    assert live_cache.cache_root() == tmp_path / "xdg" / "lmkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert live_cache.cache_root() == tmp_path / "home" / ".cache" / "lmkit"
