"""Checkpoints: self-describing dicts, written atomically, loaded without unpickling code.

Layout of ``checkpoint_dir``:
    ckpt_0001000.pt   every ``checkpoint_interval`` steps (``keep_last`` prunes only this run's:
                      the run's own list is in run.json, see lmkit/training/rundir.py)
    latest.pt         a hard link to the newest one (a copy where links are unsupported)

    ckpt_0001000.pt.sha256, latest.pt.sha256   manifests: "<sha256> <size>", written last

A checkpoint is ``torch.save`` of a dict holding only tensors and plain Python values, so it
loads with ``torch.load(weights_only=True)``: a file carrying a pickled object that would run
code is refused. Each file is written to a temp name, fsynced and renamed, so a crash mid-save
leaves the previous checkpoint whole. The manifest, hashed while the bytes are written (no second
read), lets a later load tell a damaged file (bit rot, a truncated copy) from a good one.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lmkit import __version__
from lmkit.data.tokens import atomic_write_bytes
from lmkit.errors import CheckpointError
from lmkit.locking import fsync_dir
from lmkit.training.checkpoint_files import describe_non_checkpoint
from lmkit.model.config import ModelConfig
from lmkit.training.checkpoint_state import validate_checkpoint_state

FORMAT = "lmkit-checkpoint"
FORMAT_VERSION = 1
LATEST = "latest.pt"


def checkpoint_name(step: int) -> str:
    """``ckpt_0001000.pt`` for step 1000 (zero-padded so names sort by step)."""
    return f"ckpt_{step:07d}.pt"


class _HashingWriter:
    """File wrapper that hashes what passes through it, so the digest costs no second read."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def manifest_path(path: Path) -> Path:
    """``ckpt_0000100.pt`` -> ``ckpt_0000100.pt.sha256``."""
    return Path(path).with_name(Path(path).name + ".sha256")


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
            writer = _HashingWriter(f)
            torch.save(payload, writer)
            f.flush()
            os.fsync(f.fileno())
        # Drop any manifest of an older file under this name before the new bytes take its place.
        manifest_path(path).unlink(missing_ok=True)
        os.replace(tmp, path)
        atomic_write_bytes(manifest_path(path), f"{writer.sha.hexdigest()} {writer.size}\n".encode())
        fsync_dir(path.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"{path}: checkpoint write failed ({e.strerror}); the previous checkpoint is intact. Free disk space or fix permissions") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def link_latest(ckpt_path: Path) -> Path:
    """Point ``latest.pt`` beside ``ckpt_path`` at it, atomically (hard link, else a copy).

    Raises:
        CheckpointError: the link or copy cannot be made (disk full, permissions); the previous
            ``latest.pt`` is untouched and no temp file is left behind.
    """
    ckpt_path = Path(ckpt_path)
    latest = ckpt_path.parent / LATEST
    tmp = ckpt_path.parent / f".{LATEST}.{os.getpid()}.tmp"
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(ckpt_path, tmp)
        except OSError:
            shutil.copyfile(ckpt_path, tmp)
        manifest_path(latest).unlink(missing_ok=True)
        os.replace(tmp, latest)
        if manifest_path(ckpt_path).exists():
            atomic_write_bytes(manifest_path(latest), manifest_path(ckpt_path).read_bytes())
        fsync_dir(latest.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{latest}: cannot point it at {ckpt_path.name} ({e.strerror}); {ckpt_path} itself is complete. Free disk space or fix permissions") from None
    except BaseException:  # Ctrl-C or SIGTERM mid-copy: no half-copied temp left behind
        tmp.unlink(missing_ok=True)
        raise
    return latest


def verify_checkpoint(path: Path) -> bool | None:
    """Check a checkpoint against its manifest.

    Returns:
        True if it matches, None if there is no manifest (older file, or a copy without one).

    Raises:
        CheckpointError: the size or hash differs from the manifest (the file is damaged).
    """
    path = Path(path)
    man = manifest_path(path)
    if not man.is_file():
        return None
    try:
        digest, size = man.read_text().split()
        size = int(size)
    except ValueError:
        return None  # an unreadable manifest says nothing about the checkpoint itself
    actual = path.stat().st_size
    if actual != size:
        raise CheckpointError(f"{path}: damaged checkpoint: {actual} bytes, its manifest says {size} (truncated or overwritten)")
    if file_digest(path) != digest:
        raise CheckpointError(f"{path}: damaged checkpoint: contents do not match its sha256 manifest")
    return True


def load_checkpoint(
    path: Path, map_location: str | torch.device = "cpu", verify: bool = True, validate: bool = True
) -> dict[str, Any]:
    """Load a checkpoint dict safely and check it before anything is built from it.

    Args:
        path: the checkpoint file.
        map_location: where tensors are loaded.
        verify: check the file against its sha256 manifest first (when it has one).
        validate: check the recorded fields against each other and against the tensors
            (``lmkit.training.checkpoint_state.validate_checkpoint_state``); only ``ckpt
            validate`` turns this off, to report the same problems as separate checks.

    Raises:
        CheckpointError: missing; not a checkpoint (a directory, a token file, a text or
            safetensors file ..., named as such); truncated; not an lmkit checkpoint; written by a
            newer format; carrying pickled objects (refused, never executed); or recording a
            configuration that is out of range or does not fit its tensors.
    """
    path = Path(path)
    if verify and path.is_file():
        verify_checkpoint(path)  # first: a manifest says exactly what is wrong with a damaged copy
    what = describe_non_checkpoint(path)
    if what is not None:
        raise CheckpointError(what)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "GLOBAL" in str(e) or "Unsupported" in str(e):
            raise CheckpointError(_refusal(path, str(e))) from e
        raise CheckpointError(f"{path}: damaged checkpoint: its contents cannot be read as a PyTorch archive; {_RECOVER}") from e
    except Exception as e:  # torch.load raises many types on damaged input (KeyError, RuntimeError, EOFError ...)
        raise CheckpointError(f"{path}: damaged or truncated checkpoint: PyTorch cannot read it ({type(e).__name__}); {_RECOVER}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(_foreign(path, state))
    version = state.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path}: invalid checkpoint: version must be a positive integer, got {version!r}; the file is damaged or was not written by `lmkit train`")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer lmkit (checkpoint format {version}, this lmkit reads {FORMAT_VERSION}); upgrade lmkit")
    if validate:
        validate_checkpoint_state(state, path)
    return state


def checkpoint_file(path: Path | str) -> Path:
    """``path`` itself, or ``path/latest.pt`` when ``path`` is a run directory holding one.

    A directory without ``latest.pt`` is returned as is: loading it then says what it holds.
    """
    path = Path(path)
    return path / LATEST if path.is_dir() and (path / LATEST).is_file() else path


@dataclass
class OpenedCheckpoint:
    """A checkpoint file read safely; ``config`` is set once its fields are checked (``check``)."""

    path: Path  # the file (a run directory resolved to its latest.pt)
    state: dict[str, Any]  # the whole checkpoint dict, tensors on the requested device
    config: ModelConfig | None = field(default=None)

    def check(self) -> ModelConfig:
        """Check the recorded fields against each other and the tensors; sets and returns ``config``.

        Raises:
            CheckpointError: naming the file and the first field at fault
                (see ``lmkit.training.checkpoint_state.validate_checkpoint_state``).
        """
        if self.config is None:
            self.config = validate_checkpoint_state(self.state, self.path)
        return self.config


def open_checkpoint(path: Path | str, map_location: str | torch.device = "cpu", *, check: bool = True) -> OpenedCheckpoint:
    """Read and verify a checkpoint that a model will be built from: the one loader.

    Every path that uses a checkpoint's weights (generate, eval, ``ckpt inspect/export/validate``,
    ``--init-from``, resume) comes through here, so each refuses the same damaged, foreign or
    crafted files with the same message before any tensor is sized by the file's fields.

    Args:
        path: a checkpoint file, or a run directory (its ``latest.pt`` is used).
        map_location: where tensors are loaded.
        check: validate the recorded fields now (``config`` set on return). Only ``ckpt
            validate`` passes False, to report reading and checking as separate results
            (it then calls ``check()`` itself).

    Returns:
        ``OpenedCheckpoint`` with the resolved path, the dict and (when checked) the model config.

    Raises:
        CheckpointError: as ``load_checkpoint`` (missing, damaged against its manifest,
            foreign, newer format, pickled code) and, with ``check``, as ``OpenedCheckpoint.check``.
    """
    path = checkpoint_file(path)
    opened = OpenedCheckpoint(path, load_checkpoint(path, map_location, validate=False))
    if check:
        opened.check()
    return opened


_RECOVER = "copy it again, or use an older ckpt_*.pt of the same run"


def _refusal(path: Path, torch_message: str) -> str:
    # torch's text is long and ends in advice about weights_only=False, which lmkit never
    # uses; name the offending global (when torch says it) and say what happened instead.
    found = re.search(r"GLOBAL ([\w.]+)", torch_message)
    what = f" (it references {found.group(1)})" if found else ""
    return (
        f"{path}: refused: the file holds pickled Python objects{what} that lmkit will not unpickle, because "
        "unpickling can run arbitrary code; it was not loaded and nothing in it ran. lmkit checkpoints hold only "
        "tensors and plain values: use one written by `lmkit train`, or if you trust the file's source, re-save "
        "its tensors as a plain dict"
    )


def _foreign(path: Path, state: Any) -> str:
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return (f"{path}: not an lmkit checkpoint: a bare PyTorch state_dict ({len(state)} tensors) without the model "
                "config, settings and tokenizer record that `lmkit train` writes")
    kind = f"a dict with keys {', '.join(map(str, list(state)[:4]))}" if isinstance(state, dict) else f"a {type(state).__name__}"
    return f"{path}: not an lmkit checkpoint: a PyTorch file holding {kind}; pass a checkpoint written by `lmkit train`"


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Step checkpoints in ``checkpoint_dir``, oldest first."""
    return sorted(Path(checkpoint_dir).glob("ckpt_*.pt"))


def prune_checkpoints(checkpoint_dir: Path, keep_last: int | None, own: Sequence[str]) -> list[Path]:
    """Delete this run's step checkpoints beyond the ``keep_last`` most recently written.

    Args:
        checkpoint_dir: the run directory.
        keep_last: how many of this run's checkpoints to keep (None: keep all).
        own: names of the checkpoints this run wrote, oldest write first (``run.json``'s list);
            the last one is the checkpoint just written. Write order, not step order: a run
            resumed from an older checkpoint must not delete what it just wrote in favour of
            the higher-numbered files it is replacing.

    Returns:
        What was removed. Files not in ``own`` (another run's, or one copied in by hand) are
        never touched, and neither is the newest entry of ``own``.
    """
    if not keep_last or not own:
        return []
    checkpoint_dir = Path(checkpoint_dir)
    removed = []
    for name in list(own)[: -max(keep_last, 1)]:
        if Path(name).name != name or not name.startswith("ckpt_"):
            continue  # only plain step-checkpoint names inside this directory
        p = checkpoint_dir / name
        if p.exists():
            p.unlink(missing_ok=True)
            manifest_path(p).unlink(missing_ok=True)
            removed.append(p)
    return removed


def newest_intact(checkpoint_dir: Path, warn, order: Sequence[str] = ()) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in ``checkpoint_dir`` that loads, trying ``latest.pt`` first.

    Args:
        checkpoint_dir: the run directory.
        warn: receives one line per damaged file, which is then skipped (``--resume auto``'s fallback).
        order: the run's checkpoint names, oldest write first (``run.json``): after a resume from
            an older checkpoint the newest file is the last written, not the highest step.
            Files not listed follow, highest step first.
    """
    checkpoint_dir = Path(checkpoint_dir)
    listed = [checkpoint_dir / n for n in reversed(list(order)) if Path(n).name == n]
    rest = [p for p in list_checkpoints(checkpoint_dir)[::-1] if p not in listed]
    for path in [checkpoint_dir / LATEST, *listed, *rest]:
        if not path.exists():
            continue
        try:
            return path, open_checkpoint(path).state
        except CheckpointError as e:
            warn(f"{e}; trying an older checkpoint")
    return None


def file_digest(path: Path) -> str:
    """sha256 of a file (used to identify tokenizer files and data)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
