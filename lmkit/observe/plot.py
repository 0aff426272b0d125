"""Charts of a run from its metrics.jsonl: loss (train and val) and learning rate vs step.

With matplotlib (the optional ``plot`` extra) the charts are a PNG; without it they are unicode
text for the terminal, so ``lmkit`` works the same with or without the extra.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmkit.errors import ConfigError, DataError
from lmkit.observe.jsonl import read_metrics
from lmkit.observe.text import bin_series, column_chart

TEXT_WIDTH = 60  # columns of bars in a text chart
TEXT_HEIGHT = 8  # rows of a text chart
# Suffixes that ask for an image: without matplotlib these are refused rather than filled with text.
_IMAGE_SUFFIXES = {".png", ".svg", ".svgz", ".pdf", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp", ".pgf"}


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return [s for s, _ in pairs], [float(v) for _, v in pairs]


def plot_metrics(metrics_jsonl: Path, out: Path | None = None, warn: Callable[[str], None] | None = None) -> Path | str:
    """Chart loss and learning rate against step.

    Args:
        metrics_jsonl: a run's ``metrics.jsonl``.
        out: where to write the charts. A ``.txt`` file gets the text charts; any other name an
            image in the format its suffix names (PNG without one), which needs matplotlib; without
            matplotlib a name that is not an image's gets the text charts. Default: ``metrics.png``
            beside the jsonl with matplotlib, else the text is returned.
        warn: receives one line per bad line of the file that was skipped.

    Returns:
        The file written, or the charts as text to print (no matplotlib and no ``out``).

    Raises:
        DataError: the file is missing, unreadable or holds no metric rows.
        ConfigError: ``out`` is a directory, cannot be written, or names an image format that
            needs matplotlib (not installed) or that matplotlib does not know.
    """
    metrics_jsonl = Path(metrics_jsonl)
    if not metrics_jsonl.is_file():
        raise DataError(
            f"{metrics_jsonl}: metrics file not found (training writes it to the run directory)"
        )
    out = Path(out) if out is not None else None
    if out is not None and out.is_dir():
        raise ConfigError(f"--output {out}: is a directory; give a file name such as {out / 'metrics.png'}")
    rows = read_metrics(metrics_jsonl, warn)
    series = {k: _series(rows, k) for k in ("loss", "val_loss", "lr")}
    if not any(steps for steps, _ in series.values()):
        raise DataError(f"{metrics_jsonl}: no metrics logged yet")
    if out is not None and out.suffix.lower() == ".txt":
        return _write_text(text_charts(series), out)
    try:
        import matplotlib
    except ImportError:
        if out is None:
            return text_charts(series)
        if out.suffix.lower() in _IMAGE_SUFFIXES:
            raise ConfigError(
                f"--output {out}: a {out.suffix} chart needs matplotlib, which is not installed "
                "(`uv sync --extra plot`); give a .txt file for the text chart, or leave --output out to print it"
            ) from None
        return _write_text(text_charts(series), out)
    matplotlib.use("Agg")  # render to a file; no display needed
    return _png(series, out or metrics_jsonl.with_name("metrics.png"))


def _replace_atomically(out: Path, write: Callable[[str], None]) -> Path:
    """Write ``out`` through a temp file beside it and a rename: a chart being viewed, or a
    failed write, never leaves a half-written file under the name."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    except OSError as e:
        raise ConfigError(f"--output {out}: cannot write there ({e.strerror}); fix permissions or pick another --output") from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a chart is an ordinary readable file
        write(tmp)
        os.replace(tmp, out)
    except OSError as e:
        raise ConfigError(f"--output {out}: cannot write there ({e.strerror}); fix permissions or pick another --output") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


def _write_text(text: str, out: Path) -> Path:
    return _replace_atomically(out, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))


def _png(series: dict[str, tuple[list[int], list[float]]], out: Path) -> Path:
    import matplotlib.pyplot as plt

    fmt = out.suffix.lower().lstrip(".") or "png"
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=(2, 1))
    try:
        if fmt not in fig.canvas.get_supported_filetypes():
            known = ", ".join(sorted(fig.canvas.get_supported_filetypes()))
            raise ConfigError(f"--output {out}: matplotlib cannot write .{fmt} files; use one of {known}, or .txt for the text chart")
        for key, label, style in (("loss", "train", "-"), ("val_loss", "val", "o-")):
            steps, values = series[key]
            if steps:
                ax_loss.plot(steps, values, style, label=label, markersize=3)
        ax_loss.set_ylabel("loss")
        ax_loss.legend()
        ax_loss.grid(alpha=0.3)
        steps, values = series["lr"]
        ax_lr.plot(steps, values, color="tab:green")
        ax_lr.set_ylabel("learning rate")
        ax_lr.set_xlabel("step")
        ax_lr.grid(alpha=0.3)
        fig.tight_layout()
        return _replace_atomically(out, lambda tmp: fig.savefig(tmp, dpi=120, format=fmt))
    finally:
        plt.close(fig)


def text_charts(series: dict[str, tuple[list[int], list[float]]], width: int = TEXT_WIDTH,
                height: int = TEXT_HEIGHT) -> str:
    """Each present series as a column chart, titled with its step range, one after another."""
    blocks = []
    titles = {"loss": "train loss", "val_loss": "val loss", "lr": "learning rate"}
    labels = {"loss": "{:.4f}", "val_loss": "{:.4f}", "lr": "{:.2e}"}
    for key, (steps, values) in series.items():
        if not steps:
            continue
        bars = bin_series(steps, values, width)
        chart = column_chart(bars, height=height, label=labels.get(key, "{:.4g}"))
        gutter = chart[0].index("┤") if chart else 0
        last = labels.get(key, "{:.4g}").format(values[-1])
        title = f"{titles.get(key, key)}, steps {steps[0]}..{steps[-1]} (last {last})"
        blocks.append("\n".join([title, *chart, " " * gutter + "└" + "─" * len(bars)]))
    return "\n\n".join(blocks)
