"""``lmkit ckpt`` end to end: inspect (and its alias), export, validate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from trained_model import make_tiny_run
from typer.testing import CliRunner

from lmkit.cli.app import app
from lmkit.training.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("ckpt_cli"))


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_inspect_summary(run) -> None:
    result = invoke("ckpt", "inspect", str(run.checkpoint))
    assert result.exit_code == 0, result.output
    out = result.stdout
    for field in ("lmkit 0.1.0", "step", "tokens seen", "wall time", "best val loss", "d_model 32", "non-embedding",
                  "float32", "present (training can resume)", "W&B run", "sha256:"):
        assert field in out, field
    assert "lm_head.weight" not in out


def test_inspect_json_tensors_and_alias(run) -> None:
    result = invoke("ckpt", "inspect", str(run.checkpoint), "--tensors", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    state = load_checkpoint(run.checkpoint)
    assert info["iter"] == state["iter"] and info["model_config"] == state["model_config"]
    assert info["params_total"] == sum(t.numel() for t in state["model"].values())
    head = next(t for t in info["tensors"] if t["name"] == "lm_head.weight")
    assert head["shape"] == [320, 32] and head["norm"] == pytest.approx(state["model"]["lm_head.weight"].norm().item(), rel=1e-5)
    assert info["params_non_embedding"] == info["params_total"] - 2 * 320 * 32
    alias = invoke("inspect-checkpoint", str(run.checkpoint), "--tensors", "--json")
    assert alias.exit_code == 0 and json.loads(alias.stdout) == info
    assert "lm_head.weight" in invoke("ckpt", "inspect", str(run.checkpoint), "--tensors").stdout


def test_inspect_shows_every_recorded_settings_section(run, tmp_path) -> None:
    # Generic over sections: one this code has never heard of (as `kernels` once was) shows too.
    state = load_checkpoint(run.checkpoint)
    state["settings"]["kernels"] = {"fused_loss": True, "decode_attention": "auto"}
    path = save_checkpoint(state, tmp_path / "with_kernels.pt")
    out = invoke("ckpt", "inspect", str(path)).stdout
    for section in ("model", "data", "optim", "train", "checkpoint", "logging", "runtime", "generate", "kernels"):
        assert f"settings.{section}" in out, section
    assert "fused_loss True" in out and "decode_attention auto" in out
    info = json.loads(invoke("ckpt", "inspect", str(path), "--json").stdout)
    assert info["settings"]["kernels"] == {"fused_loss": True, "decode_attention": "auto"}
    assert info["settings"]["model"] == state["settings"]["model"]


def test_export_hf_then_refuse_non_empty(run, tmp_path) -> None:
    out = tmp_path / "hf"
    result = invoke("ckpt", "export", str(run.checkpoint), "--format", "hf", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"} <= {
        p.name for p in out.iterdir()}
    again = invoke("ckpt", "export", str(run.checkpoint), "--format", "hf", "--output", str(out))
    assert again.exit_code == 2 and "--force" in again.stderr
    assert invoke("ckpt", "export", str(run.checkpoint), "-f", "hf", "-o", str(out), "--force").exit_code == 0


def test_validate_ok_and_problems(run, tmp_path) -> None:
    ok = invoke("ckpt", "validate", str(run.checkpoint))
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.splitlines()[-1] == "OK" and "tokenizer" in ok.stdout
    state = load_checkpoint(run.checkpoint)
    state["model"]["norm.weight"][0] = float("nan")
    save_checkpoint(state, tmp_path / "nan.pt")
    bad = invoke("ckpt", "validate", str(tmp_path / "nan.pt"), "--json")
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    assert not report["ok"] and {c["name"] for c in report["checks"] if c["status"] == "fail"} == {"finite", "forward"}
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    junk = invoke("ckpt", "validate", str(tmp_path / "junk.pt"))
    assert junk.exit_code == 1 and junk.stdout.startswith("fail  loads")


def test_real_subprocess_export_safetensors(run, tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "lmkit", "ckpt", "export", str(run.checkpoint), "--output", str(tmp_path / "st")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "st" / "model.safetensors")
    assert torch.equal(weights["lm_head.weight"], load_checkpoint(run.checkpoint)["model"]["lm_head.weight"])


def test_help_has_examples() -> None:
    for cmd in ("inspect", "export", "validate"):
        result = invoke("ckpt", cmd, "--help")
        assert result.exit_code == 0 and "Example" in result.stdout, cmd


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmkit: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_non_checkpoint_files_say_what_they_are(run, tmp_path) -> None:
    line = _one_line_error(invoke("ckpt", "inspect", str(run.root / "train.bin")))
    assert "a token file written by `lmkit tokenize encode`" in line and "pop from empty list" not in line
    cut = tmp_path / "cut.pt"
    cut.write_bytes(run.checkpoint.read_bytes()[:5000])  # a copy without its manifest
    line = _one_line_error(invoke("ckpt", "inspect", str(cut)))
    assert "the archive is incomplete" in line and "miniz" not in line
    line = _one_line_error(invoke("ckpt", "export", str(tmp_path), "-o", str(tmp_path / "out")))
    assert "a directory with no latest.pt or ckpt_*.pt" in line


def test_crafted_checkpoint_is_one_line_on_every_command(run, tmp_path) -> None:
    state = load_checkpoint(run.checkpoint)
    state["model_config"]["num_layers"] = 2.0
    save_checkpoint(state, tmp_path / "crafted.pt")
    crafted = str(tmp_path / "crafted.pt")
    for args in (("ckpt", "inspect", crafted), ("ckpt", "export", crafted, "-o", str(tmp_path / "o")),
                 ("generate", "--checkpoint", crafted, "--prompt", "The", "--device", "cpu")):
        line = _one_line_error(invoke(*args))
        assert f"{crafted}: invalid checkpoint: model_config.num_layers must be a positive integer, got 2.0 (float)" in line
    report = invoke("ckpt", "validate", crafted)
    assert report.exit_code == 1 and "fail  shapes" in report.stdout and "num_layers" in report.stdout
