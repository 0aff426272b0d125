"""A run directory belongs to one run: identity in run.json, another run's files set aside, the lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmkit.locking import LockHeldError
from lmkit.training import checkpoint as ckpt
from lmkit.training import rundir


def _old_run(d: Path, run_id: str | None = "old-run", steps=(20, 40, 60)) -> None:
    """A finished run's files in ``d`` (run.json only when ``run_id`` is given)."""
    d.mkdir(parents=True, exist_ok=True)
    for step in steps:
        p = ckpt.save_checkpoint({"iter": step, "run_id": run_id}, d / ckpt.checkpoint_name(step))
        ckpt.link_latest(p)
    for name in ("metrics.jsonl", "settings.yaml", "metrics.png", "nan_report.json"):
        (d / name).write_text("old\n")
    if run_id:
        rundir.write_record(d, rundir.RunRecord(run_id, 0, [ckpt.checkpoint_name(s) for s in steps]))


def test_fresh_run_moves_another_runs_files_aside(tmp_path):
    d = tmp_path / "run"
    _old_run(d)
    (d / "notes.txt").write_text("mine")  # not a run file: stays
    notices = []
    record = rundir.open_run(d, "never", None, notices.append)
    aside = d / "previous" / "old-run"
    assert sorted(p.name for p in aside.iterdir()) == sorted(
        ["ckpt_0000020.pt", "ckpt_0000040.pt", "ckpt_0000060.pt", "ckpt_0000020.pt.sha256", "ckpt_0000040.pt.sha256",
         "ckpt_0000060.pt.sha256", "latest.pt", "latest.pt.sha256", "metrics.jsonl", "settings.yaml", "metrics.png",
         "nan_report.json", "run.json"])
    assert ckpt.load_checkpoint(aside / "latest.pt", validate=False)["iter"] == 60  # moved whole, manifest with it
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt", "previous", "run.json"]
    assert record.run != "old-run" and record.segment == 0 and record.checkpoints == []
    assert json.loads((d / "run.json").read_text())["run"] == record.run
    assert len(notices) == 1 and str(aside) in notices[0]
    # A second fresh run sets this one's files aside too, under its own id; nothing is overwritten.
    (d / "metrics.jsonl").write_text("second\n")
    second = rundir.open_run(d, "never", None, notices.append)
    assert (d / "previous" / record.run / "metrics.jsonl").read_text() == "second\n"
    assert (aside / "metrics.jsonl").read_text() == "old\n" and second.run != record.run


def test_same_label_twice_gets_a_new_folder(tmp_path):
    d = tmp_path / "run"
    _old_run(d, run_id=None, steps=(10,))
    first = rundir.set_aside(d, "x")
    _old_run(d, run_id=None, steps=(10,))
    second = rundir.set_aside(d, "x")
    assert first.name == "x" and second.name == "x-2" and (first / "latest.pt").is_file() and (second / "latest.pt").is_file()
    assert rundir.set_aside(d, "x") is None  # nothing left to move


def test_resume_keeps_the_id_and_counts_segments(tmp_path):
    d = tmp_path / "run"
    _old_run(d)
    rundir.write_record(d, rundir.RunRecord("old-run", 3, ["ckpt_0000060.pt"]))
    notices = []
    # Resumed from an older checkpoint (segment 1) of the same run: still one more than the newest.
    record = rundir.open_run(d, str(d / "ckpt_0000020.pt"), {"run_id": "old-run", "segment": 1}, notices.append)
    assert (record.run, record.segment, record.checkpoints) == ("old-run", 4, ["ckpt_0000060.pt"])
    assert notices == [] and (d / "latest.pt").is_file() and not (d / "previous").exists()


def test_resume_of_another_runs_checkpoint_sets_this_dirs_files_aside(tmp_path):
    d = tmp_path / "run"
    _old_run(d)
    other = tmp_path / "other" / "ckpt_0000010.pt"
    notices = []
    record = rundir.open_run(d, str(other), {"run_id": "other-run", "segment": 0}, notices.append)
    assert (record.run, record.segment) == ("other-run", 1)
    assert (d / "previous" / "old-run" / "latest.pt").is_file() and not (d / "latest.pt").exists()


def test_directory_from_before_run_ids_is_adopted_when_resumed_from(tmp_path):
    d = tmp_path / "run"
    _old_run(d, run_id=None)
    record = rundir.open_run(d, "auto", {"run_id": None, "segment": None}, lambda m: None)
    assert record.segment == 1 and (d / "latest.pt").is_file() and not (d / "previous").exists()
    # Its files are kept but never listed: pruning leaves what it cannot prove is this run's.
    assert record.checkpoints == []


def test_directory_from_before_run_ids_is_set_aside_by_a_fresh_run(tmp_path):
    d = tmp_path / "run"
    _old_run(d, run_id=None)
    rundir.open_run(d, "auto", None, lambda m: None)
    (aside,) = (d / "previous").iterdir()
    assert (aside / "latest.pt").is_file() and not (d / "metrics.jsonl").exists()


def test_record_never_points_pruning_outside_the_run(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "run.json").write_text(json.dumps({"run": "r", "checkpoints": ["../victim.pt", "/etc/passwd", "ckpt_0000001.pt",
                                                                        "ckpt_1.pt.sha256", "settings.yaml"]}))
    assert rundir.read_record(d).checkpoints == ["ckpt_0000001.pt"]
    (tmp_path / "victim.pt").write_text("x")
    assert ckpt.prune_checkpoints(d, 1, ["../victim.pt", "ckpt_0000002.pt"]) == []
    assert (tmp_path / "victim.pt").exists()


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '{"segment": 1}', '{"run": "r", "segment": "x"}'])
def test_unreadable_record_owns_nothing(tmp_path, text):
    d = tmp_path / "run"
    _old_run(d, run_id=None, steps=(10,))
    (d / "run.json").write_text(text)
    assert rundir.read_record(d) is None
    rundir.open_run(d, "never", None, lambda m: None)
    (aside,) = (d / "previous").iterdir()
    assert (aside / "run.json").read_text() == text  # kept as it was, not overwritten


def test_prune_keeps_newest_writes_not_highest_steps(tmp_path):
    d = tmp_path / "run"
    _old_run(d, steps=(10, 20, 30))
    p15 = ckpt.save_checkpoint({"iter": 15}, d / ckpt.checkpoint_name(15))
    (d / "ckpt_0000099.pt").write_bytes(b"copied in by hand")  # not this run's
    removed = ckpt.prune_checkpoints(d, 2, ["ckpt_0000010.pt", "ckpt_0000020.pt", "ckpt_0000030.pt", p15.name])
    assert sorted(p.name for p in removed) == ["ckpt_0000010.pt", "ckpt_0000020.pt"]
    assert sorted(p.name for p in d.glob("ckpt_*.pt")) == ["ckpt_0000015.pt", "ckpt_0000030.pt", "ckpt_0000099.pt"]
    assert not (d / "ckpt_0000010.pt.sha256").exists()


def test_claim_refuses_a_second_holder_and_clears_dead_writers_temps(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    stale = [d / ".ckpt_0000010.pt.abc123.tmp", d / ".latest.pt.4242.tmp", d / ".run.json.x.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    (d / "keep.tmp").write_text("not one of ours")  # no leading dot: not a temp lmkit writes
    lock = rundir.claim_run_dir(d)
    try:
        assert not any(p.exists() for p in stale) and (d / "keep.tmp").exists()
        with pytest.raises(LockHeldError, match=r"run directory .* is in use .*pid \d+ on "):
            rundir.claim_run_dir(d)
    finally:
        lock.release()
    rundir.claim_run_dir(d).release()  # free again once released
