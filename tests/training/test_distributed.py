"""Several processes on CPU (gloo) through torchrun: same losses as one process, resume across
world sizes, DDP == FSDP (also with activation checkpointing), and a killed rank makes the
others stop with a clear message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmkit.api import resolve_settings, train

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="torchrun + gloo tests run on Linux")


def torchrun(overrides: dict, nproc: int = 2, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "lmkit", "train"]
    for k, v in overrides.items():
        cmd += ([f"--{k}"] if v else [f"--no-{k}"]) if isinstance(v, bool) else [f"--{k}", str(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, **popen)


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            out[row["step"]] = row["loss"]
    return out


@pytest.fixture
def base(tiny_overrides) -> dict:
    return dict(tiny_overrides, max_iters=6, lr_decay_iters=6, log_interval=1, eval_interval=3, checkpoint_interval=3)


def test_ddp_and_fsdp_match_one_process(base, tmp_path):
    one = train(resolve_settings(overrides=dict(base, checkpoint_dir=str(tmp_path / "one")), environ={}), console_sinks=True, is_tty=False)
    ddp = torchrun(dict(base, checkpoint_dir=str(tmp_path / "ddp")))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    fsdp = torchrun(dict(base, checkpoint_dir=str(tmp_path / "fsdp"), parallel="fsdp"))
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    ref = losses(tmp_path / "one")
    for name in ("ddp", "fsdp"):
        got = losses(tmp_path / name)
        assert got.keys() == ref.keys()
        for step in ref:
            assert got[step] == pytest.approx(ref[step], rel=1e-5), (name, step)
    assert "cpu x2" in ddp.stderr  # the dashboard/log header counts both processes
    val = lambda d: [json.loads(l)["val_loss"] for l in (d / "metrics.jsonl").read_text().splitlines() if "val_loss" in l]
    assert val(tmp_path / "ddp") == pytest.approx(val(tmp_path / "one"), rel=1e-5)
    assert one.step == 6


def test_ddp_with_gradient_accumulation_matches_one_process(base, tmp_path):
    """Micro-steps accumulate into DDP's buckets (the gradients live there) without an
    all-reduce, then one all-reduce per step: the same losses as one process."""
    base = dict(base, grad_accum_steps=2, eval_interval=6, checkpoint_interval=6)
    train(resolve_settings(overrides=dict(base, checkpoint_dir=str(tmp_path / "one")), environ={}), console_sinks=True, is_tty=False)
    r = torchrun(dict(base, checkpoint_dir=str(tmp_path / "ddp")))
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = losses(tmp_path / "one"), losses(tmp_path / "ddp")
    assert got.keys() == ref.keys()
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5), step


def test_checkpoints_resume_across_world_sizes(base, tmp_path):
    ref_dir = tmp_path / "ref"
    train(resolve_settings(overrides=dict(base, checkpoint_dir=str(ref_dir)), environ={}), console_sinks=True, is_tty=False)
    ref = losses(ref_dir)
    # 2 ranks (DDP) for 3 steps, then 1 process finishes the run.
    a = tmp_path / "a"
    r = torchrun(dict(base, checkpoint_dir=str(a), max_iters=3))
    assert r.returncode == 0, r.stderr[-3000:]
    train(resolve_settings(overrides=dict(base, checkpoint_dir=str(a)), environ={}), console_sinks=True, is_tty=False)
    # 1 process for 3 steps, then 2 ranks (FSDP) finish it.
    b = tmp_path / "b"
    train(resolve_settings(overrides=dict(base, checkpoint_dir=str(b), max_iters=3), environ={}), console_sinks=True, is_tty=False)
    r = torchrun(dict(base, checkpoint_dir=str(b), parallel="fsdp"))
    assert r.returncode == 0, r.stderr[-3000:]
    for d in (a, b):
        got = losses(d)
        for step in (4, 5, 6):
            assert got[step] == pytest.approx(ref[step], rel=1e-4), (d.name, step)


def test_killed_rank_makes_the_others_exit_with_a_message(base, tmp_path):
    o = dict(base, max_iters=100000, lr_decay_iters=100000, checkpoint_interval=5, checkpoint_dir=str(tmp_path / "k"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "lmkit", "train"]
    for k, v in o.items():
        cmd += ([f"--{k}"] if v else [f"--no-{k}"]) if isinstance(v, bool) else [f"--{k}", str(v)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    latest = tmp_path / "k" / "latest.pt"
    t0 = time.time()
    while not latest.exists():
        assert proc.poll() is None and time.time() - t0 < 120
        time.sleep(0.1)
    # The workers are torchrun's children; kill the one with the highest pid (rank 1 here).
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    os.kill(int(max(children, key=int)), signal.SIGKILL)
    t1 = time.time()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.time() - t1 < 90  # no hang
    assert "lost contact with another process" in err or "SIGTERM" in err
    from lmkit.training.checkpoint import load_checkpoint

    assert load_checkpoint(latest)["iter"] > 0  # what was saved before the kill is intact


@pytest.mark.slow  # ~30 s: each process compiles the block with Inductor
def test_fsdp_compiled_with_activation_checkpointing_matches_one_process(tiny_overrides, tmp_path):
    """FSDP as it runs on GPUs -- each block compiled on its own, FSDP's parameter gathering
    outside the compiled code -- with blocks recomputed in backward: the same losses as one
    eager process without recomputation (to Inductor's reordering of float sums)."""
    base = dict(tiny_overrides, max_iters=4, lr_decay_iters=4, log_interval=1, eval_interval=4, checkpoint_interval=4)
    train(resolve_settings(overrides=dict(base, checkpoint_dir=str(tmp_path / "one")), environ={}), console_sinks=True, is_tty=False)
    r = torchrun(dict(base, checkpoint_dir=str(tmp_path / "fsdp"), parallel="fsdp", activation_checkpointing=True, compile=True))
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = losses(tmp_path / "one"), losses(tmp_path / "fsdp")
    assert got.keys() == ref.keys()
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-4), step


def test_fsdp_under_bf16_autocast_matches_one_process(tiny_overrides, tmp_path):
    """bf16 autocast on CPU takes the training-only paths (q/k/v as one GEMM, RoPE's stacked
    backward op, fp32 weight gradients from the GEMMs) through FSDP's parameter gathering and
    block-by-block compile: the same losses as one process to bf16's precision."""
    base = dict(tiny_overrides, max_iters=4, lr_decay_iters=4, log_interval=1, eval_interval=4, checkpoint_interval=4,
                dtype="bfloat16")
    train(resolve_settings(overrides=dict(base, checkpoint_dir=str(tmp_path / "one")), environ={}), console_sinks=True, is_tty=False)
    r = torchrun(dict(base, checkpoint_dir=str(tmp_path / "fsdp"), parallel="fsdp", compile=True))
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = losses(tmp_path / "one"), losses(tmp_path / "fsdp")
    assert got.keys() == ref.keys()
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=2e-2), step


@pytest.mark.skipif(not hasattr(__import__("torch").optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_ddp_with_muon_matches_one_process(base, tmp_path):
    """Under DDP each rank orthogonalises its share of the hidden matrices and the ranks gather
    the rest: the same losses as one process, which orthogonalises them all. Three layers, so
    one stack (the three SwiGLU output matrices) does not divide evenly between two ranks."""
    base = dict(base, optimizer="muon", num_layers=3)
    train(resolve_settings(overrides=dict(base, checkpoint_dir=str(tmp_path / "one")), environ={}), console_sinks=True, is_tty=False)
    r = torchrun(dict(base, checkpoint_dir=str(tmp_path / "ddp")))
    assert r.returncode == 0, r.stderr[-3000:]
    ref, got = losses(tmp_path / "one"), losses(tmp_path / "ddp")
    assert got.keys() == ref.keys() and len(ref) == 6
    for step in ref:
        assert got[step] == pytest.approx(ref[step], rel=1e-5), step
