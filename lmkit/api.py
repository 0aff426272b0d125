"""The Python API: what the CLI calls and what notebooks import.

Example:
    >>> from lmkit.api import resolve_settings, train
    >>> settings = resolve_settings(overrides={"train_data_path": "data/train.bin", "max_iters": 100})
    >>> result = train(settings)            # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from lmkit.observe.base import MultiSink
from lmkit.settings import Settings, resolve_settings, settings_to_yaml
from lmkit.training.trainer import Trainer, TrainResult

__all__ = ["Settings", "TrainResult", "resolve_settings", "settings_to_yaml", "train"]


def train(settings: Settings, sinks: MultiSink | None = None, *, console_sinks: bool = False, is_tty: bool | None = None) -> TrainResult:
    """Train a model as ``settings`` describe.

    Args:
        settings: resolved settings (see ``resolve_settings``).
        sinks: metric sinks to report to; by default none (quiet, for notebooks and tests)
            unless ``console_sinks`` is set.
        console_sinks: build the standard sinks (dashboard or plain lines, metrics.jsonl, W&B)
            from ``settings.logging``, as the CLI does.
        is_tty: force the dashboard (True) or plain lines (False); default: detect.

    Returns:
        ``TrainResult`` with the final step, losses and last checkpoint.

    Raises:
        LmkitError subclasses for bad settings, data or checkpoints.
    """
    from lmkit.observe import make_sinks

    if sinks is None and console_sinks:
        rank0 = int(os.environ.get("RANK", "0")) == 0  # torchrun sets RANK; only rank 0 reports
        sinks = make_sinks(settings.logging, Path(settings.checkpoint.checkpoint_dir), rank0=rank0, is_tty=is_tty)
    trainer = Trainer(settings, sinks)
    try:
        return trainer.run()
    finally:
        trainer.dist.close()
