"""A tokenizer directory is one unit: locked, refused unless --force, swapped whole, read whole."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lmkit.errors import TokenizerError
from lmkit.locking import LockHeldError
from lmkit.tokenizer import Tokenizer, train_bpe
from lmkit.tokenizer import directory as tokdir

TEXT = "the cat sat on the mat; the hat, the bat and the rat sat flat. " * 40
SAMPLE = "the flat rat sat on a hat<|endoftext|>"


@pytest.fixture
def two(tmp_path) -> tuple[Tokenizer, Tokenizer]:
    """Two different tokenizers: the one in place (old) and its replacement (new)."""
    src = tmp_path / "t.txt"
    src.write_text(TEXT)
    old = Tokenizer(*train_bpe(src, 270, ["<|endoftext|>"]), ["<|endoftext|>"])
    new = Tokenizer(*train_bpe(src, 290, ["<|endoftext|>"]), ["<|endoftext|>"])
    assert old.hash != new.hash and old.encode(SAMPLE) != new.encode(SAMPLE)
    return old, new


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.endswith(".tmp"))


def test_second_rename_failing_leaves_the_old_tokenizer_intact(tmp_path, two, monkeypatch):
    old, new = two
    out = tmp_path / "tok"
    old.save(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # old -> backup worked; new -> place fails
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(TokenizerError, match=f"cannot write tokenizer files to {out}: No space left on device"):
        new.save(out, force=True)
    monkeypatch.undo()
    assert len(calls) == 3  # the third put the old directory back
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    loaded = Tokenizer.from_dir(out)
    assert loaded.hash == old.hash and loaded.encode(SAMPLE) == old.encode(SAMPLE)
    assert _leftovers(tmp_path) == []


def test_a_failed_file_write_leaves_the_old_tokenizer_intact(tmp_path, two, monkeypatch):
    old, new = two
    out = tmp_path / "tok"
    old.save(out)
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(TokenizerError, match="Input/output error"):
        new.save(out, force=True)
    monkeypatch.undo()
    assert Tokenizer.from_dir(out).hash == old.hash and _leftovers(tmp_path) == []


KILLER = textwrap.dedent("""
    import os, shutil, sys
    from lmkit.tokenizer import Tokenizer
    source, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    new = Tokenizer.from_dir(source)
    calls = [0]
    def dying(fn):
        def wrapped(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                os._exit(9)  # like SIGKILL: no clean-up, no finally
            return fn(*args, **kwargs)
        return wrapped
    os.rename, os.fsync, shutil.rmtree = dying(os.rename), dying(os.fsync), dying(shutil.rmtree)
    new.save(out, force=True)
    print("finished")
""")


def test_a_writer_killed_at_any_point_leaves_the_old_or_the_new_tokenizer(tmp_path, two):
    old, new = two
    source, out = tmp_path / "source", tmp_path / "work" / "tok"
    new.save(source)
    for kill_at in range(1, 30):
        old.save(out, force=True)
        done = subprocess.run([sys.executable, "-c", KILLER, str(source), str(out), str(kill_at)],
                              capture_output=True, text=True, cwd=Path(__file__).parents[2])
        assert done.returncode in (0, 9), done.stderr
        # A reader sees one tokenizer or the other, whole, even before anyone cleans up.
        seen = Tokenizer.from_dir(out)
        assert seen.hash in (old.hash, new.hash), kill_at
        assert seen.encode(SAMPLE) == (old if seen.hash == old.hash else new).encode(SAMPLE)
        # The next writer (holding the lock, so the dead one is gone) recovers and cleans up.
        new.save(out, force=True)
        assert Tokenizer.from_dir(out).hash == new.hash
        assert _leftovers(out.parent) == [], kill_at
        assert sorted(p.name for p in out.iterdir()) == ["merges.txt", "tokenizer.json", "vocab.json"]
        if done.returncode == 0:
            assert "finished" in done.stdout and kill_at > 5  # every kill point before this one was tried
            break
    else:
        pytest.fail("the writer never finished")


def test_reader_between_the_two_renames_sees_the_old_tokenizer(tmp_path, two):
    old, _ = two
    out = tmp_path / "tok"
    old.save(out)
    os.rename(out, tokdir.backup_path(out))  # where a writer killed mid-swap leaves it
    assert Tokenizer.from_dir(out).hash == old.hash
    old.save(tmp_path / "other")  # an unrelated writer does not touch it
    assert tokdir.backup_path(out).is_dir()


def test_reader_reads_one_directory_even_if_it_is_swapped_mid_read(tmp_path, two, monkeypatch):
    old, new = two
    out = tmp_path / "tok"
    old.save(out)
    new.save(tmp_path / "newtok")
    real_read_at, reads = tokdir._read_at, []

    def read_at(dir_fd, directory, name):
        data = real_read_at(dir_fd, directory, name)
        reads.append(name)
        if len(reads) == 1:  # another writer swaps the directory after the first file was read
            os.rename(out, tmp_path / "gone")
            os.rename(tmp_path / "newtok", out)
        return data

    monkeypatch.setattr(tokdir, "_read_at", read_at)
    assert Tokenizer.from_dir(out).hash == old.hash  # all three files from the directory it opened


def test_existing_tokenizer_is_refused_without_force(tmp_path, two):
    old, new = two
    out = tmp_path / "tok"
    old.save(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(TokenizerError, match=rf"{out}: already holds a tokenizer \(hash {old.hash}, vocab size 270\).*--force"):
        new.save(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    new.save(out, force=True)
    assert Tokenizer.from_dir(out).hash == new.hash


def test_directory_with_other_files_is_never_replaced(tmp_path, two):
    old, _ = two
    out = tmp_path / "data"
    out.mkdir()
    (out / "corpus.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(TokenizerError, match=r"holds files that are not part of a tokenizer \(corpus.txt\)"):
            old.save(out, force=force)
    assert [p.name for p in out.iterdir()] == ["corpus.txt"]
    (out / "corpus.txt").unlink()
    old.save(out)  # an empty directory is fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(TokenizerError, match="exists and is not a directory"):
        old.save(tmp_path / "file")


def test_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path, two):
    old, new = two
    out = tmp_path / "tok"
    with tokdir.claim_output(out) as first:
        with pytest.raises(LockHeldError, match=rf"{out} is in use by another lmkit process \(pid {os.getpid()}"):
            new.save(out)
        first.write(old.serialize())
    assert Tokenizer.from_dir(out).hash == old.hash


def test_stale_temps_of_this_output_only_are_removed(tmp_path, two):
    old, _ = two
    mine = tmp_path / ".tok.lmkit-tok-deadbeef.tmp"
    others = [tmp_path / ".tok.v2.lmkit-tok-deadbeef.tmp", tmp_path / ".tok.v2.lmkit-tok-old.tmp", tmp_path / "notes.tmp"]
    for d in (mine, *others):
        d.mkdir()
        (d / "vocab.json").write_text("{}")
    old.save(tmp_path / "tok")
    assert not mine.exists() and all(d.exists() for d in others)


def test_written_directory_has_ordinary_permissions(tmp_path, two):
    old, _ = two
    umask = os.umask(0o022)
    try:
        old.save(tmp_path / "tok")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "tok").stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "tok").iterdir()} == {0o644}


def test_symlinked_output_is_replaced_where_it_points(tmp_path, two):
    old, new = two
    old.save(tmp_path / "v1")
    (tmp_path / "tok").symlink_to("v1")
    new.save(tmp_path / "tok", force=True)
    assert (tmp_path / "tok").is_symlink() and Tokenizer.from_dir(tmp_path / "v1").hash == new.hash


def test_current_directory_is_never_replaced(tmp_path, two, monkeypatch):
    old, _ = two
    here = tmp_path / "work"
    (here / "sub").mkdir(parents=True)
    for cwd in (here, here / "sub"):
        monkeypatch.chdir(cwd)
        with pytest.raises(TokenizerError, match="is the current directory or holds it"):
            old.save(here)
    assert (here / "sub").is_dir() and not (here / "vocab.json").exists()
