"""Writing token files safely: one writer per output, temp file + rename, clean stops.

Every ``.bin`` is written to a temp file beside it (``.NAME.bin.XXXX.tmp``) that is renamed into
place only when complete, under the output's lock (``lmkit.locking``). What can interrupt a
write is handled here: a full disk (an error naming the file), SIGTERM/SIGHUP (turned into an
exception so the temp file is removed), and a writer that died anyway (its temp files are
removed by the next writer, once it holds the lock).
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from lmkit.data.tokens import TokenFileMeta, meta_path, write_meta
from lmkit.errors import DataError, LmkitError
from lmkit.locking import lock_output, remove_stale_temps

_OUTPUT_HINT = "wait for it to finish, or pick another --output"


class EncodeInterrupted(LmkitError):
    """SIGTERM/SIGHUP while writing token files: the partial output was removed."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into an exception while token files are written.

    Their default action kills the process without unwinding, leaving the temp file behind;
    raised as an exception, the ``except`` blocks remove it (SIGINT already raises
    KeyboardInterrupt). Only the main thread can install handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        raise EncodeInterrupted(f"stopped by {name}; the partial output was removed", 128 + signum)

    sigs = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    old = {sig: signal.signal(sig, handler) for sig in sigs}
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def locked_outputs(outputs: list[Path]) -> Iterator[None]:
    """Hold the lock of every output (refusing if another writer has one), then remove the temp
    files that dead writers of those outputs left: holding the lock proves they are dead."""
    with contextlib.ExitStack() as stack:
        for out in outputs:
            stack.enter_context(lock_output(out, hint=_OUTPUT_HINT))
        for out in outputs:
            remove_stale_temps(out.parent, prefix=f".{out.name}.")
            remove_stale_temps(out.parent, prefix=f".{meta_path(out).name}.")
        yield


def prepare_output(output_dir: Path) -> Path:
    """Create ``output_dir`` and check it is writable, so a bad path fails before any work."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=output_dir).close()
    except OSError as e:
        raise DataError(f"{output_dir}: output directory cannot be written ({e.strerror or e})") from None
    return output_dir


def write_error(path: Path, e: OSError) -> DataError:
    return DataError(f"{path}: cannot write ({e.strerror or e}); free space in {path.parent} or pick another --output")


class PartialFile:
    """A temporary file beside ``target`` that becomes ``target`` only on ``commit``.

    Write errors (a full disk, a quota) are raised as ``DataError`` naming ``target``.
    """

    def __init__(self, target: Path):
        self.target = target
        try:
            fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        except OSError as e:
            raise write_error(target, e) from None
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; token files are ordinary readable outputs
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except OSError as e:
            raise write_error(self.target, e) from None

    def commit(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.path, self.target)
        except OSError as e:
            raise write_error(self.target, e) from None

    def commit_to_self(self) -> None:
        """Flush what was written so the temp file can be read back (it stays a temp file)."""
        try:
            self.file.flush()
        except OSError as e:
            raise write_error(self.target, e) from None

    def discard(self) -> None:
        with contextlib.suppress(OSError):  # a full disk also fails the close's flush
            self.file.close()
        self.path.unlink(missing_ok=True)


def write_meta_checked(out: Path, meta: TokenFileMeta) -> None:
    try:
        write_meta(out, meta)
    except OSError as e:
        raise DataError(f"{meta_path(out)}: cannot write ({e.strerror or e}); {out} was written without its "
                        f"metadata: free space in {out.parent} and re-run") from None
