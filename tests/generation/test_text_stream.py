"""Streaming UTF-8 decoding across token boundaries."""

from __future__ import annotations

import pytest

from lmkit.generation import Utf8StreamDecoder, stream_text

TEXT = "é😀 naïve 日本"


@pytest.mark.parametrize("piece_len", [1, 2, 3, 5])
def test_multibyte_chars_split_across_pieces(piece_len: int) -> None:
    data = TEXT.encode()
    pieces = [data[i : i + piece_len] for i in range(0, len(data), piece_len)]
    d = Utf8StreamDecoder()
    out = [d.decode(p) for p in pieces] + [d.flush()]
    assert "".join(out) == TEXT
    assert "\ufffd" not in "".join(out)


def test_holds_back_incomplete_sequence() -> None:
    emoji = "😀".encode()  # 4 bytes
    d = Utf8StreamDecoder()
    assert d.decode("é".encode()[:1]) == ""
    assert d.decode("é".encode()[1:] + emoji[:2]) == "é"
    assert d.decode(emoji[2:]) == "😀"


def test_invalid_bytes_are_replaced_not_raised() -> None:
    d = Utf8StreamDecoder()
    assert d.decode(b"a\xffb") == "a\ufffdb"
    assert d.decode(b"\xf0\x9f") == ""
    assert d.flush() == "\ufffd"  # an unfinished tail at the end


def test_stream_text_from_token_ids() -> None:
    vocab = {0: b"caf", 1: b"\xc3", 2: b"\xa9 ", 3: "😀".encode()[:3], 4: "😀".encode()[3:]}
    chunks = list(stream_text(vocab.__getitem__, [0, 1, 2, 3, 4]))
    assert chunks == ["caf", "é ", "😀"]
