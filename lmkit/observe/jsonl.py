"""``run_dir/metrics.jsonl``: every logged metric and event, one JSON object per line.

Lines look like

    {"step": 100, "loss": 3.2154, "lr": 0.0003, "time": 1718000000.1}
    {"event": "checkpoint saved: runs/x/ckpt_0000100.pt", "kind": "checkpoint", "step": 100, ...}

The file is only ever appended to, so a resumed run adds to the same file. A run resumed from an
earlier checkpoint logs some steps again; readers take the last value per step (``read_metrics``
does). Non-finite numbers are written as ``null`` so the file stays strict JSON (``jq`` reads it).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from collections.abc import Iterator
from typing import IO, Any

from lmkit.observe.base import RunInfo

FILENAME = "metrics.jsonl"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlSink:
    """Appends metric rows and events to ``run_dir/metrics.jsonl``, flushing every line."""

    name = "jsonl"

    def __init__(self, run_dir: Path):
        """Create the sink; ``run_dir`` (created at ``start`` if missing) holds metrics.jsonl."""
        self.path = Path(run_dir) / FILENAME
        self._file: IO[str] | None = None
        self._step = 0

    def _write(self, row: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
        self._file.flush()

    def start(self, info: RunInfo) -> None:
        """Open the file for appending and record where this process starts."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._step = info.start_iter
        kind, verb = ("resume", "resumed") if info.resumed else ("info", "started")
        message = f"run {verb} at step {info.start_iter}"
        self._write({"event": message, "kind": kind, "step": info.start_iter, "time": time.time()})

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """``{"step": step, **metrics, "time": unix seconds}``."""
        self._step = step
        self._write({"step": step, **metrics, "time": time.time()})

    def event(self, message: str, kind: str = "info") -> None:
        """``{"event": message, "kind": kind, "step": last step, "time": unix seconds}``."""
        self._write({"event": message, "kind": kind, "step": self._step, "time": time.time()})

    def close(self, status: str = "finished") -> None:
        """Record how the run ended and close the file."""
        self._write({"event": f"run {status}", "kind": "info", "status": status,
                     "step": self._step, "time": time.time()})
        if self._file is not None:
            self._file.close()
            self._file = None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The metric rows of a metrics.jsonl, one merged dict per step, sorted by step.

    Rows for the same step are merged with later lines winning, so values re-logged after a
    resume replace the earlier ones while a step's train and eval rows combine. Event lines and
    a torn last line (a crash mid-write) are skipped.

    Example: lines ``{"step": 1, "loss": 3}``, ``{"step": 1, "val_loss": 4}``, ``{"step": 1,
    "loss": 2}`` give ``[{"step": 1, "loss": 2, "val_loss": 4}]``.
    """
    by_step: dict[int, dict[str, Any]] = {}
    for row in _rows(path):
        if "event" not in row and "step" in row:
            by_step.setdefault(int(row["step"]), {}).update(row)
    return [by_step[s] for s in sorted(by_step)]


def read_events(path: Path) -> list[dict[str, Any]]:
    """The event lines of a metrics.jsonl, in file order."""
    return [row for row in _rows(path) if "event" in row]


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    """Each JSON object line of ``path``; a torn last line (a crash mid-write) is skipped."""
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                yield row
