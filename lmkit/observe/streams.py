"""Writing to stdout/stderr without letting a closed reader kill the run.

Python ignores SIGPIPE, so a write to a pipe whose reader has gone (``lmkit train 2>&1 | head``)
raises ``BrokenPipeError``, and a write to a closed terminal raises ``OSError`` (EIO). Either,
unhandled, would end a training run without a checkpoint. Every line lmkit prints during and
after training goes through ``say`` or a ``SafeStream``: the first failed write points that file
descriptor at /dev/null, so every later write to it (ours, rich's, typer's, Python's own flush at
exit) succeeds silently, and records the stream as closed. The trainer treats a closed stream
as a stop request (checkpoint, event in metrics.jsonl, exit 141 = 128 + SIGPIPE), the way a
closed terminal (SIGHUP) is one.
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO


def mute(stream: Any) -> None:
    """Point ``stream``'s file descriptor at /dev/null (the reader is gone; nothing can reach it).

    Also drops anything left in the stream's buffer, which would fail again at the next flush.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not backed by a descriptor (StringIO, a test's capture): nothing to redirect
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
    try:
        stream.flush()  # the pending bytes now go to /dev/null
    except (OSError, ValueError):
        pass


def stream_name(stream: Any) -> str:
    """``"stderr"``/``"stdout"`` for the process's own streams, else the stream's name."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    return {1: "stdout", 2: "stderr"}.get(fd, str(getattr(stream, "name", "output")))


class SafeStream:
    """A text stream that turns itself off (see the module docstring) instead of raising.

    Args:
        stream: the stream to write to; None means ``sys.stderr`` as it is at each write.
    """

    def __init__(self, stream: TextIO | None = None):
        self._stream = stream
        self.closed_reason: str | None = None  # e.g. "stderr closed: broken pipe" once lost

    @property
    def stream(self) -> TextIO:
        """The wrapped stream."""
        return self._stream or sys.stderr

    @property
    def lost(self) -> bool:
        """Whether a write failed because the reader (pipe or terminal) is gone."""
        return self.closed_reason is not None

    def _failed(self, error: OSError) -> None:
        stream = self.stream
        why = "broken pipe" if isinstance(error, BrokenPipeError) else (error.strerror or type(error).__name__)
        self.closed_reason = f"{stream_name(stream)} closed: {why}"
        mute(stream)

    def write(self, text: str) -> int:
        """Write ``text``; after the reader is gone, do nothing."""
        if self.lost:
            return len(text)
        try:
            return self.stream.write(text)
        except OSError as e:
            self._failed(e)
            return len(text)

    def flush(self) -> None:
        """Flush; after the reader is gone, do nothing."""
        if self.lost:
            return
        try:
            self.stream.flush()
        except OSError as e:
            self._failed(e)

    def isatty(self) -> bool:
        """Whether the stream is a live terminal (False once lost)."""
        if self.lost:
            return False
        try:
            return self.stream.isatty()
        except (OSError, ValueError):
            return False

    def __getattr__(self, name: str) -> Any:
        # fileno, encoding, ... for rich's console, which inspects the file it draws to.
        return getattr(self.stream, name)


def say(message: str, stream: TextIO | None = None) -> bool:
    """Print one line to ``stream`` (default: stderr) and flush; False if the reader is gone."""
    out = SafeStream(stream)
    out.write(message + "\n")
    out.flush()
    return not out.lost
