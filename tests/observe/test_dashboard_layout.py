"""The dashboard's layout, as a real terminal showed it and as it renders now.

The fixtures ``fixtures/dashboard_{80,200}_{moment}.txt`` are tmux captures of ``lmkit train`` on
the tiny CPU config (``fixtures/capture_dashboard.sh`` regenerates them): the start, just after
the first eval, mid-run, just after a checkpoint, the end (then ``echo ok`` at the prompt) and a
run stopped with Ctrl-C (then ``echo ok`` and ``stty -a``). Two kinds of checks:

- the captures themselves: every line fits its width, the panel is whole and drawn once (a
  second top border means a redraw started on the wrong row), each moment shows its fields,
  and the terminal echoes again afterwards;
- the current ``Dashboard`` rendered offscreen at the same widths with the same kind of metrics
  gives the same rows, with the same labels in the same columns. A layout change therefore
  fails here until the fixtures are re-captured (and looked at).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console

from lmkit.observe import RunInfo
from lmkit.observe.dashboard import Dashboard

FIXTURES = Path(__file__).parent / "fixtures"
WIDTHS = (80, 200)
MOMENTS = ("start", "eval", "mid", "checkpoint", "finish", "interrupt")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Labels of the label/value grid, longest first so "val loss" wins over "loss" and
# "tokens/s" over "tokens" at the same position.
PAIR_LABEL = re.compile(r"(?<= )(val loss|tokens/s|grad norm|step time|gpu mem|skipped|tokens|mfu|lr)(?= )")
CLOCK = re.compile(r"^ \d\d:\d\d:\d\d (\w+) ")

# What each moment must show (beyond the header, progress and loss rows every moment has).
EXPECTED = {
    "start": ["step 0/300", "eta --:--", "loss      -", "val loss  -", "running"],
    "eval": ["step 100/300", "val loss  3.", "(best 3.", "lr ", "tokens/s", "grad norm", "step time", "running"],
    "mid": ["step 130/300", "val loss  3.", "lr ", "tokens/s", "running"],
    "checkpoint": ["step 150/300", "last checkpoint run", " checkpoint saved: run", "running"],
    "finish": ["step 300/300", "100.0%", "eta 0:00:00", "finished", "finished at step 300/300", "exit=0"],
    "interrupt": ["stop requested (Ctrl-C; press it again to abort)", "then exiting", " checkpoint saved: int",
                  "interrupted", "interrupted at step", "Run the same command again to resume", "exit=130"],
}
# What no moment may show: an event naming its kind twice, or cut short.
UNEXPECTED = ["checkpoint checkpoint", "warning    ", "…"]


def fixture(width: int, moment: str) -> list[str]:
    path = FIXTURES / f"dashboard_{width}_{moment}.txt"
    return path.read_text(encoding="utf-8").rstrip("\n").splitlines()


def panel_of(lines: list[str]) -> list[str]:
    """The panel's rows: from its top border to its bottom border."""
    top = next(i for i, line in enumerate(lines) if line.startswith("╭"))
    bottom = next(i for i in range(top, len(lines)) if lines[i].startswith("╰"))
    return lines[top : bottom + 1]


def row_kind(row: str) -> tuple:
    """What a panel row is, and for label/value rows which labels sit in which columns."""
    if row.startswith("╭"):
        return ("top", row.strip("╭╮─ "))  # the title
    if row.startswith("╰"):
        return ("bottom", row.strip("╰╯─ "))  # the status
    inner = row[1:-1]
    if " params · " in inner:
        return ("header",)
    for prefix in ("run dir ", "step ", "loss ", "last checkpoint "):
        if inner.startswith(" " + prefix):
            return (prefix.strip(),)
    if m := CLOCK.match(inner):
        return ("event", m.group(1))
    # Each label with the columns where it and its value start (the value after the label's
    # padding), so a moved or resized column shows up even when every line still fits.
    return ("pairs", *((m.group(1), m.start(), _next_word(inner, m.end())) for m in PAIR_LABEL.finditer(inner)))


def _next_word(text: str, start: int) -> int:
    return len(text) - len(text[start:].lstrip(" "))


def layout(panel: list[str]) -> list[tuple]:
    return [row_kind(row) for row in panel]


@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("width", WIDTHS)
def test_captured_terminal_fits_and_shows_the_fields(width, moment):
    lines = fixture(width, moment)
    for line in lines:
        assert cell_len(line) <= width, f"wider than {width} columns: {line!r}"
    assert sum(line.startswith("╭") for line in lines) == 1, "the panel's top border appears twice"
    panel = panel_of(lines)
    for row in panel:
        assert cell_len(row) == width and row[0] in "╭│╰" and row[-1] in "╮│╯", f"broken panel row {row!r}"
    kinds = [kind[0] for kind in layout(panel)]
    assert kinds[:5] == ["top", "header", "run dir", "step", "loss"], kinds
    assert layout(panel)[0] == ("top", "lmkit train")
    text = "\n".join(lines)
    for expected in EXPECTED[moment]:
        assert expected in text, f"{moment} at {width} columns: {expected!r} missing"
    for unexpected in UNEXPECTED:
        assert unexpected not in text, f"{moment} at {width} columns: {unexpected!r} shown"
    step_row = panel[3]
    assert re.search(r"step \d+/300 .*%\s+\d+:\d\d:\d\d · eta ", step_row), step_row


@pytest.mark.parametrize("width", WIDTHS)
def test_terminal_works_after_exit(width):
    finish = fixture(width, "finish")
    assert finish[-2:] == ["$ echo ok", "ok"] or finish[-3:-1] == ["$ echo ok", "ok"], finish[-3:]
    interrupt = "\n".join(fixture(width, "interrupt"))
    # The shell prompt came back, echoes what is typed and runs it; the tty is in cooked mode.
    assert "\nok\n" in interrupt and " icanon" in interrupt and " echo" in interrupt
    assert "-icanon" not in interrupt and "-echo " not in interrupt


# -- the same moments, rendered offscreen now -------------------------------------------------

TRAIN = {"lr": 2.5e-3, "grad_norm": 0.61, "tokens_per_s": 8_012.0, "step_ms": 254.6, "skipped_steps": 0.0}


def _info(run_dir: str) -> RunInfo:
    return RunInfo(run_dir=Path(run_dir), max_iters=300, start_iter=0, resumed=False, device="cpu",
                   dtype="float32", num_params=984_192, tokens_per_step=2048)


def _train_to(dash: Dashboard, start: int, stop: int) -> None:
    for step in range(start, stop + 1, 10):
        dash.log(step, {**TRAIN, "loss": 6.0 - step / 100, "tokens_seen": step * 2048.0})


def _eval(dash: Dashboard, step: int, best: float = 3.5) -> None:
    dash.log(step, {"val_loss": best, "best_val_loss": best})


def drive(dash: Dashboard, moment: str) -> None:
    """Feed the dashboard what the trainer sent up to ``moment`` in the captured runs."""
    if moment == "interrupt":
        dash.start(_info("int"))
        _train_to(dash, 10, 60)
        dash.event("stop requested (Ctrl-C; press it again to abort): saving a checkpoint, then exiting", "stop")
        _eval(dash, 61)
        dash.event("checkpoint saved: int/ckpt_0000061.pt", "checkpoint")
        dash.close("interrupted")
        return
    dash.start(_info("run"))
    if moment == "start":
        return
    _train_to(dash, 10, 100)
    _eval(dash, 100)
    if moment == "eval":
        return
    _train_to(dash, 110, 130)
    if moment == "mid":
        return
    _train_to(dash, 140, 150)
    dash.event("checkpoint saved: run/ckpt_0000150.pt", "checkpoint")
    if moment == "checkpoint":
        return
    _train_to(dash, 160, 300)
    _eval(dash, 200)
    _eval(dash, 300)
    dash.event("checkpoint saved: run/ckpt_0000300.pt", "checkpoint")
    dash.close("finished")


def offscreen(width: int, moment: str) -> list[str]:
    sink = io.StringIO()  # the live display's own output; not looked at
    dash = Dashboard(console=Console(file=sink, width=width, force_terminal=True), refresh_per_second=20)
    try:
        drive(dash, moment)
        out = io.StringIO()
        Console(file=out, width=width, force_terminal=True, color_system="truecolor").print(dash.render())
    finally:
        dash.close("finished")
    return ANSI.sub("", out.getvalue()).splitlines()


@pytest.mark.parametrize("moment", MOMENTS)
@pytest.mark.parametrize("width", WIDTHS)
def test_offscreen_render_matches_the_captured_layout(width, moment):
    rendered = offscreen(width, moment)
    for line in rendered:
        assert cell_len(line) <= width, f"wider than {width} columns: {line!r}"
    captured = layout(panel_of(fixture(width, moment)))
    assert layout(panel_of(rendered)) == captured


@pytest.mark.parametrize("width", WIDTHS)
def test_pairs_per_row_follow_the_width(width):
    """Two label/value pairs a row at 80 columns, four at 200 (as captured)."""
    pairs = [k for k in layout(panel_of(fixture(width, "mid"))) if k[0] == "pairs"]
    assert max(len(k) - 1 for k in pairs) == (2 if width == 80 else 4)


@pytest.mark.parametrize("width", WIDTHS)
def test_live_cursor_waits_below_the_panel(width):
    """While running, each redraw leaves the cursor at the start of an empty line under the panel.

    Left after the panel's last column instead, the ``^C`` a terminal echoes on Ctrl-C wraps to
    a new row, every later redraw starts one row too low and a copy of the top border stays in
    the scrollback (what the first 80-column interrupt capture showed).
    """
    out = io.StringIO()
    dash = Dashboard(console=Console(file=out, width=width, force_terminal=True), refresh_per_second=20)
    dash.start(_info("run"))
    _train_to(dash, 10, 50)
    dash._live.refresh()
    assert ANSI.sub("", out.getvalue()).endswith("╯\n")
    dash.close("interrupted")
    # The final panel has no spacer: the summary follows right under it.
    lines = ANSI.sub("", out.getvalue()).splitlines()
    assert lines[-2].startswith("╰") and lines[-1].startswith("interrupted at step 50/300")
