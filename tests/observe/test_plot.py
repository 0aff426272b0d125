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
