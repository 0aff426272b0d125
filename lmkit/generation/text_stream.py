"""Incremental text from a stream of token byte pieces.

A byte-level BPE token can end in the middle of a multi-byte UTF-8 character (an emoji is
four bytes and often spans two or three tokens). Decoding each token on its own would print
replacement characters; decoding the whole sequence every step would be quadratic. Instead
an incremental UTF-8 decoder holds back an incomplete trailing sequence until the token that
completes it arrives.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable, Iterator


class Utf8StreamDecoder:
    """Feed byte pieces, get back the text that is complete so far.

    Example::

        >>> d = Utf8StreamDecoder()
        >>> d.decode(b"caf\\xc3"), d.decode(b"\\xa9!"), d.flush()
        ('caf', 'é!', '')
    """

    def __init__(self) -> None:
        # errors="replace": invalid bytes (a model can emit any byte sequence) become U+FFFD
        # instead of raising mid-stream.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def decode(self, piece: bytes) -> str:
        """Add one token's bytes; return the newly completed text (possibly '')."""
        return self._decoder.decode(piece)

    def flush(self) -> str:
        """End of stream: return whatever is held back (an incomplete tail becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


def stream_text(token_bytes: Callable[[int], bytes], tokens: Iterable[int]) -> Iterator[str]:
    """Turn a token stream into a text stream, never splitting a UTF-8 character.

    Args:
        token_bytes: maps a token id to its bytes (e.g. a tokenizer's vocab lookup).
        tokens: token ids, e.g. ``(int(t) for t in generate(...))`` for a single sequence.

    Yields:
        Non-empty text fragments as soon as they are complete, then any held-back tail.
    """
    decoder = Utf8StreamDecoder()
    for token in tokens:
        text = decoder.decode(token_bytes(int(token)))
        if text:
            yield text
    tail = decoder.flush()
    if tail:
        yield tail
