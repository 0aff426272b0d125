"""Tokenizer: GPT-2 compatibility against tiktoken, round trips, special tokens, files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.errors import TokenizerError
from lmkit.tokenizer import Tokenizer
from lmkit.tokenizer.files import byte_to_unicode, token_to_str
from lmkit.tokenizer.pretokenize import GPT2_PATTERN

TRICKY = [
    "",
    " ",
    "Hello, world!",
    "  leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\n\n\n  indented\n",
    "Ünïcödé façade — naïve café",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji 👋🏽👨‍👩‍👧‍👦 🇫🇷 and ZWJ",
    "mixed: Ελληνικά кириллица עברית العربية हिन्दी",
    "numbers 1234567890 3.14159 1,000,000",
    "contractions: I'm, you're, it's, we'll, they've, he'd, DON'T",
    "     \n\n\t  \u3000\u00a0 whitespace soup \x0b\x0c",
    "a<|endoftext|>b <|endoftext|> c<|endoftext|><|endoftext|>",
    "<|endoftext|>",
    "code: def f(x):\n    return x**2  # square\n",
]


@pytest.fixture(scope="module")
def gpt2_files() -> tuple[Path, Path]:
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "gpt2_vocab.json").is_file():
        pytest.skip(f"GPT-2 files not found in {SHARED_DATA}")
    return SHARED_DATA / "gpt2_vocab.json", SHARED_DATA / "gpt2_merges.txt"


@pytest.fixture(scope="module")
def gpt2(gpt2_files) -> Tokenizer:
    return Tokenizer.from_files(*gpt2_files)


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_files, tmp_path_factory):
    """tiktoken's GPT-2 encoding built offline from the same two files (the oracle)."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    vocab_path, merges_path = gpt2_files
    # tiktoken's reader drops the first line, expecting GPT-2's original "#version" header.
    with_header = tmp_path_factory.mktemp("gpt2") / "vocab.bpe"
    with_header.write_text("#version: 0.2\n" + merges_path.read_text(encoding="utf-8"), encoding="utf-8")
    ranks = data_gym_to_mergeable_bpe_ranks(str(with_header), str(vocab_path))
    return tiktoken.Encoding("gpt2-offline", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def test_byte_map_is_gpt2s():
    table = byte_to_unicode()
    assert len(set(table.values())) == 256
    assert token_to_str(b" the") == "Ġthe" and token_to_str(b"\n") == "Ċ"


def test_gpt2_files_load_with_their_own_ids(gpt2):
    assert gpt2.vocab_size == 50257
    assert gpt2.special_tokens == ["<|endoftext|>"]
    assert gpt2.token_id("<|endoftext|>") == 50256
    assert gpt2.encode("Hello world<|endoftext|>") == [15496, 995, 50256]


def test_gpt2_matches_tiktoken_on_shakespeare(gpt2, tiktoken_gpt2, shared_data):
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text)


@pytest.mark.parametrize("text", TRICKY)
def test_gpt2_matches_tiktoken_on_tricky_strings(gpt2, tiktoken_gpt2, text):
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.decode(gpt2.encode(text)) == text


def test_gpt2_matches_tiktoken_on_stories_with_specials(gpt2, tiktoken_gpt2, shared_data):
    text = (shared_data / "tinystories_sample.txt").read_text(encoding="utf-8")
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special="all")
    assert ids.count(50256) == text.count("<|endoftext|>") > 0


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_decode_encode_round_trip(gpt2, text):
    assert gpt2.decode(gpt2.encode(text)) == text


@pytest.mark.parametrize("text", TRICKY)
def test_encode_iterable_equals_encode(gpt2, text):
    # Tiny pieces and a forced small buffer exercise every cut.
    pieces = [text[i:i + 3] for i in range(0, len(text), 3)] * 3
    assert list(gpt2.encode_iterable(pieces)) == gpt2.encode("".join(pieces))


def test_encode_iterable_streams_a_file(gpt2, shared_data, monkeypatch):
    import lmkit.tokenizer.tokenizer as module

    monkeypatch.setattr(module, "STREAM_BUFFER", 1000)
    path = shared_data / "tinystories_sample.txt"
    with open(path, encoding="utf-8") as f:
        streamed = list(gpt2.encode_iterable(f))
    assert streamed == gpt2.encode(path.read_text(encoding="utf-8"))


def test_longest_special_token_wins():
    vocab = {i: bytes([i]) for i in range(256)}
    vocab[256] = b"<|endoftext|>"
    vocab[257] = b"<|endoftext|><|endoftext|>"
    tok = Tokenizer(vocab, [], ["<|endoftext|>", "<|endoftext|><|endoftext|>"])
    assert tok.encode("a<|endoftext|><|endoftext|><|endoftext|>") == [ord("a"), 257, 256]
    only_single = Tokenizer(vocab, [], ["<|endoftext|>"])
    assert only_single.encode("<|endoftext|><|endoftext|>") == [256, 256]


def test_decode_replaces_invalid_utf8(gpt2):
    ids = gpt2.encode("é")  # two bytes, two or one tokens; take the first byte alone
    first_byte = gpt2._byte_ids["é".encode()[0]]
    assert gpt2.decode([first_byte]) == "\ufffd"
    assert gpt2.decode_bytes(ids) == "é".encode()
    chunks = [[first_byte], [gpt2._byte_ids["é".encode()[1]]]]
    assert "".join(gpt2.decode_chunks(chunks)) == "é"


def test_unknown_id_is_an_error(gpt2):
    with pytest.raises(TokenizerError, match="99999"):
        gpt2.decode([99999])


def test_special_token_not_in_vocab_is_an_error(gpt2_files):
    with pytest.raises(TokenizerError, match="<|im_start|>"):
        Tokenizer.from_files(*gpt2_files, special_tokens=["<|im_start|>"])


def test_save_load_round_trip(gpt2, tmp_path):
    gpt2.save(tmp_path / "tok")
    loaded = Tokenizer.from_dir(tmp_path / "tok")
    assert loaded.vocab == gpt2.vocab and loaded.merges == gpt2.merges
    assert loaded.special_tokens == gpt2.special_tokens and loaded.hash == gpt2.hash
    meta = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert meta["hash"] == gpt2.hash and meta["special_tokens"] == ["<|endoftext|>"]
    assert (tmp_path / "tok" / "merges.txt").read_text().startswith("#version")
    text = "Round trip <|endoftext|> works 👍"
    assert loaded.encode(text) == gpt2.encode(text)


def test_hash_ignores_which_specials_are_recognised(gpt2_files, gpt2):
    none_recognised = Tokenizer.from_files(*gpt2_files, special_tokens=[])
    assert none_recognised.hash == gpt2.hash
    assert none_recognised.encode("<|endoftext|>") != [50256]


@pytest.mark.parametrize("specials", [[], ["<|endoftext|>"], ["é\"\\x", "\u2028", "<a>", "\U0001F600", "<a>"]])
def test_content_hash_is_json_dumps_of_the_tables(specials):
    # The hash is recorded in datasets and checkpoints: content_hash writes its JSON by hand for
    # speed, and must give the bytes json.dumps gave (the original definition) for ever.
    import hashlib

    from lmkit.tokenizer.tokenizer import content_hash

    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab", 257: b"abc", 258: "<a>".encode()}
    merges = [(b"a", b"b"), (b"ab", b"c")]
    content = {"vocab": [[i, vocab[i].hex()] for i in sorted(vocab)], "merges": [[a.hex(), b.hex()] for a, b in merges],
               "special_tokens": sorted(set(specials))}
    expected = "sha256:" + hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()[:16]
    assert content_hash(vocab, merges, specials) == expected
    assert content_hash({0: b"a"}, [], specials) != content_hash({0: b"b"}, [], specials)


def test_gpt2_hash_is_the_one_datasets_record(gpt2, gpt2_files, tmp_path):
    # The value lmkit has always given GPT-2's files (with <|endoftext|>): a change to loading or
    # hashing must not move it.
    assert gpt2.hash == "sha256:3ef21765b6b18e1d"
    gpt2.save(tmp_path / "tok")
    loaded = Tokenizer.from_dir(tmp_path / "tok")
    assert loaded.hash == gpt2.hash and loaded.vocab == gpt2.vocab and loaded.merges == gpt2.merges


def test_token_strings_read_back_exactly():
    from lmkit.tokenizer.files import str_to_token

    for b in range(256):
        assert str_to_token(token_to_str(bytes([b]))) == bytes([b])
    assert str_to_token(token_to_str(bytes(range(256)))) == bytes(range(256))
    # Characters outside GPT-2's map, below 256 (a raw space, a newline) or above it, and lone surrogates.
    for bad in [" ", "a b", "\n", "\x00", "Ġ一", "\ud800", "\U0010ffff"]:
        assert str_to_token(bad) is None, bad
