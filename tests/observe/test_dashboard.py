from __future__ import annotations

import io
import math
import re
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console

from lmkit.observe.dashboard import Dashboard

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
WIDTHS = (80, 200)


def snapshot(dash: Dashboard, width: int) -> list[str]:
    """The panel as a terminal of ``width`` columns shows it, colour codes removed."""
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=True, color_system="truecolor").print(dash.render())
    return ANSI.sub("", out.getvalue()).splitlines()


def assert_fits(lines: list[str], width: int) -> None:
    assert lines[0].startswith("╭") and lines[-1].startswith("╰")
    for line in lines:
        assert cell_len(line) <= width, f"overflows {width} columns: {line!r}"
        assert line[0] in "╭│╰" and line[-1] in "╮│╯", f"not a panel row: {line!r}"


@pytest.fixture
def dashboard():
    """A dashboard drawing into a string, stopped at the end of the test."""
    console = Console(file=io.StringIO(), width=100, force_terminal=True)
    dash = Dashboard(console=console, refresh_per_second=20)
    yield dash
    dash.close("finished")


def moments(dash: Dashboard, info, train_metrics, eval_metrics):
    """Drive the dashboard through a run, yielding the name of each moment worth a snapshot."""
    dash.start(info)
    yield "start"
    for step in range(0, 1210, 10):
        dash.log(step, {**train_metrics, "loss": 3 + 4 * math.exp(-step / 300)})
    yield "mid-run"
    dash.log(1200, eval_metrics)
    dash.event("val loss 3.3012 (best 3.2990)", "eval")
    yield "after eval"
    dash.event("checkpoint saved: runs/gpt2/ckpt_0001200.pt", "checkpoint")
    dash.event("a warning that goes on and on " * 12, "warning")
    yield "after checkpoint"
    dash.close("finished")
    yield "finished"


@pytest.mark.parametrize("width", WIDTHS)
def test_every_moment_fits(dashboard, make_info, train_metrics, eval_metrics, width):
    long_dir = "runs/" + "a-very-long-run-directory-name/" * 6
    info = make_info(run_dir=make_info().run_dir / long_dir)
    for moment in moments(dashboard, info, train_metrics, eval_metrics):
        lines = snapshot(dashboard, width)
        assert_fits(lines, width)
        text = "\n".join(lines)
        assert "lmkit train" in text, moment
        assert "step " in text and "eta" in text, moment


def test_renders_every_field(dashboard, make_info, train_metrics, eval_metrics):
    steps = list(moments(dashboard, make_info(world_size=2), {**train_metrics, "skipped_steps": 2},
                         eval_metrics))
    assert steps[-1] == "finished"
    text = "\n".join(snapshot(dashboard, 200))
    for expected in (
        "cuda x2 · bfloat16 · 124.4M params · 524.3k tok/step · 5,000 steps",  # header
        "run dir ",
        "step 1,200/5,000",  # progress
        "24.0%",
        "loss      3.0733",  # last train loss
        "val loss  3.3012 (best 3.2990)",
        "3.00e-04",  # lr
        "12.3k",  # tokens/s
        "41.2%",  # mfu
        "0.840",  # grad norm
        "10.2 GB",  # gpu memory
        "45.1 ms",  # time per step
        "2 steps",  # skipped
        "last checkpoint runs/gpt2/ckpt_0001200.pt",
        "checkpoint saved: runs/gpt2/ckpt_0001200.pt",  # events
        "finished",  # status in the border
    ):
        assert expected in text, expected
    assert re.search("[▁▂▃▄▅▆▇█]{20,}", text), "no loss sparkline"


def test_optional_fields_are_left_out(dashboard, make_info):
    dashboard.start(make_info(device="cpu", dtype="float32"))
    dashboard.log(10, {"loss": 3.0, "lr": 1e-3, "skipped_steps": 0})
    text = "\n".join(snapshot(dashboard, 80))
    for absent in ("mfu", "gpu mem", "skipped", "last checkpoint"):
        assert absent not in text


def test_close_restores_terminal_and_prints_summary(make_info, eval_metrics):
    out = io.StringIO()
    dash = Dashboard(console=Console(file=out, width=80, force_terminal=True), refresh_per_second=20)
    dash.start(make_info(start_iter=100, resumed=True))
    dash.log(150, {"loss": 3.1, **eval_metrics})
    dash.close("interrupted")
    dash.close("interrupted")  # a second close is harmless
    text = out.getvalue()
    assert text.rindex("\x1b[?25h") > text.index("\x1b[?25l")  # cursor hidden, then shown again
    summary = ANSI.sub("", text).splitlines()[-1]
    assert summary.startswith("interrupted at step 150/5,000 in 0:00:0")
    assert "best val loss 3.2990" in summary
    assert "resumed at step 100" in ANSI.sub("", text)


def test_stop_line_keeps_its_end_at_80_columns(dashboard, make_info):
    # A short run directory, as users have: a long temporary path would be shortened with an
    # ellipsis in the header, which is not what this test looks at.
    dashboard.start(make_info(run_dir=Path("runs/gpt2")))
    dashboard.event("stop requested (Ctrl-C; press it again to abort): saving a checkpoint, then exiting", "stop")
    dashboard.event("checkpoint saved: runs/gpt2/ckpt_0001200.pt", "checkpoint")
    lines = snapshot(dashboard, 80)
    assert_fits(lines, 80)
    text = " ".join(line[1:-1].strip() for line in lines)
    assert "press it again to abort" in text and "then exiting" in text and "…" not in text
    assert "checkpoint checkpoint" not in text and "checkpoint saved: runs/gpt2/ckpt_0001200.pt" in text


def test_aborted_run_has_its_own_footer(make_info):
    out = io.StringIO()
    dash = Dashboard(console=Console(file=out, width=80, force_terminal=True), refresh_per_second=20)
    dash.start(make_info())
    dash.log(7, {"loss": 3.0})
    dash.close("aborted")
    lines = ANSI.sub("", out.getvalue()).splitlines()
    assert "aborted" in lines[-2] and lines[-1].startswith("aborted at step 7/5,000")


def test_narrower_terminal_erases_the_reflowed_frame(make_info):
    """After a shrink from 120 to 80 columns, each 120-wide row of the last frame occupies two
    rows (the terminal re-flows it), so the redraw must move up and erase twice as many rows."""
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True)
    dash = Dashboard(console=console, refresh_per_second=20)
    dash.start(make_info())
    dash.log(10, {"loss": 3.0})
    dash._live.refresh()
    height = dash._live._live_render._shape[1]
    console.width = 80  # what rich reads after SIGWINCH
    out.seek(0)
    out.truncate()
    dash._live.refresh()
    redraw = out.getvalue()
    dash.close("finished")
    # rich moves up (and erases) one row fewer than the frame's height; twice the rows now.
    assert redraw.count("\x1b[1A") >= 2 * height - 1


@pytest.mark.parametrize("width", WIDTHS)
def test_a_mixture_shows_tokens_per_source_on_one_line(dashboard, make_info, train_metrics, width):
    from lmkit.observe.console import format_train_line

    dashboard.start(make_info())
    sources = {"web": 7_000_000, "code": 2_500_000, "books": 500_000}
    dashboard.log(10, {**train_metrics, "tokens_by_source": sources})
    lines = snapshot(dashboard, width)
    assert_fits(lines, width)
    rows = [line for line in lines if "sources" in line]
    assert len(rows) == 1 and "web 7.0M (70%)" in rows[0], lines
    assert "sources web 7.0M (70%) · code 2.5M (25%) · books 500.0k (5%)" in format_train_line(10, 100, {"tokens_by_source": sources})
    dashboard.log(20, {**train_metrics, "tokens_by_source": {}})
    assert not any("sources" in line for line in snapshot(dashboard, width))


@pytest.mark.parametrize("width", WIDTHS)
def test_in_loop_task_scores_show_on_one_line(dashboard, make_info, train_metrics, width):
    from lmkit.observe.text import fmt_task_scores

    dashboard.start(make_info())
    dashboard.log(10, train_metrics)
    assert not any("tasks" in line for line in snapshot(dashboard, width))
    scores = {"tasks/arc_easy/acc": 0.3125, "tasks/arc_easy/acc_norm": 0.25, "tasks_s": 4.0}
    dashboard.log(10, scores)
    lines = snapshot(dashboard, width)
    assert_fits(lines, width)
    rows = [line for line in lines if "tasks" in line]
    assert len(rows) == 1 and "arc_easy acc 0.3125" in rows[0], lines
    assert fmt_task_scores(scores) == "arc_easy acc 0.3125 · arc_easy acc_norm 0.2500"
    assert fmt_task_scores({"loss": 1.0}) == ""
