"""Human-readable numbers and unicode charts, shared by the dashboard, the log lines and the plot.

Pure functions of their arguments; no rich import, so the plain console sink stays light.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

BLOCKS = "▁▂▃▄▅▆▇█"  # eight heights, lowest first
_EIGHTHS = " ▁▂▃▄▅▆▇█"  # 0..8 eighths of a character cell, for column charts


def fmt_count(x: float) -> str:
    """A count with a k/M/B suffix: ``fmt_count(12345) == "12.3k"``, ``fmt_count(999) == "999"``."""
    if not math.isfinite(x):
        return str(x)
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.1f}{suffix}"
    return f"{x:.0f}"


def fmt_sources(tokens_by_source: dict[str, float]) -> str:
    """Tokens seen per source of a mixture, with shares: ``web 1.2M (70%) · code 500.0k (30%)``."""
    total = sum(tokens_by_source.values()) or 1
    return " · ".join(f"{name} {fmt_count(n)} ({100 * n / total:.0f}%)" for name, n in tokens_by_source.items())


def fmt_task_scores(metrics: dict[str, float]) -> str:
    """In-loop task scores (``tasks/<task>/<metric>`` keys) on one line, '' when there are none.

    Example: ``{"tasks/arc_easy/acc": 0.3125}`` gives ``arc_easy acc 0.3125``.
    """
    parts = [f"{key[len('tasks/'):].replace('/', ' ', 1)} {value:.4f}" for key, value in metrics.items()
             if key.startswith("tasks/") and isinstance(value, (int, float))]
    return " · ".join(parts)


def fmt_duration(seconds: float) -> str:
    """``h:mm:ss`` (``fmt_duration(3725) == "1:02:05"``); ``--:--`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fmt_loss(x: float) -> str:
    """Four decimals, enough to see a loss move late in training."""
    return f"{x:.4f}"


def fmt_lr(x: float) -> str:
    """Scientific, as learning rates are written in configs: ``3.00e-04``."""
    return f"{x:.2e}"


def fmt_percent(fraction: float) -> str:
    """``fmt_percent(0.4123) == "41.2%"``."""
    return f"{100 * fraction:.1f}%"


def eta_seconds(step: int, start_step: int, max_iters: int, elapsed: float) -> float:
    """Seconds left at the average pace since this process started (``nan`` before any progress)."""
    done = step - start_step
    if done <= 0 or elapsed <= 0:
        return float("nan")
    return max(max_iters - step, 0) * elapsed / done


class Pace:
    """Seconds left at the pace of the last few logged windows, for an ETA that forgets stalls.

    The average since start (``eta_seconds``) stays inflated for hours after a slow start (a W&B
    connection that timed out, compilation, the first eval). This uses the trainer's ``step_ms``
    of the most recent log windows instead: that figure already excludes eval and checkpoint
    time, and the first window a process logs (compilation, warm-up) is dropped once a later one
    exists. Without ``step_ms`` it falls back to ``eta_seconds``.

    Example: windows of 900, 10, 10 ms/step: ``Pace().eta(...)`` uses 10 ms/step.
    """

    def __init__(self, window: int = 5):
        self._recent: deque[float] = deque(maxlen=window)
        self._windows = 0

    def update(self, metrics: dict[str, float]) -> None:
        """Take one train log's metrics (only ``step_ms`` is read)."""
        ms = metrics.get("step_ms")
        if ms is None or not math.isfinite(ms) or ms <= 0:
            return
        self._windows += 1
        if self._windows == 2 and len(self._recent) == 1:
            self._recent.clear()  # the first window carried compilation and warm-up
        self._recent.append(ms)

    def eta(self, step: int, start_step: int, max_iters: int, elapsed: float) -> float:
        """Seconds left after ``step`` (``nan`` before any progress)."""
        if not self._recent:
            return eta_seconds(step, start_step, max_iters, elapsed)
        return max(max_iters - step, 0) * sum(self._recent) / len(self._recent) / 1000


def describe_event(message: str, kind: str) -> str:
    """An event as one line that names its kind once.

    Messages usually start with their kind ("checkpoint saved: ...", "resumed at step 5", "stop
    requested ..."); those are shown as they are. Others get the kind as a prefix ("warning: step
    5: non-finite loss ..."), except plain "info".

    Example: ``describe_event("checkpoint saved: x.pt", "checkpoint") == "checkpoint saved: x.pt"``.
    """
    if kind == "info" or message.lower().startswith(kind.lower()):
        return message
    return f"{kind}: {message}"


def best_of(best: float | None, metrics: dict[str, float]) -> float | None:
    """The best validation loss so far: ``best_val_loss`` if the trainer sent it, else the min."""
    if "best_val_loss" in metrics:
        return metrics["best_val_loss"]
    candidates = [v for v in (best, metrics.get("val_loss")) if v is not None and math.isfinite(v)]
    return min(candidates) if candidates else best


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def sparkline(values: Sequence[float], width: int) -> str:
    """The last ``width`` values as one row of block characters, scaled between their min and max.

    Non-finite values show as a space. Example: ``sparkline([1, 2, 3, 4], 4) == "▁▃▆█"``.
    """
    values = list(values)[-width:] if width > 0 else []
    finite = _finite(values)
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(" ")
        elif span == 0:
            out.append(BLOCKS[len(BLOCKS) // 2])
        else:
            out.append(BLOCKS[round((v - lo) / span * (len(BLOCKS) - 1))])
    return "".join(out)


def bin_series(xs: Sequence[float], ys: Sequence[float], width: int) -> list[float]:
    """Average ``ys`` into ``width`` equal bins of ``xs`` (empty bins are ``nan``)."""
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    if not pairs or width <= 0:
        return []
    x0, x1 = pairs[0][0], pairs[-1][0]
    if x1 == x0 or len(pairs) <= width:
        return [y for _, y in pairs]
    sums, counts = [0.0] * width, [0] * width
    for x, y in pairs:
        i = min(int((x - x0) / (x1 - x0) * width), width - 1)
        sums[i] += y
        counts[i] += 1
    return [s / c if c else float("nan") for s, c in zip(sums, counts)]


def column_chart(values: Sequence[float], height: int = 8, label: str = "{:.4g}") -> list[str]:
    """Values as vertical bars ``height`` rows tall (eighth-cell resolution), y labels on the left.

    Returns the rows top first; each row is ``len(values)`` cells plus the label gutter.
    """
    finite = _finite(values)
    if not finite:
        return []
    lo, hi = min(finite), max(finite)
    span = (hi - lo) or 1.0
    # Bar heights in eighths of a cell; the minimum still gets one eighth so it stays visible.
    eighths = [
        0 if not math.isfinite(v) else 1 + round((v - lo) / span * (height * 8 - 1)) for v in values
    ]
    top, bottom = label.format(hi), label.format(lo)
    gutter = max(len(top), len(bottom))
    rows = []
    for r in range(height - 1, -1, -1):  # top row first
        cells = "".join(_EIGHTHS[min(max(e - 8 * r, 0), 8)] for e in eighths)
        tick = top if r == height - 1 else bottom if r == 0 else ""
        rows.append(f"{tick:>{gutter}} ┤{cells}")
    return rows
