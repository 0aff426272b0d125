"""One writer per output: the lock is refused to a second live process and dies with the first."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from lmkit.locking import LockHeldError, lock_output, lock_run_dir, remove_stale_temps

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from lmkit.locking import lock_run_dir
    lock = lock_run_dir(Path(sys.argv[1])).acquire()
    print("held", flush=True)
    time.sleep(60)
    """
)


def _holder(run_dir):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_second_process_is_refused_with_the_holder_named(tmp_path):
    p = _holder(tmp_path / "run")
    try:
        with pytest.raises(LockHeldError, match=rf"run directory .*run is in use .*pid {p.pid} on .*since"):
            lock_run_dir(tmp_path / "run").acquire()
    finally:
        p.kill()
        p.wait()
    # SIGKILL leaves no stale lock: the kernel dropped it with the process.
    with lock_run_dir(tmp_path / "run") as lock:
        assert lock.held


def test_release_lets_the_next_writer_in(tmp_path):
    first = lock_output(tmp_path / "train.bin").acquire()
    first.release()
    with lock_output(tmp_path / "train.bin") as second:
        assert second.held
    assert (tmp_path / ".train.bin.lock").exists()


def test_stale_temps_are_removed_only_with_their_prefix(tmp_path):
    (tmp_path / ".train.bin.abc.tmp").write_bytes(b"x")
    (tmp_path / ".tok.xyz.tmp").mkdir()
    (tmp_path / "train.bin").write_bytes(b"keep")
    removed = remove_stale_temps(tmp_path, prefix=".train.bin.")
    assert [p.name for p in removed] == [".train.bin.abc.tmp"]
    assert (tmp_path / ".tok.xyz.tmp").exists() and (tmp_path / "train.bin").exists()
    assert {p.name for p in remove_stale_temps(tmp_path)} == {".tok.xyz.tmp"}
