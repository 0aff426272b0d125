"""A run directory belongs to one run: its lock, its identity (``run.json``) and its own files.

``RUN_DIR/run.json`` says whose files the directory holds:

    {"run": "20261203-102848-3f9a1c", "segment": 2, "checkpoints": ["ckpt_0000010.pt", ...]}

``run`` is the run's id (a resumed run keeps it; it is also in every checkpoint and on every
metrics.jsonl line); ``segment`` counts the processes that have trained it (0 for the first, +1 at
every resume), so a reader can tell a resumed segment's lines from the ones it supersedes;
``checkpoints`` lists the step checkpoints this run wrote, oldest write first. That list is what
``--keep-last`` prunes, so a run never deletes a file it did not write, and the checkpoint just
written (the last entry) is never the one deleted. Reading it costs one small file, not an unpickle
of every checkpoint.

A fresh run into a directory holding another run's files moves them into
``RUN_DIR/previous/<their run id>/`` first, so two runs never mix in one metrics.jsonl or one
``--keep-last`` window.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmkit.data.tokens import atomic_write_bytes
from lmkit.errors import LmkitError
from lmkit.locking import OutputLock, lock_run_dir, remove_stale_temps

RECORD = "run.json"
PREVIOUS = "previous"
# What a run writes into its directory (wandb/ is left in place: W&B keeps one folder per run id).
_RUN_FILES = ("latest.pt", "latest.pt.sha256", "metrics.jsonl", "settings.yaml", "metrics.png", "nan_report.json", RECORD)
_STEP_CHECKPOINT = re.compile(r"ckpt_\d+\.pt(\.sha256)?")


def new_run_id() -> str:
    """``20261203-102848-3f9a1c``: sortable by start time, unique without coordination."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


@dataclass
class RunRecord:
    """The contents of ``run.json``."""

    run: str
    segment: int = 0
    checkpoints: list[str] = field(default_factory=list)  # step checkpoints this run wrote, oldest write first

    def wrote(self, name: str) -> None:
        """Note that ``name`` was (re)written just now: it becomes the newest entry."""
        self.checkpoints = [n for n in self.checkpoints if n != name] + [name]

    def forget(self, names: list[str]) -> None:
        """Drop pruned checkpoints from the list."""
        self.checkpoints = [n for n in self.checkpoints if n not in set(names)]


def read_record(run_dir: Path) -> RunRecord | None:
    """``run.json`` of ``run_dir``, or None when missing or unreadable (then nothing is known to be ours)."""
    try:
        raw = json.loads((Path(run_dir) / RECORD).read_text(encoding="utf-8"))
        record = RunRecord(str(raw["run"]), int(raw.get("segment", 0)), [str(n) for n in raw.get("checkpoints", [])])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    # Only plain step-checkpoint names: a hand-edited list must never point pruning elsewhere.
    record.checkpoints = [n for n in record.checkpoints if _STEP_CHECKPOINT.fullmatch(n) and not n.endswith(".sha256")]
    return record


def write_record(run_dir: Path, record: RunRecord) -> None:
    """Write ``run.json`` atomically."""
    atomic_write_bytes(Path(run_dir) / RECORD, (json.dumps(asdict(record), indent=1) + "\n").encode())


def run_files(run_dir: Path) -> list[Path]:
    """The files of a run in ``run_dir`` (checkpoints, manifests, metrics, settings, ...)."""
    run_dir = Path(run_dir)
    try:
        entries = list(run_dir.iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if p.name in _RUN_FILES or _STEP_CHECKPOINT.fullmatch(p.name))


def set_aside(run_dir: Path, label: str) -> Path | None:
    """Move another run's files into ``run_dir/previous/<label>/`` (renames: nothing is copied or lost).

    Returns:
        The folder they went to, or None when there was nothing to move.
    """
    files = run_files(run_dir)
    if not files:
        return None
    base = Path(run_dir) / PREVIOUS
    dest, n = base / label, 1
    while dest.exists():
        n += 1
        dest = base / f"{label}-{n}"
    try:
        dest.mkdir(parents=True)
        # run.json last: until it moves, the directory still says whose files are left in it.
        for p in sorted(files, key=lambda p: p.name == RECORD):
            os.replace(p, dest / p.name)
    except OSError as e:
        raise LmkitError(f"{run_dir}: cannot move the previous run's files into {dest} ({e.strerror}); "
                         "fix permissions or pick another --checkpoint-dir") from None
    return dest


def claim_run_dir(run_dir: Path) -> OutputLock:
    """Take the run directory's lock, then delete the temp files its dead writers left behind.

    Raises:
        LockHeldError: another live process trains into ``run_dir`` (the message names it).
    """
    lock = lock_run_dir(run_dir).acquire()
    remove_stale_temps(run_dir)  # the lock proves every earlier writer is gone
    return lock


def open_run(run_dir: Path, resume: str, resumed: dict[str, Any] | None, notice: Callable[[str], None]) -> RunRecord:
    """Decide this run's identity, move another run's files aside, and write ``run.json``.

    Call with the run directory's lock held, before anything else is written there.

    Args:
        run_dir: the run directory.
        resume: ``checkpoint.resume`` (``auto``, ``never`` or a checkpoint path).
        resumed: ``{"run_id": ..., "segment": ...}`` of the checkpoint resumed from (None: a fresh
            run). Older checkpoints carry neither (None values).
        notice: where the one-line notice about moved files goes.

    Returns:
        The record now in ``run.json``: a fresh run gets a new id and segment 0; a resumed run
        keeps the checkpoint's id and counts one more segment.
    """
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    if resumed is None:
        run_id, segment = new_run_id(), 0
    else:
        from_here = resume == "auto" or Path(resume).resolve().parent == run_dir.resolve()
        # A checkpoint from before run ids takes the id of the directory it was resumed from.
        run_id = resumed.get("run_id") or (record.run if record and from_here else None) or new_run_id()
        before = [int(resumed.get("segment") or 0)]
        if record and record.run == run_id:
            before.append(record.segment)
        segment = max(before) + 1
    # Files are this run's when run.json says so, or (without run.json, e.g. written before run ids)
    # when this run resumed from them. Anything else belongs to another run.
    ours = (record.run == run_id) if record else (resumed is not None and from_here)
    if not ours:
        label = record.run if record else time.strftime("%Y%m%d-%H%M%S", time.localtime(_newest_mtime(run_dir)))
        moved = set_aside(run_dir, label)
        if moved is not None:
            notice(f"{run_dir} held another run's files; moved them to {moved} (this run starts its own)")
        record = None
    new = RunRecord(run_id, segment, record.checkpoints if record else [])
    write_record(run_dir, new)
    return new


def _newest_mtime(run_dir: Path) -> float:
    times = []
    for p in run_files(run_dir):
        try:
            times.append(p.stat().st_mtime)
        except OSError:
            pass
    return max(times, default=time.time())
