"""``lmkit plot``: look at a run's loss and learning-rate curves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lmkit.cli.app import LmkitCommand, app


@app.command("plot", cls=LmkitCommand, epilog="Example:  lmkit plot runs/demo   (PNG with `uv sync --extra plot`, else a terminal chart)")
def plot_cmd(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run directory (holding metrics.jsonl) or the metrics.jsonl itself.")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="File to write: an image (.png, .svg, .pdf; needs matplotlib) or .txt for the text chart. Default: RUN_DIR/metrics.png with matplotlib, else the chart is printed.")] = None,
) -> None:
    """Chart train/validation loss and learning rate from a run's metrics.jsonl."""
    from lmkit import api

    metrics = run_dir / "metrics.jsonl" if run_dir.is_dir() else run_dir
    result = api.plot_metrics(metrics, output, warn=lambda m: typer.echo(f"lmkit: warning: {m}", err=True))
    typer.echo(f"wrote {result}" if isinstance(result, Path) else result)
