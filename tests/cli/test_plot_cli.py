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
