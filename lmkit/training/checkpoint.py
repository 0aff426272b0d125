"""Checkpoints: self-describing dicts, written atomically, loaded without unpickling code.

Layout of ``checkpoint_dir``:
    ckpt_0001000.pt   every ``checkpoint_interval`` steps (pruned by ``keep_last``)
    latest.pt         a hard link to the newest one (a copy where links are unsupported)

A checkpoint is ``torch.save`` of a dict holding only tensors and plain Python values, so it
loads with ``torch.load(weights_only=True)``: a file carrying a pickled object that would run
code is refused. Each file is written to a temp name, fsynced and renamed, so a crash mid-save
leaves the previous checkpoint whole.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from lmkit import __version__
from lmkit.errors import CheckpointError

FORMAT = "lmkit-checkpoint"
FORMAT_VERSION = 1
LATEST = "latest.pt"


def checkpoint_name(step: int) -> str:
    """``ckpt_0001000.pt`` for step 1000 (zero-padded so names sort by step)."""
    return f"ckpt_{step:07d}.pt"


def _fsync_dir(path: Path) -> None:
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


def save_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same dir, fsync, rename).

    Args:
        state: the checkpoint dict (``format``/``version``/``lmkit_version`` are added).
        path: destination file.

    Returns:
        ``path``.

    Raises:
        CheckpointError: the directory cannot be written or the disk is full; the previous
            file at ``path`` is untouched.
    """
    path = Path(path)
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "lmkit_version": __version__, **state}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise CheckpointError(f"{path.parent}: cannot write checkpoints there ({e.strerror}); fix permissions or pick another --checkpoint-dir") from None
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; checkpoints are meant to be shared/read
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"{path}: checkpoint write failed ({e.strerror}); the previous checkpoint is intact. Free disk space or fix permissions") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def link_latest(ckpt_path: Path) -> Path:
    """Point ``latest.pt`` beside ``ckpt_path`` at it, atomically (hard link, else a copy)."""
    ckpt_path = Path(ckpt_path)
    latest = ckpt_path.parent / LATEST
    tmp = ckpt_path.parent / f".{LATEST}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(ckpt_path, tmp)
    except OSError:
        import shutil

        shutil.copyfile(ckpt_path, tmp)
    os.replace(tmp, latest)
    _fsync_dir(latest.parent)
    return latest


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely.

    Raises:
        CheckpointError: missing, a directory, truncated, not an lmkit checkpoint, written by a
            newer format, or carrying pickled code (refused, never executed).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; pass a checkpoint file such as {path / LATEST}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e).splitlines()[0] if str(e) else "unsupported content"
        if "weights_only" in str(e) or "GLOBAL" in str(e) or "Unsupported" in str(e):
            raise CheckpointError(f"{path}: refused: the file holds pickled objects that could run code ({msg[:120]})") from None
        raise CheckpointError(f"{path}: damaged or not a checkpoint ({msg[:120]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: damaged or truncated checkpoint ({first[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an lmkit checkpoint")
    if int(state.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer lmkit (checkpoint format {state['version']}, this lmkit reads {FORMAT_VERSION}); upgrade lmkit")
    return state


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Step checkpoints in ``checkpoint_dir``, oldest first."""
    return sorted(Path(checkpoint_dir).glob("ckpt_*.pt"))


def prune_checkpoints(checkpoint_dir: Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest ``keep_last`` step checkpoints; returns what was removed."""
    if not keep_last:
        return []
    old = list_checkpoints(checkpoint_dir)[:-keep_last]
    for p in old:
        p.unlink(missing_ok=True)
    return old


def file_digest(path: Path) -> str:
    """sha256 of a file (used to identify tokenizer files and data)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
