"""Metric sinks the trainer feeds: live dashboard, plain log lines, metrics.jsonl, W&B, plots."""

from lmkit.observe.base import MultiSink, RunInfo, Sink
from lmkit.observe.console import ConsoleSink
from lmkit.observe.dashboard import Dashboard
from lmkit.observe.jsonl import JsonlSink, read_events, read_metrics
from lmkit.observe.plot import plot_metrics
from lmkit.observe.sinks import make_sinks
from lmkit.observe.wandb_sink import WandbSink

__all__ = [
    "ConsoleSink",
    "Dashboard",
    "JsonlSink",
    "MultiSink",
    "RunInfo",
    "Sink",
    "WandbSink",
    "make_sinks",
    "plot_metrics",
    "read_events",
    "read_metrics",
]
