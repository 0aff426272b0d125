"""`lmkit plot` end to end."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from lmkit.cli.app import app

runner = CliRunner()


def _metrics(run_dir: Path) -> Path:
    run_dir.mkdir(parents=True)
    rows = [{"step": s, "loss": 5.0 - 0.1 * s, "lr": 1e-3} for s in range(1, 21)] + [{"step": 20, "val_loss": 3.5}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def test_plot_writes_png_or_prints_chart(tmp_path: Path):
    run_dir = _metrics(tmp_path / "run")
    r = runner.invoke(app, ["plot", str(run_dir)])
    assert r.exit_code == 0, r.output
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "train loss" in r.stdout and "┤" in r.stdout
    else:
        png = run_dir / "metrics.png"
        assert f"wrote {png}" in r.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_missing_run_is_one_line_error(tmp_path: Path):
    r = runner.invoke(app, ["plot", str(tmp_path / "nope")])
    assert r.exit_code == 2 and r.stderr.startswith("lmkit: error:") and "metrics file not found" in r.stderr


def test_plot_on_a_garbage_file_is_one_line_error(tmp_path: Path):
    """Issue 20: a non-numeric step or non-UTF-8 bytes gave a traceback."""
    bad = tmp_path / "metrics.jsonl"
    bad.write_bytes(b'{"step": "ten", "loss": 1.0}\n\xff\xfe\x00binary\n')
    r = runner.invoke(app, ["plot", str(bad)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.splitlines()[-1].startswith(f"lmkit: error: {bad}: no usable lines (2 bad lines, first {bad}:1: step")
    assert f"lmkit: warning: {bad}:2: not UTF-8 text; line skipped" in r.stderr


def test_plot_skips_bad_lines_with_a_warning(tmp_path: Path):
    run_dir = _metrics(tmp_path / "run")
    with (run_dir / "metrics.jsonl").open("ab") as f:
        f.write(b'{"step": [1], "loss": 2}\n')
    r = runner.invoke(app, ["plot", str(run_dir), "-o", str(tmp_path / "c.txt")])
    assert r.exit_code == 0, r.output
    assert f"lmkit: warning: {run_dir / 'metrics.jsonl'}:22: step [1] is not a whole number >= 0; line skipped" in r.stderr
    assert f"wrote {tmp_path / 'c.txt'}" in r.stdout and "train loss" in (tmp_path / "c.txt").read_text()


def test_plot_text_fallback_writes_output(tmp_path: Path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    run_dir = _metrics(tmp_path / "run")
    r = runner.invoke(app, ["plot", str(run_dir), "-o", str(tmp_path / "chart.txt")])
    assert r.exit_code == 0 and f"wrote {tmp_path / 'chart.txt'}" in r.stdout
    r = runner.invoke(app, ["plot", str(run_dir), "-o", str(tmp_path / "chart.png")])
    assert r.exit_code == 2 and r.stderr.startswith("lmkit: error: --output") and "needs matplotlib" in r.stderr
