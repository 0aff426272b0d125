"""Which sinks a run feeds: the one place that decides the files and displays of a run.

Above ``base`` (the ``Sink`` protocol, ``RunInfo``, ``MultiSink``) and every sink module, so
that each sink imports only ``base`` and nothing imports back up.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lmkit.observe.base import MultiSink, Sink
from lmkit.observe.console import ConsoleSink
from lmkit.observe.dashboard import Dashboard
from lmkit.observe.jsonl import JsonlSink
from lmkit.observe.wandb_sink import WandbSink

if TYPE_CHECKING:
    from lmkit.settings import LoggingSettings


def make_sinks(
    logging_settings: LoggingSettings,
    run_dir: Path,
    *,
    rank0: bool = True,
    is_tty: bool | None = None,
) -> MultiSink:
    """The sinks a training process should feed.

    Args:
        logging_settings: the ``logging`` section of the settings.
        run_dir: the run directory (metrics.jsonl and wandb/ go there).
        rank0: False on the other ranks of a multi-GPU run, which log nothing.
        is_tty: whether stderr is an interactive terminal (None: ask stderr itself).

    Returns:
        A ``MultiSink`` of: the live dashboard (``dashboard: rich``, or ``auto`` on a terminal)
        or plain log lines; always metrics.jsonl; W&B when ``wandb`` is on. Empty off rank 0.
    """
    if not rank0:
        return MultiSink()
    if is_tty is None:
        is_tty = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
    mode = logging_settings.dashboard
    live = mode == "rich" or (mode == "auto" and is_tty)
    sinks: list[Sink] = [Dashboard() if live else ConsoleSink(), JsonlSink(run_dir)]
    if logging_settings.wandb:
        sinks.append(WandbSink(
            project=logging_settings.wandb_project,
            name=logging_settings.wandb_name,
            entity=logging_settings.wandb_entity,
            init_timeout=logging_settings.wandb_init_timeout,
        ))
    return MultiSink(sinks)
