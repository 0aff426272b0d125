"""The tiktoken-backed FastEncoder: the same ids as the reference Tokenizer.encode, or no engine.

Oracles: the pure-Python ``Tokenizer.encode`` on arbitrary text (hypothesis), tiktoken's own
GPT-2 built from the same files, and hand-made merges lists where tiktoken's way of merging
(by the bytes of the concatenation) gives other ids than lmkit's (by the merge pair).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkit.tokenizer import Tokenizer, train_bpe
from lmkit.tokenizer import fast as fast_module
from lmkit.tokenizer.fast import FastEncoder, encode_array, encode_blocks, explicit_pattern
from lmkit.tokenizer.pretokenize import GPT2_PATTERN, PRETOKEN_RE

pytest.importorskip("tiktoken")

# Pieces that stress the pretokenizer and the special-token splitter when glued together.
PIECES = [
    " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u3000", "\u00a0", "a", "A", "the", " the", "'s", "'ll", "'VE",
    "don't", "1", "123", " 4567", "3.14", "é", "日本", "👋🏽", "👨‍👩‍👧‍👦", "🇫🇷", "\u0558", "\U00011de0",
    "!!", "...", "<|", "|>", "<|endoftext|>", "<|a|>", "<|b|>", "<|a|><|b|>",
]
texts = st.one_of(
    st.text(),
    st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=5)), max_size=30).map("".join),
)


def agree(tok: Tokenizer, encoder: FastEncoder, text: str) -> None:
    ids = encoder.encode(text)
    assert ids.dtype == np.uint32
    assert ids.tolist() == tok.encode(text)


# --- GPT-2's files -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "gpt2_vocab.json").is_file():
        pytest.skip(f"GPT-2 files not found in {SHARED_DATA}")
    return Tokenizer.from_files(SHARED_DATA / "gpt2_vocab.json", SHARED_DATA / "gpt2_merges.txt")


@pytest.fixture(scope="module")
def gpt2_fast(gpt2) -> FastEncoder:
    encoder = FastEncoder.build(gpt2)
    assert encoder is not None
    return encoder


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts)
def test_gpt2_fast_equals_reference(gpt2, gpt2_fast, text):
    agree(gpt2, gpt2_fast, text)


def test_gpt2_every_code_point(gpt2, gpt2_fast):
    # Every character, alone and next to a space, a letter and a digit: the engine's pattern and
    # its byte handling agree with the reference over all of Unicode.
    points = [c for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    text = "".join(chr(c) + (" a1" if c % 7 == 0 else "") for c in points)
    for start in range(0, len(text), 200_000):
        agree(gpt2, gpt2_fast, text[start:start + 200_000])


def test_explicit_pattern_splits_like_the_reference():
    import regex

    points = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    mixed = " ".join(points[i:i + 3] for i in range(0, len(points), 3))
    assert regex.findall(explicit_pattern(), mixed) == PRETOKEN_RE.findall(mixed)


def test_gpt2_ids_equal_tiktoken_on_shakespeare(gpt2, gpt2_fast, shared_data, tmp_path):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    # tiktoken's reader drops the first line, expecting GPT-2's original "#version" header.
    merges = tmp_path / "vocab.bpe"
    merges.write_text("#version: 0.2\n" + (shared_data / "gpt2_merges.txt").read_text(encoding="utf-8"), encoding="utf-8")
    ranks = data_gym_to_mergeable_bpe_ranks(str(merges), str(shared_data / "gpt2_vocab.json"))
    oracle = tiktoken.Encoding("gpt2-files", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                               special_tokens={"<|endoftext|>": 50256})
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    ids = gpt2_fast.encode(text)
    assert ids.tolist() == oracle.encode(text)
    assert ids.tolist() == gpt2.encode(text)
    stories = (shared_data / "tinystories_sample.txt").read_text(encoding="utf-8")
    assert gpt2_fast.encode(stories).tolist() == oracle.encode(stories, allowed_special="all")


def test_tokenizer_encode_array(gpt2):
    ids = gpt2.encode_array("Hello world<|endoftext|>")
    assert ids.dtype == np.uint32 and ids.tolist() == [15496, 995, 50256]
    assert gpt2.fast_encoder() is gpt2.fast_encoder()  # built once


def test_pickled_tokenizer_leaves_the_engine_behind(gpt2):
    import pickle

    gpt2.fast_encoder()
    copy = pickle.loads(pickle.dumps(gpt2))
    assert copy._fast is False
    assert copy.encode_array("Hello world").tolist() == [15496, 995]


def test_encode_releases_the_gil(gpt2_fast, shared_data):
    # A pure-Python thread keeps counting while another thread is inside the engine only if the
    # engine let go of the GIL; holding it, the counter would advance only at switch intervals.
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8") * 2
    stop, count = threading.Event(), [0]

    def spin():
        while not stop.is_set():
            count[0] += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    time.sleep(0.05)
    before, start = count[0], time.perf_counter()
    gpt2_fast.encode(text)
    inside, elapsed = count[0] - before, time.perf_counter() - start
    before = count[0]
    time.sleep(elapsed)  # the same time with the GIL free, for scale
    idle = count[0] - before
    stop.set()
    spinner.join()
    assert inside > idle / 10, (inside, idle)


# --- a tokenizer lmkit trains, with overlapping specials ----------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Tokenizer:
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "tinyshakespeare.txt").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    corpus = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    text = (SHARED_DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")[:200_000]
    corpus.write_text(text + " don't 123 4567 café 日本語 👋🏽", encoding="utf-8")
    specials = ["<|a|>", "<|a|><|b|>", "<|endoftext|>"]
    vocab, merges = train_bpe(corpus, 700, specials, workers=1)
    return Tokenizer(vocab, merges, specials)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts)
def test_trained_fast_equals_reference(trained, text):
    encoder = trained.fast_encoder()
    assert encoder is not None
    agree(trained, encoder, text)


def test_ids_that_rise_with_the_merges_need_no_lookup_table(trained, gpt2):
    # lmkit numbers bytes 0..255 then merges in order; GPT-2 numbers bytes its own way, then
    # merges in order: either way the ids can be tiktoken's ranks.
    assert trained.fast_encoder()._lut is None
    assert gpt2.fast_encoder()._lut is None


def test_ids_in_another_order_go_through_the_lookup_table():
    merges = [(b"a", b"b"), (b"ab", b"c"), (b"c", b"c")]
    order = list(range(256)) + [258, 256, 257]  # ab -> 258, abc -> 256, cc -> 257
    tok = handmade(merges, order=order)
    encoder = FastEncoder.build(tok)
    assert encoder._lut is not None
    assert encoder.encode("abc ab cc").tolist() == tok.encode("abc ab cc") == [256, 32, 258, 32, 257]


def test_overlapping_specials_longest_first(trained):
    a, ab = trained.token_id("<|a|>"), trained.token_id("<|a|><|b|>")
    ids = trained.fast_encoder().encode("x<|a|><|b|><|a|>y<|a|><|b")
    assert ids.tolist() == trained.encode("x<|a|><|b|><|a|>y<|a|><|b")
    assert ids.tolist().count(ab) == 1 and ids.tolist().count(a) == 2


# --- hand-made merges where tiktoken's merging differs -----------------------------------------


def handmade(merges: list[tuple[bytes, bytes]], specials: list[str] = (), order: list[int] | None = None) -> Tokenizer:
    tokens = [bytes([i]) for i in range(256)]
    for left, right in merges:
        if left + right not in tokens:
            tokens.append(left + right)
    tokens += [s.encode() for s in specials]
    # `order` renumbers the tokens (any permutation of the ids): ids need not follow the merges.
    ids = order if order is not None else range(len(tokens))
    return Tokenizer(dict(zip(ids, tokens)), merges, list(specials))


def naive_tiktoken(tok: Tokenizer):
    # What one would build by hand: every merge result, ranked in merge order.
    import tiktoken

    ranks = {bytes([b]): b for b in range(256)}
    for i, (left, right) in enumerate(tok.merges):
        ranks.setdefault(left + right, 256 + i)
    return tiktoken.Encoding("naive", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})


def test_token_the_reference_never_makes_is_left_out():
    # "abc" is learned as a + bc, but in "abc" the reference merges a b first and then has
    # [ab, c], which is no merge. tiktoken merges ab + c because the bytes "abc" are a token.
    tok = handmade([(b"a", b"b"), (b"b", b"c"), (b"a", b"bc")])
    assert tok.encode("abc") == [256, ord("c")]
    assert naive_tiktoken(tok).encode_ordinary("abc") == [258]  # the divergence
    encoder = FastEncoder.build(tok)
    assert encoder is not None
    for text in ["abc", "abcabc", "xabc", "bc", "abbc", "a bc", "abcd"]:
        agree(tok, encoder, text)


def test_border_merge_before_the_token_is_detected():
    # abcd is learned as ab + cd, but b c merges first, so the reference never makes ab or cd
    # inside "abcd" (and never the token abcd).
    tok = handmade([(b"b", b"c"), (b"a", b"b"), (b"c", b"d"), (b"ab", b"cd")])
    assert tok.encode("abcd") == [ord("a"), 256, ord("d")]
    encoder = FastEncoder.build(tok)
    for text in ["abcd", "ab", "cd", "abab cdcd", "abcdabcd"]:
        agree(tok, encoder, text)


def test_merges_out_of_order_use_the_reference_check():
    # (bc, d) comes before the merge that makes bc: the reference still applies it (lowest rank
    # first, whenever the pair is there), which the in-order border test cannot model.
    tok = handmade([(b"bc", b"d"), (b"b", b"c"), (b"a", b"bcd")])
    encoder = FastEncoder.build(tok)
    for text in ["bcd", "abcd", "bc", "abc", "bcdbcd"]:
        agree(tok, encoder, text)


def test_two_merges_with_one_result_are_refused(caplog):
    tok = handmade([(b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b"a", b"bc")])
    with caplog.at_level("DEBUG", logger="lmkit.tokenizer.fast"):
        assert FastEncoder.build(tok) is None
    assert "merges 3 and 4" in caplog.text
    # Callers still get the reference's ids.
    assert encode_array(tok, "abc abc").tolist() == tok.encode("abc abc")


def test_a_merge_listed_twice_is_fine():
    tok = handmade([(b"a", b"b"), (b"a", b"b"), (b"ab", b"c")])
    agree(tok, FastEncoder.build(tok), "abc ab abab")


def test_without_tiktoken_the_reference_is_used(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tiktoken(name, *args, **kwargs):
        if name == "tiktoken":
            raise ImportError("no tiktoken here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tiktoken)
    tok = handmade([(b"a", b"b")], ["<|x|>"])
    assert FastEncoder.build(tok) is None
    assert tok.encode_array("ab<|x|>a").tolist() == tok.encode("ab<|x|>a")


@st.composite
def merges_lists(draw):
    # Random merges over a 4-letter alphabet: pairs of tokens made so far (or, out of order, a
    # pair whose parts are made later), so dead tokens, border merges and repeats all occur.
    tokens = [b"a", b"b", b"c", b" "]
    merges: list[tuple[bytes, bytes]] = []
    for _ in range(draw(st.integers(1, 25))):
        left, right = draw(st.sampled_from(tokens)), draw(st.sampled_from(tokens))
        if left + right in tokens and (left, right) not in merges:
            continue  # a second merge giving the same token: build refuses those (tested above)
        merges.append((left, right))
        tokens.append(left + right)
    if draw(st.booleans()):
        merges = draw(st.permutations(merges))
        made = {b"a", b"b", b"c", b" "}
        for left, right in merges:  # the constructor needs every part in the vocabulary
            made.add(left + right)
        merges = [m for m in merges if m[0] in made and m[1] in made]
    return merges


@settings(max_examples=300, deadline=None)
@given(merges_lists(), st.lists(st.text("abc ", max_size=12), min_size=1, max_size=8), st.randoms())
def test_random_merges_fast_equals_reference(merges, words, rng):
    order = list(range(256 + len({a + b for a, b in merges})))
    if rng.random() < 0.5:
        rng.shuffle(order)
    tok = handmade(merges, order=order)
    encoder = FastEncoder.build(tok)
    if encoder is None:  # only for two different merges with one result
        results = [a + b for a, b in dict.fromkeys(merges)]
        assert len(results) != len(set(results))
        return
    for text in words + ["".join(words), " ".join(words)]:
        agree(tok, encoder, text)
    # Every token tiktoken was given is one the reference makes from its bytes alone.
    ranks = fast_module._live_ranks(tok)
    for token in ranks:
        assert tok._merge_bytes(token) == [tok._id_of[token]]


# --- encode_blocks -----------------------------------------------------------------------------


@pytest.mark.parametrize("batch_chars", [0, 100])
def test_encode_blocks_in_order_and_bounded(gpt2_fast, gpt2, batch_chars):
    pulled = []

    def blocks():
        for i in range(60):
            pulled.append(i)
            yield {"n": i, "text": f"block {i} " * (i % 5 + 1)}

    seen = 0
    for block, ids in encode_blocks(gpt2_fast, blocks(), threads=3, key=lambda b: b["text"], batch_chars=batch_chars):
        assert block["n"] == seen
        assert ids.tolist() == gpt2.encode(block["text"])
        seen += 1
        # Never more than 2 * threads batches read ahead: blocks of 9..50 characters, so a
        # batch holds one block (batch_chars 0) or at most 100 // 9 + 1 = 12 of them.
        per_batch = 1 if batch_chars == 0 else batch_chars // 9 + 1
        assert len(pulled) - seen <= 2 * 3 * per_batch
    assert seen == 60


def test_encode_blocks_with_the_reference_and_one_thread(gpt2):
    out = list(encode_blocks(gpt2, ["a b", "c<|endoftext|>"], threads=4))
    assert [ids.tolist() for _, ids in out] == [gpt2.encode("a b"), gpt2.encode("c<|endoftext|>")]
    assert all(ids.dtype == np.uint32 for _, ids in out)


@pytest.mark.parametrize("batch_chars", [0, 1000])
def test_encode_blocks_raises_in_turn_and_stops_early(gpt2_fast, batch_chars):
    good = iter(["x", "y", "\ud800", "z"])  # a lone surrogate cannot be encoded
    results = encode_blocks(gpt2_fast, good, threads=2, batch_chars=batch_chars)
    assert next(results)[0] == "x" and next(results)[0] == "y"
    with pytest.raises(UnicodeEncodeError):
        next(results)
    # Closing a half-consumed stream shuts its threads down.
    stream = encode_blocks(gpt2_fast, (str(i) for i in range(100)), threads=2)
    next(stream)
    stream.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("lmkit-encode")]


def test_empty_text_and_only_specials(gpt2_fast):
    assert gpt2_fast.encode("").tolist() == []
    assert gpt2_fast.encode("<|endoftext|><|endoftext|>").tolist() == [50256, 50256]



@pytest.mark.parametrize("text", ["a\u0558", "x\u0558y", "1\U00011de0"])
def test_recent_unicode_letters_and_digits_split_as_the_reference(text):
    # U+0558 (a letter) and U+11DE0 (a digit) are newer than the Unicode tables of tiktoken's
    # Rust regex: with GPT2_PATTERN as is, tiktoken cuts "a" from "\u0558" and merges differ.
    raw = text.encode()
    merges = [(raw[:1], raw[1:2])]
    for b in raw[2:]:
        merges.append((merges[-1][0] + merges[-1][1], bytes([b])))
    tok = handmade(merges)
    assert len(tok.encode(text)) == 1
    agree(tok, FastEncoder.build(tok), text)
