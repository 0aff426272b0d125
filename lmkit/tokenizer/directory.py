"""A tokenizer directory is written as one unit and read as one.

Runs, token files and checkpoints cite a tokenizer by its hash, so a reader must see the old
tokenizer or the new one, never the new ``vocab.json`` beside the old ``merges.txt``. A writer:

1. takes the lock beside the directory (``lmkit.locking.lock_output``: ``.NAME.lock``), so one
   writer at a time, and refuses a directory that already holds a tokenizer unless ``force``;
2. writes all three files into a fresh ``.NAME.lmkit-tok-XXXXXXXX.tmp`` beside the directory;
3. renames the old directory to ``.NAME.lmkit-tok-old.tmp`` and the new one into its place,
   then deletes the old one.

A writer killed at any point leaves either the directory untouched (steps 1-2) or the old
tokenizer under the backup name (between the two renames of step 3): readers fall back to the
backup while the directory is missing, and the next writer, holding the lock (which proves the
killed writer dead), renames it back and deletes the leftovers. A reader opens the directory once
and reads the three files through that handle, so a swap in the middle of a read cannot mix them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from pathlib import Path

from lmkit.errors import TokenizerError
from lmkit.locking import OutputLock, fsync_dir, lock_output, remove_stale_temps
from lmkit.tokenizer import files

# Temp names carry this tag so clean-up never touches another output's temps ("tok" vs "tok.v2").
TEMP_TAG = "lmkit-tok"


def backup_path(directory: Path) -> Path:
    """Where the old tokenizer sits between the two renames of a replacement."""
    directory = Path(directory)
    return directory.parent / f".{directory.name}.{TEMP_TAG}-old.tmp"


class TokenizerOutput:
    """A tokenizer directory claimed for writing: locked, recovered, checked replaceable.

    Use as a context manager (``claim_output``): entering takes the lock and checks; ``check()``
    runs the same checks without the lock, so a command can refuse before spending any time.

    Args:
        directory: The tokenizer directory to (re)write.
        force: Replace a directory that already holds a tokenizer.
    """

    def __init__(self, directory: Path, *, force: bool = False):
        self.directory = Path(directory)
        # Operate on the real location: a symlinked output is replaced where it points, and two
        # writers naming it differently still take the same lock.
        self.real = Path(os.path.realpath(self.directory))
        self.force = force
        self.lock: OutputLock = lock_output(self.real, hint="wait for it to finish, or pick another --output")

    def check(self) -> None:
        """Refuse now what entering would refuse, without creating or locking anything.

        Lets a caller refuse before spending time; entering checks again under the lock.
        """
        if self.real.exists() and not self.real.is_dir():
            raise TokenizerError(f"{self.directory}: exists and is not a directory; pick another --output")
        self._check_replaceable()

    def __enter__(self) -> TokenizerOutput:
        if self.real.exists() and not self.real.is_dir():
            raise TokenizerError(f"{self.directory}: exists and is not a directory; pick another --output")
        try:
            self.real.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TokenizerError(f"cannot write tokenizer files to {self.directory}: {e.strerror or e}") from None
        self.lock.acquire()
        try:
            try:
                self._recover()
            except OSError as e:
                raise TokenizerError(f"{self.directory}: cannot restore it from an interrupted write ({e.strerror or e}); fix permissions") from None
            self._check_replaceable()
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()

    def _recover(self) -> None:
        # We hold the lock, so every earlier writer is dead. One killed between its two renames
        # left the old tokenizer under the backup name: put it back before deleting leftovers.
        backup = backup_path(self.real)
        if backup.is_dir() and not os.path.lexists(self.real):
            os.rename(backup, self.real)
        remove_stale_temps(self.real.parent, prefix=f".{self.real.name}.{TEMP_TAG}-")

    def _check_replaceable(self) -> None:
        if not self.real.is_dir():
            return
        cwd = Path(os.path.realpath(os.getcwd()))
        if cwd == self.real or self.real in cwd.parents:
            # Replacing it would leave the shell in a deleted directory.
            raise TokenizerError(
                f"{self.directory}: is the current directory or holds it; a tokenizer directory is replaced "
                "as a whole, so pick a directory of its own, e.g. --output tok/"
            )
        try:
            entries = sorted(p.name for p in self.real.iterdir())
        except OSError as e:
            raise TokenizerError(f"{self.directory}: cannot list it ({e.strerror or e}); fix permissions or pick another --output") from None
        if not entries:
            return
        foreign = [n for n in entries if n not in files.TOKENIZER_FILES]
        if foreign:
            shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
            raise TokenizerError(
                f"{self.directory}: holds files that are not part of a tokenizer ({shown}); a tokenizer "
                "directory is replaced as a whole, so pick an empty or new --output"
            )
        if not self.force:
            raise TokenizerError(
                f"{self.directory}: already holds a tokenizer{_describe(self.real)}, which runs, token files "
                "and checkpoints may refer to; pass --force to replace it, or pick another --output"
            )

    def write(self, contents: dict[str, bytes]) -> None:
        """Write the files as one unit: all of them appear at once, or none do.

        Args:
            contents: file name -> bytes (``files.serialize``).

        Raises:
            TokenizerError: the files cannot be written (disk full, permissions); the directory
                is then as it was.
        """
        if not self.lock.held:
            raise RuntimeError("TokenizerOutput.write called outside its `with` block")
        parent, name = self.real.parent, self.real.name
        temp = parent / f".{name}.{TEMP_TAG}-{secrets.token_hex(4)}.tmp"
        try:
            os.mkdir(temp)  # mode 0o777 less the umask: like any directory the user makes
            try:
                for file_name, data in contents.items():
                    _write_file(temp / file_name, data)
                fsync_dir(temp)
                self._swap(temp)
            finally:
                if os.path.lexists(temp):
                    shutil.rmtree(temp, ignore_errors=True)
        except OSError as e:
            raise TokenizerError(f"cannot write tokenizer files to {self.directory}: {e.strerror or e}") from None

    def _swap(self, temp: Path) -> None:
        if not os.path.lexists(self.real):
            os.rename(temp, self.real)
            fsync_dir(self.real.parent)
            return
        backup = backup_path(self.real)
        os.rename(self.real, backup)
        try:
            os.rename(temp, self.real)
        except BaseException:
            os.rename(backup, self.real)  # a failed write leaves the old tokenizer as it was
            raise
        fsync_dir(self.real.parent)
        # Renamed away before deletion, so a deletion cut short never leaves a partial
        # directory under the backup name that readers fall back to.
        trash = self.real.parent / f".{self.real.name}.{TEMP_TAG}-{secrets.token_hex(4)}.tmp"
        try:
            os.rename(backup, trash)
        except OSError:
            return  # the new tokenizer is in place; the next writer deletes the leftover
        shutil.rmtree(trash, ignore_errors=True)


def claim_output(directory: Path, *, force: bool = False) -> TokenizerOutput:
    """Claim a tokenizer directory for writing (see ``TokenizerOutput``); use with ``with``.

    Raises (on entry):
        TokenizerError: the directory already holds a tokenizer and ``force`` is false, holds
            other files, is a file, or cannot be created.
        LockHeldError: another lmkit process is writing it.
    """
    return TokenizerOutput(directory, force=force)


def _describe(directory: Path) -> str:
    # " (hash sha256:..., vocab size N)" from its tokenizer.json, when that is readable.
    try:
        meta = files.read_meta(directory / files.META_FILE)
    except TokenizerError:
        return ""
    parts = [f"hash {meta['hash']}" if meta.get("hash") else "", f"vocab size {meta['vocab_size']}" if meta.get("vocab_size") else ""]
    shown = ", ".join(p for p in parts if p)
    return f" ({shown})" if shown else ""


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_dir(directory: Path) -> tuple[Path, dict[str, bytes | None]]:
    """Read a tokenizer directory's files as one unit.

    Args:
        directory: The tokenizer directory.

    Returns:
        The directory actually read (the backup, while a replacement is between its renames)
        and file name -> bytes for each of ``files.TOKENIZER_FILES`` (``None``: absent).

    Raises:
        TokenizerError: the directory is missing or is not a directory, a file is unreadable,
            not a regular file, or too large.
    """
    directory = Path(directory)
    # The backup stands in only while the directory is missing; then look again, in case the
    # writer finished (and deleted the backup) in between.
    for candidate in (directory, backup_path(directory), directory):
        try:
            fd = os.open(candidate, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            raise TokenizerError(f"{directory}: not a directory; pass the tokenizer directory from `lmkit tokenize train`") from None
        except OSError as e:
            if os.name == "nt" and candidate.is_dir():  # pragma: no cover - no directory handles on Windows
                return candidate, {name: _read_by_path(candidate / name) for name in files.TOKENIZER_FILES}
            raise TokenizerError(f"{directory}: cannot open the tokenizer directory ({e.strerror or e})") from None
        try:
            return candidate, {name: _read_at(fd, candidate, name) for name in files.TOKENIZER_FILES}
        finally:
            os.close(fd)
    raise TokenizerError(f"{directory}: tokenizer directory not found")


def _read_at(dir_fd: int, directory: Path, name: str) -> bytes | None:
    path = directory / name
    try:
        # O_NONBLOCK: opening a FIFO would otherwise wait for a writer (regular files ignore it).
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0), dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TokenizerError(f"{path}: not a regular file; a tokenizer directory holds {', '.join(files.TOKENIZER_FILES)}")
        if st.st_size > files.MAX_FILE_BYTES:
            raise TokenizerError(f"{path}: {st.st_size:,} bytes is too large for a tokenizer file (limit {files.MAX_FILE_BYTES:,})")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        try:
            return f.read()
        except OSError as e:
            raise TokenizerError(f"{path}: cannot read it ({e.strerror or e})") from None


def _read_by_path(path: Path) -> bytes | None:  # pragma: no cover - Windows
    return path.read_bytes() if path.is_file() else None
