"""Faults inflicted on purpose: kills mid-save, signals, damaged files, full disks, OOM, NaN."""

from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmkit.api import resolve_settings, train
from lmkit.errors import CheckpointError, TrainingError
from lmkit.observe import ConsoleSink, MultiSink, read_events
from lmkit.training import checkpoint as ckpt
from lmkit.training.trainer import Trainer

def _save_forever(d: Path, conn) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    written: list[str] = []  # this saver's checkpoints, oldest write first (run.json's list)
    for i in range(1, 10_000):
        state = {"iter": i, "model": {"w": torch.full((1 << 21,), float(i))}}  # 8 MB a save
        p = ckpt.save_checkpoint(state, d / ckpt.checkpoint_name(i))
        ckpt.link_latest(p)
        written = [n for n in written if n != p.name] + [p.name]
        removed = ckpt.prune_checkpoints(d, 2, written)
        written = [n for n in written if d / n not in removed]
        conn.send(i)


def test_sigkill_during_checkpoint_writes_never_loses_latest(tmp_path: Path):
    import multiprocessing as mp

    # fork: a child per kill without re-importing torch, so many kills stay cheap.
    ctx = mp.get_context("fork")
    rng = random.Random(0)
    d = tmp_path / "ckpts"
    for rep in range(25):
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_save_forever, args=(d, send))
        proc.start()
        assert recv.poll(60), "saver child made no progress"
        recv.recv()  # at least one complete save before the first kill
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()  # SIGKILL: no cleanup handlers run
        proc.join()
        # verifies against the manifest too; validate=False: this toy state is no model checkpoint
        state = ckpt.load_checkpoint(d / ckpt.LATEST, validate=False)
        assert torch.all(state["model"]["w"] == float(state["iter"]))
        assert ckpt.verify_checkpoint(d / ckpt.LATEST) in (True, None)


def _train_cmd(overrides: dict) -> list[str]:
    args = [sys.executable, "-m", "lmkit", "train"]
    for k, v in overrides.items():
        args += [f"--{k}" if not isinstance(v, bool) else (f"--{k}" if v else f"--no-{k.replace('_', '-')}")]
        if not isinstance(v, bool):
            args.append(str(v))
    return args


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t < timeout
        time.sleep(0.05)


def test_sigkill_during_training_then_resume_completes(tiny_overrides):
    rng = random.Random(1)
    o = dict(tiny_overrides, max_iters=100000, lr_decay_iters=100000, checkpoint_interval=2, log_interval=2)
    run_dir = Path(o["checkpoint_dir"])
    for rep in range(3):
        proc = subprocess.Popen(_train_cmd(o), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(run_dir / "latest.pt", proc)
        time.sleep(rng.uniform(0.2, 1.5))
        proc.kill()
        proc.wait()
        state = ckpt.load_checkpoint(run_dir / "latest.pt")
        step = state["iter"]
        result = train(resolve_settings(overrides=dict(o, max_iters=step + 2), environ={}))
        assert result.step == step + 2


def test_second_train_into_a_running_run_dir_is_refused_and_a_kill_leaves_no_stale_lock(tiny_overrides):
    """Issue 20: two `lmkit train` into one directory both ran. The second is refused naming the
    first; SIGKILL of the first leaves nothing to clean by hand (the next run starts, and deletes
    the temp files dead writers left)."""
    o = dict(tiny_overrides, max_iters=100000, lr_decay_iters=100000, checkpoint_interval=2, log_interval=2)
    run_dir = Path(o["checkpoint_dir"])
    first = subprocess.Popen(_train_cmd(o), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(run_dir / "latest.pt", first)
        first_run = ckpt.load_checkpoint(run_dir / "latest.pt")["run_id"]
        second = subprocess.run(_train_cmd(dict(o, resume="never")), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr
        errors = [line for line in second.stderr.splitlines() if line.startswith("lmkit: error:")]
        assert len(errors) == 1 and "Traceback" not in second.stderr
        assert f"run directory {run_dir} is in use by another lmkit process (pid {first.pid} on " in errors[0]
        assert "since" in errors[0] and "--checkpoint-dir" in errors[0]
        assert first.poll() is None  # the first run goes on, its files untouched
        assert not (run_dir / "previous").exists()
    finally:
        first.kill()
        first.wait()
    dead = run_dir / ".ckpt_0000099.pt.k1ll3d.tmp"
    dead.write_bytes(b"half a checkpoint")
    step = ckpt.load_checkpoint(run_dir / "latest.pt")["iter"]
    assert train(resolve_settings(overrides=dict(o, max_iters=step + 1), environ={})).step == step + 1
    assert not dead.exists() and not list(run_dir.glob("*.tmp"))
    assert ckpt.load_checkpoint(run_dir / "latest.pt")["run_id"] == first_run  # resumed: same run


@pytest.mark.parametrize("fault", [KeyboardInterrupt, OSError(28, "No space left on device")])
def test_interrupted_link_latest_leaves_no_temp_and_keeps_latest(tmp_path, monkeypatch, fault):
    d = tmp_path / "run"
    ckpt.link_latest(ckpt.save_checkpoint({"iter": 1}, d / ckpt.checkpoint_name(1)))
    p2 = ckpt.save_checkpoint({"iter": 2}, d / ckpt.checkpoint_name(2))

    def replace(src, dst):
        raise fault

    monkeypatch.setattr(ckpt.os, "replace", replace)
    expected = (KeyboardInterrupt, None) if fault is KeyboardInterrupt else (CheckpointError, "latest.pt: cannot point it at ckpt_0000002.pt")
    with pytest.raises(expected[0], match=expected[1]):
        ckpt.link_latest(p2)
    monkeypatch.undo()
    assert not list(d.glob(".*.tmp"))
    assert ckpt.load_checkpoint(d / ckpt.LATEST, verify=False, validate=False)["iter"] == 1


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_signal_finishes_step_saves_and_exits(tiny_overrides, sig, code):
    o = dict(tiny_overrides, max_iters=100000, lr_decay_iters=100000, checkpoint_interval=100000, log_interval=1)
    run_dir = Path(o["checkpoint_dir"])
    proc = subprocess.Popen(_train_cmd(o), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(run_dir / "metrics.jsonl", proc)
    time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "interrupted at step" in err and "Traceback" not in err
    state = ckpt.load_checkpoint(run_dir / "latest.pt")
    assert state["iter"] > 0
    assert f"ckpt_{state['iter']:07d}.pt" in err
    events = [e["event"] for e in read_events(run_dir / "metrics.jsonl")]
    assert any(e.startswith("stop requested") for e in events) and events[-1] == "run interrupted"


def test_damaged_latest_falls_back_to_newest_intact(tiny_overrides):
    train(resolve_settings(overrides=dict(tiny_overrides, max_iters=20, checkpoint_interval=5), environ={}))
    run_dir = Path(tiny_overrides["checkpoint_dir"])
    latest = run_dir / "latest.pt"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte in the middle: only the hash can tell
    latest.unlink()  # break the hard link so ckpt_0000020.pt stays as it was
    latest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        ckpt.load_checkpoint(latest)
    notices = []
    trainer = Trainer(resolve_settings(overrides=dict(tiny_overrides, max_iters=22), environ={}), notice=notices.append)
    assert trainer.step == 20  # ckpt_0000020.pt is intact
    assert any("damaged" in n for n in notices)


def test_truncated_and_foreign_files_are_clear_errors(tmp_path: Path, tiny_overrides):
    train(resolve_settings(overrides=tiny_overrides, environ={}))
    good = Path(tiny_overrides["checkpoint_dir"]) / "ckpt_0000020.pt"
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(CheckpointError, match="damaged|truncated"):
        ckpt.load_checkpoint(cut)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not an lmkit checkpoint"):
        ckpt.load_checkpoint(foreign)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        ckpt.load_checkpoint(text)


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/lmkit-pwned",))


def test_malicious_pickle_is_refused(tmp_path: Path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "lmkit-checkpoint", "version": 1, "model": Exploit()}, evil)
    Path("/tmp/lmkit-pwned").unlink(missing_ok=True)
    with pytest.raises(CheckpointError, match="refused"):
        ckpt.load_checkpoint(evil)
    assert not Path("/tmp/lmkit-pwned").exists()


def test_disk_full_is_an_error_and_keeps_old_checkpoint(tiny_overrides, monkeypatch):
    train(resolve_settings(overrides=dict(tiny_overrides, max_iters=10), environ={}))
    latest = Path(tiny_overrides["checkpoint_dir"]) / "latest.pt"
    before = latest.read_bytes()

    def full(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(CheckpointError, match="No space left on device"):
        train(resolve_settings(overrides=dict(tiny_overrides, max_iters=20), environ={}))
    assert latest.read_bytes() == before
    assert not list(latest.parent.glob(".*.tmp"))  # no temp file left behind


def test_out_of_memory_names_the_settings_to_lower(tiny_overrides, monkeypatch):
    import lmkit.training.loss as loss_mod

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loss_mod, "lm_loss", oom)
    with pytest.raises(TrainingError, match="out of GPU memory.*--batch-size.*--grad-accum-steps.*--context-length"):
        train(resolve_settings(overrides=tiny_overrides, environ={}))


def test_wandb_key_never_written(tiny_overrides, monkeypatch):
    secret = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    train(resolve_settings(overrides=tiny_overrides, environ={}))
    for p in Path(tiny_overrides["checkpoint_dir"]).rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p


def test_closed_output_pipe_stops_with_a_checkpoint_then_resumes(tiny_overrides):
    """``lmkit train ... 2>&1 | head -3``: once head exits, the run saves, says why in
    metrics.jsonl and exits 141 (128 + SIGPIPE) without a traceback, instead of failing."""
    o = dict(tiny_overrides, max_iters=100000, lr_decay_iters=100000, checkpoint_interval=100000, log_interval=1)
    run_dir = Path(o["checkpoint_dir"])
    r, w = os.pipe()
    proc = subprocess.Popen(_train_cmd(o), stdout=w, stderr=w)
    os.close(w)
    with os.fdopen(r) as head:
        lines = [head.readline() for _ in range(3)]  # then "head" exits: the pipe has no reader
    assert proc.wait(timeout=120) == 141, lines
    state = ckpt.load_checkpoint(run_dir / "latest.pt")
    events = read_events(run_dir / "metrics.jsonl")
    stop = [e for e in events if e["event"].startswith("stop requested")]
    assert stop and "closed: broken pipe" in stop[0]["event"]
    assert events[-1]["status"] == "interrupted" and events[-1]["step"] == state["iter"]
    result = train(resolve_settings(overrides=dict(o, max_iters=state["iter"] + 2), environ={}))
    assert result.step == state["iter"] + 2  # the same command resumes


def test_closed_stdout_after_training_is_not_an_error(tiny_overrides):
    """``lmkit train ... | head -1``: training finished and saved; the closing lines may not
    be read, which must change neither the exit code nor print a traceback."""
    o = dict(tiny_overrides, max_iters=4, lr_decay_iters=4)
    r, w = os.pipe()
    os.close(r)
    proc = subprocess.run(_train_cmd(o), stdout=w, stderr=subprocess.PIPE, text=True, timeout=300)
    os.close(w)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert ckpt.load_checkpoint(Path(o["checkpoint_dir"]) / "latest.pt")["iter"] == 4


def test_second_ctrl_c_aborts_and_says_what_was_saved(tiny_overrides):
    """Two Ctrl-Cs within a step (in-process, so the second surely lands before the save)."""
    import io

    from lmkit.observe.jsonl import JsonlSink
    from lmkit.training.trainer import TrainingInterrupted

    class CtrlCTwice:
        def start(self, info): pass
        def event(self, message, kind="info"): pass
        def close(self, status="finished"): pass

        def log(self, step, metrics):
            if step == 3 and "loss" in metrics:
                os.kill(os.getpid(), signal.SIGINT)  # recorded: stop after this step
                os.kill(os.getpid(), signal.SIGINT)  # aborts here, before step 3 is saved

    o = dict(tiny_overrides, max_iters=100, lr_decay_iters=100, checkpoint_interval=2, log_interval=1)
    run_dir = Path(o["checkpoint_dir"])
    out = io.StringIO()
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    with pytest.raises(TrainingInterrupted) as e:
        train(resolve_settings(overrides=o, environ={}), MultiSink([ConsoleSink(file=out), JsonlSink(run_dir), CtrlCTwice()]))
    assert e.value.exit_code == 130
    assert str(e.value) == (f"aborted at step 3: no checkpoint written for this step; last checkpoint: "
                            f"{run_dir / 'ckpt_0000002.pt'} (run the same command again to resume from it)")
    assert out.getvalue().splitlines()[-1].startswith("aborted at step 3/100")
    assert read_events(run_dir / "metrics.jsonl")[-1]["status"] == "aborted"
    assert signal.getsignal(signal.SIGINT) is before  # handlers given back


def test_closing_line_names_the_step_the_nan_guard_stopped_at(tiny_overrides, monkeypatch):
    import io

    import lmkit.training.loss as loss_mod

    real, calls = loss_mod.lm_loss, []

    def poisoned(*a, **k):
        calls.append(1)
        out = real(*a, **k)
        return out * float("nan") if len(calls) > 3 else out

    monkeypatch.setattr(loss_mod, "lm_loss", poisoned)
    out = io.StringIO()
    o = dict(tiny_overrides, max_iters=12, log_interval=5)
    with pytest.raises(TrainingError, match="at or before step 5"):
        train(resolve_settings(overrides=o, environ={}), MultiSink([ConsoleSink(file=out)]))
    assert out.getvalue().splitlines()[-1].startswith("failed at step 5/12")


def test_closed_terminal_stops_the_dashboard_run_with_a_checkpoint(tiny_overrides):
    """The terminal window closes under a live dashboard: SIGHUP, then every write fails (EIO).
    The run saves, records why and exits 129 (128 + SIGHUP)."""
    import pty
    import select

    o = dict(tiny_overrides, max_iters=100000, lr_decay_iters=100000, checkpoint_interval=100000, log_interval=1)
    run_dir = Path(o["checkpoint_dir"])
    cmd = _train_cmd(o)
    pid, master = pty.fork()  # the child's controlling terminal is this pty: it gets the dashboard
    if pid == 0:  # pragma: no cover - the child
        os.execve(sys.executable, cmd, {**os.environ, "TERM": "xterm-256color"})
    drawn, deadline = b"", time.time() + 120
    while b"loss" not in drawn or not (run_dir / "metrics.jsonl").exists():
        assert time.time() < deadline, drawn[-500:]
        if select.select([master], [], [], 0.1)[0]:
            drawn += os.read(master, 65536)
    assert "╭".encode() in drawn  # the live panel, not plain lines
    os.close(master)  # the window closes: the kernel hangs up the terminal
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        assert time.time() < deadline + 60
        time.sleep(0.1)
    assert os.waitstatus_to_exitcode(done[1]) == 129
    state = ckpt.load_checkpoint(run_dir / "latest.pt")
    events = read_events(run_dir / "metrics.jsonl")
    assert any(e["event"].startswith("stop requested (SIGHUP") for e in events)
    assert events[-1]["status"] == "interrupted" and events[-1]["step"] == state["iter"]


def test_nohup_keeps_sighup_ignored():
    """Under ``nohup`` SIGHUP is ignored on purpose: closing the terminal must not stop the run."""
    from lmkit.training.stopping import StopRequests

    # A shell ignores SIGINT for its background jobs too: an explicit `kill -INT` must still stop
    # the run cleanly, so only SIGHUP keeps the parent's "ignore".
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGHUP, signal.SIGINT)}
    try:
        installed = StopRequests().install()
        try:
            assert signal.SIGHUP not in installed and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert {signal.SIGINT, signal.SIGTERM} <= set(installed)
        finally:
            StopRequests.restore(installed)
    finally:
        StopRequests.restore(before)


def test_under_nohup_a_closed_output_only_silences_the_run(tiny_overrides):
    """``nohup lmkit train 2>&1 | tee log`` after the terminal (and tee) went: the user asked the
    run to outlive its terminal, so it finishes, writing only its files."""
    o = dict(tiny_overrides, max_iters=6, lr_decay_iters=6, log_interval=1)
    run_dir = Path(o["checkpoint_dir"])
    r, w = os.pipe()
    os.close(r)
    proc = subprocess.run(_train_cmd(o), stdout=w, stderr=w, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    os.close(w)
    assert proc.returncode == 0
    assert ckpt.load_checkpoint(run_dir / "latest.pt")["iter"] == 6
    events = read_events(run_dir / "metrics.jsonl")
    assert any("console output off; training goes on (nohup)" in e["event"] for e in events)
    assert events[-1]["status"] == "finished"
