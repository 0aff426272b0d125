from __future__ import annotations

import os

import io
import math

from lmkit.observe.console import ConsoleSink, format_eval_line, format_train_line


class FlushCounter(io.StringIO):
    def __init__(self):
        super().__init__()
        self.flushes = 0

    def flush(self):
        self.flushes += 1
        super().flush()


def test_train_line_format(train_metrics):
    m = {k: train_metrics[k] for k in ("loss", "lr", "grad_norm", "tokens_per_s", "step_ms", "mfu")}
    assert format_train_line(100, 5000, m) == (
        "step 100/5000 | loss 3.2154 | lr 3.00e-04 | grad 0.84 | 12.3k tok/s | 45.1 ms/step | mfu 41.2%"
    )


def test_train_line_shows_only_what_is_present():
    assert format_train_line(7, 10, {"loss": 2.0}) == "step 7/10 | loss 2.0000"
    assert "skipped" not in format_train_line(7, 10, {"loss": 2.0, "skipped_steps": 0})
    assert format_train_line(7, 10, {"loss": math.nan, "skipped_steps": 3}) == (
        "step 7/10 | loss nan | skipped 3"
    )


def test_eval_line_format(eval_metrics):
    assert format_eval_line(500, 5000, eval_metrics) == "step 500/5000 | val loss 3.3012 | best 3.2990"


def test_lifecycle_plain_lines_without_escape_codes(make_info, train_metrics, eval_metrics):
    out = FlushCounter()
    sink = ConsoleSink(file=out)
    sink.start(make_info(start_iter=400, resumed=True, world_size=2))
    sink.log(410, train_metrics)
    sink.log(500, {**train_metrics, **eval_metrics})
    sink.event("checkpoint saved: runs/x/ckpt_0000500.pt", "checkpoint")
    sink.close("interrupted")

    text = out.getvalue()
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("lmkit train | cuda x2 bfloat16 | 124.4M params | 524.3k tok/step")
    assert lines[1] == "resumed at step 400"
    assert lines[2].startswith("step 410/5000 | loss 3.2154 | lr 3.00e-04 |")
    assert "| mem 10.2 GB |" in lines[2] and "| eta " in lines[2]
    assert lines[3].startswith("step 500/5000 | loss")
    assert lines[4] == "step 500/5000 | val loss 3.3012 | best 3.2990"
    assert lines[5] == "checkpoint saved: runs/x/ckpt_0000500.pt"  # the kind said once
    assert lines[6].startswith("interrupted at step 500/5000 in 0:00:0")
    assert lines[6].endswith("| best val loss 3.2990")
    assert len(lines) == 7
    assert out.flushes >= len(lines)  # every line is flushed as it is written


def test_defaults_to_stderr_at_write_time(capsys, make_info):
    sink = ConsoleSink()
    sink.start(make_info())
    sink.event("hello")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "hello" in captured.err


def test_events_name_their_kind_once():
    out = io.StringIO()
    sink = ConsoleSink(file=out)
    sink.event("checkpoint saved: runs/x/ckpt_0000020.pt", "checkpoint")
    sink.event("step 5: non-finite loss or gradient; step skipped", "warning")
    sink.event("stop requested (SIGTERM): saving a checkpoint, then exiting", "stop")
    assert out.getvalue().splitlines() == [
        "checkpoint saved: runs/x/ckpt_0000020.pt",
        "warning: step 5: non-finite loss or gradient; step skipped",
        "stop requested (SIGTERM): saving a checkpoint, then exiting",
    ]


def test_a_closed_pipe_silences_the_lines_and_says_why(make_info, train_metrics):
    r, w = os.pipe()
    os.close(r)  # the reader (`| head -3`) has exited
    f = os.fdopen(w, "w")
    sink = ConsoleSink(file=f)
    sink.start(make_info())  # must not raise BrokenPipeError
    sink.log(10, train_metrics)
    sink.close("interrupted")
    assert sink.output_lost == f"{f.name} closed: broken pipe"
    f.close()


def test_eta_follows_the_recent_pace_not_a_slow_start(make_info, train_metrics):
    out = io.StringIO()
    sink = ConsoleSink(file=out)
    sink.start(make_info(max_iters=1000))
    sink._t0 -= 60  # a minute lost before the first step (W&B timeout, compilation)
    sink.log(10, {**train_metrics, "step_ms": 5000.0})  # the first window carried the compile
    sink.log(20, {**train_metrics, "step_ms": 100.0})
    sink.log(30, {**train_metrics, "step_ms": 100.0})
    assert out.getvalue().splitlines()[-1].endswith("| eta 0:01:37")  # 970 steps x 0.1 s
