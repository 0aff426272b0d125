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
from lmkit.training import checkpoint as ckpt
from lmkit.training.trainer import Trainer

def _save_forever(d: Path, conn) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    for i in range(1, 10_000):
        state = {"iter": i, "model": {"w": torch.full((1 << 21,), float(i))}}  # 8 MB a save
        p = ckpt.save_checkpoint(state, d / ckpt.checkpoint_name(i))
        ckpt.link_latest(p)
        ckpt.prune_checkpoints(d, 2)
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


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
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
