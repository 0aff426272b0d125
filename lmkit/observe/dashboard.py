"""A live terminal dashboard for training, drawn with rich and refreshed four times a second.

    ╭──────────────────────────────── lmkit train ─────────────────────────────────╮
    │ cuda · bfloat16 · 124.4M params · 524.3k tok/step · 5,000 steps              │
    │ run dir runs/gpt2                                                            │
    │ step 1,200/5,000 ━━━━━━╸                        24.0%  0:10:12 · eta 0:32:18 │
    │ loss      3.0733   ██▇▇▇▇▆▆▆▆▆▅▅▅▅▅▅▄▄▄▄▄▄▄▃▃▃▃▃▃▃▃▃▂▂▂▂▂▂▂▂▂▂▂▂▂▂▁▁▁▁▁▁▁▁▁▁ │
    │ val loss  3.3012 (best 3.2990)        lr        3.00e-04                     │
    │ tokens/s  12.3k                       mfu       41.2%                        │
    │ grad norm 0.840                       step time 45.1 ms                      │
    │ gpu mem   10.2 GB                                                            │
    │ last checkpoint runs/gpt2/ckpt_0001000.pt                                    │
    │ 05:13:54 checkpoint saved: runs/gpt2/ckpt_0001000.pt                         │
    ╰────────────────────────────────── running ───────────────────────────────────╯

It writes to stderr (stdout stays free for a command's results), so ``lmkit train > out.txt``
still shows the dashboard, and ``2>&1 | tee log`` is not a terminal and gets plain lines instead
(``make_sinks`` decides). While it runs, rich redirects other prints above the panel. Every
width-sensitive piece is a no-wrap, ellipsis-cropped cell of an expanding grid, so the panel fits
any width from 80 columns up without wrapping. While the run goes on, an empty line under the
panel holds the cursor, so the terminal's ``^C`` echo lands there instead of wrapping the panel's
last row (which would shift every later redraw one row down and leave a stray border behind).
Event lines are the exception: they wrap inside the panel rather than lose their end (a stop
request's "Ctrl-C again to abort"). When the terminal gets narrower, the terminal re-flows the
last frame's rows onto more lines than rich knows of, so the next redraw erases that many more
(``_erase_reflowed``) instead of leaving fragments of the old frame above the new one.

If the terminal goes away (closed window, broken pipe), drawing stops and ``output_lost`` says
why; the trainer then stops with a checkpoint (see ``lmkit.observe.streams``).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from lmkit.observe.base import RunInfo
from lmkit.observe.streams import SafeStream
from lmkit.observe.text import (
    Pace,
    best_of,
    describe_event,
    fmt_count,
    fmt_duration,
    fmt_loss,
    fmt_lr,
    fmt_percent,
    fmt_sources,
    fmt_task_scores,
    sparkline,
)

HISTORY = 240  # train-loss points kept for the sparkline (wider than any terminal row needs)
EVENTS = 4  # recent events shown under the metrics
_KIND_STYLE = {"checkpoint": "green", "eval": "cyan", "warning": "yellow", "stop": "yellow", "resume": "magenta", "error": "red"}
_STATUS_STYLE = {"running": "cyan", "finished": "green", "interrupted": "yellow", "failed": "red", "aborted": "red"}


class _Sparkline:
    """The loss history as block characters, as many points as the cell is wide."""

    def __init__(self, values: list[float]):
        self.values = values

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(sparkline(self.values, options.max_width), style="cyan", no_wrap=True)


class _Pairs:
    """Label/value pairs in a grid, as many pairs per row as fit (two at 80 columns)."""

    PAIR_WIDTH = 36  # 9-cell label, padding and a value as long as "3.3012 (best 3.2990)"

    def __init__(self, pairs: list[tuple[str, str, str]]):
        self.pairs = pairs  # (label, value, style)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        per_row = max(1, min(4, options.max_width // self.PAIR_WIDTH))
        grid = Table.grid(expand=True, padding=(0, 1))
        for _ in range(per_row):
            grid.add_column(width=9, no_wrap=True)
            grid.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        for i in range(0, len(self.pairs), per_row):
            cells: list[Text] = []
            for label, value, style in self.pairs[i : i + per_row]:
                cells += [Text(label, style="dim"), _cell(value, style)]
            grid.add_row(*cells)
        yield grid


def _cell(text: str, style: str = "") -> Text:
    return Text(text, style=style, no_wrap=True, overflow="ellipsis")


class Dashboard:
    """A ``Sink`` that shows the run as a live rich panel (see the module docstring)."""

    name = "dashboard"

    def __init__(self, console: Console | None = None, refresh_per_second: float = 4):
        """Create the dashboard; nothing is drawn until ``start``.

        Args:
            console: where to draw; None means a console on stderr, created at ``start``.
            refresh_per_second: redraw rate of the live display.
        """
        self.console = console
        self._out: SafeStream | None = None  # the guarded stderr of the console made at start
        self.refresh_per_second = refresh_per_second
        self._info: RunInfo | None = None
        self._live: Live | None = None
        # The live display redraws from its own thread; this lock keeps it from reading the state
        # while the training thread updates it.
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._step = 0
        self._metrics: dict[str, float] = {}
        self._losses: deque[float] = deque(maxlen=HISTORY)
        self._events: deque[tuple[str, str, str]] = deque(maxlen=EVENTS)  # (clock, kind, message)
        self._last_checkpoint: str | None = None
        self._best_val: float | None = None
        self._status = "running"
        self._pace = Pace()
        self._drawn_width: int | None = None  # console width of the last frame drawn

    @property
    def output_lost(self) -> str | None:
        """Why drawing stopped (e.g. "stderr closed: Input/output error"), or None."""
        return self._out.closed_reason if self._out is not None else None

    # -- Sink interface -----------------------------------------------------------------------

    def start(self, info: RunInfo) -> None:
        """Start drawing the live panel."""
        if self.console is None:
            # Bind the real stderr now: the live display swaps sys.stderr for a proxy while it runs.
            # Guarded, because the live display also writes from its own refresh thread.
            self._out = SafeStream(sys.stderr)
            self.console = Console(file=self._out)
        with self._lock:
            self._info, self._t0, self._step = info, time.monotonic(), info.start_iter
        if info.resumed:
            self.event(f"resumed at step {info.start_iter}", "resume")
        self._live = Live(
            console=self.console,
            get_renderable=self._live_view,
            refresh_per_second=self.refresh_per_second,
            transient=False,
            # Prints to stdout are moved above the panel only when stdout is this same terminal;
            # a redirected stdout (`> out.txt`) keeps its output.
            redirect_stdout=sys.stdout.isatty(),
        )
        self._live.start()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Take the newest value of every metric; train losses feed the sparkline."""
        with self._lock:
            self._step = step
            self._metrics.update(metrics)
            if "loss" in metrics:
                self._losses.append(metrics["loss"])
                self._pace.update(metrics)
            if "val_loss" in metrics:
                self._best_val = best_of(self._best_val, metrics)

    def event(self, message: str, kind: str = "info") -> None:
        """Remember the event (and the last checkpoint) for the events area."""
        with self._lock:
            self._events.append((time.strftime("%H:%M:%S"), kind, message))
            if kind == "checkpoint":
                self._last_checkpoint = message.split(": ", 1)[-1]

    def close(self, status: str = "finished") -> None:
        """Draw the final panel, give the terminal back and print a one-line summary."""
        with self._lock:
            self._status = status
        if self._live is not None:
            live, self._live = self._live, None
            live.refresh()
            live.stop()
            if self.console is not None:
                style = _STATUS_STYLE.get(status, "")
                self.console.print(Text(self.summary(), style=style), soft_wrap=True)

    # -- drawing ------------------------------------------------------------------------------

    def summary(self) -> str:
        """``finished at step 5,000/5,000 in 1:02:03 · best val loss 3.2990 · runs/x``."""
        info = self._info
        max_iters = info.max_iters if info else self._step
        parts = [(f"{self._status} at step {self._step:,}/{max_iters:,} in "
                  f"{fmt_duration(time.monotonic() - self._t0)}")]
        if self._best_val is not None:
            parts.append(f"best val loss {fmt_loss(self._best_val)}")
        if info is not None:
            parts.append(str(info.run_dir))
        return " · ".join(parts)

    def render(self) -> RenderableType:
        """The whole panel as it looks now (the live display calls this on every refresh)."""
        with self._lock:
            rows = list(self._header()) + [self._progress()] + list(self._stats())
            rows += list(self._event_rows())
            status = self._status
        title = self._info.title if self._info else "lmkit"
        return Panel(
            Group(*rows),
            title=f"[bold]{title}[/]",
            subtitle=Text(status, style=_STATUS_STYLE.get(status, "")),  # not markup: any status word is safe
            border_style="blue",
            expand=True,
        )

    def _erase_reflowed(self) -> None:
        """Before a redraw at a narrower width, count the last frame's re-flowed rows.

        The live display moves up as many rows as its last frame had. A terminal that got
        narrower has wrapped each of those (full-width) rows onto ceil(old / new) lines, so the
        frame now spans more rows; without this the top of the old frame would stay on screen.
        """
        live = self._live
        width = self.console.width if self.console is not None else None
        shape = getattr(getattr(live, "_live_render", None), "_shape", None)
        if width and self._drawn_width and width < self._drawn_width and shape:
            rows = shape[1] * math.ceil(self._drawn_width / width)
            live._live_render._shape = (width, rows)  # type: ignore[union-attr]
        self._drawn_width = width

    def _live_view(self) -> RenderableType:
        """``render()`` plus, while running, the empty line the cursor waits on.

        Without it the cursor waits after the panel's last column, where the echo of a key
        (the ``^C`` the terminal prints on Ctrl-C) wraps onto a new row; the next redraw, which
        moves up a fixed number of rows, then starts one row low and the old top border stays in
        the scrollback. On the spacer line the echo is simply erased by the next redraw.
        """
        self._erase_reflowed()
        panel = self.render()
        with self._lock:
            running = self._status == "running"
        return Group(panel, Text("")) if running else panel

    def _header(self) -> Iterator[RenderableType]:
        info = self._info
        if info is None:
            yield _cell("starting...", "dim")
            return
        device = f"{info.device} x{info.world_size}" if info.world_size > 1 else info.device
        yield _cell(
            f"{device} · {info.dtype} · {fmt_count(info.num_params)} params · "
            f"{fmt_count(info.tokens_per_step)} tok/step · {info.max_iters:,} steps",
            "bold",
        )
        yield _cell(f"run dir {info.run_dir}", "dim")

    def _progress(self) -> Table:
        info = self._info
        max_iters = info.max_iters if info else 0
        start = info.start_iter if info else 0
        elapsed = time.monotonic() - self._t0
        eta = self._pace.eta(self._step, start, max_iters, elapsed)
        fraction = self._step / max_iters if max_iters else 0.0
        grid = Table.grid(expand=True, padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(ratio=1)
        grid.add_column(no_wrap=True, justify="right")
        grid.add_row(
            Text(f"step {self._step:,}/{max_iters:,}", style="bold"),
            ProgressBar(total=max(max_iters, 1), completed=self._step),
            Text(f"{fmt_percent(fraction):>6}  {fmt_duration(elapsed)} · eta {fmt_duration(eta)}"),
        )
        return grid

    def _stats(self) -> Iterator[RenderableType]:
        m = self._metrics
        loss_row = Table.grid(expand=True, padding=(0, 1))
        loss_row.add_column(width=9, no_wrap=True)
        loss_row.add_column(width=8, no_wrap=True)
        loss_row.add_column(ratio=1)
        loss = fmt_loss(m["loss"]) if "loss" in m else "-"
        history = _Sparkline(list(self._losses))
        loss_row.add_row(Text("loss", style="dim"), Text(loss, style="bold"), history)
        yield loss_row

        pairs: list[tuple[str, str, str]] = []  # (label, value, style)
        if "val_loss" in m:
            best = f" (best {fmt_loss(m['best_val_loss'])})" if "best_val_loss" in m else ""
            pairs.append(("val loss", fmt_loss(m["val_loss"]) + best, "bold"))
        else:
            pairs.append(("val loss", "-", "dim"))
        if "lr" in m:
            pairs.append(("lr", fmt_lr(m["lr"]), ""))
        if "tokens_per_s" in m:
            pairs.append(("tokens/s", fmt_count(m["tokens_per_s"]), ""))
        if "mfu" in m:
            pairs.append(("mfu", fmt_percent(m["mfu"]), ""))
        if "grad_norm" in m:
            pairs.append(("grad norm", f"{m['grad_norm']:.3f}", ""))
        if "step_ms" in m:
            pairs.append(("step time", f"{m['step_ms']:.1f} ms", ""))
        if "gpu_mem_gb" in m:
            pairs.append(("gpu mem", f"{m['gpu_mem_gb']:.1f} GB", ""))
        if "tokens_seen" in m:
            pairs.append(("tokens", fmt_count(m["tokens_seen"]), ""))
        if m.get("skipped_steps", 0) > 0:
            pairs.append(("skipped", f"{int(m['skipped_steps'])} steps", "yellow"))

        yield _Pairs(pairs)
        if m.get("tokens_by_source"):  # a mixture: one line, whatever the number of sources
            yield _cell(f"sources   {fmt_sources(m['tokens_by_source'])}")
        if tasks := fmt_task_scores(m):  # train.eval_tasks: the latest scores
            yield _cell(f"tasks     {tasks}")

    def _event_rows(self) -> Iterator[RenderableType]:
        if self._last_checkpoint is not None:
            yield _cell(f"last checkpoint {self._last_checkpoint}", "green")
        for clock, kind, message in self._events:
            # Wrapped inside the panel, not cut: the end of a line can be what matters.
            line = Text(overflow="fold")
            line.append(f"{clock} ", style="dim")
            line.append(describe_event(message, kind), style=_KIND_STYLE.get(kind, ""))
            yield line
