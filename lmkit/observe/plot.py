"""Charts of a run from its metrics.jsonl: loss (train and val) and learning rate vs step.

With matplotlib (the optional ``plot`` extra) the charts are a PNG; without it they are unicode
text for the terminal, so ``lmkit`` works the same with or without the extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmkit.errors import DataError
from lmkit.observe.jsonl import read_metrics
from lmkit.observe.text import bin_series, column_chart

TEXT_WIDTH = 60  # columns of bars in a text chart
TEXT_HEIGHT = 8  # rows of a text chart


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [s for s, _ in pairs], [float(v) for _, v in pairs]


def plot_metrics(metrics_jsonl: Path, out: Path | None = None) -> Path | str:
    """Chart loss and learning rate against step.

    Args:
        metrics_jsonl: a run's ``metrics.jsonl``.
        out: PNG path (default: ``metrics.png`` beside the jsonl); used only with matplotlib.

    Returns:
        The PNG's path when matplotlib is installed, else the charts as text to print.

    Raises:
        DataError: the file is missing or holds no metric rows.
    """
    metrics_jsonl = Path(metrics_jsonl)
    if not metrics_jsonl.is_file():
        raise DataError(
            f"{metrics_jsonl}: metrics file not found (training writes it to the run directory)"
        )
    rows = read_metrics(metrics_jsonl)
    series = {k: _series(rows, k) for k in ("loss", "val_loss", "lr")}
    if not any(steps for steps, _ in series.values()):
        raise DataError(f"{metrics_jsonl}: no metrics logged yet")
    try:
        import matplotlib
    except ImportError:
        return text_charts(series)
    matplotlib.use("Agg")  # render to a file; no display needed
    return _png(series, out or metrics_jsonl.with_name("metrics.png"))


def _png(series: dict[str, tuple[list[int], list[float]]], out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, height_ratios=(2, 1))
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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


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
