"""`lmkit train` end to end through the CLI (CliRunner and a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lmkit.cli.app import app

runner = CliRunner()


def flags(overrides: dict, underscores: bool = False) -> list[str]:
    out = []
    for k, v in overrides.items():
        name = k if underscores else k.replace("_", "-")
        if isinstance(v, bool):
            out.append(f"--{name}" if v else f"--no-{name}")
        else:
            out += [f"--{name}", str(v)]
    return out


def test_print_config_accepts_both_spellings():
    a = runner.invoke(app, ["train", "--print-config", "--d-model", "256", "--num-heads", "4"])
    b = runner.invoke(app, ["train", "--print-config", "--d_model", "256", "--num_heads=4"])
    assert a.exit_code == 0 and a.stdout == b.stdout
    cfg = yaml.safe_load(a.stdout)
    assert cfg["model"]["d_model"] == 256 and cfg["model"]["num_heads"] == 4


def test_config_file_then_flag_override(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("d_model: 512\nnum_heads: 8\nbatch_size: 4\n")
    r = runner.invoke(app, ["train", "--config", str(cfg), "--batch-size", "8", "--print-config"])
    out = yaml.safe_load(r.stdout)
    assert (out["model"]["d_model"], out["train"]["batch_size"]) == (512, 8)


def test_shipped_example_configs_load():
    root = Path(__file__).resolve().parents[2] / "examples" / "configs"
    configs = sorted(root.glob("*.yaml"))
    assert {p.name for p in configs} >= {"small_model.yaml", "gpt2_medium.yaml"}
    for p in configs:
        r = runner.invoke(app, ["train", "--config", str(p), "--print-config"])
        assert r.exit_code == 0, (p, r.output)
    medium = yaml.safe_load(runner.invoke(app, ["train", "-c", str(root / "gpt2_medium.yaml"), "--print-config"]).stdout)
    m = medium["model"]
    assert (m["num_layers"], m["d_model"], m["num_heads"], m["d_ff"]) == (24, 1024, 16, 4096)
    # The time-to-loss winner, as measured (benchmarks/TIME_TO_LOSS.md): Muon 0.02 with the AdamW part at 2e-3.
    muon = yaml.safe_load(runner.invoke(app, ["train", "-c", str(root / "small_model_muon.yaml"), "--print-config"]).stdout)
    o = muon["optim"]
    assert (o["optimizer"], o["muon_lr"], o["learning_rate"], o["min_lr"], o["schedule"]) == ("muon", 0.02, 2e-3, 2e-4, "cosine")
    assert (muon["train"]["batch_size"], muon["train"]["max_iters"], o["lr_decay_iters"]) == (16, 2000, 2000)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--num-heads", "7"], "num_heads (7) must divide d_model"),
        (["--learning-rate", "-1"], "--learning-rate: must be > 0 (got -1)"),
        (["--config", "/nonexistent.yaml"], "config file not found"),
        (["--bogus-flag", "1"], "No such option"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_bad_settings_exit_2_with_one_line(args, fragment):
    r = runner.invoke(app, ["train", *args, "--print-config"])
    assert r.exit_code == 2
    assert fragment in r.stderr and r.stderr.startswith("lmkit: error:")
    assert "Traceback" not in r.output


def test_missing_data_is_a_clear_error(tmp_path: Path):
    r = runner.invoke(app, ["train", "--train-data-path", str(tmp_path / "nope.bin"), "--checkpoint-dir", str(tmp_path / "r"), "--no-wandb", "--device", "cpu"])
    assert r.exit_code == 2 and "nope" in r.stderr and "Traceback" not in r.output


def test_train_end_to_end_plain_logs(tiny_overrides):
    r = runner.invoke(app, ["train", *flags(tiny_overrides)])
    assert r.exit_code == 0, r.output
    run_dir = Path(tiny_overrides["checkpoint_dir"])
    assert f"checkpoint: {run_dir / 'ckpt_0000020.pt'}" in r.stdout
    assert "lmkit generate --checkpoint" in r.stdout
    # Token-id files that record no tokenizer: a bare `generate --checkpoint` would fail with
    # "records no tokenizer", so the hint asks for one.
    hint = next(line for line in r.stdout.splitlines() if line.startswith("sample from it:"))
    assert "--tokenizer DIR" in hint and "the training data records no tokenizer" in hint
    assert "step 20/20" in r.stderr and "\x1b[" not in r.stderr  # plain lines, no control codes
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("step") == 20 and "loss" in row for row in rows)
    # Running again resumes, says so, and trains no further.
    again = runner.invoke(app, ["train", *flags(tiny_overrides)])
    assert again.exit_code == 0 and "resuming from" in again.stderr and "no new steps" in again.stdout


def test_train_subprocess_with_underscore_flags(tiny_overrides):
    r = subprocess.run([sys.executable, "-m", "lmkit", "train", *flags(tiny_overrides, underscores=True)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "done: step 20" in r.stdout


def test_activation_checkpointing_flag_trains_and_is_recorded(tiny_overrides):
    # The underscore spelling: the dash one is what every other settings flag test uses.
    r = runner.invoke(app, ["train", *flags(dict(tiny_overrides, max_iters=4, lr_decay_iters=4)), "--activation_checkpointing"])
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((Path(tiny_overrides["checkpoint_dir"]) / "settings.yaml").read_text())
    assert saved["train"]["activation_checkpointing"] is True


def test_nproc_per_node_launches_torchrun(monkeypatch, tiny_overrides):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    monkeypatch.setattr(sys, "argv", ["lmkit", "train", "--nproc-per-node", "2", "--max-iters", "5"])
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    r = runner.invoke(app, ["train", "--nproc-per-node", "2", "--max-iters", "5"])
    assert r.exit_code == 0
    assert calls == [[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "lmkit", "train", "--max-iters", "5"]]


def test_demo_runs_and_learns(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("LMKIT_CACHE_DIR", str(tmp_path / "cache"))
    run_dir = tmp_path / "demo"
    r = runner.invoke(app, ["train", "--demo", "--max-iters", "40", "--lr-decay-iters", "40", "--log-interval", "20", "--eval-interval", "40", "--checkpoint-dir", str(run_dir)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert losses[-1] < losses[0] < 8.0  # ln(2048) = 7.6 at init, and it falls
    assert (run_dir / "latest.pt").is_file()


def test_kernel_flags_train_and_are_recorded_and_inspected(tiny_overrides):
    """`--no-fp32-weight-grad --no-stacked-qkv` (bf16 autocast on CPU, where both would run):
    the run trains, and settings.yaml, the checkpoint and `lmkit ckpt inspect` record them."""
    import torch

    from lmkit.training.checkpoint import load_checkpoint

    args = flags(dict(tiny_overrides, max_iters=4, lr_decay_iters=4, checkpoint_interval=4, dtype="bfloat16"))
    r = runner.invoke(app, ["train", *args, "--no-fp32-weight-grad", "--no_stacked_qkv"])
    assert r.exit_code == 0, r.output
    run_dir = Path(tiny_overrides["checkpoint_dir"])
    saved = yaml.safe_load((run_dir / "settings.yaml").read_text())["kernels"]
    assert saved["fp32_weight_grad"] is False and saved["stacked_qkv"] is False and saved["ce_kernel"] is True
    state = load_checkpoint(run_dir / "latest.pt")
    assert state["settings"]["kernels"] == saved
    assert all(t.dtype == torch.float32 for t in state["model"].values())
    shown = runner.invoke(app, ["ckpt", "inspect", str(run_dir / "latest.pt")])
    assert shown.exit_code == 0 and "off: fp32_weight_grad, stacked_qkv" in shown.stdout, shown.output


def test_train_help_lists_the_training_kernels_only():
    text = runner.invoke(app, ["train", "--help"], terminal_width=200).stdout
    for flag in ("--fp32-weight-grad", "--stacked-qkv", "--ce-kernel", "--adamw-kernel", "--no-ce-kernel --no-stacked-qkv"):
        assert flag in text, flag
    assert "--decode-tuning" not in text and "--decode-steps-per-replay" not in text


def test_a_checkpoint_without_kernel_settings_resumes_with_the_defaults(tiny_overrides):
    """Checkpoints written before the `kernels` section: resumed with its defaults, and inspect says so."""
    import torch

    from lmkit.training.checkpoint import load_checkpoint, save_checkpoint

    run_dir = Path(tiny_overrides["checkpoint_dir"])
    args = flags(dict(tiny_overrides, max_iters=4, lr_decay_iters=8, checkpoint_interval=4))
    assert runner.invoke(app, ["train", *args]).exit_code == 0
    state = load_checkpoint(run_dir / "latest.pt")
    del state["settings"]["kernels"]
    save_checkpoint(state, run_dir / "latest.pt")
    shown = runner.invoke(app, ["ckpt", "inspect", str(run_dir / "latest.pt")])
    assert "defaults (not recorded" in shown.stdout, shown.output
    r = runner.invoke(app, ["train", *flags(dict(tiny_overrides, max_iters=8, lr_decay_iters=8, checkpoint_interval=4))])
    assert r.exit_code == 0, r.output
    assert "resuming from" in r.output
    assert load_checkpoint(run_dir / "latest.pt")["iter"] == 8 and torch.is_tensor(load_checkpoint(run_dir / "latest.pt")["model"]["lm_head.weight"])
