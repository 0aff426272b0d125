"""One writer per output: an OS-level lock that dies with its process, and stale temp clean-up.

A run directory, a tokenizer directory or an encoded ``.bin`` is written by one lmkit process at a
time. The lock is ``fcntl.flock`` on a small file (``msvcrt.locking`` on Windows): the kernel drops
it when the holder exits in any way, SIGKILL and power loss included, so a crash never leaves a
stale lock to delete by hand. The lock file itself is never removed (removing it would let two
processes lock two different files of one name); it holds the holder's pid, host, command and
start time so a refused process can say who has the output.

Holding the lock also proves that every earlier writer of the output is dead, which is what makes
it safe to delete the temp files they left behind (``remove_stale_temps``).

Example:
    >>> with lock_output(Path("data/train.bin"), hint="wait for it or pick another --output"):
    ...     write_the_file()                                    # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from lmkit.errors import LmkitError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

RUN_LOCK = ".lmkit.lock"


class LockHeldError(LmkitError):
    """Another live process holds the lock on this output."""


class OutputLock:
    """An exclusive lock on ``lock_file``, guarding the output named ``what``.

    Args:
        lock_file: the file to lock (created if missing; its parent must exist or be creatable).
        what: the output it guards, as the user knows it (``run directory runs/a``).
        hint: what to do when it is held (``wait for it, or pick another --checkpoint-dir``).
    """

    def __init__(self, lock_file: Path, what: str, hint: str):
        self.lock_file = Path(lock_file)
        self.what = what
        self.hint = hint
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd is not None

    def acquire(self) -> OutputLock:
        """Take the lock without waiting.

        Raises:
            LockHeldError: another process holds it (the message names pid, host and since when).
            LmkitError: the lock file cannot be created (permissions, read-only disk).
        """
        if self._fd is not None:
            return self
        try:
            self.lock_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise LmkitError(f"{self.lock_file}: cannot create the lock for {self.what} ({e.strerror}); fix permissions or pick another output") from None
        if not _try_lock(fd):
            holder = _read_holder(fd)
            os.close(fd)
            raise LockHeldError(f"{self.what} is in use by another lmkit process ({holder}); {self.hint}")
        self._fd = fd
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(["lmkit", *sys.argv[1:3]])}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        except OSError:
            pass  # the lock holds without the note; a refused process then says less about us
        return self

    def release(self) -> None:
        """Give the lock back (also happens when the process exits, however it exits)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # a holder note must never describe a process that let go
        except OSError:
            pass
        _unlock(fd)
        os.close(fd)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_dir(run_dir: Path, hint: str = "wait for it to finish, or pick another --checkpoint-dir") -> OutputLock:
    """The lock of a training run directory (``RUN_DIR/.lmkit.lock``), not yet taken."""
    run_dir = Path(run_dir)
    return OutputLock(run_dir / RUN_LOCK, f"run directory {run_dir}", hint)


def lock_output(path: Path, hint: str = "wait for it to finish, or pick another --output") -> OutputLock:
    """The lock of an output file or directory replaced as a whole (``.NAME.lock`` beside it).

    The lock lives beside the output, not inside it, so replacing a directory by renaming a new
    one into place keeps the lock where every writer looks for it.
    """
    path = Path(path)
    return OutputLock(path.parent / f".{path.name}.lock", str(path), hint)


def remove_stale_temps(directory: Path, prefix: str = ".") -> list[Path]:
    """Delete temp files (``PREFIX*.tmp``, files or directories) that dead writers left in ``directory``.

    Call only while holding the lock of every output whose temps match ``prefix``: the lock is
    what proves their writers are gone. Returns what was removed.
    """
    import shutil

    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for p in entries:
        if not (p.name.startswith(prefix) and p.name.endswith(".tmp")):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass  # someone else's file we may not delete: leave it
    return removed


def fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable across a power cut (best effort: directories cannot
    be opened on Windows, and some file systems refuse to sync them)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:
        return False


def _unlock(fd: int) -> None:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        else:  # pragma: no cover - Windows
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    except OSError:
        pass


def _read_holder(fd: int) -> str:
    """``pid 123 on host, `lmkit train`, since 2026-12-03 10:00:00`` from the lock file's note."""
    try:
        note = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {int(note['pid'])} on {note['host']}, `{note['command']}`, since {note['since']}"
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "holder unknown"
