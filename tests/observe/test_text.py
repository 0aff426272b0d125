from __future__ import annotations

import math

import pytest

from lmkit.observe.text import (
    Pace,
    bin_series,
    describe_event,
    column_chart,
    eta_seconds,
    fmt_count,
    fmt_duration,
    sparkline,
)


@pytest.mark.parametrize(
    ("x", "expected"),
    [(0, "0"), (999, "999"), (12_345, "12.3k"), (124_439_808, "124.4M"), (2.5e9, "2.5B")],
)
def test_fmt_count(x, expected):
    assert fmt_count(x) == expected


def test_fmt_duration():
    assert fmt_duration(3725) == "1:02:05"
    assert fmt_duration(math.nan) == "--:--"


def test_eta_is_the_average_pace_since_start():
    # 100 steps done in 50 s since resuming at step 400: 0.5 s/step, 500 steps to go.
    assert eta_seconds(500, 400, 1000, 50.0) == 250.0
    assert math.isnan(eta_seconds(400, 400, 1000, 5.0))


def test_sparkline():
    assert sparkline([1, 2, 3, 4], 4) == "▁▃▆█"
    assert sparkline([1, 2, 3, 4], 2) == "▁█"  # keeps the most recent values
    assert sparkline([5, 5], 10) == "▅▅"
    assert sparkline([1, math.nan, 2], 3) == "▁ █"
    assert sparkline([], 10) == sparkline([1.0], 0) == ""


def test_bin_series_averages_equal_step_ranges():
    assert bin_series([0, 1, 2, 3], [1, 3, 5, 7], 2) == [2.0, 6.0]
    assert bin_series([0, 1], [1, 2], 10) == [1, 2]  # fewer points than columns: unchanged


def test_column_chart_heights():
    rows = column_chart([0.0, 1.0], height=2, label="{:.0f}")
    # Lowest value: one eighth of the bottom row; highest: both rows full.
    assert rows == ["1 ┤ █", "0 ┤▁█"]


def test_pace_forgets_the_first_window_and_older_ones():
    pace = Pace(window=2)
    assert math.isnan(pace.eta(0, 0, 100, 0.0))  # nothing yet: the average's nan
    pace.update({"step_ms": 9000.0})  # compilation
    assert pace.eta(10, 0, 100, 90.0) == 90 * 9.0  # the only window there is
    for ms in (200.0, 100.0, 100.0):
        pace.update({"step_ms": ms})
    assert pace.eta(40, 0, 100, 100.0) == pytest.approx(60 * 0.1)
    assert Pace().eta(50, 0, 100, 25.0) == eta_seconds(50, 0, 100, 25.0)  # no step_ms: average


@pytest.mark.parametrize(
    ("message", "kind", "shown"),
    [
        ("checkpoint saved: x.pt", "checkpoint", "checkpoint saved: x.pt"),
        ("resumed at step 5", "resume", "resumed at step 5"),
        ("stop requested (SIGHUP: terminal closed): saving", "stop", "stop requested (SIGHUP: terminal closed): saving"),
        ("step 3: non-finite loss", "warning", "warning: step 3: non-finite loss"),
        ("Warning: disk nearly full", "warning", "Warning: disk nearly full"),
        ("val loss 3.3012", "eval", "eval: val loss 3.3012"),
        ("hello", "info", "hello"),
    ],
)
def test_describe_event_names_the_kind_once(message, kind, shown):
    assert describe_event(message, kind) == shown
