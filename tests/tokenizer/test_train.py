"""BPE training: a hand-worked example, a naive oracle, determinism, special tokens, bad input."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st

from lmkit.errors import DataError, TokenizerError
from lmkit.tokenizer import Tokenizer, train_bpe
from lmkit.tokenizer.pretokenize import PRETOKEN_RE
from lmkit.tokenizer.train import learn_merges, merge_word


def test_merge_word_scans_left_to_right():
    assert merge_word((1, 1, 1, 2), 1, 1, 9) == (9, 1, 2)
    assert merge_word((1, 2, 3, 1, 2), 1, 2, 7) == (7, 3, 7)


def test_hand_worked_example():
    # Sennrich et al.'s example: low x5, lower x2, widest x3, newest x6. Pair counts:
    #   l o 7, o w 7, w e 8, e r 2, w i 3, i d 3, d e 3, e s 9, s t 9, n e 6, e w 6.
    # 1. "e s" and "s t" tie at 9; ("s","t") > ("e","s") as byte strings -> s t.
    # 2. "e st" now occurs 3 + 6 = 9 times, more than anything else -> e st.
    # 3. "l o" and "o w" tie at 7 ("w e" fell to 2: newest's "w e" is now "w est");
    #    "o" > "l" -> o w.
    # 4. "l ow" 7 -> l ow.
    # 5. "n e", "e w", "w est" tie at 6; "w" is the greatest first element -> w est.
    # 6. "n e" and "e west" tie at 6; "n" > "e" -> n e.
    # 7. "ne west" 6 -> ne west.
    counts = {b"low": 5, b"lower": 2, b"widest": 3, b"newest": 6}
    expected = [(b"s", b"t"), (b"e", b"st"), (b"o", b"w"), (b"l", b"ow"),
                (b"w", b"est"), (b"n", b"e"), (b"ne", b"west")]
    assert learn_merges(counts, 7) == expected
    # The vocabulary then holds 256 bytes, the 7 merges in order, and the special token last.
    # (Training stops early only when no pair is left: 7 merges is not the end here.)


def _naive_merges(word_counts: dict[bytes, int], num_merges: int) -> list[tuple[bytes, bytes]]:
    """The textbook algorithm: recount every pair after every merge."""
    words = {tuple(bytes([b]) for b in w): c for w, c in word_counts.items()}
    merges = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for w, c in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += c
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        new_words = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + c
        words = new_words
    return merges


def test_incremental_counts_match_naive_recount(shared_data):
    text = (shared_data / "corpus.en").read_text(encoding="utf-8")[:20000]
    counts = Counter(p.encode() for p in PRETOKEN_RE.findall(text))
    assert learn_merges(dict(counts), 150) == _naive_merges(dict(counts), 150)


def test_vocab_layout_and_specials_never_merged(tmp_path):
    path = tmp_path / "t.txt"
    # Without the special-token split, "aSPECIALa" would be one pretoken full of pairs.
    path.write_text("aSPECIALa " * 50 + "the cat the cat the hat")
    vocab, merges = train_bpe(path, 256 + 5 + 1, ["SPECIAL"])
    assert [vocab[i] for i in range(256)] == [bytes([b]) for b in range(256)]
    assert [vocab[256 + k] for k in range(len(merges))] == [a + b for a, b in merges]
    assert vocab[max(vocab)] == b"SPECIAL" and len(vocab) == 256 + len(merges) + 1
    assert all(b"S" not in a + b for a, b in merges)
    tok = Tokenizer(vocab, merges)
    assert tok.special_tokens == ["SPECIAL"]
    assert tok.encode("aSPECIALa") == [ord("a"), max(vocab), ord("a")]


def test_training_stops_when_pairs_run_out(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("ab ab")  # pretokens "ab", " ab": (a, b) occurs twice, then " " + "ab" once
    vocab, merges = train_bpe(path, 1000, ["<|endoftext|>"])
    assert merges == [(b"a", b"b"), (b" ", b"ab")]
    assert len(vocab) == 256 + len(merges) + 1


def test_deterministic_across_runs_and_worker_counts(shared_data):
    corpus = shared_data / "corpus.en"
    one = train_bpe(corpus, 600, ["<|endoftext|>"], workers=1)
    again = train_bpe(corpus, 600, ["<|endoftext|>"], workers=1)
    two = train_bpe(corpus, 600, ["<|endoftext|>"], workers=2)
    assert one == again == two


def test_special_tokens_in_corpus(shared_data):
    vocab, merges = train_bpe(shared_data / "tinystories_sample.txt", 400, ["<|endoftext|>"])
    assert all(b"<|" not in a + b or b"endoftext" not in a + b for a, b in merges)
    tok = Tokenizer(vocab, merges)
    text = (shared_data / "tinystories_sample.txt").read_text(encoding="utf-8")
    ids = tok.encode(text)
    assert ids.count(tok.token_id("<|endoftext|>")) == text.count("<|endoftext|>")
    assert tok.decode(ids) == text


@pytest.mark.parametrize(
    ("setup", "vocab_size", "error", "match"),
    [
        (lambda p: None, 300, DataError, "not found"),
        (lambda p: p.write_text(""), 300, DataError, "empty"),
        (lambda p: p.mkdir(), 300, DataError, "directory has no files lmkit reads"),
        (lambda p: p.write_text("abc"), 256, TokenizerError, "at least 257"),
        (lambda p: p.write_bytes(b"ok \xff bad"), 300, DataError, "byte offset 3"),
    ],
    ids=["missing", "empty", "dir-without-text", "vocab-too-small", "not-utf8"],
)
def test_bad_input(tmp_path, setup, vocab_size, error, match):
    path = tmp_path / "input.txt"
    setup(path)
    with pytest.raises(error, match=match):
        train_bpe(path, vocab_size, ["<|endoftext|>"])


@pytest.mark.parametrize(
    ("setup", "vocab_size", "specials", "error", "match"),
    [
        (lambda p: p.write_text("abc"), 300, ["a"], TokenizerError, "'a' is a single byte"),
        (lambda p: p.write_text("abc"), 2**32 + 1, [], TokenizerError, "too large"),
        (lambda p: p.write_text("abc"), 10**30, [], TokenizerError, "too large"),
        (lambda p: p.write_bytes(bytes(range(256)) * 8), 300, [], DataError, "not valid UTF-8 at byte offset 128"),
    ],
    ids=["single-byte-special", "vocab-2**32+1", "vocab-10**30", "binary"],
)
def test_hostile_arguments(tmp_path, setup, vocab_size, specials, error, match):
    path = tmp_path / "input.txt"
    setup(path)
    with pytest.raises(error, match=match):
        train_bpe(path, vocab_size, specials)


def test_input_that_is_not_a_regular_file():
    with pytest.raises(DataError, match="/dev/zero: not a regular file or directory"):
        train_bpe("/dev/zero", 300)


def test_huge_vocab_size_costs_only_what_the_text_holds(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("ab ab abc")
    vocab, merges = train_bpe(path, 10**9)  # stops when the text has no pairs left
    assert len(merges) < 10 and len(vocab) == 256 + len(merges)


def test_workers_are_capped_at_the_cores(tmp_path, monkeypatch):
    from lmkit.tokenizer import pretokenize

    path = tmp_path / "t.txt"
    path.write_text("the cat sat on the mat " * 20_000)  # several 64 KB chunks, so a pool is asked for
    started: list[int] = []

    class InProcessPool:  # the process boundary: record how many were asked for, run in-process
        def __init__(self, processes):
            started.append(processes)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def imap_unordered(self, fn, jobs):
            return map(fn, jobs)

    class Context:
        Pool = InProcessPool

    monkeypatch.setattr(pretokenize.multiprocessing, "get_context", lambda method: Context())
    counts = pretokenize.count_pretokens([path], [], workers=10**6)
    assert started and max(started) <= (os.cpu_count() or 1)
    assert counts == pretokenize.count_pretokens([path], [], workers=1)


def test_train_and_save_refuses_an_existing_tokenizer_before_training(tmp_path, monkeypatch):
    from lmkit.tokenizer import counting, train as train_module

    path = tmp_path / "t.txt"
    path.write_text("the cat sat on the mat " * 50)
    first = train_module.train_and_save(path, 262, tmp_path / "tok")
    before = (tmp_path / "tok" / "merges.txt").read_bytes()

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the output is refused")

    monkeypatch.setattr(train_module, "count_corpus", no_training)
    with pytest.raises(TokenizerError, match="already holds a tokenizer.*pass --force"):
        train_module.train_and_save(path, 264, tmp_path / "tok")
    assert (tmp_path / "tok" / "merges.txt").read_bytes() == before
    monkeypatch.setattr(train_module, "count_corpus", counting.count_corpus)
    second = train_module.train_and_save(path, 264, tmp_path / "tok", force=True)
    assert Tokenizer.from_dir(tmp_path / "tok").hash == second.hash != first.hash


# Small alphabets make overlaps ("aaaa"), repeated pairs ("abab") and ties common: the cases
# where an incremental update most easily goes wrong.
_words = st.dictionaries(
    st.binary(min_size=1, max_size=12).map(lambda w: bytes(b % 4 + 97 for b in w))
    | st.binary(min_size=1, max_size=6),
    st.integers(min_value=1, max_value=50),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(word_counts=_words, num_merges=st.integers(min_value=0, max_value=60))
def test_learn_merges_matches_recounting_every_step(word_counts, num_merges):
    assert learn_merges(word_counts, num_merges) == _naive_merges(word_counts, num_merges)


def test_overlapping_and_adjacent_merges():
    # "aaaa" -> "X X" (adjacent merges: (a, a) between them becomes (X, X)), "aaa" -> "X a",
    # "abab" -> "Y Y". A wrong update of the neighbours shows as a wrong later merge.
    counts = {b"aaaa": 3, b"aaa": 2, b"abab": 2, b"bab": 1}
    assert learn_merges(counts, 8) == _naive_merges(counts, 8)
