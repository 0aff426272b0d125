"""``run_dir/metrics.jsonl``: every logged metric and event, one JSON object per line.

Lines look like

    {"step": 100, "loss": 3.2154, "lr": 0.0003, "time": 1718000000.1}
    {"event": "checkpoint saved: runs/x/ckpt_0000100.pt", "kind": "checkpoint", "step": 100, ...}

Every line written by the trainer also carries ``"run"`` (the run id of run.json) and
``"segment"`` (0 for the run's first process, +1 at every resume). The file is only ever appended
to, so a resumed run adds to the same file (a fresh run's trainer moves an older run's file aside
first). The readers return one history: only the newest run's lines; when a segment starts at
step N (resumed from the checkpoint of step N), older segments' lines beyond N are dropped, since
the new segment re-trains those steps; for a step logged twice, the later line's values win.
Non-finite numbers are written as ``null`` so the file stays strict JSON (``jq`` reads it).

The readers check every line (a file edited by hand, a torn write, stray bytes): a bad line is
skipped and, when ``warn`` is given, reported as ``FILE:LINE: why``; a file with bad lines and
nothing usable is a ``DataError``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from lmkit.errors import DataError
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
        self._identity: dict[str, Any] = {}  # {"run": id, "segment": n} on every line, once known

    def _write(self, row: dict[str, Any]) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps({**{k: _clean(v) for k, v in row.items()}, **self._identity}) + "\n")
        self._file.flush()

    def start(self, info: RunInfo) -> None:
        """Open the file for appending and record where this process starts."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._step = info.start_iter
        if info.run_id is not None:
            self._identity = {"run": info.run_id, "segment": info.segment}
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


def read_metrics(path: Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The metric rows of a metrics.jsonl's newest run, one merged dict per step, sorted by step.

    Rows for the same step are merged with later lines winning, so values re-logged after a
    resume replace the earlier ones while a step's train and eval rows combine. Event lines, bad
    lines and a torn last line (a crash mid-write) are skipped; non-finite values read as None.

    Example: lines ``{"step": 1, "loss": 3}``, ``{"step": 1, "val_loss": 4}``, ``{"step": 1,
    "loss": 2}`` give ``[{"step": 1, "loss": 2, "val_loss": 4}]``.

    Args:
        path: the metrics.jsonl.
        warn: receives one line per bad line skipped (``FILE:LINE: why``), at most a few plus a count.

    Raises:
        DataError: the file cannot be read, or none of its lines is usable.
    """
    by_step: dict[int, dict[str, Any]] = {}
    for row in _history(path, warn):
        if "event" not in row and "step" in row:
            by_step.setdefault(row["step"], {}).update(row)
    return [by_step[s] for s in sorted(by_step)]


def read_events(path: Path, warn: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """The event lines of a metrics.jsonl's newest run, in file order (same rules as ``read_metrics``)."""
    return [row for row in _history(path, warn) if "event" in row]


MAX_LINE = 1 << 20  # a longer "line" is not something lmkit wrote (a binary file, a missing newline)
_SHOWN = 5  # bad lines reported one by one; the rest are counted
_TEXT_KEYS = {"event": str, "kind": str, "status": str, "run": str}


def _history(path: Path, warn: Callable[[str], None] | None) -> list[dict[str, Any]]:
    """The newest run's lines, older segments' superseded lines dropped, in file order.

    Raises:
        DataError: the file cannot be read, or it has bad lines and not one usable line.
    """
    kept: list[dict[str, Any]] = []
    run = segment = None
    problems: list[str] = []
    usable = 0
    for row in _rows(Path(path), problems):
        usable += 1
        if "run" in row:
            if run is not None and row["run"] != run:
                kept = []  # another run's lines were appended: only the newest run counts
            run = row["run"]
        if "segment" in row and row["segment"] != segment:
            # A segment's first line is its start, at the step it resumed from: what older
            # segments logged beyond that step was trained again (or abandoned), not history.
            start = row.get("step")
            if isinstance(start, int):
                kept = [r for r in kept if not (isinstance(r.get("step"), int) and r["step"] > start)]
            segment = row["segment"]
        kept.append(row)
    if warn is not None:
        for line in problems[:_SHOWN]:
            warn(f"{line}; line skipped")
        if len(problems) > _SHOWN:
            warn(f"{path}: {len(problems) - _SHOWN} more bad lines skipped")
    if problems and not usable:
        n = len(problems)
        raise DataError(f"{path}: no usable lines ({n} bad line{'s' * (n != 1)}, first {problems[0]}); is this an lmkit metrics.jsonl?")
    return kept


def _rows(path: Path, problems: list[str]) -> Iterator[dict[str, Any]]:
    """Each valid JSON object line of ``path``; each bad one appends ``FILE:LINE: why`` to ``problems``.

    A torn last line (no newline: a crash mid-write) is skipped without a report.
    """
    try:
        f = path.open("rb")
    except OSError as e:
        raise DataError(f"{path}: cannot read the metrics file ({e.strerror})") from None
    with f:
        lineno = 0
        while True:
            try:
                raw = f.readline(MAX_LINE)
            except OSError as e:
                raise DataError(f"{path}: cannot read the metrics file ({e.strerror})") from None
            if not raw:
                return
            lineno += 1
            if len(raw) == MAX_LINE and not raw.endswith(b"\n"):
                while (more := f.readline(MAX_LINE)) and not more.endswith(b"\n"):
                    pass  # skip the rest of the over-long line
                problems.append(f"{path}:{lineno}: longer than {MAX_LINE} bytes")
                continue
            if not raw.strip():
                continue
            torn = not raw.endswith(b"\n")
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                problems.append(f"{path}:{lineno}: not UTF-8 text")
                continue
            except (ValueError, RecursionError):  # bad JSON, an int too long to parse, absurd nesting
                if not torn:
                    problems.append(f"{path}:{lineno}: not valid JSON")
                continue
            why = _check(row)
            if why:
                problems.append(f"{path}:{lineno}: {why}")
                continue
            yield row


def _check(row: Any) -> str | None:
    """Why ``row`` is not a usable line (None if it is); normalises it in place.

    ``step`` must be a whole number >= 0 (an integral float such as 10.0 is accepted), required on
    metric lines; ``segment`` a whole number; text fields text. Metric values that are not finite
    numbers (NaN, inf, a string) read as None.
    """
    if not isinstance(row, dict):
        return "not a JSON object"
    for key in ("step", "segment"):
        if key not in row:
            continue
        value = row[key]
        if isinstance(value, float) and value.is_integer():
            value = row[key] = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{key} {json.dumps(value)[:40]} is not a whole number >= 0"
    for key, kind in _TEXT_KEYS.items():
        if key in row and not isinstance(row[key], kind):
            return f"{key} {json.dumps(row[key])[:40]} is not text"
    if "event" not in row:
        if "step" not in row:
            return "a metric line without a step"
        for key, value in row.items():
            if key in ("step", "segment") or key in _TEXT_KEYS:
                continue
            if isinstance(value, dict):  # e.g. tokens_by_source: {name: count}
                row[key] = {str(k): v for k, v in value.items()
                            if not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)}
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                row[key] = None
    return None
