from __future__ import annotations

import sys

import pytest

from lmkit.errors import DataError
from lmkit.observe import JsonlSink, plot_metrics


@pytest.fixture
def metrics_file(make_info):
    """A metrics.jsonl of 200 steps: decaying loss, warmup-then-decay lr, a few evals."""
    info = make_info(max_iters=200)
    sink = JsonlSink(info.run_dir)
    sink.start(info)
    for step in range(0, 201, 5):
        sink.log(step, {"loss": 6.0 - step / 50, "lr": min(step, 50) / 50 * 1e-3})
        if step % 50 == 0:
            sink.log(step, {"val_loss": 6.1 - step / 50, "best_val_loss": 6.1 - step / 50})
    sink.event("checkpoint saved: ckpt.pt", "checkpoint")
    sink.close()
    return sink.path


def test_text_chart_without_matplotlib(metrics_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    chart = plot_metrics(metrics_file)
    assert isinstance(chart, str)
    assert "train loss, steps 0..200 (last 2.0000)" in chart
    assert "val loss, steps 0..200 (last 2.1000)" in chart
    assert "learning rate, steps 0..200 (last 1.00e-03)" in chart
    assert "6.0000 ┤" in chart and "█" in chart and "\x1b" not in chart
    assert not metrics_file.with_name("metrics.png").exists()


def test_png_with_matplotlib(metrics_file, tmp_path):
    pytest.importorskip("matplotlib")
    out = plot_metrics(metrics_file, tmp_path / "plots" / "run.png")
    assert out == tmp_path / "plots" / "run.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_or_empty_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        plot_metrics(tmp_path / "metrics.jsonl")
    (tmp_path / "metrics.jsonl").write_text('{"event": "run started at step 0", "kind": "info"}\n')
    with pytest.raises(DataError, match="no metrics"):
        plot_metrics(tmp_path / "metrics.jsonl")


@pytest.mark.parametrize("name", ["curves.txt", "curves"])
def test_text_chart_goes_to_output_without_matplotlib(metrics_file, monkeypatch, tmp_path, name):
    """Issue 19: the text fallback ignored -o."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "plots" / name
    assert plot_metrics(metrics_file, out) == out
    assert "train loss, steps 0..200 (last 2.0000)" in out.read_text(encoding="utf-8")
    assert not list(out.parent.glob(".*.tmp"))


def test_image_output_without_matplotlib_says_why_not(metrics_file, monkeypatch, tmp_path):
    from lmkit.errors import ConfigError

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ConfigError, match=r"--output .*run\.png: a \.png chart needs matplotlib, which is not installed.*\.txt"):
        plot_metrics(metrics_file, tmp_path / "run.png")
    assert not (tmp_path / "run.png").exists()


def test_txt_output_with_matplotlib_is_the_text_chart(metrics_file, tmp_path):
    out = plot_metrics(metrics_file, tmp_path / "c.txt")
    assert "learning rate, steps 0..200" in out.read_text(encoding="utf-8")


def test_bad_output_paths_are_errors_and_leave_nothing(metrics_file, tmp_path):
    from lmkit.errors import ConfigError

    with pytest.raises(ConfigError, match="is a directory"):
        plot_metrics(metrics_file, tmp_path)
    pytest.importorskip("matplotlib")
    with pytest.raises(ConfigError, match=r"matplotlib cannot write \.xyz files"):
        plot_metrics(metrics_file, tmp_path / "c.xyz")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write there"):
        plot_metrics(metrics_file, blocker / "c.png")
    assert not list(tmp_path.glob("**/.*.tmp")) and not (tmp_path / "c.xyz").exists()


def test_png_replaces_the_old_one_whole(metrics_file):
    pytest.importorskip("matplotlib")
    old = metrics_file.with_name("metrics.png")
    old.write_bytes(b"old chart")
    assert plot_metrics(metrics_file) == old and old.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(old.parent.glob(".*.tmp"))


def test_bad_lines_are_reported_and_the_rest_plotted(metrics_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    n = len(metrics_file.read_bytes().splitlines())
    with metrics_file.open("ab") as f:
        f.write(b'{"step": "x", "loss": 1}\n\xff\xfe\n')
    warnings = []
    chart = plot_metrics(metrics_file, warn=warnings.append)
    assert "train loss, steps 0..200" in chart
    assert [w.split(": ", 1)[0] for w in warnings] == [f"{metrics_file}:{n + 1}", f"{metrics_file}:{n + 2}"]
