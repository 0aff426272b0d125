"""SafeStream/say: a reader that went away silences the output instead of raising."""

from __future__ import annotations

import io
import os

from lmkit.observe.streams import SafeStream, say


def _pipe_without_reader():
    """A text stream on a pipe whose read end is closed (what ``| head`` leaves after it exits)."""
    r, w = os.pipe()
    os.close(r)
    return os.fdopen(w, "w", buffering=1)


def test_broken_pipe_is_muted_not_raised():
    f = _pipe_without_reader()
    out = SafeStream(f)
    out.write("step 5/20 | loss 3.2\n")
    out.flush()
    assert out.lost and out.closed_reason.endswith("closed: broken pipe")
    # The descriptor now points at /dev/null: every later writer (rich, typer, Python's flush
    # at exit) succeeds instead of raising BrokenPipeError.
    f.write("x" * 100_000)
    f.flush()
    assert os.write(f.fileno(), b"more") == 4
    f.close()


def test_say_reports_a_gone_reader_and_works_on_any_stream():
    f = _pipe_without_reader()
    assert say("lmkit: hello", f) is False
    f.close()
    buf = io.StringIO()  # no descriptor to redirect: just stops writing
    assert say("line", buf) is True and buf.getvalue() == "line\n"


def test_a_terminal_that_went_away_eio_is_muted():
    class GoneTerminal(io.StringIO):
        def write(self, s):
            raise OSError(5, "Input/output error")

    out = SafeStream(GoneTerminal())
    assert out.write("panel") == 5
    assert out.closed_reason == "output closed: Input/output error" and not out.isatty()
